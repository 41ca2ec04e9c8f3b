//! The Gemma 2, Gemma 3 and Qwen3 chat templates, rendered by sluice's minijinja setup,
//! must give byte for byte the prompt transformers' `apply_chat_template` gives for the
//! same conversation (system prompts folded into the first turn, content parts, tools,
//! assistant tool calls, tool results, reasoning and `enable_thinking`). The reference
//! is made by tests/fixtures/chat_templates/make_reference.py.

use serde_json::{Value, json};
use sluice::model::chat_template::ChatTemplate;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/chat_templates");

#[test]
fn templates_render_as_transformers_renders_them() {
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/reference.json")).unwrap()).unwrap();
    assert!(cases.len() >= 10, "the reference holds every case");
    let mut seen = std::collections::BTreeSet::new();
    for case in &cases {
        let name = case["template"].as_str().unwrap();
        seen.insert(name.to_string());
        let source = std::fs::read_to_string(format!("{DIR}/{name}.jinja")).unwrap();
        let template = ChatTemplate::new(&source).unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        // The context the render stage builds: messages, the generation prompt flag, the
        // special tokens, tools, then the request's template kwargs.
        let mut context = json!({
            "messages": case["messages"],
            "add_generation_prompt": case["add_generation_prompt"],
            "bos_token": case["bos_token"],
            "eos_token": "",
        });
        if let Some(tools) = case.get("tools") {
            context["tools"] = tools.clone();
        }
        if let Some(thinking) = case.get("enable_thinking") {
            context["enable_thinking"] = thinking.clone();
        }
        let text = template.render(&context).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}: {}", case["messages"]);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["gemma2", "gemma3", "qwen3"]);
}

#[test]
fn gemma_refuses_a_system_turn_and_unordered_roles_as_transformers_does() {
    let gemma2 = ChatTemplate::new(&std::fs::read_to_string(format!("{DIR}/gemma2.jinja")).unwrap()).unwrap();
    let e = gemma2.render(&json!({"messages": [{"role": "system", "content": "x"}], "bos_token": "<bos>"})).unwrap_err();
    assert_eq!(e, "System role not supported");
    let gemma3 = ChatTemplate::new(&std::fs::read_to_string(format!("{DIR}/gemma3.jinja")).unwrap()).unwrap();
    let e = gemma3
        .render(&json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "bos_token": "<bos>"}))
        .unwrap_err();
    assert_eq!(e, "Conversation roles must alternate user/assistant/user/assistant/...");
}

#[test]
fn content_format_is_read_as_vllm_reads_it() {
    // Gemma 3 walks content parts; Qwen3 only tests its text (`'</think>' in message.content`).
    let read = |name: &str| ChatTemplate::new(&std::fs::read_to_string(format!("{DIR}/{name}.jinja")).unwrap()).unwrap();
    assert!(read("gemma3").iterates_content_parts());
    assert!(!read("qwen3").iterates_content_parts());
    assert!(!read("gemma2").iterates_content_parts());
}
