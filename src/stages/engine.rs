//! engine: the pipeline stage around `crate::engine::Engine`. Its one worker turns each
//! ready job into an engine request, admits new requests between steps and runs steps
//! while there is work; each step's duration is the stage's service time. The engine's
//! events come back through the request's `Client`, which wraps them into items for the
//! next stage (and an engine error into the client's error answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::error::ApiError;
use crate::api::audio::AudioJob;
use crate::api::request::{Job, Prompt};
use crate::engine::latency::Timeline;
use crate::engine::{Client, Engine, EngineError, EngineEvent, EngineRequest};
use crate::pipeline::{FaultPoint, Inlet, Lifecycle, Outlet, Stage};
use crate::stages::item::{Item, Payload, RequestCtx};

pub struct EngineStage {
    engine: Mutex<Option<Engine>>,
    /// Says when the requests in the engine are to be aborted (shutdown).
    lifecycle: Arc<Lifecycle>,
    /// A fault injected into every step (tests only).
    step_fault: Option<Arc<FaultPoint>>,
}

impl EngineStage {
    pub fn new(engine: Engine, lifecycle: Arc<Lifecycle>, step_fault: Option<Arc<FaultPoint>>) -> Self {
        EngineStage { engine: Mutex::new(Some(engine)), lifecycle, step_fault }
    }
}

/// A request in the engine, as the engine sees its sender: the request's context, and
/// the outlet its token events leave by.
struct Admitted {
    ctx: Arc<RequestCtx>,
    out: Outlet<Item>,
    /// The stage's position, for traced requests' stage times.
    stage: usize,
    /// Traced requests: choices finished so far.
    finished: AtomicUsize,
}

impl Client for Admitted {
    fn id(&self) -> &str {
        &self.ctx.id
    }

    fn key(&self) -> u64 {
        self.ctx.key
    }

    fn timeline(&self) -> &Timeline {
        &self.ctx.timeline
    }

    fn is_cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }

    fn is_stopped(&self, choice: usize) -> bool {
        self.ctx.is_stopped(choice)
    }

    fn send(&self, event: EngineEvent) {
        let event = match event {
            EngineEvent::Tokens(ev) => ev,
            EngineEvent::Failed(e) => return self.ctx.fail(ApiError::from(e)),
        };
        let ctx = &self.ctx;
        if let (Some(trace), true) = (&ctx.trace, event.finish.is_some()) {
            // The engine is done with a request when every choice has finished: its
            // service is the time from admission to now.
            if self.finished.fetch_add(1, Ordering::Relaxed) + 1 >= event.choices {
                if let Some(admitted) = ctx.timeline.milestones().admitted {
                    trace.add_service(self.stage, ctx.timeline.since_arrival(Instant::now()).saturating_sub(admitted));
                }
            }
        }
        let _ = self.out.send(Item { ctx: ctx.clone(), payload: Payload::Tokens(event) });
    }
}

/// The engine request for a tokenized, guided job; None (the client answered) when the
/// job cannot run.
fn engine_request(ctx: Arc<RequestCtx>, job: Job, out: &Outlet<Item>, stage: usize) -> Option<EngineRequest> {
    if let (Some(req), None) = (&job.constraint, &job.guide) {
        ctx.fail(ApiError::invalid(
            req.field.clone(),
            "Structured outputs need the `guide` stage before the engine in the pipeline file.",
        ));
        return None;
    }
    if !job.images.is_empty() {
        ctx.fail(ApiError::invalid("messages", "Images need the `encode_images` stage before the engine in the pipeline file."));
        return None;
    }
    let Prompt::Tokens(prompts) = job.prompt else { unreachable!("the engine takes tokenized jobs") };
    let client = Arc::new(Admitted { ctx, out: out.clone(), stage, finished: AtomicUsize::new(0) });
    Some(EngineRequest {
        prompts,
        sampling: job.sampling,
        n: job.n,
        priority: job.priority,
        cache_salt: job.cache_salt,
        guide: job.guide,
        guide_after: job.guide_after,
        beam: job.beam,
        client,
        encoder: None,
        mm: job.mm,
    })
}

/// The engine request for a prepared audio job: one prompt and one encoder window per
/// 30 s of audio.
fn audio_request(ctx: Arc<RequestCtx>, job: AudioJob, out: &Outlet<Item>, stage: usize) -> EngineRequest {
    let client = Arc::new(Admitted { ctx, out: out.clone(), stage, finished: AtomicUsize::new(0) });
    EngineRequest {
        prompts: job.prompts,
        sampling: job.sampling,
        n: 1,
        priority: 0,
        cache_salt: None,
        guide: None,
        guide_after: Vec::new(),
        beam: None,
        client,
        encoder: job.encoder,
        mm: None,
    }
}

fn admit(engine: &mut Engine, item: Item, out: &Outlet<Item>, stage: usize) {
    if item.ctx.is_cancelled() {
        return;
    }
    match item.payload {
        Payload::Job(job) => {
            if let Some(request) = engine_request(item.ctx, *job, out, stage) {
                engine.admit(request);
            }
        }
        Payload::Audio(job) => engine.admit(audio_request(item.ctx, *job, out, stage)),
        _ => unreachable!("the engine takes tokenized jobs and prepared audio jobs"),
    }
}

/// Admits an item, a panic failing only its request (its sequences, if any were added,
/// are reaped as cancelled).
fn admit_contained(inlet: &Inlet<Item>, engine: &mut Engine, item: Item, out: &Outlet<Item>) {
    let stage = inlet.stage();
    inlet.contain(item, |item| admit(engine, item, out, stage));
}

impl Stage<Item> for EngineStage {
    fn process(&self, _item: Item, _out: &Outlet<Item>) {
        unreachable!("the engine drives its own inlet")
    }

    fn run(&self, inlet: Inlet<Item>, out: Outlet<Item>) {
        let Some(mut engine) = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let stats = engine.stats();
        // At most a full batch waits inside the engine; the rest stays in the queue, which
        // fills and pushes back to the edge (a 503 with Retry-After). Taking every request
        // that arrives instead let the engine's waiting list, and the wait of everything in
        // it, grow without end under overload.
        let max_waiting = engine.cfg.scheduler.max_num_seqs.max(1);
        let mut closed = false;
        loop {
            if engine.is_idle() {
                if closed {
                    return;
                }
                match inlet.recv() {
                    Some(item) => admit_contained(&inlet, &mut engine, item, &out),
                    None => return,
                }
            }
            // Take what arrived while the last step ran, up to a full batch waiting.
            while !closed && engine.num_waiting() < max_waiting {
                match inlet.try_recv() {
                    Ok(item) => admit_contained(&inlet, &mut engine, item, &out),
                    Err(is_closed) => {
                        closed = is_closed;
                        break;
                    }
                }
            }
            if self.lifecycle.is_aborting() && !engine.is_idle() {
                tracing::debug!("shutting down: aborting the {} sequences in the engine", engine.num_running() + engine.num_waiting());
                engine.abort_all();
                continue;
            }
            engine.reap_cancelled();
            let start = Instant::now();
            let fault = self.step_fault.as_deref();
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(f) = fault {
                    f.hit();
                }
                engine.step()
            }));
            let times = match step {
                Ok(t) => t,
                Err(panic) => {
                    let what = super::panic_message(&*panic);
                    tracing::error!("an engine step failed: {what}; failing the requests it held");
                    engine.fail_all(EngineError::StepFailed);
                    continue;
                }
            };
            if times.tokens > 0 {
                inlet.metrics().record_service(start.elapsed());
                let steps = &stats.steps;
                steps.schedule.record(times.schedule);
                if !times.encode.is_zero() {
                    steps.encode.record(times.encode);
                }
                steps.forward.record(times.forward);
                steps.sample.record(times.sample);
            } else if !engine.is_idle() {
                // Nothing could be scheduled (waiting for blocks): wait for news briefly.
                if engine.num_waiting() >= max_waiting || closed {
                    std::thread::sleep(Duration::from_millis(5));
                } else if let Ok(item) = inlet.recv_timeout(Duration::from_millis(5)) {
                    admit_contained(&inlet, &mut engine, item, &out);
                }
            }
        }
    }
}
