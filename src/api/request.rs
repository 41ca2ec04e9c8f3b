//! A request as validation leaves it: what the stages after decode act on. Generation
//! requests become a `Job` (the prompt, sampling and stopping parameters, the constraint)
//! and a `RequestMeta` (how the answer is shaped); pooling requests a `PoolJob`. Later
//! stages fill in what they compute (token ids, the compiled constraint, encoder outputs).

use std::sync::Arc;

use crate::api::protocol::ChatMessage;
use crate::engine::beam::BeamParams;
use crate::guided::{Guide, RequestedConstraint};
use crate::model::chat_template::ChatTemplate;
use crate::sampling::SamplingParams;

/// What the stages after the engine need to shape the answer.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The model name to echo in responses.
    pub model: String,
    pub output: OutputOptions,
    /// Whether top logprobs were asked for (and how many).
    pub logprobs: Option<usize>,
    /// Show tokens in logprobs as `token_id:<id>` (vLLM's `return_tokens_as_token_ids`).
    pub tokens_as_ids: bool,
    /// `best_of` above `n`: the engine samples `best_of` choices per prompt and only this
    /// many (`n`), those with the highest cumulative logprob, are returned.
    pub best_of_keep: Option<usize>,
    /// Chat: how the answer is read (reasoning, tool calls).
    pub answer: crate::api::answer::AnswerOptions,
    /// A Responses API request: what its response object repeats and stores.
    pub responses: Option<Arc<crate::api::responses::ResponsesMeta>>,
}

/// A validated generation request: what the engine needs (output shaping is in
/// `RequestMeta`).
#[derive(Debug)]
pub struct Job {
    pub prompt: Prompt,
    pub sampling: Arc<SamplingParams>,
    /// Choices per prompt.
    pub n: usize,
    /// Lower runs earlier (with `--scheduling-policy priority`).
    pub priority: i64,
    /// Keeps this request's prefix-cache blocks apart from requests with another salt.
    pub cache_salt: Option<String>,
    /// Keep only this many tokens from the end of each prompt (vLLM's
    /// `truncate_prompt_tokens`).
    pub truncate_prompt_tokens: Option<usize>,
    /// What the output must match (`response_format`, `guided_*`, `structured_outputs`).
    pub constraint: Option<Arc<RequestedConstraint>>,
    /// The constraint compiled; set by the guide stage, which every constrained job passes.
    pub guide: Option<Arc<Guide>>,
    /// With a reasoning parser, the constraint applies only after the output ends its
    /// reasoning with one of these markers (as vLLM constrains only the answer); render
    /// clears it when the prompt has already ended the reasoning.
    pub guide_after: Vec<String>,
    /// Beam search instead of sampling (`use_beam_search`; the width is `n`).
    pub beam: Option<BeamParams>,
    /// The images of a chat's image parts, in order, as validation found them; the media
    /// stage turns them into `images`.
    pub media: Vec<crate::api::validate::media::ImageSource>,
    /// The request's image processor settings (`mm_processor_kwargs`), when it has its own.
    pub processor: Option<Arc<crate::vision::qwen2_vl::ProcessorConfig>>,
    /// The images, preprocessed (media stage); emptied once encoded.
    pub images: Vec<crate::model::qwen2_vl::ImageInput>,
    /// The images encoded by the vision tower, with the prompt's positions (encode_images
    /// stage).
    pub mm: Option<Box<crate::model::qwen2_vl::MmPrompt>>,
}

impl Job {
    /// Token ids per prompt; set once the tokenize stage has run.
    pub fn token_prompts(&self) -> Option<&[Vec<u32>]> {
        match &self.prompt {
            Prompt::Tokens(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum Prompt {
    /// Chat messages, to be rendered with the chat template.
    Chat(ChatPrompt),
    /// Prompt texts, to be tokenized.
    Texts { texts: Vec<String>, add_special_tokens: bool },
    /// Token ids, one list per prompt.
    Tokens(Vec<Vec<u32>>),
}

#[derive(Debug)]
pub struct ChatPrompt {
    pub messages: Vec<ChatMessage>,
    pub add_generation_prompt: bool,
    /// Leave the last (assistant) message open, to be continued.
    pub continue_final_message: bool,
    pub add_special_tokens: bool,
    /// The request's own template (`chat_template`), compiled; else the server's.
    pub template: Option<Arc<ChatTemplate>>,
    /// Extra template variables (`chat_template_kwargs`); they win over the defaults.
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Retrieval documents, for templates that render them.
    pub documents: Option<Vec<serde_json::Value>>,
    /// The request's `tools`, for templates that render them.
    pub tools: Option<Vec<serde_json::Value>>,
}

/// How the output is shaped, beyond what the engine needs.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    pub stream: bool,
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats`: every chunk carries the usage so far.
    pub continuous_usage: bool,
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: bool,
    /// Stop strings are not looked for before this many tokens (vLLM's `min_tokens`).
    pub min_tokens: usize,
    /// Completions: prepend the prompt to the text.
    pub echo: bool,
    /// Chat with `echo`: the last message's text, prepended to each answer (when that
    /// message has the answer's role, as vLLM does).
    pub chat_echo: Option<String>,
    /// Chat: the role of the answer.
    pub response_role: String,
}

/// A validated pooling request. The decode stage fills `inputs` and `shape`, tokenize
/// `encoded`, the encoder `outputs` (one vector per input, in order).
#[derive(Debug)]
pub struct PoolJob {
    /// The model name to echo in responses.
    pub model: String,
    pub inputs: Vec<PoolInput>,
    /// Keep at most this many tokens per input (`truncate_prompt_tokens`).
    pub truncate: Option<usize>,
    pub add_special_tokens: bool,
    pub shape: PoolShape,
    pub encoded: Vec<crate::model::bert::EncoderInput>,
    /// Embedding models: the pooled vector before normalization. Classifiers: logits.
    pub outputs: Vec<Vec<f32>>,
    /// A chat input's image parts, in order (vision models).
    pub media: Vec<crate::api::validate::media::ImageSource>,
    /// The request's image processor settings (`mm_processor_kwargs`).
    pub processor: Option<Arc<crate::vision::qwen2_vl::ProcessorConfig>>,
}

#[derive(Debug, Clone)]
pub enum PoolInput {
    Text(String),
    Tokens(Vec<u32>),
    /// A (query, document) pair for a cross-encoder, tokenized as one input.
    Pair(String, String),
    /// Chat messages, rendered with the chat template into one input.
    Chat(Arc<ChatPrompt>),
}

/// How the answer is shaped, per endpoint.
#[derive(Debug, Clone)]
pub enum PoolShape {
    Embeddings { base64: bool, dimensions: Option<usize>, normalize: Option<bool> },
    Pooling { base64: bool, dimensions: Option<usize>, normalize: Option<bool> },
    /// `activation`: probabilities (true) or the raw logits.
    Classify { activation: bool },
    /// Scores of pairs: `Some(pairs)` of input indexes to compare by cosine similarity
    /// (embedding models); `None` when each input is a pair (cross-encoders), whose logit
    /// goes through a sigmoid when `activation`.
    Score { pairs: Option<Vec<(usize, usize)>>, activation: bool },
    /// As `Score`, with the documents to return, ranked.
    Rerank { pairs: Option<Vec<(usize, usize)>>, documents: Vec<String>, top_n: usize, return_documents: bool, activation: bool },
}

