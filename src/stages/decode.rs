//! decode: a request body → a validated `Job`, through `crate::api::validate`; a bad
//! body is answered here with the validator's 400, and nothing invalid travels further.

use std::sync::Arc;

use crate::api::context::ServingContext;
use crate::api::request::{Job, Prompt};
use crate::api::validate::generation_request;
use crate::pipeline::{Outlet, Stage};
use crate::stages::item::{Item, Payload};

pub struct Decode {
    pub serving: Arc<ServingContext>,
}

impl Stage<Item> for Decode {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Body(body) = item.payload else {
            unreachable!("decode takes request bodies")
        };
        match generation_request(item.ctx.endpoint, &body, &self.serving) {
            Ok((job, meta)) => {
                if let Some(max_len) = self.serving.log_requests {
                    log_request(&item.ctx.id, &job, max_len);
                }
                item.ctx.set_meta(meta);
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Job(Box::new(job)) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}

/// `--enable-log-requests`: one line per request, its prompt cut to `max_len` characters.
fn log_request(id: &str, job: &Job, max_len: usize) {
    let prompt = match &job.prompt {
        Prompt::Texts { texts, .. } => format!("{texts:?}"),
        Prompt::Tokens(ids) => format!("{ids:?}"),
        Prompt::Chat(chat) => serde_json::to_string(&chat.messages).unwrap_or_default(),
    };
    let shown: String = prompt.chars().take(max_len).collect();
    let cut = if shown.len() < prompt.len() { "…" } else { "" };
    tracing::info!("Received request {id}: prompt: {shown}{cut}, n: {}, params: {:?}", job.n, job.sampling);
}
