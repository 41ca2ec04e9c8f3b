//! The network the engine steps: a decoder-only language model, or Whisper's
//! encoder-decoder. Both take the same step batch over the same paged KV cache; Whisper's
//! decoder also reads each sequence's cross-attention keys and values (`whisper`).

use crate::model::decoder::Decoder;
use crate::model::kv_cache::KvCache;

use super::whisper::WhisperEngine;

pub enum EngineModel {
    Decoder(Decoder),
    Whisper(Box<WhisperEngine>),
}

impl From<Decoder> for EngineModel {
    fn from(d: Decoder) -> Self {
        EngineModel::Decoder(d)
    }
}

impl From<WhisperEngine> for EngineModel {
    fn from(w: WhisperEngine) -> Self {
        EngineModel::Whisper(Box::new(w))
    }
}

impl EngineModel {
    /// A paged KV cache of this model's shape.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        match self {
            EngineModel::Decoder(d) => d.new_cache(num_blocks, block_size),
            EngineModel::Whisper(w) => w.net.decoder.new_cache(num_blocks, block_size),
        }
    }

    /// What the prefix cache keys a sequence's blocks with besides its tokens.
    pub fn prefix_salt(&self, prompt_len: usize) -> u64 {
        match self {
            EngineModel::Decoder(d) => d.prefix_salt(prompt_len),
            EngineModel::Whisper(_) => 0,
        }
    }

    pub fn whisper(&self) -> Option<&WhisperEngine> {
        match self {
            EngineModel::Whisper(w) => Some(w),
            EngineModel::Decoder(_) => None,
        }
    }
}
