//! Pooling models: a backbone (a BERT encoder here, or a Llama-family decoder from
//! `decoder_pool`) and what turns its states into one vector per input — a
//! sentence-transformers pooling (embedding models) or a classification head
//! (classifiers, cross-encoders). Which kind a folder holds comes from config.json's
//! `architectures`; `--task` may only pick what the folder can do.

use std::sync::Arc;

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use super::bert::{Bert, BertConfig, EncoderInput};
use super::pooling::{self, PoolingConfig, PoolingMode};
use super::resolve::{Format, ModelLocation};
use super::tokenizer::Tokenizer;
use super::{LoadError, ModelInfo, read_json, weights};
use super::task::Task;

/// What the encoder's outputs are.
#[derive(Debug, Clone)]
pub enum EncoderKind {
    /// One pooled vector per input (not yet normalized).
    Embedding(PoolingConfig),
    /// Logits per input, one per label.
    Classifier { labels: Vec<String> },
    /// One row per token (`--task reward`): the final hidden states, or a reward model's
    /// per-token outputs, as they are (vLLM's ALL pooling, no normalisation).
    TokenRewards,
    /// A process reward model's rows at its step tokens (vLLM's STEP pooling): the tokens
    /// equal to `step_tag_id`, the columns `returned` (all when none), softmaxed.
    StepRewards { step_tag_id: u32, returned: Option<Vec<usize>> },
}

/// Matryoshka embeddings: the vector may be cut to fewer dimensions.
#[derive(Debug, Clone)]
pub struct Matryoshka {
    /// The sizes the model was trained for; empty means any size up to the full one.
    pub dimensions: Vec<usize>,
}

/// The network under a pooling model. Each backbone runs a batch of whole inputs.
pub trait PoolingBackbone: Send {
    /// Final hidden states `[B, L, H]` and a mask `[B, L]` (1 for real tokens).
    fn hidden_states(&self, inputs: &[&EncoderInput]) -> (Tensor, Tensor);

    /// One float32 vector `[B, H]` per input, pooled as `mode` says.
    fn pooled(&self, inputs: &[&EncoderInput], mode: PoolingMode) -> Tensor {
        let (hidden, mask) = self.hidden_states(inputs);
        pooling::pool(&hidden, &mask, mode)
    }

    /// The classification head's float32 logits `[B, labels]`.
    fn classify(&self, inputs: &[&EncoderInput]) -> Tensor;

    /// Float32 rows `[total tokens, width]` of every token, inputs one after another.
    fn token_outputs(&self, inputs: &[&EncoderInput]) -> Tensor;

    /// What was loaded, for the start-up log.
    fn describe(&self) -> String;

    /// A vision model's image placeholder token: inputs may then carry images.
    fn image_token(&self) -> Option<u32> {
        None
    }
}

impl PoolingBackbone for Bert {
    fn hidden_states(&self, inputs: &[&EncoderInput]) -> (Tensor, Tensor) {
        self.encode(inputs)
    }

    fn classify(&self, inputs: &[&EncoderInput]) -> Tensor {
        Bert::classify(self, inputs)
    }

    fn token_outputs(&self, _inputs: &[&EncoderInput]) -> Tensor {
        unreachable!("BERT is not served for --task reward")
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "{}, {} layers, hidden {}, {} heads, vocab {}, dtype {:?}",
            c.family_name(),
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.vocab_size,
            self.dtype
        )
    }
}

pub struct EncoderModel {
    pub backbone: Box<dyn PoolingBackbone>,
    pub kind: EncoderKind,
    pub matryoshka: Option<Matryoshka>,
    /// Vector length of an embedding (hidden size), the number of labels, or the length
    /// of each token's row.
    pub width: usize,
    /// A score pair is the two texts joined into one input (an LLM converted into a
    /// reranker, vLLM's `use_sep_token: false`), not the tokenizer's pair template.
    pub join_pairs: bool,
}

pub struct LoadedEncoder {
    pub model: EncoderModel,
    pub info: ModelInfo,
}

/// `config.json`'s `architectures` of a folder, after `--hf-overrides` (empty for a GGUF
/// file, unless the overrides name some, or when absent).
pub fn architectures(location: &ModelLocation) -> Result<Vec<String>, LoadError> {
    let cfg = location.config()?;
    let list = cfg.as_ref().and_then(|c| c.get("architectures")).and_then(Json::as_array);
    let mut archs: Vec<String> = list.into_iter().flatten().filter_map(Json::as_str).map(str::to_owned).collect();
    if archs.is_empty() {
        if let Some(t) = cfg.as_ref().and_then(|c| c.get("model_type")).and_then(Json::as_str) {
            match t {
                "bert" => archs.push("BertModel".into()),
                "xlm-roberta" => archs.push("XLMRobertaModel".into()),
                "roberta" => archs.push("RobertaModel".into()),
                _ => {}
            }
        }
    }
    Ok(archs)
}

/// Architectures that are pooling models only, and whether each has a classification
/// head. (Causal LMs are generation models that `--task embed` may also pool.)
pub fn encoder_arch(arch: &str) -> Option<bool> {
    use super::arch::Role;
    match super::arch::lookup(arch)?.role {
        Role::EncoderEmbedding => Some(false),
        Role::EncoderClassifier | Role::DecoderClassifier => Some(true),
        Role::CausalLm | Role::DecoderReward => None,
    }
}

/// The encoders of `bert.rs`: BERT and (XLM-)RoBERTa, plain or with a classification head.
pub fn is_bert_family(arch: &str) -> bool {
    super::arch::lookup(arch).is_some_and(|a| a.arch == super::arch::Arch::Bert)
}

/// Loads a pooling model for `task`: BERT and XLM-RoBERTa folders here, decoders (folders
/// or GGUF) in `decoder_pool`.
pub fn load(
    location: ModelLocation,
    task: Task,
    device: Device,
    dtype: &str,
    max_model_len: Option<usize>,
) -> Result<LoadedEncoder, LoadError> {
    let archs = architectures(&location)?;
    if !archs.iter().any(|a| is_bert_family(a)) {
        return super::decoder_pool::load(location, task, device, dtype, max_model_len);
    }
    let Format::HfDir(dir) = &location.format else {
        return Err(LoadError::Unsupported("a GGUF file holds a decoder, not a BERT or XLM-RoBERTa model".into()));
    };
    let dir = dir.clone();
    let bad = |msg: String| LoadError::Format { path: dir.clone(), msg };
    let config = location.config()?.ok_or_else(|| bad("no config.json".into()))?;
    let archs = architectures(&location)?;
    let (arch, with_head) = archs
        .iter()
        .find_map(|a| encoder_arch(a).map(|h| (a.clone(), h)))
        .ok_or_else(|| {
            LoadError::Unsupported(format!(
                "architecture {} is not a supported pooling model (BertModel, BertForSequenceClassification, \
                 XLMRobertaModel, XLMRobertaForSequenceClassification, RobertaModel, \
                 RobertaForSequenceClassification are)",
                archs.first().map(String::as_str).unwrap_or("(none)")
            ))
        })?;
    let cfg = BertConfig::from_hf(&config).map_err(bad)?;
    let dtype = super::resolve_dtype_named(dtype, cfg.torch_dtype.as_deref(), device)?;
    let src = weights::SafetensorsWeights::open_as(&dir, dtype)?;
    let bert = Bert::load(cfg.clone(), &src, with_head, device, dtype)?;

    let kind = if with_head {
        EncoderKind::Classifier { labels: labels(Some(&config), bert.num_labels().unwrap_or(0)) }
    } else {
        EncoderKind::Embedding(PoolingConfig::from_dir(&dir, PoolingMode::Cls)?)
    };
    let width = match &kind {
        EncoderKind::Embedding(_) => cfg.hidden_size,
        EncoderKind::Classifier { labels } => labels.len(),
        EncoderKind::TokenRewards | EncoderKind::StepRewards { .. } => {
            unreachable!("an encoder loads as an embedding model or a classifier")
        }
    };
    let matryoshka = matryoshka(&config);

    // The longest input: the position table, or less where sentence-transformers says so.
    let mut model_len = cfg.max_input_len();
    if let EncoderKind::Embedding(p) = &kind {
        if let Some(m) = p.max_seq_length {
            model_len = model_len.min(m);
        }
    }
    let max_model_len = match max_model_len {
        Some(n) if n > cfg.max_input_len() => {
            return Err(LoadError::Unsupported(format!(
                "--max-model-len {n} is larger than the model's {} positions",
                cfg.max_input_len()
            )));
        }
        Some(0) => return Err(LoadError::Unsupported("--max-model-len must be at least 1".into())),
        Some(n) => n,
        None => model_len,
    };
    let tok_dir = location.tokenizer_dir().unwrap_or(&dir).to_owned();
    let tok_config = read_json(&tok_dir.join("tokenizer_config.json"))?;
    let tokenizer = Tokenizer::from_hf_file(&tok_dir.join("tokenizer.json"), tok_config.as_ref())?;
    let chat_template = super::hf_chat_template(&tok_dir, tok_config.as_ref())?;
    tracing::info!("pooling model: {arch}, {:?}", kind);
    Ok(LoadedEncoder {
        model: EncoderModel { backbone: Box::new(bert), kind, matryoshka, width, join_pairs: false },
        info: ModelInfo {
            tokenizer: Arc::new(tokenizer),
            chat_template,
            generation_config: None,
            eos_ids: Vec::new(),
            max_model_len,
            location,
        },
    })
}

/// The names of `n` labels from config.json's `id2label` (`LABEL_i` where it has none).
pub fn labels(config: Option<&Json>, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            config
                .and_then(|c| c.get("id2label"))
                .and_then(|m| m.get(i.to_string()))
                .and_then(Json::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("LABEL_{i}"))
        })
        .collect()
}

/// vLLM's reading of Matryoshka support: `is_matryoshka` or `matryoshka_dimensions`.
pub fn matryoshka(config: &Json) -> Option<Matryoshka> {
    let dims: Vec<usize> = config
        .get("matryoshka_dimensions")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_u64).map(|d| d as usize).collect())
        .unwrap_or_default();
    let flag = config.get("is_matryoshka").and_then(Json::as_bool).unwrap_or(false);
    (flag || !dims.is_empty()).then_some(Matryoshka { dimensions: dims })
}

impl EncoderModel {
    /// One forward pass over a batch: a vector per input (see `EncoderKind`); per-token
    /// outputs come as each input's rows one after another.
    pub fn run(&self, inputs: &[&EncoderInput]) -> Vec<Vec<f32>> {
        let _guard = tch::no_grad_guard();
        let out: Tensor = match &self.kind {
            EncoderKind::Embedding(p) => self.backbone.pooled(inputs, p.mode),
            EncoderKind::Classifier { .. } => self.backbone.classify(inputs),
            EncoderKind::TokenRewards | EncoderKind::StepRewards { .. } => self.backbone.token_outputs(inputs),
        };
        let out = out.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let width = out.size()[1] as usize;
        let flat: Vec<f32> = Vec::try_from(out.view([-1])).unwrap_or_default();
        // Per-token outputs: each input's rows, one input after another.
        let per_input = || {
            let mut rest = flat.as_slice();
            inputs.iter().map(move |i| {
                let (mine, tail) = rest.split_at(i.ids.len() * width);
                rest = tail;
                (i, mine)
            })
        };
        match &self.kind {
            EncoderKind::TokenRewards => per_input().map(|(_, rows)| rows.to_vec()).collect(),
            EncoderKind::StepRewards { step_tag_id, returned } => per_input()
                .map(|(input, rows)| {
                    let steps = rows.chunks(width).zip(&input.ids).filter(|(_, id)| *id == step_tag_id);
                    steps
                        .flat_map(|(row, _)| match returned {
                            Some(cols) => pooling::softmax(&cols.iter().map(|&c| row[c]).collect::<Vec<_>>()),
                            None => pooling::softmax(row),
                        })
                        .collect()
                })
                .collect(),
            _ => flat.chunks(width.max(1)).map(<[f32]>::to_vec).collect(),
        }
    }

    pub fn is_embedding(&self) -> bool {
        matches!(self.kind, EncoderKind::Embedding(_))
    }

    /// Whether the model's own pipeline normalizes embeddings.
    pub fn normalizes(&self) -> bool {
        matches!(&self.kind, EncoderKind::Embedding(p) if p.normalize)
    }

    pub fn labels(&self) -> &[String] {
        match &self.kind {
            EncoderKind::Classifier { labels } => labels,
            EncoderKind::Embedding(_) | EncoderKind::TokenRewards | EncoderKind::StepRewards { .. } => &[],
        }
    }
}

/// What the request-handling stages need to know about a pooling model.
#[derive(Debug, Clone)]
pub struct PoolingInfo {
    /// An embedding model (else a classifier).
    pub embedding: bool,
    /// Embeddings are normalized unless a request says otherwise.
    pub normalizes: bool,
    pub matryoshka: Option<Matryoshka>,
    /// Length of an embedding, the number of labels, or the length of a token's row.
    pub width: usize,
    pub labels: Vec<String>,
    /// Outputs are one row of `width` per token (`--task reward`).
    pub per_token: bool,
    /// Score pairs are joined into one text (see `EncoderModel::join_pairs`).
    pub join_pairs: bool,
}

/// vLLM's default step token of Qwen2 process reward models (`<extra_0>`).
pub const QWEN2_PRM_STEP_TAG_ID: u32 = 151651;

impl EncoderModel {
    /// `--override-pooler-config`: `step_tag_id` and `returned_token_ids`, the STEP
    /// pooling settings of a process reward model (vLLM's pooler config keys).
    pub fn override_pooler(&mut self, overrides: &Json) -> Result<(), String> {
        let Json::Object(map) = overrides else { return Err("must be a JSON object".into()) };
        if let Some(k) = map.keys().find(|k| !matches!(k.as_str(), "step_tag_id" | "returned_token_ids")) {
            return Err(format!("{k:?} is not supported (step_tag_id, returned_token_ids are)"));
        }
        let labels = self.width;
        let EncoderKind::StepRewards { step_tag_id, returned } = &mut self.kind else {
            return Err("step_tag_id and returned_token_ids apply to process reward models (STEP pooling) only".into());
        };
        if let Some(v) = map.get("step_tag_id") {
            *step_tag_id = v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or("step_tag_id must be a token id")?;
        }
        if let Some(v) = map.get("returned_token_ids") {
            let cols: Vec<usize> = v
                .as_array()
                .map(|a| a.iter().filter_map(Json::as_u64).map(|c| c as usize).collect())
                .filter(|c: &Vec<usize>| !c.is_empty() && c.len() == v.as_array().map_or(0, Vec::len))
                .ok_or("returned_token_ids must be a non-empty list of label indexes")?;
            if let Some(c) = cols.iter().find(|&&c| c >= labels) {
                return Err(format!("returned_token_ids: {c} is not below the model's {labels} labels"));
            }
            self.width = cols.len();
            *returned = Some(cols);
        }
        Ok(())
    }

    pub fn info(&self) -> PoolingInfo {
        PoolingInfo {
            embedding: self.is_embedding(),
            normalizes: self.normalizes(),
            matryoshka: self.matryoshka.clone(),
            width: self.width,
            labels: self.labels().to_vec(),
            per_token: matches!(self.kind, EncoderKind::TokenRewards | EncoderKind::StepRewards { .. }),
            join_pairs: self.join_pairs,
        }
    }
}
