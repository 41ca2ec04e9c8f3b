//! The default model (SmolLM2, Q4_1 with a Q8_0 embedding table) run on its GGUF blocks
//! (`--quantization gguf`) against the same file dequantized at load: the log-probabilities
//! of transformers' greedy tokens on the reference prompts, fed one token a step (decode:
//! the int8 dot products) and as one long prompt (prefill: the int8 tiles).
//! The largest |Δ logprob| is printed (run with --nocapture) and bounded.

mod common;

use common::fixture;
use serde_json::Value;
use sluice::model::batch::{SeqChunk, StepBatch};
use sluice::model::decoder::Decoder;
use sluice::model::kv_cache::KvCache;
use sluice::model::{self, LoadOptions, Quantization, resolve};
use tch::{Kind, Tensor};

fn load(quantization: Quantization, dtype: &str) -> Decoder {
    let loc = resolve::resolve(None).expect("the default model");
    let opts = LoadOptions { device: tch::Device::Cpu, dtype, max_model_len: None, quantization , shard: None };
    model::load(loc, &opts).unwrap().decoder
}

const BLOCK: usize = 16;

/// Log-probabilities `[rows, vocab]` of each step of `tokens` fed `per_step` at a time,
/// every row's logits kept.
fn logprobs(m: &Decoder, tokens: &[u32], per_step: usize) -> Tensor {
    let c = &m.cfg;
    let blocks = tokens.len().div_ceil(BLOCK);
    let mut cache = KvCache::new(c.num_layers, blocks + 1, BLOCK, c.num_kv_heads, c.head_dim, m.dtype, m.device);
    let table: Vec<u32> = (1..=blocks as u32).collect();
    let mut out = Vec::new();
    for start in (0..tokens.len()).step_by(per_step) {
        let chunk = &tokens[start..(start + per_step).min(tokens.len())];
        let seq = SeqChunk {
            tokens: chunk.to_vec(),
            cached: start,
            block_table: table.clone(),
            logits_for: (0..chunk.len()).collect(),
            prompt_len: tokens.len(),
        };
        out.push(m.forward(&StepBatch::new(&[seq], BLOCK), &mut cache).log_softmax(-1, Kind::Float));
    }
    Tensor::cat(&out, 0)
}

/// The largest |Δ| between two runs' logprobs of each next token of `tokens`, and the
/// widest margin between the first run's top two at a step where the runs' greedy tokens
/// differ (0 when they never do).
fn compare(a: &Tensor, b: &Tensor, tokens: &[u32], from: usize) -> (f64, f64) {
    let (mut worst, mut flip) = (0f64, 0f64);
    for row in from.saturating_sub(1)..tokens.len() - 1 {
        let next = tokens[row + 1] as i64;
        let (la, lb) = (a.get(row as i64), b.get(row as i64));
        let d = (la.double_value(&[next]) - lb.double_value(&[next])).abs();
        worst = worst.max(d);
        let top = la.topk(2, -1, true, true).0;
        let margin = top.double_value(&[0]) - top.double_value(&[1]);
        if la.argmax(-1, false).int64_value(&[]) != lb.argmax(-1, false).int64_value(&[]) {
            flip = flip.max(margin);
        }
    }
    (worst, flip)
}

fn reference_sequences() -> Vec<(String, Vec<u32>, usize)> {
    let text = std::fs::read_to_string(fixture("reference/smollm2_f32_greedy.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<_>>();
    reference["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let prompt = ids(&item["prompt_token_ids"]);
            let mut all = prompt.clone();
            all.extend(ids(&item["output_token_ids"]).into_iter().take(DECODE_TOKENS));
            (item["id"].as_str().unwrap().to_string(), all, prompt.len())
        })
        .collect()
}

/// Largest |Δ logprob| allowed, and the widest top-two margin of the dequantized run at
/// which the greedy token may change. With AVX2 the prompt's step runs on int8 too (the
/// int8 tiles past 2 rows; not on CPUs with AVX-512 BF16, which keep the float tiles past 8
/// rows). Measured on the reference prompts (first 16 tokens of each), AVX2: in
/// float32 0.70 at most (0.18 to 0.31 on the plain prompts; 0.70 is the chat prompts'
/// shared first token), greedy changes only at margins of 0.35 or less; in bfloat16, whose
/// own logits move by tenths with the order of sums (transformers' cached and uncached
/// passes differ by up to 0.64: tests/reference.rs), 0.66 at most, greedy changes at
/// margins of 0.5 or less. (With the prompt on float tiles, AVX-512 VNNI: 0.35 and 0.38.)
const DECODE_BOUND: [(&str, f64, f64); 2] = [("float32", 0.8, 0.4), ("bfloat16", 0.8, 0.64)];
/// Output tokens of each reference sequence fed one a step.
const DECODE_TOKENS: usize = 16;

#[test]
fn decode_steps_on_blocks_stay_close_to_the_dequantized_model() {
    for (dtype, bound, tie) in DECODE_BOUND {
        let (q, d) = (load(Quantization::Gguf, dtype), load(Quantization::Dequantize, dtype));
        assert!(q.is_quantized() && !d.is_quantized());
        let mut worst = (0f64, String::new());
        for (name, tokens, prompt) in reference_sequences() {
            // The prompt in one step (int8 or float tiles), then one token a step (int8 dot products).
            let run = |m: &Decoder| {
                let first = logprobs(m, &tokens[..prompt], prompt);
                let rest = logprobs_after(m, &tokens, prompt);
                Tensor::cat(&[first, rest], 0)
            };
            let (lq, ld) = (run(&q), run(&d));
            let (w, flip) = compare(&ld, &lq, &tokens, 1);
            println!("{dtype} {name}: max |Δ logprob| {w:.4}, widest margin at a changed greedy token {flip:.4}");
            assert!(flip <= tie, "{dtype} {name}: a greedy token changed where the top two are {flip} apart");
            if w > worst.0 {
                worst = (w, name);
            }
        }
        println!("{dtype}: largest |Δ logprob| over the reference tokens, decode: {:.4} ({})", worst.0, worst.1);
        assert!(worst.0 <= bound, "{dtype}: |Δ logprob| {} > {bound} ({})", worst.0, worst.1);
    }
}

/// Log-probabilities of the steps after `prompt`, one token a step (the cache is filled by
/// a first step of the whole prompt).
fn logprobs_after(m: &Decoder, tokens: &[u32], prompt: usize) -> Tensor {
    let c = &m.cfg;
    let blocks = tokens.len().div_ceil(BLOCK);
    let mut cache = KvCache::new(c.num_layers, blocks + 1, BLOCK, c.num_kv_heads, c.head_dim, m.dtype, m.device);
    let table: Vec<u32> = (1..=blocks as u32).collect();
    let step = |cache: &mut KvCache, start: usize, len: usize| {
        let seq = SeqChunk {
            tokens: tokens[start..start + len].to_vec(),
            cached: start,
            block_table: table.clone(),
            logits_for: (0..len).collect(),
            prompt_len: prompt,
        };
        m.forward(&StepBatch::new(&[seq], BLOCK), cache)
    };
    let _ = step(&mut cache, 0, prompt);
    let rows: Vec<Tensor> = (prompt..tokens.len()).map(|i| step(&mut cache, i, 1).log_softmax(-1, Kind::Float)).collect();
    Tensor::cat(&rows, 0)
}

/// Every reference sequence end to end as one prompt of a few hundred tokens: one
/// prefill step, on the int8 tiles (the float tiles on CPUs with AVX-512 BF16).
#[test]
fn a_long_prefill_on_blocks_matches_the_dequantized_model() {
    for dtype in ["float32", "bfloat16"] {
        let (q, d) = (load(Quantization::Gguf, dtype), load(Quantization::Dequantize, dtype));
        let tokens: Vec<u32> = reference_sequences().into_iter().flat_map(|(_, t, _)| t).collect();
        assert!(tokens.len() > 200, "{} tokens", tokens.len());
        let (lq, ld) = (logprobs(&q, &tokens, tokens.len()), logprobs(&d, &tokens, tokens.len()));
        let (w, _) = compare(&ld, &lq, &tokens, 1);
        println!("{dtype}: largest |Δ logprob| over {} prompt tokens, prefill: {w:.5}", tokens.len());
        // On the int8 tiles, activations quantized to int8 per 32 values, as in decode, over
        // every position. Seen (AVX2): 0.67 in float32 with libtorch's prompt attention, 0.88
        // with the tiled prompt attention (the same kernel in both models; on AVX-512 CPUs
        // it stayed under 0.8); 1.49 in bfloat16, whose order of sums alone moves
        // logprobs by tenths (transformers' own cached and uncached passes differ by up to
        // 0.64: tests/reference.rs; float32 tiles against the bfloat16 dequantized model
        // gave 0.59).
        let bound = if dtype == "float32" { 1.0 } else { 1.75 };
        assert!(w <= bound, "{dtype}: |Δ logprob| {w} > {bound}");
    }
}
