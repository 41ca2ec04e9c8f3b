//! Llama-family configs: Llama 2/3 (and SmolLM), Mistral, Qwen2 — the plain decoder with
//! pre-norms, a SiLU MLP and one rotary embedding (Llama 3.x's `llama3` scaling and the
//! other rope types included). Mixtral's GGUF files say `llama` too, with experts.

use serde_json::Value as Json;

use super::config::{Arch, DecoderConfig, Hf, gguf_moe};
use super::gguf::GgufFile;

pub fn config_from_hf(cfg: &Json, arch: Arch) -> Result<DecoderConfig, String> {
    let mut c = DecoderConfig::base_hf(cfg, arch)?;
    match arch {
        Arch::Qwen2 => {
            c.qkv_bias = true;
            qwen_windows(&mut c, cfg);
        }
        // Mistral's window (when its config has one) covers every layer.
        Arch::Mistral => all_layers_window(&mut c, Hf(cfg).usize("sliding_window")),
        _ => {}
    }
    Ok(c)
}

/// Qwen2/Qwen3's rule: with `use_sliding_window`, layers from `max_window_layers` on slide
/// (unless `layer_types` lists them).
pub fn qwen_windows(c: &mut DecoderConfig, cfg: &Json) {
    let h = Hf(cfg);
    let window = h.usize("sliding_window").filter(|_| h.bool("use_sliding_window") == Some(true));
    let from = h.usize("max_window_layers").unwrap_or(28);
    c.set_windows(cfg, window, |i| i >= from);
}

/// Every layer attends within `window` (Mistral, Mixtral, Phi-3).
pub fn all_layers_window(c: &mut DecoderConfig, window: Option<usize>) {
    for l in &mut c.layers {
        l.window = window;
    }
}

/// A `llama` GGUF with experts is Mixtral (llama.cpp's converter writes it so).
pub fn adjust_gguf(c: &mut DecoderConfig, g: &GgufFile) -> Result<(), String> {
    if c.arch == Arch::Llama {
        if let Some(moe) = gguf_moe(g, true, false, super::mixtral::NAMES)? {
            c.arch = Arch::Mixtral;
            c.moe = Some(moe);
            for (i, l) in c.layers.iter_mut().enumerate() {
                l.moe = g.tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_some();
            }
        }
    }
    Ok(())
}
