//! Llama-family decoders as pooling models, as vLLM serves them: a `*ForCausalLM` model
//! (or GGUF file) under `--task embed` pools the final hidden state of each input's last
//! token and normalises it, unless the folder's sentence-transformers files say otherwise;
//! a `*ForSequenceClassification` folder puts its `score` layer on that last token, and a
//! causal LM becomes such a classifier when its config (or `--hf-overrides`) names
//! `classifier_from_token` and a `method`: the score layer is built from those tokens'
//! LM-head rows (vLLM's `as_seq_cls_model` loaders). Under `--task reward` a causal LM
//! returns every token's final hidden state, and `Qwen2ForRewardModel` its head's reward
//! per token (vLLM's ALL pooling, no normalisation).
//!
//! The forward pass is the generation model's own (`Decoder::hidden_states`), run as one
//! prefill of the batch into a scratch KV cache sized for exactly these inputs and dropped
//! afterwards, so pooling never touches the serving cache or its block manager.
//!
//! The last token is the last token, as in vLLM; transformers' classifiers instead skip
//! trailing `pad_token_id` tokens, so the two differ only for inputs ending in that token.

use serde_json::Value as Json;
use tch::{Kind, Tensor};

use super::batch::{SeqChunk, StepBatch};
use super::bert::EncoderInput;
use super::encoder::{EncoderKind, EncoderModel, LoadedEncoder, PoolingBackbone, architectures, labels};
use super::kv_cache::KvCache;
use super::decoder::Decoder;
use super::pooling::{self, PoolingConfig, PoolingMode};
use super::resolve::{Format, ModelLocation};
use super::tokenizer::Tokenizer;
use super::weights::{SafetensorsWeights, WeightSource};
use super::{LoadError, LoadOptions};
use super::task::Task;

/// Slots per block of the scratch cache (any size works; this wastes little per input).
const BLOCK: usize = 16;

/// What sits on the trunk's final hidden states.
enum Head {
    /// Nothing: the states themselves (embeddings; per-token states under `--task reward`).
    None,
    /// A linear layer `[labels, hidden]` on the last token: a `*ForSequenceClassification`
    /// model's `score`, or one built from LM-head rows (`classifier_from_token`).
    Score(Tensor),
    /// `Qwen2ForRewardModel`'s and `Qwen2ForProcessRewardModel`'s `score`: Linear(hidden,
    /// hidden) + ReLU + Linear(hidden, labels), with biases, on every token.
    RewardMlp { w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor },
}

pub struct DecoderPooler {
    llama: Decoder,
    head: Head,
}

/// Whether an architecture is a decoder with a classification head.
pub fn is_decoder_classifier(arch: &str) -> bool {
    super::arch::has_role(arch, super::arch::Role::DecoderClassifier)
}

/// Whether an architecture is a decoder reward model with its own per-token head.
pub fn is_decoder_reward(arch: &str) -> bool {
    super::arch::has_role(arch, super::arch::Role::DecoderReward)
}

/// vLLM's conversion of a causal LM into a classifier from its LM head (`as_seq_cls_model`
/// with config.json's — or `--hf-overrides`' — `classifier_from_token` and `method`).
#[derive(Debug, Clone, PartialEq)]
pub enum FromToken {
    /// Two tokens `[false, true]`: one label whose weight is the difference of their
    /// LM-head rows (true − false), so that its sigmoid is the softmax of the pair.
    TwoWaySoftmax([String; 2]),
    /// One label per token, its LM-head row as is.
    NoPostProcessing(Vec<String>),
}

impl FromToken {
    /// Reads `classifier_from_token` and `method`; none when neither is given.
    /// `is_original_qwen3_reranker` implies `from_2_way_softmax` (vLLM reads that key for
    /// Qwen3; here, for any architecture).
    pub fn from_config(config: Option<&Json>) -> Result<Option<Self>, String> {
        let Some(c) = config else { return Ok(None) };
        let tokens = c.get("classifier_from_token").filter(|v| !v.is_null());
        let mut method = c.get("method").and_then(Json::as_str);
        if method.is_none() && c.get("is_original_qwen3_reranker").and_then(Json::as_bool) == Some(true) {
            method = Some("from_2_way_softmax");
        }
        let (tokens, method) = match (tokens, method) {
            (None, None) => return Ok(None),
            (None, Some(m)) => return Err(format!("method {m:?} needs classifier_from_token (a list of tokens)")),
            (Some(_), None) => {
                return Err("classifier_from_token needs a method: \"from_2_way_softmax\" (two tokens, one score) \
                            or \"no_post_processing\" (one label per token)"
                    .into());
            }
            (Some(t), Some(m)) => (t, m),
        };
        let tokens: Vec<String> = tokens
            .as_array()
            .map(|a| a.iter().filter_map(Json::as_str).map(str::to_owned).collect::<Vec<_>>())
            .filter(|v: &Vec<String>| !v.is_empty() && v.len() == tokens.as_array().map_or(0, Vec::len))
            .ok_or("classifier_from_token must be a non-empty list of token strings")?;
        match method {
            "from_2_way_softmax" => match <[String; 2]>::try_from(tokens) {
                Ok(pair) => Ok(Some(FromToken::TwoWaySoftmax(pair))),
                Err(t) => Err(format!("method from_2_way_softmax takes two tokens in classifier_from_token, got {}", t.len())),
            },
            "no_post_processing" => Ok(Some(FromToken::NoPostProcessing(tokens))),
            other => Err(format!("method {other:?} is not supported (from_2_way_softmax, no_post_processing are)")),
        }
    }

    fn tokens(&self) -> &[String] {
        match self {
            FromToken::TwoWaySoftmax(t) => t,
            FromToken::NoPostProcessing(t) => t,
        }
    }

    /// The score layer `[labels, hidden]` (float32) from the rows of `lm_head`.
    fn score(&self, lm_head: &Tensor, tokenizer: &Tokenizer) -> Result<Tensor, LoadError> {
        let ids = self
            .tokens()
            .iter()
            .map(|t| {
                tokenizer.token_to_id(t).map(i64::from).ok_or_else(|| {
                    LoadError::Unsupported(format!("classifier_from_token: {t:?} is not a token of this model's vocabulary"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = lm_head.index_select(0, &Tensor::from_slice(&ids).to_device(lm_head.device())).to_kind(Kind::Float);
        Ok(match self {
            FromToken::TwoWaySoftmax(_) => (rows.get(1) - rows.get(0)).unsqueeze(0),
            FromToken::NoPostProcessing(_) => rows,
        })
    }
}

/// Loads a decoder as the pooling model `task` asks for: a classifier (the folder's
/// `score` head, or one converted from the LM head), per-token states or rewards, or an
/// embedding model.
pub fn load(
    location: ModelLocation,
    task: Task,
    device: tch::Device,
    dtype: &str,
    max_model_len: Option<usize>,
) -> Result<LoadedEncoder, LoadError> {
    let archs = architectures(&location)?;
    let named = archs.first().map(String::as_str).unwrap_or("the model").to_owned();
    let config = location.config()?;
    let bad = |msg: String| LoadError::Format { path: location.path().to_owned(), msg };
    let from_token = FromToken::from_config(config.as_ref()).map_err(|m| bad(format!("--hf-overrides / config.json: {m}")))?;
    let folder_weights = |name: &str| -> Result<Option<Tensor>, LoadError> {
        match &location.format {
            Format::HfDir(dir) => SafetensorsWeights::open(dir)?.get(name),
            Format::Gguf(_) => Ok(None),
        }
    };
    // The head's weights from the folder, before the trunk (a missing one fails fast).
    let (folder_head, pooling) = match task {
        Task::Classify if from_token.is_some() => (Head::None, None),
        Task::Classify => {
            let score = folder_weights("score.weight")?.ok_or_else(|| {
                LoadError::Unsupported(format!(
                    "--task classify: {named} has no classification head (no score.weight); serve a \
                     *ForSequenceClassification model, or convert this one from its LM head with --hf-overrides \
                     '{{\"classifier_from_token\": [...], \"method\": \"from_2_way_softmax\" or \"no_post_processing\"}}'"
                ))
            })?;
            (Head::Score(score), None)
        }
        Task::Reward if archs.iter().any(|a| is_decoder_reward(a)) => {
            let get = |n: &str| folder_weights(n)?.ok_or_else(|| LoadError::MissingTensor(n.into()));
            let head =
                Head::RewardMlp { w1: get("score.0.weight")?, b1: get("score.0.bias")?, w2: get("score.2.weight")?, b2: get("score.2.bias")? };
            (head, None)
        }
        Task::Reward => (Head::None, None),
        Task::Transcription => return Err(LoadError::Unsupported(format!("{named} cannot pool: it is served for --task transcription"))),
        Task::Embed | Task::Generate => {
            let p = match &location.format {
                Format::HfDir(dir) => PoolingConfig::from_dir(dir, PoolingMode::Last)?,
                Format::Gguf(_) => PoolingConfig::default_for(PoolingMode::Last),
            };
            (Head::None, Some(p))
        }
    };
    let loaded = super::load(location, &LoadOptions { device, dtype, max_model_len, quantization: super::Quantization::Dequantize, shard: None })?;
    let (llama, mut info) = (loaded.decoder, loaded.info);
    let place = |t: Tensor| t.to_device(llama.device).to_kind(llama.dtype).contiguous();
    // As in vLLM, a classifier's score layer runs in float32 whatever the trunk's dtype.
    let score_f32 = |t: Tensor| t.to_device(llama.device).to_kind(Kind::Float).contiguous();
    let head = match (folder_head, &from_token) {
        (Head::None, Some(ft)) if task == Task::Classify => {
            let score = ft.score(&llama.lm_head(), &info.tokenizer)?;
            tracing::info!("classifier converted from the LM head rows of {:?} ({ft:?})", ft.tokens());
            Head::Score(score_f32(score))
        }
        (Head::Score(s), _) => Head::Score(score_f32(s)),
        (Head::RewardMlp { w1, b1, w2, b2 }, _) => {
            Head::RewardMlp { w1: place(w1), b1: place(b1), w2: place(w2), b2: place(b2) }
        }
        (Head::None, _) => Head::None,
    };
    let hidden = llama.cfg.hidden_size;
    let (kind, width) = match (&head, pooling) {
        (Head::Score(s), _) => {
            let n = s.size()[0] as usize;
            (EncoderKind::Classifier { labels: labels(config.as_ref(), n) }, n)
        }
        (Head::RewardMlp { w2, .. }, _) if archs.iter().any(|a| a == "Qwen2ForProcessRewardModel") => (
            EncoderKind::StepRewards { step_tag_id: super::encoder::QWEN2_PRM_STEP_TAG_ID, returned: None },
            w2.size()[0] as usize,
        ),
        (Head::RewardMlp { w2, .. }, _) => (EncoderKind::TokenRewards, w2.size()[0] as usize),
        (Head::None, None) => (EncoderKind::TokenRewards, hidden),
        (Head::None, Some(p)) => {
            // sentence-transformers' own limit, unless --max-model-len chose one.
            if let (Some(m), None) = (p.max_seq_length, max_model_len) {
                info.max_model_len = info.max_model_len.min(m);
            }
            (EncoderKind::Embedding(p), hidden)
        }
    };
    let matryoshka = config.as_ref().and_then(super::encoder::matryoshka);
    // vLLM's `use_sep_token` (formerly `use_pad_token`): an LLM converted into a reranker
    // scores a pair as the two texts joined, not as the tokenizer's pair template.
    let separate = config.as_ref().and_then(|c| c.get("use_sep_token").or_else(|| c.get("use_pad_token"))).and_then(Json::as_bool);
    let join_pairs = !separate.unwrap_or(from_token.is_none());
    tracing::info!("pooling model: {:?} decoder, {:?}", llama.cfg.arch, kind);
    let backbone = Box::new(DecoderPooler { llama, head });
    Ok(LoadedEncoder { model: EncoderModel { backbone, kind, matryoshka, width, join_pairs }, info })
}

impl DecoderPooler {
    /// One prefill of the whole batch into a scratch cache: the final hidden states of
    /// every token (`all`), or of each input's last token, in input order.
    fn run(&self, inputs: &[&EncoderInput], all: bool) -> Tensor {
        let c = &self.llama.cfg;
        let mut next = 1u32; // block 0 is the cache's padding block
        let chunks: Vec<SeqChunk> = inputs
            .iter()
            .map(|input| {
                let n = input.ids.len();
                let blocks = n.div_ceil(BLOCK) as u32;
                let block_table = (next..next + blocks).collect();
                next += blocks;
                SeqChunk {
                    tokens: input.ids.clone(),
                    cached: 0,
                    block_table,
                    logits_for: if all { (0..n).collect() } else { vec![n - 1] },
                    prompt_len: n,
                }
            })
            .collect();
        let mut cache =
            KvCache::new(c.num_layers, next as usize, BLOCK, c.num_kv_heads, c.head_dim, self.llama.dtype, self.llama.device);
        let mut batch = StepBatch::new(&chunks, BLOCK);
        // A vision model's images: their embeddings in their placeholders' places, and the
        // inputs' M-RoPE positions.
        for (i, input) in inputs.iter().enumerate().filter(|(_, input)| !input.images.is_empty()) {
            let tower = self.llama.vision.as_ref().expect("images reach only a model with a vision tower");
            let mm = super::qwen2_vl::MmPrompt::new(tower, &input.ids, &input.images, None)
                .unwrap_or_else(|e| panic!("pool_tokenize made the placeholders fit the images: {e}"));
            batch.add_images(i, &mm);
        }
        self.llama.hidden_states(&batch, &mut cache)
    }
}

impl PoolingBackbone for DecoderPooler {
    fn image_token(&self) -> Option<u32> {
        self.llama.vision.as_ref().map(|v| v.cfg.image_token_id)
    }

    fn hidden_states(&self, inputs: &[&EncoderInput]) -> (Tensor, Tensor) {
        let rows = self.run(inputs, true); // [total, H]
        let lens: Vec<i64> = inputs.iter().map(|i| i.ids.len() as i64).collect();
        let (b, lmax) = (lens.len() as i64, lens.iter().copied().max().unwrap_or(1));
        let hidden = self.llama.cfg.hidden_size as i64;
        // Where each token's row goes in the padded [B·L] grid, and which cells are real.
        let mut at = Vec::with_capacity(rows.size()[0] as usize);
        let mut mask = vec![0i64; (b * lmax) as usize];
        for (i, &n) in lens.iter().enumerate() {
            for j in 0..n {
                let cell = i as i64 * lmax + j;
                at.push(cell);
                mask[cell as usize] = 1;
            }
        }
        let dev = rows.device();
        let grid = Tensor::zeros([b * lmax, hidden], (rows.kind(), dev));
        let grid = grid.index_copy(0, &Tensor::from_slice(&at).to_device(dev), &rows).view([b, lmax, hidden]);
        (grid, Tensor::from_slice(&mask).view([b, lmax]).to_device(dev))
    }

    fn pooled(&self, inputs: &[&EncoderInput], mode: PoolingMode) -> Tensor {
        match mode {
            // Only the last rows are needed: the others never leave the trunk.
            PoolingMode::Last => self.run(inputs, false).to_kind(Kind::Float),
            _ => {
                let (hidden, mask) = self.hidden_states(inputs);
                pooling::pool(&hidden, &mask, mode)
            }
        }
    }

    fn classify(&self, inputs: &[&EncoderInput]) -> Tensor {
        let Head::Score(score) = &self.head else { unreachable!("a classifier has a score head") };
        self.run(inputs, false).to_kind(Kind::Float).linear::<Tensor>(score, None)
    }

    fn token_outputs(&self, inputs: &[&EncoderInput]) -> Tensor {
        let states = self.run(inputs, true);
        match &self.head {
            Head::RewardMlp { w1, b1, w2, b2 } => {
                states.linear(w1, Some(b1)).relu().linear(w2, Some(b2)).to_kind(Kind::Float)
            }
            _ => states.to_kind(Kind::Float),
        }
    }

    fn describe(&self) -> String {
        let c = &self.llama.cfg;
        format!(
            "{:?} decoder, {} layers, hidden {}, {} heads ({} KV), vocab {}, dtype {:?}",
            c.arch, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, self.llama.dtype
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_token_reads_vllms_keys() {
        let read = |c: Json| FromToken::from_config(Some(&c));
        assert_eq!(read(json!({"architectures": ["LlamaForCausalLM"]})), Ok(None));
        let pair = || ["no".to_string(), "yes".to_string()];
        assert_eq!(
            read(json!({"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"})),
            Ok(Some(FromToken::TwoWaySoftmax(pair())))
        );
        assert_eq!(
            read(json!({"classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true})),
            Ok(Some(FromToken::TwoWaySoftmax(pair())))
        );
        assert_eq!(
            read(json!({"classifier_from_token": ["a", "b", "c"], "method": "no_post_processing"})),
            Ok(Some(FromToken::NoPostProcessing(vec!["a".into(), "b".into(), "c".into()])))
        );
        assert!(read(json!({"classifier_from_token": ["a"]})).unwrap_err().contains("needs a method"));
        assert!(read(json!({"method": "no_post_processing"})).unwrap_err().contains("needs classifier_from_token"));
        assert!(read(json!({"classifier_from_token": ["a", 1], "method": "no_post_processing"})).is_err());
        assert!(read(json!({"classifier_from_token": [], "method": "no_post_processing"})).is_err());
        assert!(read(json!({"classifier_from_token": ["a"], "method": "softmax"})).unwrap_err().contains("not supported"));
    }
}
