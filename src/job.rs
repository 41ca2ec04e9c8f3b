//! What flows through the serving pipeline: one `Item` per hop, carrying the request's
//! shared context and a payload that each stage turns into the next.
//!
//! body ─decode→ request ─render→ prompt ─tokenize→ tokens ─guide→ ready ─engine→
//! generated ─detokenize→ text ─stream→ (the client)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::api::error::ApiError;
use crate::api::protocol::ChatMessage;
use crate::guided::{Guide, RequestedConstraint};
use crate::model::chat_template::ChatTemplate;
use crate::pipeline::{Keyed, StageTrace};
use crate::sampling::{SamplingParams, TokenLogprobs};

/// Which API a request came in on; it decides how the body is read and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
    /// `/v1/embeddings`
    Embeddings,
    /// `/pooling`: the pooler's raw output.
    Pooling,
    /// `/classify`
    Classify,
    /// `/score`, `/v1/score`
    Score,
    /// `/rerank`, `/v1/rerank`, `/v2/rerank`
    Rerank,
}

impl Endpoint {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Completions => "cmpl",
            Endpoint::ChatCompletions => "chatcmpl",
            Endpoint::Embeddings => "embd",
            Endpoint::Pooling => "pool",
            Endpoint::Classify => "classify",
            Endpoint::Score => "score",
            Endpoint::Rerank => "rerank",
        }
    }

    /// The API's name in messages ("the Embeddings API").
    pub fn api_name(self) -> &'static str {
        match self {
            Endpoint::Completions => "Completions",
            Endpoint::ChatCompletions => "Chat Completions",
            Endpoint::Embeddings => "Embeddings",
            Endpoint::Pooling => "Pooling",
            Endpoint::Classify => "Classification",
            Endpoint::Score => "Score",
            Endpoint::Rerank => "Rerank",
        }
    }

    /// The endpoint a request path names (the POST routes the server answers, which are
    /// also the `url`s a batch file may use).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/v1/completions" => Endpoint::Completions,
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/pooling" => Endpoint::Pooling,
            "/classify" => Endpoint::Classify,
            "/score" | "/v1/score" => Endpoint::Score,
            "/rerank" | "/v1/rerank" | "/v2/rerank" => Endpoint::Rerank,
            _ => return None,
        })
    }

    /// Whether the endpoint generates text (as opposed to pooling an encoder's states).
    pub fn generates(self) -> bool {
        matches!(self, Endpoint::Completions | Endpoint::ChatCompletions)
    }
}

/// What goes back to the waiting client, in order.
#[derive(Debug)]
pub enum Reply {
    /// The request failed. Before any chunk: the HTTP answer; after: an error event.
    Error(ApiError),
    /// One server-sent event's JSON (streaming).
    Chunk(String),
    /// The whole JSON body (not streaming). Last.
    Body(String),
    /// The end of a stream.
    Done,
}

/// A request's identity and its way back, shared by every stage it passes.
pub struct RequestCtx {
    /// The response id, e.g. `chatcmpl-3f…`.
    pub id: String,
    /// Routes this request's items to the same worker of ordered stages.
    pub key: u64,
    /// Unix seconds, for the `created` field.
    pub created: u64,
    /// Unix seconds with a fraction, when the request arrived (per-request metrics).
    pub arrival_time: f64,
    pub arrived: Instant,
    pub endpoint: Endpoint,
    cancelled: AtomicBool,
    /// Choices ended early downstream (a stop string matched): the engine drops them.
    stopped: Mutex<HashSet<usize>>,
    reply: UnboundedSender<Reply>,
    /// Set once by the decode stage; read by the stages after the engine.
    meta: OnceLock<Arc<RequestMeta>>,
    /// When the request was first scheduled and produced tokens (for latency metrics).
    pub timeline: crate::engine::latency::Timeline,
    /// Each stage's time on this request, when the answer reports it
    /// (`--enable-per-request-metrics`); None otherwise, and then nothing is recorded.
    pub trace: Option<Arc<StageTrace>>,
}

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
    /// Chat with tools: how tool calls are read out of the answer.
    pub tool_use: crate::api::tools::ToolUse,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

impl RequestCtx {
    /// A new context and the receiver its replies arrive on. `request_id` replaces the
    /// random part of the id when given. With `trace`, the stages record their time on
    /// the request in it (`--enable-per-request-metrics`).
    pub fn new(
        endpoint: Endpoint,
        request_id: Option<&str>,
        trace: Option<StageTrace>,
    ) -> (Arc<Self>, UnboundedReceiver<Reply>) {
        let (tx, rx) = unbounded_channel();
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let id = match request_id {
            Some(r) => format!("{}-{r}", endpoint.id_prefix()),
            None => format!("{}-{}", endpoint.id_prefix(), random_hex(key)),
        };
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let arrived = Instant::now();
        let ctx = RequestCtx {
            id,
            key,
            created: since_epoch.as_secs(),
            arrival_time: since_epoch.as_secs_f64(),
            arrived,
            trace: trace.map(Arc::new),
            timeline: crate::engine::latency::Timeline::new(arrived),
            endpoint,
            cancelled: AtomicBool::new(false),
            stopped: Mutex::new(HashSet::new()),
            reply: tx,
            meta: OnceLock::new(),
        };
        (Arc::new(ctx), rx)
    }

    /// The client is gone: every stage may drop this request's work.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.reply.is_closed()
    }

    pub fn stop_choice(&self, choice: usize) {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner()).insert(choice);
    }

    pub fn is_stopped(&self, choice: usize) -> bool {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner()).contains(&choice)
    }

    pub fn reply(&self, r: Reply) {
        // A closed receiver means the client left; there is no one to tell.
        let _ = self.reply.send(r);
    }

    pub fn fail(&self, e: ApiError) {
        self.reply(Reply::Error(e));
    }

    pub fn set_meta(&self, meta: RequestMeta) {
        let _ = self.meta.set(Arc::new(meta));
    }

    /// The request's metadata; decode sets it before anything else sees the request.
    pub fn meta(&self) -> &Arc<RequestMeta> {
        self.meta.get().expect("decode sets the request metadata first")
    }
}

/// 24 hex digits from the key and the clock; unique per process, not guessable by design.
pub fn random_hex(key: u64) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let a = splitmix(t ^ key.rotate_left(32));
    let b = splitmix(a ^ key);
    format!("{:016x}{:08x}", a, b as u32)
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub struct Item {
    pub ctx: Arc<RequestCtx>,
    pub payload: Payload,
}

impl Keyed for Item {
    fn key(&self) -> u64 {
        self.ctx.key
    }

    fn trace(&self) -> Option<&Arc<StageTrace>> {
        self.ctx.trace.as_ref()
    }
}

pub enum Payload {
    /// The request body as received.
    Body(Bytes),
    /// A request on its way to the engine; stages fill in its prompt.
    Job(Box<Job>),
    /// New tokens of one choice, from the engine.
    Tokens(TokenEvent),
    /// New text of one choice, from the detokenizer.
    Text(TextEvent),
    /// A pooling request (embeddings, classification, scores): decoded, then tokenized,
    /// then filled with the encoder's outputs.
    Pool(Box<PoolJob>),
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
    /// Beam search instead of sampling (`use_beam_search`; the width is `n`).
    pub beam: Option<crate::engine::beam::BeamParams>,
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

/// New text of one choice.
#[derive(Debug)]
pub struct TextEvent {
    pub choice: usize,
    pub prompt_index: usize,
    pub text: String,
    /// The tokens that produced `text` (and their logprobs, when asked for).
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprobs>,
    pub finish: Option<Finish>,
    pub prompt_tokens: usize,
    /// Tokens generated for this choice so far (counted up to a stop string).
    pub completion_tokens: usize,
    pub choices: usize,
    /// Completions with echo: the prompt text, on the first event.
    pub echo_prompt: Option<String>,
    /// Logprobs of prompt tokens 1.., on the first event when asked for.
    pub prompt_logprobs: Option<Arc<Vec<TokenLogprobs>>>,
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
    Pooling { base64: bool },
    Classify,
    /// Scores of pairs: `Some(pairs)` of input indexes to compare by cosine similarity
    /// (embedding models); `None` when each input is a pair (cross-encoders).
    Score { pairs: Option<Vec<(usize, usize)>> },
    /// As `Score`, with the documents to return, ranked.
    Rerank { pairs: Option<Vec<(usize, usize)>>, documents: Vec<String>, top_n: usize, return_documents: bool },
}
