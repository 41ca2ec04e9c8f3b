//! Forward-pass speed of the default model, by batch shape, with the time per kind of
//! operation. Run: `cargo bench --bench forward` (env DTYPE=float32|bfloat16, THREADS=n,
//! ONLY=text to run the shapes whose label contains it, QUANT=none|gguf|both: how the GGUF's
//! matrices run; both times the two in interleaved rounds).

use std::time::{Duration, Instant};

use sluice::model::batch::{SeqChunk, StepBatch};
use sluice::model::kv_cache::KvCache;
use sluice::model::decoder::OpTimes;
use sluice::model::{self, LoadOptions, resolve};

fn main() {
    let dtype = std::env::var("DTYPE").unwrap_or_else(|_| "bfloat16".into());
    if let Ok(t) = std::env::var("THREADS") {
        tch::set_num_threads(t.parse().unwrap());
    }
    // QUANT=none|gguf: one way of running the GGUF's matrices; QUANT=both: the two, timed in
    // interleaved rounds (ROUNDS, default 5) on the same batches, for a paired comparison.
    let quant = std::env::var("QUANT").unwrap_or_else(|_| "none".into());
    let ways: Vec<&str> = if quant == "both" { vec!["none", "gguf"] } else { vec![quant.as_str()] };
    let models: Vec<_> = ways
        .iter()
        .map(|w| {
            let quantization = model::Quantization::parse(w).unwrap();
            let loc = resolve::resolve(None).expect("default model");
            model::load(loc, &LoadOptions { device: tch::Device::Cpu, dtype: &dtype, max_model_len: None, quantization , shard: None }).unwrap().decoder
        })
        .collect();
    let c = &models[0].cfg;
    let bs = 16;
    let mut caches: Vec<KvCache> =
        models.iter().map(|m| KvCache::new(c.num_layers, 4096, bs, c.num_kv_heads, c.head_dim, m.dtype, m.device)).collect();
    let rounds: usize = std::env::var("ROUNDS").ok().map_or(if models.len() > 1 { 5 } else { 1 }, |r| r.parse().unwrap());
    println!("dtype {dtype}, threads {}, quantization {ways:?}, int8 path {}", tch::get_num_threads(), sluice::model::kernels::quant_isa());
    // (label, sequences, new tokens each, cached context each)
    let shapes: [(&str, usize, usize, usize); 9] = [
        ("decode b=1 ctx=300", 1, 1, 300),
        ("decode b=2 ctx=300", 2, 1, 300),
        ("decode b=4 ctx=300", 4, 1, 300),
        ("decode b=8 ctx=300", 8, 1, 300),
        ("decode b=16 ctx=300", 16, 1, 300),
        ("decode b=32 ctx=300", 32, 1, 300),
        ("decode b=64 ctx=300", 64, 1, 300),
        ("prefill 1x512", 1, 512, 0),
        ("prefill 1x1500", 1, 1500, 0),
    ];
    let only = std::env::var("ONLY").ok();
    for (label, seqs, new, ctx) in shapes {
        if only.as_deref().is_some_and(|o| !label.contains(o)) {
            continue;
        }
        let per_seq_blocks = (ctx + new).div_ceil(bs);
        let chunks: Vec<SeqChunk> = (0..seqs)
            .map(|s| SeqChunk {
                tokens: (0..new).map(|i| ((s * 131 + i * 7) % 40000 + 100) as u32).collect(),
                cached: ctx,
                block_table: (0..per_seq_blocks).map(|b| (1 + s * per_seq_blocks + b) as u32).collect(),
                logits_for: vec![new - 1],
                prompt_len: ctx + new,
            })
            .collect();
        let batch = StepBatch::new(&chunks, bs);
        let iters = if new > 1 { 3 } else { 20 };
        for (m, cache) in models.iter().zip(caches.iter_mut()) {
            let _ = m.forward(&batch, cache);
        }
        let mut times = vec![OpTimes::default(); models.len()];
        let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
        for _ in 0..rounds {
            for (k, (m, cache)) in models.iter().zip(caches.iter_mut()).enumerate() {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let _ = m.forward_timed(&batch, cache, &mut Some(&mut times[k]));
                }
                per_round[k].push(t0.elapsed().as_secs_f64() * 1e3 / iters as f64);
            }
        }
        let tokens = seqs * new;
        for (k, way) in ways.iter().enumerate() {
            let mut r = per_round[k].clone();
            r.sort_by(f64::total_cmp);
            let med = r[r.len() / 2];
            println!("{label:22} {way:5} {med:8.2} ms/step (median of {rounds})  {:8.1} tokens/s", tokens as f64 / med * 1e3);
            let total = med * rounds as f64;
            for (name, d) in times[k].rows() {
                let ms = d.as_secs_f64() * 1e3 / (iters * rounds) as f64;
                if d > Duration::ZERO {
                    println!("    {name:20} {ms:8.2} ms  {:5.1}%", 100.0 * ms * rounds as f64 / total);
                }
            }
        }
        if models.len() == 2 {
            // Per-round ratios: each pair ran back to back, so drift cancels.
            let mut ratios: Vec<f64> = per_round[0].iter().zip(&per_round[1]).map(|(a, b)| b / a).collect();
            ratios.sort_by(f64::total_cmp);
            println!("{label:22} gguf/none per round: median {:.3} (min {:.3}, max {:.3})", ratios[ratios.len() / 2], ratios[0], ratios[ratios.len() - 1]);
        }
    }
}
