//! GGUF files: the header, metadata and tensor index, then what loading reads from them:
//! the decoder's config, the tokenizer rebuilt from metadata, every tensor dequantized,
//! and the Q/K projections of the first block un-permuted as the loader does; then the
//! same matrices handed out in their quantized blocks, as `--quantization gguf` loads them.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::model::config::DecoderConfig;
use sluice::model::gguf::GgufFile;
use sluice::model::quant;
use sluice::model::tokenizer::Tokenizer;
use sluice::model::weights::{GgufWeights, WeightSource};

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("model.gguf", data);
    let Ok(file) = GgufFile::open(&path) else { return };
    let _ = Tokenizer::from_gguf(&file, &path);
    for t in &file.tensors {
        let mut out = vec![0f32; t.numel()];
        quant::dequantize(t.ggml_type, file.bytes(t), &mut out);
    }
    let Ok(cfg) = DecoderConfig::from_gguf(&file) else { return };
    let src = GgufWeights {
        file: &file,
        path: &path,
        arch: cfg.arch,
        num_heads: cfg.num_heads,
        num_kv_heads: cfg.num_kv_heads,
        keep_quantized: false,
    };
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"] {
        let _ = src.get(name);
    }
    // `--quantization gguf`: the same matrices handed out in their blocks.
    let blocks = GgufWeights { keep_quantized: true, ..src };
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"] {
        let _ = blocks.get_quantized(name);
    }
});
