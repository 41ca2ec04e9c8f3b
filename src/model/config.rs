//! The shape of a decoder model, read from a GGUF's metadata or a Hugging Face config.json.

use serde_json::Value as Json;

use super::gguf::GgufFile;

/// The decoder families that share the Llama forward pass, and what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Q, K and V projections carry biases (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// The dtype the checkpoint was trained/saved in, for `--dtype auto`.
    pub torch_dtype: Option<String>,
}

impl LlamaConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, String> {
        let arch = match g.architecture() {
            Some("llama") => Arch::Llama,
            Some("mistral") => Arch::Mistral,
            Some("qwen2") => Arch::Qwen2,
            Some(other) => return Err(format!("GGUF architecture {other:?} is not supported (llama, mistral, qwen2 are)")),
            None => return Err("GGUF has no general.architecture".into()),
        };
        let need = |k: &str| g.arch_u64(k).map(|v| v as usize).ok_or_else(|| format!("GGUF metadata lacks {k}"));
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let num_kv_heads = g.arch_u64("attention.head_count_kv").map(|v| v as usize).unwrap_or(num_heads);
        let head_dim = g
            .arch_u64("attention.key_length")
            .map(|v| v as usize)
            .unwrap_or(hidden_size / num_heads);
        let vocab_size = match g.arch_u64("vocab_size") {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or("GGUF has neither vocab_size nor a token list")?,
        };
        Ok(LlamaConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers: need("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: g.arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: g.arch_f64("rope.freq_base").unwrap_or(10000.0),
            max_position_embeddings: need("context_length")?,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            torch_dtype: None,
        })
    }

    pub fn from_hf(cfg: &Json) -> Result<Self, String> {
        let archs: Vec<&str> = cfg
            .get("architectures")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let model_type = cfg.get("model_type").and_then(Json::as_str).unwrap_or("");
        let arch = match (archs.first().copied(), model_type) {
            // The same trunk with a classification head (`score`) instead of the LM head.
            (Some("LlamaForCausalLM" | "LlamaForSequenceClassification"), _) | (None, "llama") => Arch::Llama,
            (Some("MistralForCausalLM" | "MistralForSequenceClassification"), _) | (None, "mistral") => Arch::Mistral,
            (Some("Qwen2ForCausalLM" | "Qwen2ForSequenceClassification" | "Qwen2ForRewardModel" | "Qwen2ForProcessRewardModel"), _) | (None, "qwen2") => Arch::Qwen2,
            (Some(a), _) => return Err(format!(
                "architecture {a} is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM \
                 and their ForSequenceClassification forms, Qwen2ForRewardModel, Qwen2ForProcessRewardModel are)"
            )),
            (None, t) => return Err(format!("config.json names no architecture (model_type {t:?})")),
        };
        let usize_of = |k: &str| cfg.get(k).and_then(Json::as_u64).map(|v| v as usize);
        let need = |k: &str| usize_of(k).ok_or_else(|| format!("config.json lacks {k}"));
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        // transformers 5 writes rope_parameters; older configs have a top-level rope_theta.
        let rope_theta = cfg
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| cfg.get("rope_theta"))
            .and_then(Json::as_f64)
            .unwrap_or(10000.0);
        let scaling = cfg
            .get("rope_parameters")
            .or_else(|| cfg.get("rope_scaling"))
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Json::as_str);
        if let Some(t) = scaling.filter(|t| *t != "default") {
            return Err(format!("rope scaling {t:?} is not supported yet"));
        }
        Ok(LlamaConfig {
            arch,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads: usize_of("num_key_value_heads").unwrap_or(num_heads),
            head_dim: usize_of("head_dim").unwrap_or(hidden_size / num_heads),
            rms_norm_eps: cfg.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: usize_of("max_position_embeddings").unwrap_or(2048),
            tie_word_embeddings: cfg.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2
                || cfg.get("attention_bias").and_then(Json::as_bool).unwrap_or(false),
            torch_dtype: cfg
                .get("torch_dtype")
                .or_else(|| cfg.get("dtype"))
                .and_then(Json::as_str)
                .map(str::to_owned),
        })
    }

    /// Elements of K (or V) cached per token per layer.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
