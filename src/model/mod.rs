//! Models: finding the files, reading weights (GGUF, safetensors), the tokenizer, the chat
//! template, and the forward pass.

pub mod arch;
pub mod attention;
pub mod batch;
pub mod bert;
pub mod chat_template;
pub mod config;
pub mod ct2;
pub mod decoder;
pub mod decoder_pool;
pub mod encoder;
pub mod gemma;
pub mod gguf;
pub mod hub;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod mixtral;
pub mod moe;
pub mod mrope;
pub mod phi3;
pub mod pooling;
pub mod quant;
pub mod qwen2_vl;
pub mod qwen3;
pub mod resolve;
pub mod rope;
pub mod task;
pub mod tokenizer;
pub mod tp;
pub mod weights;
pub mod whisper;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;
use tch::{Device, Kind};

use config::DecoderConfig;
use decoder::Decoder;
use resolve::ModelLocation;
use tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("the weights lack tensor {0}")]
    MissingTensor(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("model {0:?} was not found: give a GGUF file, a Hugging Face model folder, or a Hugging Face id (ORG/NAME)")]
    NotFound(String),
    #[error(transparent)]
    Hub(#[from] hub::HubError),
}

impl LoadError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LoadError::Io { path: path.to_owned(), source }
    }
}

/// Everything the pipeline needs to know about the served model besides the weights.
pub struct ModelInfo {
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<String>,
    /// generation_config.json, when the model has one.
    pub generation_config: Option<Json>,
    /// Ids that end generation (EOS, and end-of-turn where the model has one).
    pub eos_ids: Vec<u32>,
    pub max_model_len: usize,
    pub location: ModelLocation,
}

/// A loaded generation model: the forward pass and what goes with it.
pub struct LoadedModel {
    pub decoder: Decoder,
    pub info: ModelInfo,
}

/// The dtype a `--dtype` value asks for on a device.
pub fn resolve_dtype(requested: &str, cfg: &DecoderConfig, device: Device) -> Result<Kind, LoadError> {
    resolve_dtype_named(requested, cfg.torch_dtype.as_deref(), device)
}

/// As `resolve_dtype`, given the checkpoint's own dtype name.
pub fn resolve_dtype_named(requested: &str, torch_dtype: Option<&str>, device: Device) -> Result<Kind, LoadError> {
    Ok(match requested {
        "float32" | "float" | "fp32" => Kind::Float,
        "bfloat16" | "bf16" => Kind::BFloat16,
        "float16" | "half" | "fp16" => Kind::Half,
        // vLLM's rule: a float16 checkpoint stays float16 on GPUs; everything else runs in
        // bfloat16, which this engine's CPU path (AVX-512 BF16) and GPUs both do fast.
        "auto" => match (torch_dtype, device) {
            (Some("float16"), Device::Cuda(_)) => Kind::Half,
            _ => Kind::BFloat16,
        },
        other => {
            return Err(LoadError::Unsupported(format!(
                "--dtype {other} is not supported (auto, float32, bfloat16, float16 are)"
            )));
        }
    })
}

pub struct LoadOptions<'a> {
    pub device: Device,
    pub dtype: &'a str,
    pub max_model_len: Option<usize>,
    pub quantization: Quantization,
    /// This rank's place when the model is split over ranks (`tp`); None: all of it.
    pub shard: Option<tp::Shard>,
}

/// How a GGUF file's quantized matrices are run (`--quantization`, resolved in `config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// `gguf`, as vLLM names it: the matrices stay in their blocks and the linear layers run
    /// on the quantized kernels (CPU only).
    Gguf,
    /// `none`: every tensor is dequantized to `--dtype` when the model loads.
    Dequantize,
}

impl Quantization {
    /// A `--quantization` value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "gguf" => Ok(Quantization::Gguf),
            "none" => Ok(Quantization::Dequantize),
            other => Err(format!(
                "--quantization {other} is not supported: gguf (run a GGUF file's quantized matrices as they are) and none (dequantize them when loading) are"
            )),
        }
    }

    /// Whether a GGUF model's matrices stay in their blocks.
    pub fn keeps_blocks(self) -> bool {
        self == Quantization::Gguf
    }
}

/// Runs `f` (loading weights) on a thread that ends when it returns.
///
/// libtorch's CPU kernels run on OpenMP (libgomp), which keeps a pool of worker threads
/// for every thread that has started a parallel region, for as long as that thread lives.
/// Once the pools' workers outnumber the CPUs, libgomp stops spinning between parallel
/// regions, and every small operation of a decode step (hundreds per step) then wakes its
/// workers through the kernel: a batch-1 step of the default model took 49 ms instead of
/// 33 on two cores. Loading on a passing thread frees its pool, leaving only the engine's.
pub fn on_passing_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

pub fn load(location: ModelLocation, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    match &location.format {
        resolve::Format::Gguf(path) => {
            let path = path.clone();
            let file = gguf::GgufFile::open(&path)?;
            let bad = |msg: String| LoadError::Format { path: path.clone(), msg };
            let cfg = DecoderConfig::from_gguf(&file).map_err(bad)?;
            let (tokenizer, tok_template) = match location.tokenizer_dir() {
                Some(dir) => {
                    let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
                    let t = Tokenizer::from_hf_file(&dir.join("tokenizer.json"), tok_config.as_ref())?;
                    (t, hf_chat_template(dir, tok_config.as_ref())?)
                }
                None => (Tokenizer::from_gguf(&file, &path)?, None),
            };
            let mut eos_ids: Vec<u32> = tokenizer.special.eos.iter().map(|(id, _)| *id).collect();
            if let Some(eot) = file.get_u64("tokenizer.ggml.eot_token_id") {
                eos_ids.push(eot as u32);
            }
            eos_ids.dedup();
            let chat_template = tok_template.or_else(|| file.get_str("tokenizer.chat_template").map(str::to_owned));
            let dtype = resolve_dtype(opts.dtype, &cfg, opts.device)?;
            let src = weights::GgufWeights {
                file: &file,
                path: &path,
                arch: cfg.arch,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                keep_quantized: opts.quantization.keeps_blocks(),
            };
            if opts.quantization.keeps_blocks() && opts.device != Device::Cpu {
                return Err(LoadError::Unsupported(
                    "--quantization gguf runs on the CPU only; on another device use --quantization none".into(),
                ));
            }
            let max_model_len = limit_len(&cfg, opts.max_model_len)?;
            let decoder = Decoder::load_shard(cfg, &src, opts.device, dtype, opts.shard.clone())?;
            Ok(LoadedModel {
                decoder,
                info: ModelInfo {
                    tokenizer: Arc::new(tokenizer),
                    chat_template,
                    generation_config: None,
                    eos_ids,
                    max_model_len,
                    location,
                },
            })
        }
        resolve::Format::HfDir(dir) => {
            let dir = dir.clone();
            let config = location
                .config()?
                .ok_or_else(|| LoadError::Format { path: dir.clone(), msg: "no config.json".into() })?;
            let cfg = DecoderConfig::from_hf(&config).map_err(|msg| LoadError::Format { path: dir.clone(), msg })?;
            let tok_dir = location.tokenizer_dir().unwrap_or(&dir).to_owned();
            let tok_config = read_json(&tok_dir.join("tokenizer_config.json"))?;
            let tokenizer = Tokenizer::from_hf_file(&tok_dir.join("tokenizer.json"), tok_config.as_ref())?;
            let generation_config = read_json(&dir.join("generation_config.json"))?;
            let chat_template = hf_chat_template(&tok_dir, tok_config.as_ref())?;
            let mut eos_ids: Vec<u32> = tokenizer.special.eos.iter().map(|(id, _)| *id).collect();
            for src in [Some(&config), generation_config.as_ref()].into_iter().flatten() {
                eos_ids.extend(ids_of(src.get("eos_token_id")));
            }
            eos_ids.sort_unstable();
            eos_ids.dedup();
            if opts.quantization.keeps_blocks() {
                return Err(LoadError::Unsupported(
                    "--quantization gguf needs a GGUF file; this model is a Hugging Face folder".into(),
                ));
            }
            let dtype = resolve_dtype(opts.dtype, &cfg, opts.device)?;
            let src = weights::SafetensorsWeights::open_as(&dir, dtype)?;
            let max_model_len = limit_len(&cfg, opts.max_model_len)?;
            let decoder = Decoder::load_shard(cfg, &src, opts.device, dtype, opts.shard.clone())?;
            Ok(LoadedModel {
                decoder,
                info: ModelInfo {
                    tokenizer: Arc::new(tokenizer),
                    chat_template,
                    generation_config,
                    eos_ids,
                    max_model_len,
                    location,
                },
            })
        }
    }
}

fn limit_len(cfg: &DecoderConfig, requested: Option<usize>) -> Result<usize, LoadError> {
    match requested {
        Some(n) if n > cfg.max_position_embeddings => Err(LoadError::Unsupported(format!(
            "--max-model-len {n} is larger than the model's {} positions",
            cfg.max_position_embeddings
        ))),
        Some(0) => Err(LoadError::Unsupported("--max-model-len must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(cfg.max_position_embeddings),
    }
}

fn ids_of(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).map(|i| i as u32).collect(),
        _ => vec![],
    }
}

pub fn read_json(path: &Path) -> Result<Option<Json>, LoadError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LoadError::Format { path: path.to_owned(), msg: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::io(path, e)),
    }
}

/// The template from tokenizer_config.json (a string, or a list of named templates of
/// which "default" is taken), else from a `chat_template.jinja` file.
pub(crate) fn hf_chat_template(dir: &Path, tok_config: Option<&Json>) -> Result<Option<String>, LoadError> {
    match tok_config.and_then(|c| c.get("chat_template")) {
        Some(Json::String(s)) => return Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let default = list.iter().find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
            if let Some(t) = default.and_then(|t| t.get("template")).and_then(Json::as_str) {
                return Ok(Some(t.to_owned()));
            }
        }
        _ => {}
    }
    let file = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&file) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::io(&file, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::Quantization;

    #[test]
    fn quantization_values() {
        assert_eq!(Quantization::parse("gguf"), Ok(Quantization::Gguf));
        assert_eq!(Quantization::parse("none"), Ok(Quantization::Dequantize));
        let err = Quantization::parse("awq").unwrap_err();
        assert!(err.contains("--quantization awq is not supported") && err.contains("gguf"), "{err}");
        assert!(Quantization::Gguf.keeps_blocks());
        assert!(!Quantization::Dequantize.keeps_blocks());
    }
}
