//! One sequence being generated: a prompt, the tokens generated so far, and its place in
//! the KV cache.

use std::sync::Arc;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;

use crate::guided::GuideState;
use crate::sampling::{SamplingParams, TokenLogprobs};

use super::request::Client;

pub type SeqId = u64;

pub struct Sequence {
    pub id: SeqId,
    /// The request's sender.
    pub client: Arc<dyn Client>,
    /// Index of this choice in the response.
    pub choice: usize,
    pub prompt_index: usize,
    /// Choices in the whole request.
    pub choices: usize,
    pub prompt: Arc<Vec<u32>>,
    pub output: Vec<u32>,
    pub params: Arc<SamplingParams>,
    /// New tokens allowed: the request's max_tokens, or what is left of the context.
    pub max_new: usize,
    pub rng: ChaCha8Rng,
    /// Cache blocks, in order.
    pub blocks: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    pub computed: usize,
    /// Prefix-cache keys of the full blocks computed so far, in order.
    pub hashes: Vec<u64>,
    /// Where this sequence's chain of keys starts (its `cache_salt`).
    pub salt: u64,
    pub priority: i64,
    pub arrival: Instant,
    /// Logprobs of prompt tokens 1.. (with `prompt_logprobs`), as they are computed.
    pub prompt_logprobs: Vec<TokenLogprobs>,
    /// Whether the first event (with the prompt) has gone out.
    pub announced: bool,
    /// Where this choice is in its structured-output constraint, when it has one.
    pub guide: Option<GuideState>,
    /// Whisper: the window's encoder output and decoding rules.
    pub audio: Option<super::whisper::AudioSeq>,
    /// A prompt with images: its M-RoPE positions and image embeddings.
    pub mm: Option<Box<crate::model::qwen2_vl::MmPrompt>>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.output.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token at position `i` of prompt + output.
    pub fn token(&self, i: usize) -> u32 {
        let p = self.prompt.len();
        if i < p { self.prompt[i] } else { self.output[i - p] }
    }

    /// Tokens still to be fed to the model before the next one can be sampled.
    pub fn pending(&self) -> usize {
        self.len() - self.computed
    }

    /// What the prefix-cache key of block `b` (of `size` tokens) mixes in besides its
    /// tokens: the hashes of the images whose placeholders it holds (0 without).
    pub fn block_extra(&self, b: usize, size: usize) -> u64 {
        self.mm.as_ref().map_or(0, |mm| mm.key_of(b * size..(b + 1) * size))
    }

    /// Scheduling order: lower priority value first, then earlier arrival.
    pub fn order_key(&self) -> (i64, Instant, SeqId) {
        (self.priority, self.arrival, self.id)
    }
}
