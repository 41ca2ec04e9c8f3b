//! render: chat messages → prompt text, with the model's chat template (or the one given
//! by `--chat-template`). Other prompts pass through.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::protocol::ChatMessage;
use crate::api::request::{ChatPrompt, Prompt};
use crate::stages::item::{Item, Payload};
use crate::pipeline::{Outlet, Stage};
use crate::api::context::ServingContext;

pub struct Render {
    pub serving: Arc<ServingContext>,
}

impl Stage<Item> for Render {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Job(mut job) = item.payload else { unreachable!("render takes jobs") };
        if let Prompt::Chat(chat) = &job.prompt {
            match render_chat(&self.serving, chat) {
                Ok(text) => {
                    // With a reasoning parser: a prompt that already closed the reasoning
                    // (thinking turned off) leaves only content, constrained from the start.
                    if let Some(parser) = item.ctx.meta().answer.reasoning {
                        if parser.answer_is_content(&text, &chat.template_kwargs) {
                            item.ctx.set_answer_is_content();
                            job.guide_after.clear();
                        }
                    }
                    job.prompt = Prompt::Texts { texts: vec![text], add_special_tokens: chat.add_special_tokens };
                }
                Err(e) => {
                    item.ctx.fail(e);
                    return;
                }
            }
        }
        let _ = out.send(Item { ctx: item.ctx, payload: Payload::Job(job) });
    }
}

/// The prompt text of a chat: its own template or the server's, with the messages, the
/// special tokens, documents and the request's template kwargs.
pub fn render_chat(serving: &ServingContext, chat: &ChatPrompt) -> Result<String, ApiError> {
    let Some(template) = chat.template.as_deref().or(serving.chat_template.as_ref()) else {
        return Err(ApiError::bad_request(
            "This model has no chat template, so it cannot serve chat completions. Start the server with \
             `--chat-template` (a file or an inline Jinja template), or use /v1/completions.",
        ));
    };
    let tok = &serving.tokenizer;
    let mut context = json!({
        "messages": chat.messages,
        "add_generation_prompt": chat.add_generation_prompt,
        "continue_final_message": chat.continue_final_message,
        "bos_token": tok.special.bos.as_ref().map(|b| b.1.as_str()).unwrap_or(""),
        "eos_token": tok.special.eos.as_ref().map(|e| e.1.as_str()).unwrap_or(""),
    });
    if let Some(docs) = &chat.documents {
        context["documents"] = json!(docs);
    }
    if let Some(tools) = &chat.tools {
        context["tools"] = json!(tools);
    }
    // As in vLLM, the request's kwargs win over the defaults above.
    context.as_object_mut().expect("an object").extend(chat.template_kwargs.clone());
    template
        .render(&context)
        .and_then(|text| if chat.continue_final_message { cut_after_final_message(text, &chat.messages) } else { Ok(text) })
        .map_err(|msg| ApiError::invalid("messages", format!("The chat template could not render these messages: {msg}")))
}

/// `continue_final_message`, as transformers does it: the prompt ends right after the
/// last message's text (the template's end-of-turn after it is cut off), so that the
/// model continues that message. Templates that strip messages are matched stripped.
fn cut_after_final_message(text: String, messages: &[ChatMessage]) -> Result<String, String> {
    let last = messages.last().and_then(|m| match m.0.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => parts.last().and_then(|p| p.get("text")).and_then(Value::as_str).map(str::to_string),
        _ => None,
    });
    let Some(last) = last.filter(|s| !s.trim().is_empty()) else {
        return Err("continue_final_message needs a last message with text to continue".into());
    };
    for needle in [last.as_str(), last.trim()] {
        if let Some(at) = text.rfind(needle) {
            return Ok(text[..at + needle.len()].to_string());
        }
    }
    Err("the rendered prompt does not contain the last message's text, so it cannot be continued".into())
}
