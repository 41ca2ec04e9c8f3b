//! render: chat messages → prompt text, with the model's chat template (or the one given
//! by `--chat-template`). Other prompts pass through.

use std::sync::Arc;

use serde_json::json;

use crate::api::error::ApiError;
use crate::job::{Item, Payload, Prompt};
use crate::pipeline::{Outlet, Stage};
use crate::serving::ServingContext;

pub struct Render {
    pub serving: Arc<ServingContext>,
}

impl Stage<Item> for Render {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Job(mut job) = item.payload else { unreachable!("render takes jobs") };
        if let Prompt::Chat(chat) = &job.prompt {
            let Some(template) = &self.serving.chat_template else {
                item.ctx.fail(ApiError::bad_request(
                    "This model has no chat template, so it cannot serve chat completions. Start the server with \
                     `--chat-template` (a file or an inline Jinja template), or use /v1/completions.",
                ));
                return;
            };
            let tok = &self.serving.tokenizer;
            let context = json!({
                "messages": chat.messages,
                "add_generation_prompt": chat.add_generation_prompt,
                "bos_token": tok.special.bos.as_ref().map(|b| b.1.as_str()).unwrap_or(""),
                "eos_token": tok.special.eos.as_ref().map(|e| e.1.as_str()).unwrap_or(""),
            });
            match template.render(&context) {
                Ok(text) => {
                    job.prompt = Prompt::Texts { texts: vec![text], add_special_tokens: chat.add_special_tokens };
                }
                Err(msg) => {
                    item.ctx.fail(ApiError::invalid("messages", format!("The chat template could not render these messages: {msg}")));
                    return;
                }
            }
        }
        let _ = out.send(Item { ctx: item.ctx, payload: Payload::Job(job) });
    }
}
