//! What the engine takes and what it gives back, in its own terms: an `EngineRequest`
//! (token ids, sampling and stopping parameters, a compiled constraint, priority) with the
//! `Client` that sent it, and `EngineEvent`s — new tokens of one choice, or an
//! `EngineError` — sent to that client. Nothing here knows HTTP or the pipeline: the
//! engine stage adapts a pipeline item to a request and its events back to items, and the
//! HTTP edge maps an `EngineError` to a status.

use std::sync::Arc;
use std::time::Instant;

use crate::guided::Guide;
use crate::sampling::{SamplingParams, TokenLogprobs};

use super::beam::BeamParams;
use super::latency::Timeline;
pub use super::whisper::EncoderInput;

/// A request for the engine: one sequence per prompt and choice (beam search: one per
/// prompt, its beams branching from it).
pub struct EngineRequest {
    /// Token ids, one list per prompt.
    pub prompts: Vec<Vec<u32>>,
    pub sampling: Arc<SamplingParams>,
    /// Choices per prompt (the beam width with `beam`).
    pub n: usize,
    /// Lower runs earlier (with the priority scheduling policy).
    pub priority: i64,
    /// Keeps this request's prefix-cache blocks apart from requests with another salt.
    pub cache_salt: Option<String>,
    /// The structured-output constraint, compiled.
    pub guide: Option<Arc<Guide>>,
    /// The constraint begins only once the output has one of these (the end of a
    /// reasoning section); empty: from the first token.
    pub guide_after: Vec<String>,
    /// Beam search instead of sampling.
    pub beam: Option<BeamParams>,
    /// Who sent it: asked between steps whether to go on, and told what happens.
    pub client: Arc<dyn Client>,
    /// An encoder-decoder model's encoder input (Whisper: one audio window per prompt).
    pub encoder: Option<EncoderInput>,
    /// A prompt with images (a request with images has one prompt): the images' embeddings,
    /// already computed by the vision tower, where they go, and the M-RoPE positions.
    pub mm: Option<Box<crate::model::qwen2_vl::MmPrompt>>,
}

/// The engine's view of a request's sender.
pub trait Client: Send + Sync {
    /// The request's id, for log lines.
    fn id(&self) -> &str;
    /// A number unique to the request (mixed into unseeded generators; requests are
    /// counted by it).
    fn key(&self) -> u64;
    /// Where the engine marks the request's milestones (admitted, scheduled, tokens).
    fn timeline(&self) -> &Timeline;
    /// The sender is gone: every sequence of the request may be dropped.
    fn is_cancelled(&self) -> bool;
    /// One choice was ended by the sender (a stop string matched downstream).
    fn is_stopped(&self, choice: usize) -> bool;
    /// Receives the request's events, in order.
    fn send(&self, event: EngineEvent);
}

/// What the engine reports about a request.
#[derive(Debug)]
pub enum EngineEvent {
    /// New tokens of one choice (or its end).
    Tokens(TokenEvent),
    /// The request cannot go on. Every choice still ends with a `Tokens` event whose
    /// finish is `Abort`, after this.
    Failed(EngineError),
}

/// Why the engine gave up on a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A step failed; the state of every sequence in it is lost.
    #[error("The engine failed while running this request; see the server log.")]
    StepFailed,
    /// The structured-output constraint could not give the next step's tokens.
    #[error("The structured-output constraint failed: {0}")]
    ConstraintFailed(String),
}

/// Why a choice ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// An EOS or stop token (the id), or a stop string (the string).
    Stop(Option<StopReason>),
    Length,
    /// Dropped: the client left, or the request could not be served.
    Abort,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

impl Finish {
    pub fn as_str(&self) -> &'static str {
        match self {
            Finish::Stop(_) => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
        }
    }
}

/// New tokens of one choice from one engine step.
#[derive(Debug)]
pub struct TokenEvent {
    pub choice: usize,
    pub prompt_index: usize,
    pub tokens: Vec<u32>,
    /// Per token, when logprobs were asked for.
    pub logprobs: Vec<TokenLogprobs>,
    pub finish: Option<Finish>,
    pub prompt_tokens: usize,
    /// Total choices in the request, so downstream knows when it is complete.
    pub choices: usize,
    /// The prompt ids, sent with a choice's first event (for echo).
    pub prompt: Option<Arc<Vec<u32>>>,
    /// Logprobs of prompt tokens 1.., with the first event when asked for.
    pub prompt_logprobs: Option<Arc<Vec<TokenLogprobs>>>,
    /// Engine-side timing, sent with the first event of a choice.
    pub first_token_at: Option<Instant>,
}
