//! Forward-pass speed of the default model, by batch shape, with the time per kind of
//! operation. Run: `cargo bench --bench forward` (env DTYPE=float32|bfloat16, THREADS=n,
//! ONLY=text to run the shapes whose label contains it).

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
    let loc = resolve::resolve(None).expect("default model");
    let m = model::load(loc, &LoadOptions { device: tch::Device::Cpu, dtype: &dtype, max_model_len: None }).unwrap();
    let llama = m.decoder;
    let c = &llama.cfg;
    let bs = 16;
    let mut cache = KvCache::new(c.num_layers, 4096, bs, c.num_kv_heads, c.head_dim, llama.dtype, llama.device);
    println!("dtype {dtype}, threads {}", tch::get_num_threads());
    // (label, sequences, new tokens each, cached context each)
    let shapes: [(&str, usize, usize, usize); 5] = [
        ("decode b=1 ctx=300", 1, 1, 300),
        ("decode b=16 ctx=300", 16, 1, 300),
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
        llama.forward(&batch, &mut cache);
        let mut times = OpTimes::default();
        let t0 = Instant::now();
        for _ in 0..iters {
            llama.forward_timed(&batch, &mut cache, &mut Some(&mut times));
        }
        let per = t0.elapsed() / iters;
        let tokens = seqs * new;
        println!(
            "{label:22} {:8.2} ms/step  {:8.1} tokens/s",
            per.as_secs_f64() * 1e3,
            tokens as f64 / per.as_secs_f64()
        );
        for (name, d) in times.rows() {
            let ms = d.as_secs_f64() * 1e3 / iters as f64;
            if d > Duration::ZERO {
                println!("    {name:20} {ms:8.2} ms  {:5.1}%", 100.0 * ms / (per.as_secs_f64() * 1e3));
            }
        }
    }
}
