//! Mixtral configs: the Mistral skeleton with a sparse block of experts on every layer:
//! softmax over the router's logits, the top k, always renormalised, the routing weights
//! kept in float32 (as transformers' `MixtralTopKRouter`).

use serde_json::Value as Json;

use super::config::{Arch, DecoderConfig, Hf, MoeConfig, MoeNames};

pub const NAMES: MoeNames = MoeNames { router: "block_sparse_moe.gate", experts: "block_sparse_moe.experts", gate: "w1", up: "w3", down: "w2" };

pub fn config_from_hf(cfg: &Json) -> Result<DecoderConfig, String> {
    let mut c = DecoderConfig::base_hf(cfg, Arch::Mixtral)?;
    let h = Hf(cfg);
    super::llama::all_layers_window(&mut c, h.usize("sliding_window"));
    c.moe = Some(MoeConfig {
        num_experts: h.need("num_local_experts")?,
        top_k: h.need("num_experts_per_tok")?,
        norm_topk_prob: true,
        intermediate_size: c.intermediate_size,
        weights_in_dtype: false,
        names: NAMES,
    });
    for l in &mut c.layers {
        l.moe = true;
    }
    Ok(c)
}
