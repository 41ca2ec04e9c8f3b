//! engine: the pipeline stage around `crate::engine::Engine`. Its one worker admits new
//! jobs between steps and runs steps while there is work; each step's duration is the
//! stage's service time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{Emit, Engine};
use crate::job::{Item, Payload, RequestCtx, TokenEvent};
use crate::pipeline::{Inlet, Outlet, Stage};

pub struct EngineStage {
    engine: Mutex<Option<Engine>>,
}

impl EngineStage {
    pub fn new(engine: Engine) -> Self {
        EngineStage { engine: Mutex::new(Some(engine)) }
    }
}

struct ToOutlet<'a> {
    out: &'a Outlet<Item>,
    /// The stage's position, for traced requests' stage times.
    stage: usize,
    /// Traced requests: choices finished so far, by request key.
    finished: HashMap<u64, usize>,
}

impl Emit for ToOutlet<'_> {
    fn emit(&mut self, ctx: &Arc<RequestCtx>, event: TokenEvent) {
        if let (Some(trace), true) = (&ctx.trace, event.finish.is_some()) {
            // The engine is done with a request when every choice has finished: its
            // service is the time from admission to now.
            let done = self.finished.entry(ctx.key).or_default();
            *done += 1;
            if *done >= event.choices {
                self.finished.remove(&ctx.key);
                if let Some(admitted) = ctx.timeline.milestones().admitted {
                    trace.add_service(self.stage, ctx.timeline.since_arrival(Instant::now()).saturating_sub(admitted));
                }
            }
        }
        let _ = self.out.send(Item { ctx: ctx.clone(), payload: Payload::Tokens(event) });
    }
}

impl EngineStage {
    fn admit(engine: &mut Engine, item: Item) {
        match item.payload {
            Payload::Job(job) => {
                if !item.ctx.is_cancelled() {
                    engine.admit(item.ctx, &job);
                }
            }
            _ => unreachable!("the engine takes tokenized jobs"),
        }
    }
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
        let mut emit = ToOutlet { out: &out, stage: inlet.stage(), finished: HashMap::new() };
        let mut closed = false;
        loop {
            if engine.is_idle() {
                if closed {
                    return;
                }
                match inlet.recv() {
                    Some(item) => Self::admit(&mut engine, item),
                    None => return,
                }
            }
            // Take everything that arrived while the last step ran.
            while !closed {
                match inlet.try_recv() {
                    Ok(item) => Self::admit(&mut engine, item),
                    Err(is_closed) => {
                        closed = is_closed;
                        break;
                    }
                }
            }
            engine.reap_cancelled(&mut emit);
            let start = Instant::now();
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.step(&mut emit)));
            let times = match step {
                Ok(t) => t,
                Err(panic) => {
                    let what = super::panic_message(&*panic);
                    tracing::error!("an engine step failed: {what}; failing the requests it held");
                    engine.fail_all(&mut emit, "The engine failed while running this request; see the server log.");
                    continue;
                }
            };
            if times.tokens > 0 {
                inlet.metrics().record_service(start.elapsed());
                let steps = &stats.steps;
                steps.schedule.record(times.schedule);
                steps.forward.record(times.forward);
                steps.sample.record(times.sample);
            } else if !engine.is_idle() {
                // Nothing could be scheduled (waiting for blocks): wait for news briefly.
                if let Ok(item) = inlet.recv_timeout(Duration::from_millis(5)) {
                    Self::admit(&mut engine, item);
                }
            }
        }
    }
}
