//! How far a pipeline is in stopping, and how many requests it still holds.
//!
//! Running → Draining (new work is refused, work in flight goes on) → Aborting (work in
//! flight is ended now). The edge takes a `Ticket` per request it admits and drops it
//! once the answer is out, so whoever stops the pipeline knows when it has drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

#[derive(Debug, Default)]
pub struct Lifecycle {
    state: AtomicU8,
    in_flight: AtomicUsize,
}

/// One admitted request: counted in flight until dropped.
#[derive(Debug)]
pub struct Ticket(Arc<Lifecycle>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lifecycle {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Admits one request; None once the pipeline has begun to stop.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        // Counted first, then checked: a drain that has begun sees either the refusal or
        // the request, never neither.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket(self.clone());
        (self.state.load(Ordering::SeqCst) == RUNNING).then_some(ticket)
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Refuse new work from now on; work in flight goes on. False if stopping had already begun.
    pub fn drain(&self) -> bool {
        self.state.compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// End the work in flight now (and refuse new work).
    pub fn abort(&self) {
        self.state.store(ABORTING, Ordering::SeqCst);
    }

    /// Stopping has begun: new work is refused.
    pub fn is_stopping(&self) -> bool {
        self.state.load(Ordering::Relaxed) != RUNNING
    }

    /// Work in flight is to be ended now.
    pub fn is_aborting(&self) -> bool {
        self.state.load(Ordering::Relaxed) == ABORTING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_until_dropped_and_stop_being_issued_on_drain() {
        let l = Lifecycle::new();
        let a = l.admit().expect("running");
        let b = l.admit().expect("running");
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        assert!(l.drain());
        assert!(!l.drain(), "a second drain is not a new one");
        assert!(l.is_stopping() && !l.is_aborting());
        assert!(l.admit().is_none());
        assert_eq!(l.in_flight(), 1, "a refused request is not counted");
        l.abort();
        assert!(l.is_aborting());
        drop(b);
        assert_eq!(l.in_flight(), 0);
    }
}
