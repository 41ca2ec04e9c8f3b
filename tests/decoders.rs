//! The decoder families beyond Llama, each as a tiny random-weight model saved by
//! transformers (tests/fixtures/tiny-*, made by make_tiny_decoders.py): greedy float32
//! output over HTTP equals transformers' token for token with logprobs and top-5 within
//! 1e-4, one request at a time and all at once (batched steps, prefix-cache hits on the
//! repeats), for Qwen3 (q/k norms, YaRN), Qwen3-MoE (4 experts, top-2, a dense layer),
//! Mixtral, Gemma 2 (windows of 8 beside global layers, soft-capping), Gemma 3 (windows,
//! local and global ropes, q/k norms), Phi-3 (fused projections, LongRoPE past 64 tokens,
//! partial rotary, a window) and Llama with Llama 3.1's rope scaling.

mod common;

use common::greedy::check_model_item;
use common::{Server, fixture, start_fails};
use serde_json::{Value, json};

const TOL: f64 = 1e-4;

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("reference/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every reference prompt alone, then all at once.
fn check(args: &'static [&'static str], reference: &str) {
    let server = Server::shared(args);
    let reference = load(reference);
    let prompts: Vec<Value> = serde_json::from_value(load("tiny_prompts.json")).unwrap();
    let items = reference["items"].as_array().unwrap();
    assert_eq!(prompts.len(), items.len());
    for (prompt, item) in prompts.iter().zip(items) {
        assert_eq!(prompt["id"], item["id"]);
        // Text from random weights can hold lone bytes: ids and logprobs are what count.
        check_model_item(server, "tiny", prompt, item, false, false, TOL);
    }
    std::thread::scope(|s| {
        for (prompt, item) in prompts.iter().zip(items) {
            s.spawn(move || check_model_item(server, "tiny", prompt, item, false, false, TOL));
        }
    });
}

macro_rules! tiny {
    ($test:ident, $dir:literal, $reference:literal $(, $extra:literal)*) => {
        #[test]
        fn $test() {
            const A: &[&str] = &[
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $dir),
                "--dtype", "float32", "--served-model-name", "tiny" $(, $extra)*
            ];
            check(A, $reference);
        }
    };
}

tiny!(qwen3_matches_transformers, "tiny-qwen3", "tiny_qwen3_f32_greedy.json");
tiny!(qwen3_moe_matches_transformers, "tiny-qwen3-moe", "tiny_qwen3_moe_f32_greedy.json");
tiny!(mixtral_matches_transformers, "tiny-mixtral", "tiny_mixtral_f32_greedy.json");
tiny!(gemma2_matches_transformers, "tiny-gemma2", "tiny_gemma2_f32_greedy.json");
tiny!(gemma3_matches_transformers, "tiny-gemma3", "tiny_gemma3_f32_greedy.json");
tiny!(phi3_matches_transformers, "tiny-phi3", "tiny_phi3_f32_greedy.json");
tiny!(llama3_rope_matches_transformers, "tiny-llama3", "tiny_llama3_f32_greedy.json");
// Prompts read 5 tokens per step: chunks whose sliding windows start inside earlier chunks.
tiny!(
    gemma2_matches_transformers_in_small_prefill_chunks,
    "tiny-gemma2",
    "tiny_gemma2_f32_greedy.json",
    "--max-num-batched-tokens",
    "5"
);

/// An architecture not in the registry stops start-up with one message naming it and
/// listing those that are.
#[test]
fn unknown_architecture_names_the_supported_ones() {
    let dir = std::env::temp_dir().join(format!("sluice-unknown-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("tiny-qwen3/{f}")), dir.join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(fixture("tiny-qwen3/config.json")).unwrap()).unwrap();
    cfg["architectures"] = json!(["FalconForCausalLM"]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = start_fails(&[dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("architecture FalconForCausalLM is not supported ("), "{err}");
    for name in ["LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "MixtralForCausalLM", "Gemma2ForCausalLM",
                 "Gemma3ForCausalLM", "Phi3ForCausalLM", "BertModel"] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
}

/// A rope type this engine cannot follow stops start-up and says which it can.
#[test]
fn unknown_rope_type_stops_start_up() {
    let overrides = r#"{"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}"#;
    let err = start_fails(&[&fixture("tiny-llama3"), "--hf-overrides", overrides]);
    assert!(err.contains("rope type \"dynamic\" is not supported"), "{err}");
    assert!(err.contains("default, linear, llama3, yarn, longrope are"), "{err}");
}

// A prompt longer than Phi-3's original context takes LongRoPE's long set in every chunk;
// prefix-cache blocks of short and long prompts are never shared (the test sends both).
tiny!(
    phi3_matches_transformers_in_small_prefill_chunks,
    "tiny-phi3",
    "tiny_phi3_f32_greedy.json",
    "--max-num-batched-tokens",
    "16"
);

// The same models as GGUF files written the way llama.cpp's converter writes these
// families (make_tiny_gguf.py: its names and metadata, permuted Q/K for `llama`, Gemma's
// 1 + w norms, fused Phi-3 tensors, stacked experts, rope factor tensors), float32: the
// same output as the folders.
tiny!(qwen3_gguf_matches_transformers, "tiny-gguf/qwen3.gguf", "tiny_qwen3_f32_greedy.json");
tiny!(qwen3_moe_gguf_matches_transformers, "tiny-gguf/qwen3-moe.gguf", "tiny_qwen3_moe_f32_greedy.json");
tiny!(gemma2_gguf_matches_transformers, "tiny-gguf/gemma2.gguf", "tiny_gemma2_f32_greedy.json");
tiny!(gemma3_gguf_matches_transformers, "tiny-gguf/gemma3.gguf", "tiny_gemma3_f32_greedy.json");
tiny!(phi3_gguf_matches_transformers, "tiny-gguf/phi3.gguf", "tiny_phi3_f32_greedy.json");
tiny!(llama3_rope_gguf_matches_transformers, "tiny-gguf/llama3.gguf", "tiny_llama3_f32_greedy.json");

/// vLLM's recipe for the original Qwen3-Reranker: the causal LM named
/// `Qwen3ForSequenceClassification` with `is_original_qwen3_reranker` scores a pair as the
/// sigmoid of the difference of two tokens' logits on the joined texts (here " no" and
/// " good", the tiny vocabulary's stand-ins for "no" and "yes"), against transformers'
/// last-token logits (reward_and_from_token.py).
#[test]
fn original_qwen3_reranker_recipe_scores_like_the_lm_head() {
    const A: &[&str] = &[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen3"),
        "--dtype",
        "float32",
        "--hf-overrides",
        r#"{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["Ġno", "Ġgood"], "is_original_qwen3_reranker": true}"#,
    ];
    let server = Server::shared(A);
    let refs = common::reference_items("tiny_qwen3_reranker.json");
    let pairs: Vec<&Value> = refs.iter().filter(|r| !r["text_pair"].is_null()).collect();
    for p in &pairs {
        let (status, v) = server.post("/score", &json!({"text_1": p["text"], "text_2": p["text_pair"]}));
        assert_eq!(status, 200, "{v}");
        let got = v["data"][0]["score"].as_f64().unwrap();
        let want = p["probs"][0].as_f64().unwrap();
        assert!((got - want).abs() < TOL, "{}: {got} vs {want}", p["id"]);
    }
}
