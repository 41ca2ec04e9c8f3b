//! Whisper: the encoder-decoder speech model behind the transcription and translation
//! routes, loaded from a Hugging Face `WhisperForConditionalGeneration` folder or from a
//! CTranslate2 folder (faster-whisper's format, which the project's default audio models
//! ship in).
//!
//! - `config`, `tokens`: the model's shape, special tokens, languages, suppress lists.
//! - `encoder`: log-mel features → encoder states, once per 30 s window.
//! - `decoder`: one batched step over the paged KV cache, with per-sequence cross-attention.
//! - `prompt`, `rules`: Whisper's decoder prompt, language detection, and the logits rules
//!   (suppression, timestamps) the sampler applies per row.
//! - `greedy`: a plain greedy loop over the same step function, for tests and references.

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod greedy;
mod layers;
pub mod prompt;
pub mod rules;
pub mod tokens;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use super::ct2::Ct2Model;
use super::tokenizer::Tokenizer;
use super::weights::{SafetensorsWeights, WeightSource};
use super::{LoadError, read_json, resolve_dtype_named};
use crate::audio::features::MelConfig;
use config::WhisperConfig;
use decoder::Decoder;
use encoder::Encoder;
use tokens::WhisperTokens;

/// The network: encoder and decoder in one dtype on one device.
pub struct Whisper {
    pub cfg: WhisperConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub dtype: Kind,
    pub device: Device,
}

impl Whisper {
    /// Builds the network from weights under Hugging Face names.
    pub fn load(cfg: WhisperConfig, src: &dyn WeightSource, device: Device, dtype: Kind) -> Result<Self, LoadError> {
        let _guard = tch::no_grad_guard();
        let loader = layers::Loader { src, device, dtype };
        Ok(Whisper {
            encoder: Encoder::load(&cfg, &loader)?,
            decoder: Decoder::load(&cfg, &loader)?,
            cfg,
            dtype,
            device,
        })
    }

    /// Encoder states `[B, source_len, D]` of float32 features `[B, mels, frames]`.
    pub fn encode(&self, features: &Tensor) -> Result<Tensor, String> {
        self.encoder.forward(features)
    }

    pub fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "Whisper, {}+{} layers, d_model {}, {} heads, {} mel bins, vocab {}, dtype {:?}",
            c.encoder_layers, c.decoder_layers, c.d_model, c.decoder_heads, c.num_mel_bins, c.vocab_size, self.dtype
        )
    }
}

/// Which files a Whisper folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhisperFormat {
    /// `config.json` naming `WhisperForConditionalGeneration`, safetensors weights.
    HuggingFace,
    /// CTranslate2: `model.bin` with a `WhisperSpec`, `config.json` of token lists.
    Ct2,
}

/// Whether a folder holds a Whisper model, and in which format.
pub fn detect(dir: &Path) -> Option<WhisperFormat> {
    let config = read_json(&dir.join("config.json")).ok().flatten();
    let archs = config.as_ref().and_then(|c| c.get("architectures")).and_then(Json::as_array);
    if archs.into_iter().flatten().any(|a| a.as_str() == Some("WhisperForConditionalGeneration"))
        || config.as_ref().and_then(|c| c.get("model_type")).and_then(Json::as_str) == Some("whisper")
    {
        return Some(WhisperFormat::HuggingFace);
    }
    let bin = dir.join("model.bin");
    if bin.is_file() && config.as_ref().is_some_and(|c| c.get("suppress_ids").is_some() || c.get("lang_ids").is_some()) {
        return Some(WhisperFormat::Ct2);
    }
    None
}

/// A Whisper model with what serving it needs besides the network.
pub struct LoadedWhisper {
    pub model: Whisper,
    pub tokens: WhisperTokens,
    pub tokenizer: Arc<Tokenizer>,
    pub mel: MelConfig,
    pub format: WhisperFormat,
    pub path: PathBuf,
}

impl LoadedWhisper {
    /// Text of generated tokens: timestamps and special tokens left out.
    pub fn decode_text(&self, ids: &[u32]) -> String {
        let text: Vec<u32> = ids.iter().copied().filter(|&t| t < self.tokens.eot).collect();
        self.tokenizer.decode(&text, true)
    }
}

/// Loads a Whisper folder; `dtype` is a `--dtype` value (auto, float32, bfloat16, float16).
pub fn load(dir: &Path, dtype: &str, device: Device) -> Result<LoadedWhisper, LoadError> {
    let format = detect(dir).ok_or_else(|| LoadError::Format {
        path: dir.to_owned(),
        msg: "not a Whisper model folder (no WhisperForConditionalGeneration config.json, no CTranslate2 model.bin)".into(),
    })?;
    let bad = |msg: String| LoadError::Format { path: dir.to_owned(), msg };
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_hf_file(&tok_path, None)?;
    let config = read_json(&dir.join("config.json"))?.ok_or_else(|| bad("no config.json".into()))?;
    let preprocessor = read_json(&dir.join("preprocessor_config.json"))?;
    match format {
        WhisperFormat::HuggingFace => {
            let cfg = WhisperConfig::from_hf(&config).map_err(bad)?;
            let generation = read_json(&dir.join("generation_config.json"))?
                .ok_or_else(|| bad("a Whisper folder needs generation_config.json (special tokens, suppress lists)".into()))?;
            let tokens = WhisperTokens::from_hf(&generation, &config, Some(&tokenizer), cfg.vocab_size).map_err(bad)?;
            let mel = MelConfig::from_preprocessor(preprocessor.as_ref(), cfg.num_mel_bins).map_err(bad)?;
            let kind = resolve_dtype_named(dtype, cfg.torch_dtype.as_deref(), device)?;
            let src = SafetensorsWeights::open(dir)?;
            let model = Whisper::load(cfg, &src, device, kind)?;
            Ok(LoadedWhisper { model, tokens, tokenizer: Arc::new(tokenizer), mel, format, path: dir.to_owned() })
        }
        WhisperFormat::Ct2 => {
            let bin = dir.join("model.bin");
            let ct2 = Ct2Model::open(&bin).map_err(|e| LoadError::Format { path: bin.clone(), msg: e.to_string() })?;
            let cfg = WhisperConfig::from_ct2(&ct2).map_err(|msg| LoadError::Format { path: bin.clone(), msg })?;
            let tokens = WhisperTokens::from_ct2(&config, &tokenizer, cfg.vocab_size).map_err(bad)?;
            let mel = MelConfig::from_preprocessor(preprocessor.as_ref(), cfg.num_mel_bins).map_err(bad)?;
            // A float16 checkpoint runs in bfloat16 on CPUs under `auto`, as text models do.
            let kind = resolve_dtype_named(dtype, cfg.torch_dtype.as_deref(), device)?;
            let model = Whisper::load(cfg, &weights::Ct2Weights { model: &ct2 }, device, kind)?;
            Ok(LoadedWhisper { model, tokens, tokenizer: Arc::new(tokenizer), mel, format, path: dir.to_owned() })
        }
    }
}
