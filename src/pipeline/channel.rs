//! Bounded channels between stages that remember when each item was sent, so the
//! receiving stage can record how long it waited in the queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use super::faults::FaultPoint;
use super::metrics::StageMetrics;
use super::trace::{Service, StageTrace};

/// Items that can be routed to a fixed worker, so one key's items stay in order, and that
/// may carry their request's stage trace.
pub trait Keyed {
    fn key(&self) -> u64;

    /// Where this item's stage times go, when its request is traced.
    fn trace(&self) -> Option<&Arc<StageTrace>> {
        None
    }

    /// Who answers for this item if a stage panics while handling it (the item itself is
    /// lost in the unwinding); None: nobody waits for it.
    fn answerable(&self) -> Option<Arc<dyn Answerable>> {
        None
    }
}

/// Whoever waits on an item: told when a stage's handling of the item panicked.
pub trait Answerable: Send + Sync {
    fn stage_panicked(&self, stage: &str, message: &str);
}

thread_local! {
    /// When this thread last handed an item to a next stage: where a traced request's share
    /// of a service ends (see `Inlet::end_service`).
    static LAST_HAND_OFF: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

pub(crate) struct Envelope<T> {
    item: T,
    sent: Instant,
}

/// Why an item could not be handed to the next stage.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full (only from `try_send`).
    Full,
    /// The next stage has shut down.
    Closed,
}

/// The sending end towards the next stage: one shared queue, or one queue per worker
/// when the next stage keeps items of one key in order.
pub struct Outlet<T> {
    senders: Vec<Sender<Envelope<T>>>,
}

impl<T> Clone for Outlet<T> {
    fn clone(&self) -> Self {
        Outlet { senders: self.senders.clone() }
    }
}

impl<T: Keyed> Outlet<T> {
    pub(crate) fn new(senders: Vec<Sender<Envelope<T>>>) -> Self {
        Outlet { senders }
    }

    /// An outlet that leads nowhere: the last stage delivers its items itself.
    pub fn terminal() -> Self {
        Outlet { senders: Vec::new() }
    }

    fn route(&self, item: &T) -> Option<&Sender<Envelope<T>>> {
        match self.senders.len() {
            0 => None,
            1 => self.senders.first(),
            n => self.senders.get((item.key() % n as u64) as usize),
        }
    }

    /// Sends, waiting while the queue is full (backpressure).
    pub fn send(&self, item: T) -> Result<(), SendError> {
        let tx = self.route(&item).ok_or(SendError::Closed)?;
        let sent = Instant::now();
        LAST_HAND_OFF.set(Some(sent));
        tx.send(Envelope { item, sent }).map_err(|_| SendError::Closed)
    }

    /// Sends only if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), (SendError, T)> {
        let Some(tx) = self.route(&item) else { return Err((SendError::Closed, item)) };
        tx.try_send(Envelope { item, sent: Instant::now() }).map_err(|e| match e {
            TrySendError::Full(env) => (SendError::Full, env.item),
            TrySendError::Disconnected(env) => (SendError::Closed, env.item),
        })
    }

    /// Items waiting in the queues.
    pub fn queued(&self) -> usize {
        self.senders.iter().map(Sender::len).sum()
    }
}

/// The receiving end of one worker. Records queue wait on every receive.
pub struct Inlet<T> {
    rx: Receiver<Envelope<T>>,
    metrics: Arc<StageMetrics>,
    /// The stage's position in the pipeline (its slot in a request's trace).
    stage: usize,
    /// A fault injected into this stage (tests only).
    fault: Option<Arc<FaultPoint>>,
}

impl<T: Keyed> Inlet<T> {
    pub(crate) fn new(rx: Receiver<Envelope<T>>, metrics: Arc<StageMetrics>, stage: usize, fault: Option<Arc<FaultPoint>>) -> Self {
        Inlet { rx, metrics, stage, fault }
    }

    /// Handles one item with `handle`, containing a panic: the stage's panic count goes
    /// up, the log says what happened, and whoever waits on the item is told; the worker
    /// goes on with the next item. A fault injected into the stage fires in here. Returns
    /// false when `handle` panicked.
    pub fn contain(&self, item: T, handle: impl FnOnce(T)) -> bool {
        let answerable = item.answerable();
        let fault = self.fault.as_deref();
        let run = std::panic::AssertUnwindSafe(move || {
            if let Some(f) = fault {
                f.hit();
            }
            handle(item)
        });
        match std::panic::catch_unwind(run) {
            Ok(()) => true,
            Err(payload) => {
                let message = super::panic_message(&*payload);
                self.metrics.record_panic();
                tracing::error!("stage {:?} panicked on an item ({message}); its request fails, the stage goes on", self.metrics.name);
                if let Some(a) = answerable {
                    a.stage_panicked(&self.metrics.name, message);
                }
                false
            }
        }
    }

    fn open(&self, env: Envelope<T>) -> T {
        let wait = env.sent.elapsed();
        self.metrics.record_queue(wait);
        if let Some(t) = env.item.trace() {
            t.queued(self.stage, wait);
        }
        env.item
    }

    /// The stage's position in the pipeline.
    pub fn stage(&self) -> usize {
        self.stage
    }

    /// The stage starts work on `item`; pass the result to `end_service` when done.
    pub fn begin_service(&self, item: &T) -> Service {
        let start = Instant::now();
        let trace = item.trace().cloned();
        if let Some(t) = &trace {
            t.begin(self.stage, start);
        }
        Service { start, trace }
    }

    /// The work begun by `begin_service` is done: records the stage's service time, and
    /// the request's share when it is traced.
    pub fn end_service(&self, service: Service) {
        let took = service.start.elapsed();
        self.metrics.record_service(took);
        if let Some(t) = service.trace {
            // The request's share ends when the item was handed on: the next stage starts
            // then, and a thread descheduled after the hand-off (while the engine's OpenMP
            // workers hold the cores) would otherwise count that wait twice.
            let handed_off = LAST_HAND_OFF.get().filter(|&at| at >= service.start).map(|at| at - service.start);
            t.end(self.stage, handed_off.unwrap_or(took));
        }
    }

    /// A batching stage's share of its work spent on `item`, which it measured itself
    /// (the stage's histogram records whole batches).
    pub fn add_item_service(&self, item: &T, took: Duration) {
        if let Some(t) = item.trace() {
            t.add_service(self.stage, took);
        }
    }

    /// Waits for the next item; None once every sender is gone.
    pub fn recv(&self) -> Option<T> {
        self.rx.recv().ok().map(|e| self.open(e))
    }

    /// The next item if one is waiting; `Err(true)` when the channel is closed and empty.
    pub fn try_recv(&self) -> Result<T, bool> {
        match self.rx.try_recv() {
            Ok(e) => Ok(self.open(e)),
            Err(TryRecvError::Empty) => Err(false),
            Err(TryRecvError::Disconnected) => Err(true),
        }
    }

    /// Waits up to `timeout`; `Err(true)` when the channel is closed and empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, bool> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Ok(self.open(e)),
            Err(RecvTimeoutError::Timeout) => Err(false),
            Err(RecvTimeoutError::Disconnected) => Err(true),
        }
    }

    pub fn metrics(&self) -> &Arc<StageMetrics> {
        &self.metrics
    }
}
