//! Greedy float32 output over HTTP equals Hugging Face transformers', token for token, for
//! every prompt in tests/fixtures/reference (made with shared/oracle; regenerate.sh there):
//! SmolLM2 from its GGUF, and tiny random-weight Llama, Qwen2 and Mistral folders
//! (safetensors, tokenizer.json, chat_template.jinja; Qwen2 has Q/K/V biases, Mistral an
//! untied lm_head). The default dtype (bfloat16) is held to transformers in bfloat16, up to
//! its near-ties.

mod common;

use common::greedy::{check_model_item, check_tokens, generate, paired, parse_logprobs, reference_ids, reference_top};
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
    let prompts = prompts();
    let pairs = paired(&prompts, &reference);
    assert!(pairs.len() >= 8);
    for (prompt, item) in pairs {
        check_item(server, prompt, item, false);
    }
}

#[test]
fn greedy_matches_transformers_when_streamed() {
    let server = Server::shared(ARGS);
    let reference = reference();
    let prompts = prompts();
    for (prompt, item) in paired(&prompts, &reference) {
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
        for (prompt, item) in paired(&prompts, &reference) {
            s.spawn(move || check_item(server, prompt, item, false));
        }
    });
}

/// A KV cache too small for all prompts at once (sequences are preempted and recomputed)
/// and prompts read 64 tokens per step: neither may change a greedy result. The ten prompts
/// go as token ids in one completions request, so the engine takes them in together and
/// the same schedule (and its preemptions) follows however fast the machine is.
#[test]
fn greedy_matches_transformers_under_preemption_and_chunked_prefill() {
    const TIGHT: &[&str] =
        &["--dtype", "float32", "--max-model-len", "700", "--kv-cache-memory", "34MB", "--max-num-batched-tokens", "64"];
    let server = Server::shared(TIGHT);
    let reference = reference();
    let prompts = prompts();
    let pairs = paired(&prompts, &reference);
    let ids: Vec<Value> = pairs
        .iter()
        .map(|(prompt, item)| {
            let mut body = prompt.as_object().unwrap().clone();
            body.remove("id");
            body.remove("prompt_logprobs");
            body.insert("model".into(), json!(MODEL));
            let (status, t) = server.post("/tokenize", &Value::Object(body));
            assert_eq!(status, 200, "{t}");
            assert_eq!(t["count"], item["num_prompt_tokens"], "{}: prompt tokens", item["id"]);
            t["tokens"].clone()
        })
        .collect();
    let total: usize = pairs.iter().map(|(_, item)| item["num_prompt_tokens"].as_u64().unwrap() as usize).sum();
    let longest = pairs.iter().map(|(_, item)| item["output_token_ids"].as_array().unwrap().len()).max().unwrap();
    assert!(total + longest * pairs.len() > 1000, "the prompts fill more than the cache holds");
    let body = json!({
        "model": MODEL, "prompt": ids, "max_tokens": longest, "temperature": 0,
        "logprobs": 5, "return_tokens_as_token_ids": true,
    });
    let (status, resp) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{resp}");
    let choices = resp["choices"].as_array().unwrap();
    assert_eq!(choices.len(), pairs.len());
    for (c, (_, item)) in choices.iter().zip(&pairs) {
        let name = item["id"].as_str().unwrap();
        if item["finish_reason"] == "stop" {
            assert_eq!(c["finish_reason"], "stop", "{name}: finish reason");
        }
        check_tokens(name, &parse_logprobs(c, false), item, 2e-4);
    }
    assert!(server.metric("vllm:num_preemptions_total") > 0.0, "the cache was big enough: nothing was preempted");
}

/// Tiny random-weight models in Hugging Face folders, one per architecture variant.
fn check_tiny(args: &'static [&'static str], reference: &str) {
    let server = Server::shared(args);
    let reference = load(reference);
    let prompts: Vec<Value> = serde_json::from_value(load("tiny_prompts.json")).unwrap();
    for (prompt, item) in paired(&prompts, &reference) {
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
    for (prompt, item) in paired(&prompts, &reference) {
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
                let alts = w["top_logprobs"].as_array().unwrap();
                assert_eq!(alts.len(), 5, "{name}: the reference's top 5 at {i}");
                // vLLM's shape: the top 5, and the prompt's own token when it is not among them.
                let entries = g.as_object().map_or(0, |o| o.len());
                assert_eq!(entries, if rank <= 5 { 5 } else { 6 }, "{name} ({attempt}) token {i}: {g}");
                for alt in alts.iter().take(4) {
                    let e = &g[alt["token_id"].to_string()];
                    let (a, wa) = (e["logprob"].as_f64(), alt["logprob"].as_f64().unwrap());
                    assert!(a.is_some_and(|a| (a - wa).abs() < 2e-4), "{name} ({attempt}) token {i}: {alt} vs {g}");
                }
            }
        }
    }
}

/// `--dtype auto` serves bfloat16 on the CPU; transformers in bfloat16 is its reference
/// (smollm2_bf16_greedy.json). bf16 logits are coarse — at these magnitudes a step is 1/16
/// to 1/8 of a nat, so the top two often tie or nearly tie, and transformers' own cached
/// and uncached passes differ by up to 0.64 in a logprob — so a prompt's tokens must equal
/// the reference's to the end, or up to a step where the reference's top two were within
/// `near_tie` (there, another rounding may take the other one); up to that step every
/// logprob within `logprob`, and their mean within `mean`.
struct Bf16Bounds {
    near_tie: f64,
    logprob: f64,
    mean: f64,
    /// At least this share of the reference's tokens compared before a near-tie, and this
    /// many prompts equal to the end: a run cut short at every prompt proves little.
    compared: f64,
    whole: usize,
}

/// The file dequantized (`--quantization none`): bfloat16's rounding alone. Seen: logprobs
/// 0.21 off at most, 0.02 to 0.05 on average per prompt.
/// Seen: 232 of 318 tokens compared, 6 of 10 prompts whole.
const DEQUANTIZED: Bf16Bounds = Bf16Bounds { near_tie: 0.25, logprob: 0.3, mean: 0.08, compared: 0.5, whole: 3 };

#[test]
fn the_dequantized_file_in_bfloat16_matches_transformers() {
    bf16_against_transformers(Server::shared(&["--quantization", "none"]), DEQUANTIZED);
}

/// The default: the GGUF's blocks kept quantized, whose int8 activations (prompts included)
/// move logprobs by up to ~0.7 on their own (tests/quantized.rs), so a greedy token may
/// change at a wider margin, and the prompts leave the reference at a near-tie sooner.
/// Seen (AVX2): logprobs 0.25 off at most, 0.066 on average per prompt at most, 116 of 308
/// tokens compared, 2 prompts whole (with the prompts on float tiles: 200 and 4).
const ON_BLOCKS: Bf16Bounds = Bf16Bounds { near_tie: 0.64, logprob: 0.6, mean: 0.12, compared: 0.33, whole: 2 };

#[test]
fn the_default_quantized_blocks_match_transformers_in_bfloat16() {
    let server = Server::shared(&[]);
    assert!(server.wait_log("GGUF blocks kept quantized", std::time::Duration::from_secs(1)), "the default model runs on its blocks");
    bf16_against_transformers(server, ON_BLOCKS);
}

fn bf16_against_transformers(server: &Server, bounds: Bf16Bounds) {
    let Bf16Bounds { near_tie, logprob, mean: mean_bound, compared: compared_share, whole: whole_floor } = bounds;
    let reference = load("smollm2_bf16_greedy.json");
    assert_eq!(reference["meta"]["dtype"], "bfloat16");
    let float32 = self::reference();
    let prompts = prompts();
    let f32_items = float32["items"].as_array().unwrap();
    let (mut compared, mut whole, mut off_f32, mut vs_f32, mut worst, mut worst_mean) = (0, 0, 0.0, 0, 0f64, 0f64);
    for ((prompt, item), f32_item) in paired(&prompts, &reference).into_iter().zip(f32_items) {
        assert_eq!(item["id"], f32_item["id"]);
        let name = item["id"].as_str().unwrap();
        let want = reference_ids(item);
        let margins = common::floats(&item["margins"]);
        let want_lp = common::floats(&item["output_logprobs"]);
        assert_eq!((margins.len(), want_lp.len()), (want.len(), want.len()), "{name}: the reference's lists");
        let got = generate(server, MODEL, prompt, name, want.len(), false);
        assert_eq!(got.tokens.len(), got.usage["completion_tokens"].as_u64().unwrap() as usize, "{name}");
        let same = got.tokens.iter().zip(&want).take_while(|(g, w)| g.0 == **w).count();
        if same < want.len() {
            assert!(
                margins[same] <= near_tie,
                "{name}: token {same} is {:?}, transformers' is {} with a margin of {} over the next (not a near-tie)",
                got.tokens.get(same).map(|t| t.0),
                want[same],
                margins[same]
            );
        } else {
            whole += 1;
            assert_eq!(got.finish, item["finish_reason"], "{name}");
            assert_eq!(got.usage["prompt_tokens"], item["num_prompt_tokens"], "{name}");
        }
        let mut sum = 0.0;
        for (i, t) in got.tokens[..same].iter().enumerate() {
            assert!((t.1 - want_lp[i]).abs() < logprob, "{name}: logprob {i}: {} vs {}", t.1, want_lp[i]);
            sum += (t.1 - want_lp[i]).abs();
            worst = worst.max((t.1 - want_lp[i]).abs());
            // The reference's best alternative is among ours, unless it was a near-tie.
            let alt = reference_top(item, i)[1];
            assert!(
                margins[i] <= near_tie || t.2.iter().any(|a| a.0 == alt.0),
                "{name}: transformers' second choice {alt:?} at {i} is not in our top 5 {:?}",
                t.2
            );
        }
        let mean = if same == 0 { 0.0 } else { sum / same as f64 };
        assert!(mean < mean_bound, "{name}: mean logprob error {mean}");
        worst_mean = worst_mean.max(mean);
        compared += same;
        // Where the float32 reference took the same tokens, its logprobs are float32's:
        // ours must be bfloat16's, further off than float32 noise (2e-4).
        let f32_lp = common::floats(&f32_item["output_logprobs"]);
        let f32_ids = f32_item["output_token_ids"].as_array().unwrap();
        for (i, t) in got.tokens.iter().enumerate().take_while(|(i, t)| f32_ids.get(*i).and_then(Value::as_u64) == Some(t.0 as u64)) {
            off_f32 += (t.1 - f32_lp[i]).abs();
            vs_f32 += 1;
        }
    }
    println!("largest |Δ logprob| {worst:.3}, largest mean per prompt {worst_mean:.3}, {compared} tokens compared, {whole} prompts whole");
    let total: usize = reference["items"].as_array().unwrap().iter().map(|i| i["output_token_ids"].as_array().unwrap().len()).sum();
    assert!(compared as f64 >= compared_share * total as f64, "only {compared} of {total} tokens compared before a near-tie");
    assert!(whole >= whole_floor, "only {whole} prompts agree to the end");
    assert!(vs_f32 > 50 && off_f32 / vs_f32 as f64 > 5e-3, "served logprobs are float32's ({off_f32} over {vs_f32} tokens): --dtype auto should serve bfloat16");
}
