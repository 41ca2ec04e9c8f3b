//! audio_decode: a transcription or translation request → a validated `AudioJob`, through
//! `crate::api::validate::audio`. Over HTTP the request is the form the edge read; in a
//! batch file, a JSON body whose audio is a `data:` URL. A bad field is answered here with
//! a 400 naming it, and nothing invalid travels further.

use std::sync::Arc;

use crate::api::context::ServingContext;
use crate::api::validate::audio::{audio_request, form_of_json};
use crate::pipeline::{Outlet, Stage};
use crate::stages::item::{Item, Payload};

pub struct AudioDecode {
    pub serving: Arc<ServingContext>,
}

impl Stage<Item> for AudioDecode {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let form = match item.payload {
            Payload::Form(form) => Ok(*form),
            Payload::Body(body) => form_of_json(&body),
            _ => unreachable!("audio_decode takes forms and request bodies"),
        };
        match form.and_then(|f| audio_request(item.ctx.endpoint, f, &self.serving)) {
            Ok((job, audio, meta)) => {
                if let Some(max_len) = self.serving.log_requests {
                    let prompt: String = job.prompt.chars().take(max_len).collect();
                    tracing::info!(
                        "Received request {}: {} bytes of audio ({:?}), prompt: {prompt:?}, language: {:?}, format: {:?}, params: {:?}",
                        item.ctx.id,
                        job.upload.bytes.len(),
                        job.upload.filename,
                        audio.language,
                        audio.format,
                        job.sampling
                    );
                }
                item.ctx.set_meta(meta);
                item.ctx.set_audio(audio);
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Audio(Box::new(job)) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}
