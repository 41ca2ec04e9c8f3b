//! Chat templates rendering arbitrary messages: the input is any JSON, handed to the
//! template as `messages` (and `tools`, `documents`), unvalidated, so a template may meet
//! shapes validation would refuse. Real templates: the default model's (ChatML) and those
//! of the Llama 3, Qwen2, Gemma 3 and Mixtral fixtures (tool calls, role checks,
//! `raise_exception`). The first byte picks the template and the flags.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use sluice::model::chat_template::ChatTemplate;

const FIXTURES: [&str; 4] = [
    include_str!("../../tests/fixtures/tiny-llama3/chat_template.jinja"),
    include_str!("../../tests/fixtures/tiny-qwen2/chat_template.jinja"),
    include_str!("../../tests/fixtures/tiny-gemma3/chat_template.jinja"),
    include_str!("../../tests/fixtures/tiny-mixtral/chat_template.jinja"),
];

fn templates() -> &'static [ChatTemplate] {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        std::iter::once(common::default_template())
            .chain(FIXTURES)
            .map(|s| ChatTemplate::new(s).expect("the template compiles"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return };
    let templates = templates();
    let template = &templates[pick as usize % templates.len()];
    let (messages, tools, documents) = match v {
        Value::Object(mut o) => (
            o.remove("messages").unwrap_or(Value::Object(o.clone())),
            o.remove("tools").unwrap_or(Value::Null),
            o.remove("documents").unwrap_or(Value::Null),
        ),
        other => (other, Value::Null, Value::Null),
    };
    let context = json!({
        "messages": messages,
        "tools": tools,
        "documents": documents,
        "add_generation_prompt": pick & 0x40 != 0,
        "continue_final_message": pick & 0x80 != 0,
        "bos_token": "<s>",
        "eos_token": "</s>",
    });
    let _ = template.render(&context);
});
