//! Completions, chat completions and Responses API bodies: validation, then what the
//! stages after it do with untrusted parts of a valid request (the chat template renders
//! the messages, the structured-output constraint compiles). The first byte picks the
//! endpoint; the rest is the body. Any outcome but a panic is fine: a bad body must be a
//! 400, never a crash.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::api::endpoint::Endpoint;
use sluice::api::request::Prompt;
use sluice::api::validate::generation_request;
use sluice::guided::Guides;
use sluice::stages::render::render_chat;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let endpoint = [Endpoint::Completions, Endpoint::ChatCompletions, Endpoint::Responses][pick as usize % 3];
    let serving = common::chat_serving();
    let Ok((job, _meta)) = generation_request(endpoint, body, serving) else { return };
    if let Prompt::Chat(chat) = &job.prompt {
        let _ = render_chat(serving, chat);
    }
    if let Some(c) = &job.constraint {
        static GUIDES: OnceLock<Guides> = OnceLock::new();
        let guides = GUIDES.get_or_init(|| Guides::new(serving.tokenizer.clone(), vec![2]));
        let _ = guides.compile(&c.constraint);
    }
});
