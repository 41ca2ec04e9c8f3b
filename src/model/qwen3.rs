//! Qwen3 and Qwen3-MoE configs: the Llama skeleton with an RMSNorm on every query and key
//! head, no Q/K/V biases; the MoE form puts a sparse block of experts (softmax, top-k,
//! renormalised when `norm_topk_prob`) in place of the MLP on the layers
//! `decoder_sparse_step` and `mlp_only_layers` say.

use serde_json::Value as Json;

use super::config::{Arch, DecoderConfig, Hf, MoeConfig, MoeNames, gguf_moe};
use super::gguf::GgufFile;

pub const NAMES: MoeNames = MoeNames { router: "mlp.gate", experts: "mlp.experts", gate: "gate_proj", up: "up_proj", down: "down_proj" };

pub fn config_from_hf(cfg: &Json, arch: Arch) -> Result<DecoderConfig, String> {
    let mut c = DecoderConfig::base_hf(cfg, arch)?;
    c.qk_norm = true;
    super::llama::qwen_windows(&mut c, cfg);
    if arch == Arch::Qwen3Moe {
        let h = Hf(cfg);
        // transformers 5 writes `num_local_experts`; the published configs `num_experts`.
        let num_experts = h.usize("num_experts").or_else(|| h.usize("num_local_experts")).ok_or("config.json lacks num_experts")?;
        let step = h.usize("decoder_sparse_step").unwrap_or(1).max(1);
        let dense: Vec<usize> = h
            .get("mlp_only_layers")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_u64).map(|v| v as usize).collect())
            .unwrap_or_default();
        for (i, l) in c.layers.iter_mut().enumerate() {
            l.moe = num_experts > 0 && !dense.contains(&i) && (i + 1) % step == 0;
        }
        c.moe = Some(MoeConfig {
            num_experts,
            top_k: h.need("num_experts_per_tok")?,
            norm_topk_prob: h.bool("norm_topk_prob").unwrap_or(false),
            intermediate_size: h.need("moe_intermediate_size")?,
            weights_in_dtype: true,
            names: NAMES,
        });
    }
    Ok(c)
}

pub fn adjust_gguf(c: &mut DecoderConfig, g: &GgufFile) -> Result<(), String> {
    c.qk_norm = true;
    if c.arch == Arch::Qwen3Moe {
        // llama.cpp renormalises Qwen3-MoE's top-k weights unless the file says otherwise.
        let norm = g.get(&format!("{}.expert_weights_norm", g.architecture().unwrap_or(""))).and_then(|v| v.as_bool()).unwrap_or(true);
        c.moe = Some(gguf_moe(g, norm, true, NAMES)?.ok_or("a qwen3moe GGUF without expert_count")?);
        for (i, l) in c.layers.iter_mut().enumerate() {
            l.moe = g.tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_some();
        }
    }
    Ok(())
}
