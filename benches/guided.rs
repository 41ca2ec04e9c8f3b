//! Structured outputs' own costs at the default model's vocabulary: building the token
//! trie, compiling constraints of growing size (a cache miss each), and computing the
//! allowed-token mask per token per sequence — as the engine does, one sequence at a time,
//! walking each constraint with random allowed tokens — plus unpacking a mask into the
//! tensor the sampler applies. Run: `cargo bench --bench guided`.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use sluice::guided::{Constraint, Guides, Whitespace};
use sluice::model::{self, LoadOptions, resolve};
use sluice::sampling::processors;

fn schema_with(n: usize) -> Value {
    let mut props = serde_json::Map::new();
    for i in 0..n {
        let p = match i % 4 {
            0 => json!({"type": "string", "maxLength": 20}),
            1 => json!({"type": "integer", "minimum": 0}),
            2 => json!({"type": "array", "items": {"type": "number"}, "maxItems": 5}),
            _ => json!({"type": "object", "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"}}, "required": ["id"]}),
        };
        props.insert(format!("field_{i}"), p);
    }
    let required: Vec<String> = (0..n).map(|i| format!("field_{i}")).collect();
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * q) as usize]
}

fn main() {
    let loc = resolve::resolve(None).expect("default model");
    let m = model::load(loc, &LoadOptions { device: tch::Device::Cpu, dtype: "bfloat16", max_model_len: None, quantization: model::Quantization::Dequantize, shard: None }).unwrap();
    let tok = m.info.tokenizer.clone();
    let vocab = tok.vocab_size();
    println!("vocabulary {vocab}");
    let guides = Guides::new(tok, m.info.eos_ids.clone());
    let t = Instant::now();
    guides.compile(&Constraint::Regex("a".into())).unwrap();
    println!("token trie and parser factory (once per server): {:.0} ms", t.elapsed().as_secs_f64() * 1e3);

    let json = |schema: Value| Constraint::Json { schema, whitespace: Whitespace::Flexible };
    let kinds: Vec<(String, Constraint)> = vec![
        ("json_object".into(), json(json!({"type": "object"}))),
        ("schema, 4 fields".into(), json(schema_with(4))),
        ("schema, 16 fields".into(), json(schema_with(16))),
        ("schema, 64 fields".into(), json(schema_with(64))),
        ("schema, 256 fields".into(), json(schema_with(256))),
        ("regex (email)".into(), Constraint::Regex(r"[a-z0-9._]{1,20}@[a-z]{2,10}\.(com|org|net)".into())),
        ("choice (4)".into(), Constraint::Choice(vec!["positive".into(), "negative".into(), "neutral".into(), "mixed".into()])),
        ("structural tag".into(), Constraint::StructuralTag {
            structures: vec![sluice::guided::TagStructure { begin: "<tool=weather>".into(), schema: schema_with(4), end: "</tool>".into() }],
            triggers: vec!["<tool".into()],
        }),
        ("grammar (arithmetic)".into(), Constraint::Grammar(
            "start: expr\nexpr: term ((\"+\" | \"-\") term)*\nterm: factor ((\"*\" | \"/\") factor)*\nfactor: NUM | \"(\" expr \")\"\nNUM: /[0-9]{1,4}/\n".into())),
    ];
    println!("\n{:24} {:>10} {:>8} {:>10} {:>10} {:>10}", "constraint", "compile ms", "tokens", "mask p50", "mask p99", "mask mean");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut all = Vec::new();
    for (name, c) in &kinds {
        let t = Instant::now();
        let guide = guides.compile(c).unwrap();
        let compile = t.elapsed();
        let mut times = Vec::new();
        // Several walks of up to 200 tokens each, with uniformly random allowed tokens.
        for _ in 0..5 {
            let mut state = guide.start();
            for _ in 0..200 {
                let t = Instant::now();
                let mask = state.mask().unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e6);
                // None: the constraint has not begun, every token is allowed.
                let ids = mask.map_or_else(|| (0..vocab as u32).collect(), |m| m.to_vec());
                let allowed: Vec<u32> = ids.into_iter().filter(|t| !m.info.eos_ids.contains(t)).collect();
                if allowed.is_empty() || state.is_finished() {
                    break;
                }
                state.advance(allowed[rng.random_range(0..allowed.len())]).unwrap();
                if state.is_finished() {
                    break;
                }
            }
        }
        all.extend(times.iter().copied());
        let n = times.len();
        let mean = times.iter().sum::<f64>() / n as f64;
        println!(
            "{name:24} {:>10.2} {n:>8} {:>8.1}µs {:>8.1}µs {:>8.1}µs",
            compile.as_secs_f64() * 1e3,
            quantile(&mut times, 0.5),
            quantile(&mut times, 0.99),
            mean
        );
    }
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    println!("all masks: {} tokens, p50 {:.1}µs, p99 {:.1}µs, mean {mean:.1}µs", all.len(), quantile(&mut all, 0.5), quantile(&mut all, 0.99));

    // What the sampler adds per constrained row: -inf over the row's disallowed tokens,
    // written into the step's (already copied) logits.
    let logits = tch::Tensor::randn([16, vocab as i64], (tch::Kind::Float, tch::Device::Cpu));
    let sparse = guides.compile(&kinds[1].1).unwrap().start().mask().unwrap().expect("a schema constrains the first token");
    // Inside a JSON string nearly every token is allowed: the bit-by-bit case.
    let dense_ids: Vec<u32> = (0..vocab as u32).filter(|t| t % 7 != 0).collect();
    let dense = sluice::guided::TokenMask::from_allowed(vocab, &dense_ids);
    for (name, mask) in [("a schema's first step", &sparse), ("6 of 7 tokens allowed", &dense)] {
        let iters = 500;
        let t = Instant::now();
        for _ in 0..iters {
            for r in 0..16 {
                assert!(processors::mask_in_place(&logits, r, mask));
            }
        }
        println!(
            "applying a mask to one row of logits ({name}, {} allowed): {:.1}µs",
            mask.count(),
            t.elapsed().as_secs_f64() * 1e6 / (iters * 16) as f64
        );
    }
    println!("cache hits: {}", guides.cache_hits());
}

