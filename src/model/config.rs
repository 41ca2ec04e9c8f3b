//! The shape of a decoder model, read from a GGUF's metadata or a Hugging Face config.json.
//!
//! Every decoder family runs the same skeleton (`decoder`); what differs between them is
//! said here, in a few fields, and read by the family's own file (`llama`, `qwen3`,
//! `mixtral`, `gemma`, `phi3`) from its config.

use serde_json::Value as Json;

use super::gguf::GgufFile;
use super::rope::{Rope, RopeContext, Scaling};

pub use super::arch::Arch;

/// The MLP's activation (of the gate, which then multiplies the up projection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` (Gemma's GeGLU).
    GeluTanh,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
            other => Err(format!("hidden activation {other:?} is not supported (silu, gelu_pytorch_tanh are)")),
        }
    }
}

/// Where a family keeps its experts' weights, relative to a layer (`model.layers.N.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeNames {
    /// The router `[experts, hidden]`.
    pub router: &'static str,
    /// The experts' prefix: `{experts}.{e}.{gate}.weight`, …
    pub experts: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// A sparse mixture of experts in place of the MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Renormalise the top-k routing probabilities to sum to one.
    pub norm_topk_prob: bool,
    /// Each expert's MLP width.
    pub intermediate_size: usize,
    /// Routing weights rounded to the model's dtype before they weigh the experts (Qwen3-MoE),
    /// or kept in float32 (Mixtral).
    pub weights_in_dtype: bool,
    pub names: MoeNames,
}

/// What differs from one layer to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Sliding-window attention over this many positions (None: the whole context).
    pub window: Option<usize>,
    /// Which of `DecoderConfig::ropes` the layer uses.
    pub rope: usize,
    /// A mixture of experts instead of the dense MLP.
    pub moe: bool,
}

/// More layers than any model has: a file that claims more is not read further.
const MAX_LAYERS: usize = 1 << 16;

#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The dense MLP's width.
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Q, K and V projections carry biases (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// The dtype the checkpoint was trained/saved in, for `--dtype auto`.
    pub torch_dtype: Option<String>,
    /// The rotary embeddings the layers use (Gemma 3: one for local, one for global layers).
    pub ropes: Vec<Rope>,
    pub layers: Vec<LayerSpec>,
    /// RMSNorm of each query and key head before the rotary embedding (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma's RMSNorm: weights stored as w − 1, `(1 + w)·x̂` in float32.
    pub unit_offset_norms: bool,
    /// Norms after attention and after the MLP too, before each residual add (Gemma).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by √hidden, rounded to the model's dtype (Gemma).
    pub scale_embeddings: bool,
    pub activation: Activation,
    /// The factor of `q·k` (head_dim^-½, or Gemma's query_pre_attn_scalar^-½).
    pub attn_scale: f64,
    /// Gemma 2's attention logit soft-capping.
    pub attn_softcap: Option<f64>,
    /// Gemma 2's final logit soft-capping.
    pub final_softcap: Option<f64>,
    pub moe: Option<MoeConfig>,
    /// Q/K/V and gate/up come as fused `qkv_proj` and `gate_up_proj` weights (Phi-3).
    pub fused_projections: bool,
    /// What the trunk's weight names start with (`model.`; a Gemma 3 image-text
    /// checkpoint's text model sits under `model.language_model.` or
    /// `language_model.model.`).
    pub prefix: String,
    /// Qwen2-VL's multimodal rotary sections: how many of the rotary frequencies follow
    /// the time, height and width positions.
    pub mrope_section: Option<[usize; 3]>,
    /// Qwen2-VL's vision tower.
    pub vision: Option<super::qwen2_vl::VisionConfig>,
}

/// Reads values from a config.json object.
pub struct Hf<'a>(pub &'a Json);

impl Hf<'_> {
    pub fn get(&self, k: &str) -> Option<&Json> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    pub fn usize(&self, k: &str) -> Option<usize> {
        self.get(k).and_then(Json::as_u64).map(|v| v as usize)
    }
    pub fn need(&self, k: &str) -> Result<usize, String> {
        self.usize(k).ok_or_else(|| format!("config.json lacks {k}"))
    }
    pub fn f64(&self, k: &str) -> Option<f64> {
        self.get(k).and_then(Json::as_f64)
    }
    pub fn bool(&self, k: &str) -> Option<bool> {
        self.get(k).and_then(Json::as_bool)
    }
    pub fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(Json::as_str)
    }
    /// `layer_types`: which layers are `sliding_attention`.
    pub fn sliding_layers(&self) -> Option<Vec<bool>> {
        let list = self.get("layer_types")?.as_array()?;
        Some(list.iter().map(|t| t.as_str() == Some("sliding_attention")).collect())
    }
    /// The rope object (`rope_parameters`, or the older `rope_scaling`).
    pub fn rope_params(&self) -> Option<&Json> {
        self.get("rope_parameters").or_else(|| self.get("rope_scaling"))
    }
}

impl DecoderConfig {
    /// The config of a model whose architecture (after `--hf-overrides`) is `name`.
    pub fn from_hf(cfg: &Json) -> Result<Self, String> {
        let named = cfg.get("architectures").and_then(Json::as_array).and_then(|a| a.first()).and_then(Json::as_str);
        let entry = match named {
            Some(a) => super::arch::lookup(a).ok_or_else(|| super::arch::unsupported(a))?,
            None => {
                let t = cfg.get("model_type").and_then(Json::as_str).unwrap_or("");
                super::arch::by_model_type(t).ok_or_else(|| format!("config.json names no architecture (model_type {t:?})"))?
            }
        };
        match entry.arch {
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => super::llama::config_from_hf(cfg, entry.arch),
            Arch::Qwen3 | Arch::Qwen3Moe => super::qwen3::config_from_hf(cfg, entry.arch),
            Arch::Mixtral => super::mixtral::config_from_hf(cfg),
            Arch::Gemma2 | Arch::Gemma3 => super::gemma::config_from_hf(cfg, entry.arch),
            Arch::Phi3 => super::phi3::config_from_hf(cfg),
            Arch::Qwen2Vl => super::qwen2_vl::config_from_hf(cfg),
            Arch::Bert => Err(format!("{} is an encoder, not a decoder", entry.name)),
        }
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, String> {
        let arch = match g.architecture() {
            Some("llama") => Arch::Llama,
            Some("mistral") => Arch::Mistral,
            Some("qwen2") => Arch::Qwen2,
            Some("qwen3") => Arch::Qwen3,
            Some("qwen3moe") => Arch::Qwen3Moe,
            Some("gemma2") => Arch::Gemma2,
            Some("gemma3") => Arch::Gemma3,
            Some("phi3") => Arch::Phi3,
            Some(other) => {
                return Err(format!(
                    "GGUF architecture {other:?} is not supported (llama, mistral, qwen2, qwen3, qwen3moe, gemma2, gemma3, \
                     phi3 are)"
                ));
            }
            None => return Err("GGUF has no general.architecture".into()),
        };
        let mut c = Self::base_gguf(g, arch)?;
        match arch {
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => super::llama::adjust_gguf(&mut c, g)?,
            Arch::Qwen3 | Arch::Qwen3Moe => super::qwen3::adjust_gguf(&mut c, g)?,
            Arch::Gemma2 | Arch::Gemma3 => super::gemma::adjust_gguf(&mut c, g)?,
            Arch::Phi3 => super::phi3::adjust_gguf(&mut c, g)?,
            Arch::Mixtral | Arch::Qwen2Vl | Arch::Bert => unreachable!("not a GGUF architecture name"),
        }
        Ok(c)
    }

    /// What every family's config.json says alike, with Llama's defaults; the family's
    /// reader changes the rest. Layers get no window and the one rope.
    pub fn base_hf(cfg: &Json, arch: Arch) -> Result<Self, String> {
        let h = Hf(cfg);
        let hidden_size = h.need("hidden_size")?;
        let num_heads = h.need("num_attention_heads")?;
        let head_dim = h.usize("head_dim").unwrap_or(hidden_size / num_heads);
        let max_position_embeddings = h.usize("max_position_embeddings").unwrap_or(2048);
        let rope_ctx = RopeContext { head_dim, max_position_embeddings, original_max_top: None, default_theta: 10000.0 };
        let rope = Rope::from_params(h.rope_params(), h.f64("rope_theta"), &rope_ctx)?;
        let num_layers = h.need("num_hidden_layers")?;
        Ok(DecoderConfig {
            arch,
            vocab_size: h.need("vocab_size")?,
            hidden_size,
            intermediate_size: h.need("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads: h.usize("num_key_value_heads").unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: h.f64("rms_norm_eps").unwrap_or(1e-6),
            max_position_embeddings,
            tie_word_embeddings: h.bool("tie_word_embeddings").unwrap_or(false),
            qkv_bias: h.bool("attention_bias").unwrap_or(false),
            torch_dtype: h.str("torch_dtype").or_else(|| h.str("dtype")).map(str::to_owned),
            ropes: vec![rope],
            layers: vec![LayerSpec { window: None, rope: 0, moe: false }; num_layers],
            qk_norm: false,
            unit_offset_norms: false,
            sandwich_norms: false,
            scale_embeddings: false,
            activation: Activation::from_name(h.str("hidden_act").or_else(|| h.str("hidden_activation")).unwrap_or("silu"))?,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            moe: None,
            fused_projections: false,
            prefix: "model.".into(),
            mrope_section: None,
            vision: None,
        })
    }

    /// Sets each layer's window: `sliding[i]` layers get `window`. With no `layer_types` in
    /// the config, `default(i)` says which layers slide.
    pub fn set_windows(&mut self, cfg: &Json, window: Option<usize>, default: impl Fn(usize) -> bool) {
        let listed = Hf(cfg).sliding_layers();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let sliding = match &listed {
                Some(l) => l.get(i).copied().unwrap_or(false),
                None => default(i),
            };
            layer.window = window.filter(|_| sliding);
        }
    }

    /// What every family's GGUF metadata says alike; the family's reader changes the rest.
    fn base_gguf(g: &GgufFile, arch: Arch) -> Result<Self, String> {
        let need = |k: &str| g.arch_u64(k).map(|v| v as usize).ok_or_else(|| format!("GGUF metadata lacks {k}"));
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        if num_heads == 0 {
            return Err("GGUF metadata says attention.head_count is 0".into());
        }
        let num_kv_heads = g.arch_u64("attention.head_count_kv").map(|v| v as usize).unwrap_or(num_heads);
        let head_dim = g.arch_u64("attention.key_length").map(|v| v as usize).unwrap_or(hidden_size / num_heads);
        let vocab_size = match g.arch_u64("vocab_size") {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or("GGUF has neither vocab_size nor a token list")?,
        };
        let num_layers = need("block_count")?;
        if num_layers > MAX_LAYERS {
            return Err(format!("GGUF metadata says block_count is {num_layers}, more than {MAX_LAYERS}"));
        }
        let max_position_embeddings = need("context_length")?;
        let theta = g.arch_f64("rope.freq_base").unwrap_or(10000.0);
        let dim = g.arch_u64("rope.dimension_count").map(|v| v as usize).unwrap_or(head_dim);
        let scaling = match g.get_str(&format!("{}.rope.scaling.type", g.architecture().unwrap_or(""))) {
            None | Some("none") => match rope_freqs(g, "rope_freqs.weight")? {
                Some(f) => Scaling::Factors(f),
                None => Scaling::None,
            },
            Some("linear") => Scaling::Linear {
                factor: g.arch_f64("rope.scaling.factor").ok_or("GGUF linear rope scaling lacks rope.scaling.factor")?,
            },
            Some("yarn") => {
                let factor = g.arch_f64("rope.scaling.factor").ok_or("GGUF yarn rope scaling lacks rope.scaling.factor")?;
                let original_max = g
                    .arch_f64("rope.scaling.original_context_length")
                    .ok_or("GGUF yarn rope scaling lacks rope.scaling.original_context_length")?;
                let attention_factor = g
                    .arch_f64("rope.scaling.yarn_attn_factor")
                    .unwrap_or(if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 });
                Scaling::Yarn {
                    factor,
                    original_max,
                    beta_fast: g.arch_f64("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                    beta_slow: g.arch_f64("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                    truncate: true,
                    attention_factor,
                }
            }
            Some(other) => return Err(format!("GGUF rope scaling {other:?} is not supported (none, linear, yarn are)")),
        };
        Ok(DecoderConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: g.arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            max_position_embeddings,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            torch_dtype: None,
            ropes: vec![Rope { theta, dim, scaling }],
            layers: vec![LayerSpec { window: None, rope: 0, moe: false }; num_layers],
            qk_norm: false,
            unit_offset_norms: false,
            sandwich_norms: false,
            scale_embeddings: false,
            activation: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            moe: None,
            fused_projections: false,
            prefix: "model.".into(),
            mrope_section: None,
            vision: None,
        })
    }

    /// Elements of K (or V) cached per token per layer.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// A small float tensor of a GGUF file (rope factors), when it has one.
pub fn rope_freqs(g: &GgufFile, name: &str) -> Result<Option<Vec<f64>>, String> {
    let Some(info) = g.tensor(name) else { return Ok(None) };
    let mut data = vec![0f32; info.numel()];
    super::quant::dequantize(info.ggml_type, g.bytes(info), &mut data);
    Ok(Some(data.into_iter().map(f64::from).collect()))
}

/// The MoE block of a GGUF file (`{arch}.expert_count`, stacked expert tensors).
pub fn gguf_moe(g: &GgufFile, norm_topk_prob: bool, weights_in_dtype: bool, names: MoeNames) -> Result<Option<MoeConfig>, String> {
    let Some(n) = g.arch_u64("expert_count").filter(|&n| n > 0) else { return Ok(None) };
    let top_k = g.arch_u64("expert_used_count").ok_or("GGUF lacks expert_used_count")? as usize;
    let width = match g.arch_u64("expert_feed_forward_length") {
        Some(w) => w as usize,
        None => g.tensor("blk.0.ffn_gate_exps.weight").map(|t| t.shape[1]).ok_or("GGUF lacks the experts' width")?,
    };
    Ok(Some(MoeConfig { num_experts: n as usize, top_k, norm_topk_prob, intermediate_size: width, weights_in_dtype, names }))
}
