//! Decode step time of a sparse mixture-of-experts model against dense models, all with
//! random weights made in memory: a Qwen3-MoE shape (16 experts, top-2), a dense Qwen3 of
//! the same active size (MLP width = 2 experts' width), and a dense Qwen3 as wide as all
//! experts together. A step of the MoE should cost about what the same-active-size model's
//! does at batch 1, and stay well below the all-experts model's.
//!
//! Run: `cargo bench --bench moe` (env DTYPE=bfloat16|float32, THREADS=n, ROUNDS=n). The
//! models are timed in interleaved rounds (MoE, dense, all-experts, MoE, …) so that other
//! work on the machine weighs on each alike; medians are reported.

use std::time::Instant;

use serde_json::json;
use sluice::model::LoadError;
use sluice::model::batch::{SeqChunk, StepBatch};
use sluice::model::config::DecoderConfig;
use sluice::model::decoder::Decoder;
use sluice::model::kv_cache::KvCache;
use sluice::model::weights::WeightSource;
use tch::{Device, Kind, Tensor};

const HIDDEN: i64 = 1024;
const LAYERS: i64 = 8;
const HEADS: i64 = 16;
const KV_HEADS: i64 = 4;
const HEAD_DIM: i64 = 64;
const EXPERTS: i64 = 16;
const TOP_K: i64 = 2;
const EXPERT_WIDTH: i64 = 512;
const VOCAB: i64 = 8192;

/// Random tensors of the shape each weight name implies.
struct RandomWeights {
    mlp_width: i64,
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str) -> Result<Option<Tensor>, LoadError> {
        if !name.ends_with(".weight") {
            return Ok(None);
        }
        let shape: Vec<i64> = match name.rsplit('.').nth(1).unwrap_or("") {
            _ if name.ends_with("embed_tokens.weight") || name == "lm_head.weight" => vec![VOCAB, HIDDEN],
            "q_norm" | "k_norm" => vec![HEAD_DIM],
            n if n.ends_with("norm") => vec![HIDDEN],
            "q_proj" => vec![HEADS * HEAD_DIM, HIDDEN],
            "k_proj" | "v_proj" => vec![KV_HEADS * HEAD_DIM, HIDDEN],
            "o_proj" => vec![HIDDEN, HEADS * HEAD_DIM],
            "gate" => vec![EXPERTS, HIDDEN],
            "gate_proj" | "up_proj" if name.contains(".experts.") => vec![EXPERT_WIDTH, HIDDEN],
            "down_proj" if name.contains(".experts.") => vec![HIDDEN, EXPERT_WIDTH],
            "gate_proj" | "up_proj" => vec![self.mlp_width, HIDDEN],
            "down_proj" => vec![HIDDEN, self.mlp_width],
            _ => return Ok(None),
        };
        let fan_in = *shape.last().unwrap() as f64;
        Ok(Some(Tensor::randn(&shape, (Kind::Float, Device::Cpu)) / fan_in.sqrt()))
    }
}

fn model(moe: bool, mlp_width: i64, dtype: Kind) -> Decoder {
    let mut cfg = json!({
        "architectures": [if moe { "Qwen3MoeForCausalLM" } else { "Qwen3ForCausalLM" }],
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": mlp_width, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": true,
    });
    if moe {
        cfg["num_experts"] = json!(EXPERTS);
        cfg["num_experts_per_tok"] = json!(TOP_K);
        cfg["moe_intermediate_size"] = json!(EXPERT_WIDTH);
        cfg["norm_topk_prob"] = json!(true);
    }
    let cfg = DecoderConfig::from_hf(&cfg).unwrap();
    tch::manual_seed(0);
    Decoder::load(cfg, &RandomWeights { mlp_width }, Device::Cpu, dtype).unwrap()
}

fn decode_batch(seqs: usize, ctx: usize, bs: usize) -> StepBatch {
    let per = (ctx + 1).div_ceil(bs);
    let chunks: Vec<SeqChunk> = (0..seqs)
        .map(|s| SeqChunk {
            tokens: vec![((s * 131) % 8000 + 100) as u32],
            cached: ctx,
            block_table: (0..per).map(|b| (1 + s * per + b) as u32).collect(),
            logits_for: vec![0],
            prompt_len: ctx + 1,
        })
        .collect();
    StepBatch::new(&chunks, bs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dtype = match std::env::var("DTYPE").as_deref() {
        Ok("float32") => Kind::Float,
        _ => Kind::BFloat16,
    };
    if let Ok(t) = std::env::var("THREADS") {
        tch::set_num_threads(t.parse().unwrap());
    }
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let _guard = tch::no_grad_guard();
    let models = [
        (format!("MoE {EXPERTS} experts top-{TOP_K} (width {EXPERT_WIDTH})"), model(true, EXPERT_WIDTH, dtype)),
        (format!("dense, same active size (width {})", TOP_K * EXPERT_WIDTH), model(false, TOP_K * EXPERT_WIDTH, dtype)),
        (format!("dense, all experts' size (width {})", EXPERTS * EXPERT_WIDTH), model(false, EXPERTS * EXPERT_WIDTH, dtype)),
    ];
    let bs = 16;
    let ctx = 300;
    println!("dtype {dtype:?}, threads {}, {rounds} interleaved rounds, decode steps over {ctx} cached tokens", tch::get_num_threads());
    for seqs in [1usize, 16] {
        let batch = decode_batch(seqs, ctx, bs);
        let iters = if seqs == 1 { 20 } else { 5 };
        let mut caches: Vec<KvCache> = models
            .iter()
            .map(|(_, m)| KvCache::new(LAYERS as usize, 1 + seqs * (ctx + 1).div_ceil(bs) + 1, bs, KV_HEADS as usize, HEAD_DIM as usize, m.dtype, m.device))
            .collect();
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
        for (i, (_, m)) in models.iter().enumerate() {
            let _ = m.forward(&batch, &mut caches[i]); // warm-up
        }
        for _ in 0..rounds {
            for (i, (_, m)) in models.iter().enumerate() {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let _ = m.forward(&batch, &mut caches[i]);
                }
                times[i].push(t0.elapsed().as_secs_f64() * 1e3 / iters as f64);
            }
        }
        for (i, (label, _)) in models.iter().enumerate() {
            let mut t = times[i].clone();
            let (lo, hi) = (t.iter().cloned().fold(f64::MAX, f64::min), t.iter().cloned().fold(0.0, f64::max));
            println!("batch {seqs:2}  {label:44} median {:7.2} ms/step  (min {lo:.2}, max {hi:.2})", median(&mut t));
        }
    }
}
