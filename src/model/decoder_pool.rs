//! Llama-family decoders as pooling models, as vLLM serves them: a `*ForCausalLM` model
//! (or GGUF file) under `--task embed` pools the final hidden state of each input's last
//! token and normalises it, unless the folder's sentence-transformers files say otherwise;
//! a `*ForSequenceClassification` folder puts its `score` layer on that last token.
//!
//! The forward pass is the generation model's own (`Llama::hidden_states`), run as one
//! prefill of the batch into a scratch KV cache sized for exactly these inputs and dropped
//! afterwards, so pooling never touches the serving cache or its block manager.
//!
//! The last token is the last token, as in vLLM; transformers' classifiers instead skip
//! trailing `pad_token_id` tokens, so the two differ only for inputs ending in that token.

use tch::{Kind, Tensor};

use super::batch::{SeqChunk, StepBatch};
use super::bert::EncoderInput;
use super::encoder::{EncoderKind, EncoderModel, LoadedEncoder, PoolingBackbone, architectures, labels};
use super::kv_cache::KvCache;
use super::llama::Llama;
use super::pooling::{self, PoolingConfig, PoolingMode};
use super::resolve::{Format, ModelLocation};
use super::weights::{SafetensorsWeights, WeightSource};
use super::{LoadError, LoadOptions};

/// Slots per block of the scratch cache (any size works; this wastes little per input).
const BLOCK: usize = 16;

pub struct DecoderPooler {
    llama: Llama,
    /// The classification head `[labels, hidden]` of a `*ForSequenceClassification` model.
    score: Option<Tensor>,
}

/// Whether an architecture is a decoder with a classification head.
pub fn is_decoder_classifier(arch: &str) -> bool {
    matches!(arch, "LlamaForSequenceClassification" | "MistralForSequenceClassification" | "Qwen2ForSequenceClassification")
}

/// Loads a decoder as a pooling model: a classifier when the folder is a
/// `*ForSequenceClassification`, else an embedding model.
pub fn load(
    location: ModelLocation,
    device: tch::Device,
    dtype: &str,
    max_model_len: Option<usize>,
) -> Result<LoadedEncoder, LoadError> {
    let classifier = architectures(&location)?.iter().any(|a| is_decoder_classifier(a));
    // What the folder says beyond the trunk: its head, or its sentence-transformers pooling.
    let (head, pooling, config) = match &location.format {
        Format::HfDir(dir) => {
            let config = location.config()?;
            if classifier {
                let score = SafetensorsWeights::open(dir)?
                    .get("score.weight")?
                    .ok_or_else(|| LoadError::MissingTensor("score.weight".into()))?;
                (Some(score), None, config)
            } else {
                (None, Some(PoolingConfig::from_dir(dir, PoolingMode::Last)?), config)
            }
        }
        Format::Gguf(_) => (None, Some(PoolingConfig::default_for(PoolingMode::Last)), None),
    };
    let loaded = super::load(location, &LoadOptions { device, dtype, max_model_len })?;
    let (llama, mut info) = (loaded.llama, loaded.info);
    let score = head.map(|t| t.to_device(llama.device).to_kind(llama.dtype).contiguous());
    let (kind, width) = match (&score, pooling) {
        (Some(s), _) => {
            let n = s.size()[0] as usize;
            (EncoderKind::Classifier { labels: labels(config.as_ref(), n) }, n)
        }
        (None, Some(p)) => {
            // sentence-transformers' own limit, unless --max-model-len chose one.
            if let (Some(m), None) = (p.max_seq_length, max_model_len) {
                info.max_model_len = info.max_model_len.min(m);
            }
            (EncoderKind::Embedding(p), llama.cfg.hidden_size)
        }
        (None, None) => unreachable!("a decoder without a head is an embedding model"),
    };
    let matryoshka = config.as_ref().and_then(super::encoder::matryoshka);
    tracing::info!("pooling model: {:?} decoder, {:?}", llama.cfg.arch, kind);
    let backbone = Box::new(DecoderPooler { llama, score });
    Ok(LoadedEncoder { model: EncoderModel { backbone, kind, matryoshka, width }, info })
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
                }
            })
            .collect();
        let mut cache =
            KvCache::new(c.num_layers, next as usize, BLOCK, c.num_kv_heads, c.head_dim, self.llama.dtype, self.llama.device);
        self.llama.hidden_states(&StepBatch::new(&chunks, BLOCK), &mut cache)
    }
}

impl PoolingBackbone for DecoderPooler {
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
        let score = self.score.as_ref().expect("a classifier has a score head");
        self.run(inputs, false).linear::<Tensor>(score, None).to_kind(Kind::Float)
    }

    fn describe(&self) -> String {
        let c = &self.llama.cfg;
        format!(
            "{:?} decoder, {} layers, hidden {}, {} heads ({} KV), vocab {}, dtype {:?}",
            c.arch, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, self.llama.dtype
        )
    }
}
