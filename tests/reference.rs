//! Greedy float32 output over HTTP equals Hugging Face transformers', token for token, for
//! every prompt in tests/fixtures/reference (made with shared/oracle; regenerate.sh there):
//! SmolLM2 from its GGUF, and tiny random-weight Llama, Qwen2 and Mistral folders
//! (safetensors, tokenizer.json, chat_template.jinja; Qwen2 has Q/K/V biases, Mistral an
//! untied lm_head).

mod common;

use common::greedy::check_model_item;
use common::{MODEL, Server, fixture};
use serde_json::{Value, json};

const ARGS: &[&str] = &["--dtype", "float32"];

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("reference/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference() -> Value {
    load("smollm2_f32_greedy.json")
}

fn prompts() -> Vec<Value> {
    serde_json::from_value(load("smollm2_prompts.json")).unwrap()
}

fn check_item(server: &Server, prompt: &Value, item: &Value, stream: bool) {
    check_model_item(server, MODEL, prompt, item, stream, true, 2e-4);
}

#[test]
fn greedy_matches_transformers() {
    let server = Server::shared(ARGS);
    let reference = reference();
    let items = reference["items"].as_array().unwrap();
    let prompts = prompts();
    assert!(items.len() >= 8);
    for (prompt, item) in prompts.iter().zip(items) {
        assert_eq!(prompt["id"], item["id"]);
        check_item(server, prompt, item, false);
    }
}

#[test]
fn greedy_matches_transformers_when_streamed() {
    let server = Server::shared(ARGS);
    let reference = reference();
    for (prompt, item) in prompts().iter().zip(reference["items"].as_array().unwrap()) {
        check_item(server, prompt, item, true);
    }
}

/// The same prompts sent at once: batched steps must not change any greedy result.
#[test]
fn greedy_matches_transformers_concurrently() {
    let server = Server::shared(ARGS);
    let reference = reference();
    let prompts = prompts();
    std::thread::scope(|s| {
        for (prompt, item) in prompts.iter().zip(reference["items"].as_array().unwrap()) {
            s.spawn(move || check_item(server, prompt, item, false));
        }
    });
}

/// A KV cache too small for all prompts at once (sequences are preempted and recomputed)
/// and prompts read 64 tokens per step: neither may change a greedy result.
#[test]
fn greedy_matches_transformers_under_preemption_and_chunked_prefill() {
    const TIGHT: &[&str] =
        &["--dtype", "float32", "--max-model-len", "700", "--kv-cache-memory", "34MB", "--max-num-batched-tokens", "64"];
    let server = Server::shared(TIGHT);
    let reference = reference();
    let prompts = prompts();
    std::thread::scope(|s| {
        for (prompt, item) in prompts.iter().zip(reference["items"].as_array().unwrap()) {
            s.spawn(move || check_item(server, prompt, item, false));
        }
    });
    assert!(server.metric("vllm:num_preemptions_total") > 0.0, "the cache was big enough: nothing was preempted");
}

/// Tiny random-weight models in Hugging Face folders, one per architecture variant.
fn check_tiny(args: &'static [&'static str], reference: &str) {
    let server = Server::shared(args);
    let reference = load(reference);
    let prompts: Vec<Value> = serde_json::from_value(load("tiny_prompts.json")).unwrap();
    for (prompt, item) in prompts.iter().zip(reference["items"].as_array().unwrap()) {
        assert_eq!(prompt["id"], item["id"]);
        // Text from random weights can hold lone bytes: ids and logprobs are what count.
        check_model_item(server, "tiny", prompt, item, false, false, 2e-4);
    }
}

#[test]
fn tiny_llama_folder_matches_transformers() {
    const A: &[&str] = &[concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llama"), "--dtype", "float32", "--served-model-name", "tiny"];
    check_tiny(A, "tiny_llama_f32_greedy.json");
}

#[test]
fn tiny_qwen2_folder_matches_transformers() {
    const A: &[&str] = &[concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen2"), "--dtype", "float32", "--served-model-name", "tiny"];
    check_tiny(A, "tiny_qwen2_f32_greedy.json");
}

#[test]
fn tiny_mistral_folder_matches_transformers() {
    const A: &[&str] = &[concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-mistral"), "--dtype", "float32", "--served-model-name", "tiny"];
    check_tiny(A, "tiny_mistral_f32_greedy.json");
}

/// `prompt_logprobs` against transformers: every prompt token's logprob and rank, and the
/// most likely alternatives, plain and chat; asked twice, since the prefix cache must not
/// skip positions that are to be scored.
#[test]
fn prompt_logprobs_match_transformers() {
    let server = Server::shared(ARGS);
    let reference = load("smollm2_f32_prompt_logprobs.json");
    let prompts: Vec<Value> = serde_json::from_value(load("smollm2_prompt_logprobs_prompts.json")).unwrap();
    for (prompt, item) in prompts.iter().zip(reference["items"].as_array().unwrap()) {
        let name = item["id"].as_str().unwrap();
        let chat = prompt.get("messages").is_some();
        let mut body = json!({"model": MODEL, "temperature": 0, "max_tokens": 1, "prompt_logprobs": 5});
        let path = if chat {
            body["messages"] = prompt["messages"].clone();
            "/v1/chat/completions"
        } else {
            body["prompt"] = prompt["prompt"].clone();
            "/v1/completions"
        };
        for attempt in 0..2 {
            let (status, r) = server.post(path, &body);
            assert_eq!(status, 200, "{name}: {r}");
            let got = if chat { &r["prompt_logprobs"] } else { &r["choices"][0]["prompt_logprobs"] };
            let got = got.as_array().unwrap_or_else(|| panic!("{name}: no prompt_logprobs in {r}"));
            let ids = item["prompt_token_ids"].as_array().unwrap();
            let want = item["prompt_logprobs"].as_array().unwrap();
            assert_eq!(got.len(), ids.len(), "{name} ({attempt}): one entry per prompt token");
            assert!(got[0].is_null() && want[0].is_null());
            for i in 1..ids.len() {
                let (w, g) = (&want[i], &got[i]);
                let entry = &g[ids[i].to_string()];
                let (lp, wlp) = (entry["logprob"].as_f64().unwrap(), w["logprob"].as_f64().unwrap());
                assert!((lp - wlp).abs() < 2e-4, "{name} ({attempt}) token {i}: {lp} vs {wlp}");
                let (rank, wrank) = (entry["rank"].as_u64().unwrap(), w["rank"].as_u64().unwrap());
                let slack = if wrank <= 5 { 0 } else { wrank / 100 + 1 };
                assert!(rank.abs_diff(wrank) <= slack, "{name} ({attempt}) token {i}: rank {rank} vs {wrank}");
                // The four most likely alternatives (the fifth may swap with a near-tie).
                for alt in w["top_logprobs"].as_array().unwrap().iter().take(4) {
                    let e = &g[alt["token_id"].to_string()];
                    let (a, wa) = (e["logprob"].as_f64(), alt["logprob"].as_f64().unwrap());
                    assert!(a.is_some_and(|a| (a - wa).abs() < 2e-4), "{name} ({attempt}) token {i}: {alt} vs {g}");
                }
            }
        }
    }
}
