//! guide: compiles a request's structured-output constraint into a guide before the
//! request reaches the engine, so the engine loop never waits for a compiler (a request
//! is scheduled only once its guide is ready). Compiled guides are shared through a cache
//! keyed by the constraint. A constraint that does not compile is a 400 here, before
//! anything is scheduled.

use std::sync::Arc;

use crate::api::error::ApiError;
use crate::guided::{CompileError, Guides};
use crate::stages::item::{Item, Payload};
use crate::pipeline::{Outlet, Stage};

pub struct GuideStage {
    pub guides: Arc<Guides>,
}

impl Stage<Item> for GuideStage {
    fn process(&self, mut item: Item, out: &Outlet<Item>) {
        if let Payload::Job(job) = &mut item.payload {
            if let Some(req) = job.constraint.clone() {
                if item.ctx.is_cancelled() {
                    return;
                }
                match self.guides.compile(&req.constraint) {
                    Ok(guide) => job.guide = Some(guide),
                    Err(CompileError::Invalid(msg)) => {
                        let what = req.constraint.describe();
                        item.ctx.fail(ApiError::invalid(
                            req.field.clone(),
                            format!("The {what} in `{}` is invalid: {msg}", req.field),
                        ));
                        return;
                    }
                    Err(e @ CompileError::Unavailable(_)) => {
                        item.ctx.fail(ApiError::invalid(req.field.clone(), e.to_string()));
                        return;
                    }
                }
            }
        }
        let _ = out.send(item);
    }
}
