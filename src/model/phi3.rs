//! Phi-3 / Phi-3.5 (and Phi-4-mini) configs: the Llama skeleton with fused `qkv_proj` and
//! `gate_up_proj` weights (used as they are: the decoder stacks Q/K/V and gate/up the same
//! way), LongRoPE scaling (`longrope`, formerly `su`) with its short and long factors and
//! attention factor, an optional partial rotary factor, and a sliding window on every
//! layer when the config gives one.

use serde_json::Value as Json;

use super::config::{DecoderConfig, Hf, rope_freqs};
use super::gguf::GgufFile;
use super::rope::{Rope, RopeContext, Scaling};

pub fn config_from_hf(cfg: &Json) -> Result<DecoderConfig, String> {
    let h = Hf(cfg);
    // Phi3Config's reading: `su` and `yarn` mean longrope; a top-level
    // partial_rotary_factor and original_max_position_embeddings (4096 when absent) count.
    let mut params = h.rope_params().cloned().unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = params.as_object_mut() {
        let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Json::as_str).unwrap_or("default").to_owned();
        if kind == "su" || kind == "yarn" {
            obj.insert("rope_type".into(), "longrope".into());
        }
        if let (false, Some(p)) = (obj.contains_key("partial_rotary_factor"), h.get("partial_rotary_factor")) {
            obj.insert("partial_rotary_factor".into(), p.clone());
        }
    }
    let mut patched = cfg.clone();
    patched["rope_parameters"] = params.clone();
    let mut c = DecoderConfig::base_hf(&patched, super::config::Arch::Phi3)?;
    let ctx = RopeContext {
        head_dim: c.head_dim,
        max_position_embeddings: c.max_position_embeddings,
        original_max_top: Some(h.usize("original_max_position_embeddings").unwrap_or(4096)),
        default_theta: 10000.0,
    };
    c.ropes = vec![Rope::from_params(Some(&params), h.f64("rope_theta"), &ctx)?];
    c.fused_projections = true;
    super::llama::all_layers_window(&mut c, h.usize("sliding_window"));
    Ok(c)
}

/// llama.cpp's phi3 files: fused `attn_qkv` and `ffn_up` (gate and up), LongRoPE factors
/// as `rope_factors_short`/`rope_factors_long` tensors.
pub fn adjust_gguf(c: &mut DecoderConfig, g: &GgufFile) -> Result<(), String> {
    c.fused_projections = true;
    let window = g.arch_u64("attention.sliding_window").map(|v| v as usize).filter(|&w| w > 0);
    super::llama::all_layers_window(c, window);
    if let (Some(short), Some(long)) = (rope_freqs(g, "rope_factors_short.weight")?, rope_freqs(g, "rope_factors_long.weight")?) {
        let original_max = g.arch_u64("rope.scaling.original_context_length").ok_or("GGUF LongRoPE lacks rope.scaling.original_context_length")? as usize;
        let factor = c.max_position_embeddings as f64 / original_max as f64;
        let attention_factor = g.arch_f64("rope.scaling.attn_factor").unwrap_or(if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / (original_max as f64).ln()).sqrt()
        });
        c.ropes[0].scaling = Scaling::LongRope { short, long, original_max, attention_factor };
    }
    Ok(())
}
