//! Gemma 2 and Gemma 3 text configs.
//!
//! Both scale the embeddings by √hidden (rounded to the model's dtype), use GeGLU (GELU,
//! tanh approximation), RMSNorm with `(1 + w)` weights, norms before and after attention
//! and the MLP, a query scale of `query_pre_attn_scalar^-½`, and alternate sliding-window
//! and global layers (`layer_types`, else Gemma 2 every other layer and Gemma 3 five local
//! to one global). Gemma 2 soft-caps attention and final logits; Gemma 3 normalises each
//! query and key head instead and gives local layers their own rope base
//! (`rope_local_base_freq`, rope scaling only on global layers). A Gemma 3 image-text
//! checkpoint (`Gemma3ForConditionalGeneration`) serves its text model, read from
//! `text_config`.

use serde_json::{Value as Json, json};

use super::config::{Activation, Arch, DecoderConfig, Hf, LayerSpec};
use super::gguf::GgufFile;
use super::rope::{Rope, RopeContext, Scaling};

/// transformers' defaults for what a Gemma config may leave out (published Gemma 3
/// `text_config`s name only a few fields).
fn defaults(arch: Arch) -> Json {
    match arch {
        Arch::Gemma2 => json!({
            "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "rope_theta": 10000.0,
        }),
        _ => json!({
            "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
        }),
    }
}

pub fn config_from_hf(cfg: &Json, arch: Arch) -> Result<DecoderConfig, String> {
    // The text model of an image-text checkpoint.
    let text = cfg.get("text_config").filter(|t| t.is_object()).unwrap_or(cfg);
    let mut full = defaults(arch);
    for (k, v) in text.as_object().into_iter().flatten() {
        if !v.is_null() || matches!(k.as_str(), "final_logit_softcapping" | "attn_logit_softcapping") {
            full[k] = v.clone();
        }
    }
    let h = Hf(&full);
    if h.bool("use_bidirectional_attention") == Some(true) {
        return Err("Gemma with use_bidirectional_attention (an embedding model) is not supported".into());
    }
    let mut c = DecoderConfig::base_hf(&full, arch)?;
    c.activation = Activation::from_name(h.str("hidden_activation").unwrap_or("gelu_pytorch_tanh"))?;
    c.unit_offset_norms = true;
    c.sandwich_norms = true;
    c.scale_embeddings = true;
    c.attn_scale = 1.0 / h.f64("query_pre_attn_scalar").unwrap_or(256.0).sqrt();
    c.attn_softcap = h.f64("attn_logit_softcapping");
    c.final_softcap = h.f64("final_logit_softcapping");
    let window = h.usize("sliding_window");
    if arch == Arch::Gemma2 {
        c.set_windows(&full, window, |i| (i + 1) % 2 != 0);
        return Ok(c);
    }
    c.qk_norm = true;
    let pattern = h.usize("sliding_window_pattern").unwrap_or(6).max(1);
    c.set_windows(&full, window, |i| (i + 1) % pattern != 0);
    // Global layers: rope 0; local layers: rope 1.
    let ctx = RopeContext {
        head_dim: c.head_dim,
        max_position_embeddings: c.max_position_embeddings,
        original_max_top: None,
        default_theta: 1e6,
    };
    let nested = h.get("rope_parameters").filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    let (global, local) = match nested {
        Some(p) => (
            Rope::from_params(p.get("full_attention"), Some(1e6), &ctx)?,
            Rope::from_params(p.get("sliding_attention"), Some(1e4), &ctx)?,
        ),
        None => (
            Rope::from_params(h.rope_params(), h.f64("rope_theta"), &ctx)?,
            Rope { theta: h.f64("rope_local_base_freq").unwrap_or(1e4), dim: c.head_dim, scaling: Scaling::None },
        ),
    };
    c.ropes = vec![global, local];
    for l in &mut c.layers {
        l.rope = usize::from(l.window.is_some());
    }
    Ok(c)
}

/// llama.cpp's gemma2/gemma3 metadata. Its converter stores the norms' weights with the 1
/// already added (the weight source takes it off again); the query scale is
/// `head_dim^-½` except for the 27B models, whose `query_pre_attn_scalar` is hidden/heads.
pub fn adjust_gguf(c: &mut DecoderConfig, g: &GgufFile) -> Result<(), String> {
    c.activation = Activation::GeluTanh;
    c.unit_offset_norms = true;
    c.sandwich_norms = true;
    c.scale_embeddings = true;
    c.rms_norm_eps = g.arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
    let is_27b = matches!((c.arch, c.num_layers), (Arch::Gemma2, 46) | (Arch::Gemma3, 62));
    let scalar = if is_27b { (c.hidden_size / c.num_heads) as f64 } else { c.head_dim as f64 };
    c.attn_scale = 1.0 / scalar.sqrt();
    let window = g.arch_u64("attention.sliding_window").map(|v| v as usize);
    if c.arch == Arch::Gemma2 {
        c.attn_softcap = g.arch_f64("attn_logit_softcapping");
        c.final_softcap = g.arch_f64("final_logit_softcapping");
        for (i, l) in c.layers.iter_mut().enumerate() {
            l.window = window.filter(|_| (i + 1) % 2 != 0);
        }
        return Ok(());
    }
    c.qk_norm = true;
    let pattern = g.arch_u64("attention.sliding_window_pattern").map(|v| v as usize).unwrap_or(6).max(1);
    let local = Rope { theta: 10000.0, dim: c.ropes[0].dim, scaling: Scaling::None };
    c.ropes.push(local);
    for (i, l) in c.layers.iter_mut().enumerate() {
        let sliding = (i + 1) % pattern != 0;
        *l = LayerSpec { window: window.filter(|_| sliding), rope: usize::from(sliding), moe: false };
    }
    Ok(())
}
