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

use crate::api::audio::{AudioJob, AudioMeta};
use crate::api::endpoint::Endpoint;
use crate::api::form::Form;
use crate::api::error::ApiError;
use crate::api::request::{Job, PoolJob, RequestMeta};
use crate::api::request_metrics::RequestMetrics;
use crate::engine::{Finish, TokenEvent};
use crate::ids::random_hex;
use crate::pipeline::{Answerable, Keyed, StageTrace};
use crate::sampling::TokenLogprobs;

/// What goes back to the waiting client, in order.
#[derive(Debug)]
pub enum Reply {
    /// The request failed. Before any chunk: the HTTP answer; after: an error event.
    Error(ApiError),
    /// One server-sent event's JSON (streaming).
    Chunk(String),
    /// The whole JSON body (not streaming). Last.
    Body(String),
    /// A whole body that is not JSON (the audio APIs' text, srt and vtt formats). Last.
    Text { body: String, content_type: &'static str },
    /// The end of a stream (`data: [DONE]`).
    Done,
    /// One typed server-sent event (the Responses API): its type and JSON.
    Event(&'static str, String),
    /// The end of a stream of typed events (no `[DONE]`, as OpenAI's Responses API).
    End,
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
    /// An error answer has been sent.
    failed: AtomicBool,
    /// Set by render when the prompt has already closed the answer's reasoning (a
    /// template that turns thinking off): the whole answer is content.
    answer_is_content: AtomicBool,
    /// Choices ended early downstream (a stop string matched): the engine drops them.
    stopped: Mutex<HashSet<usize>>,
    reply: UnboundedSender<Reply>,
    /// Set once by the decode stage; read by the stages after the engine.
    meta: OnceLock<Arc<RequestMeta>>,
    /// Audio requests: how the answer is shaped; set once by their decode stage.
    audio: OnceLock<Arc<AudioMeta>>,
    /// Tokens the answer holds, recorded by a final stage whose answer's `usage` does not
    /// count them (the audio APIs); run-batch's progress figures read it.
    output_tokens: AtomicU64,
    /// When the request was first scheduled and produced tokens (for latency metrics).
    pub timeline: crate::engine::latency::Timeline,
    /// Each stage's time on this request, when the answer reports it
    /// (`--enable-per-request-metrics`); None otherwise, and then nothing is recorded.
    pub trace: Option<Arc<StageTrace>>,
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
            Some(r) => format!("{}{}{r}", endpoint.id_prefix(), endpoint.id_separator()),
            None => format!("{}{}{}", endpoint.id_prefix(), endpoint.id_separator(), random_hex(key)),
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
            failed: AtomicBool::new(false),
            answer_is_content: AtomicBool::new(false),
            output_tokens: AtomicU64::new(0),
            stopped: Mutex::new(HashSet::new()),
            reply: tx,
            meta: OnceLock::new(),
            audio: OnceLock::new(),
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

    /// The prompt has closed the reasoning: the answer holds none.
    pub fn set_answer_is_content(&self) {
        self.answer_is_content.store(true, Ordering::Relaxed);
    }

    pub fn answer_is_content(&self) -> bool {
        self.answer_is_content.load(Ordering::Relaxed)
    }

    /// The final stage of a generating pipeline records how many tokens the request
    /// generated (a transcription's usage counts seconds, so its body does not say).
    pub fn record_output_tokens(&self, n: u64) {
        self.output_tokens.store(n, Ordering::Relaxed);
    }

    /// What `record_output_tokens` recorded; 0 when no stage did.
    pub fn output_tokens(&self) -> u64 {
        self.output_tokens.load(Ordering::Relaxed)
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
        self.failed.store(true, Ordering::Relaxed);
        self.reply(Reply::Error(e));
    }

    /// An error answer has been sent (a later one would not be seen).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn set_meta(&self, meta: RequestMeta) {
        let _ = self.meta.set(Arc::new(meta));
    }

    /// The `metrics` object of the answer, up to `now`; None unless the request is traced
    /// (`--enable-per-request-metrics`).
    pub fn metrics(&self, now: Instant) -> Option<RequestMetrics> {
        let trace = self.trace.as_ref()?;
        Some(RequestMetrics::of(trace, &self.timeline, self.arrival_time, self.endpoint.generates(), now))
    }

    /// The request's metadata; decode sets it before anything else sees the request.
    pub fn meta(&self) -> &Arc<RequestMeta> {
        self.meta.get().expect("decode sets the request metadata first")
    }

    pub fn set_audio(&self, audio: AudioMeta) {
        let _ = self.audio.set(Arc::new(audio));
    }

    /// An audio request's answer shape; its decode stage sets it first.
    pub fn audio(&self) -> &Arc<AudioMeta> {
        self.audio.get().expect("audio decode sets the audio metadata first")
    }
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

    fn answerable(&self) -> Option<Arc<dyn Answerable>> {
        Some(self.ctx.clone())
    }
}

/// A stage panicked on one of the request's items: the request fails with a 500 (an error
/// event when its stream has begun) and every stage drops the rest of its work.
impl Answerable for RequestCtx {
    fn stage_panicked(&self, stage: &str, _message: &str) {
        if !self.has_failed() {
            self.fail(ApiError::internal(format!(
                "The server failed while handling this request (in its {stage} stage); see the server log."
            )));
        }
        self.cancel();
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
    /// A `multipart/form-data` request as received (the audio APIs over HTTP).
    Form(Box<Form>),
    /// An audio request: decoded, then filled with its windows by the audio stage.
    Audio(Box<AudioJob>),
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
    /// The prompt ids, on the first event (the audio APIs read the detected language there).
    pub prompt: Option<Arc<Vec<u32>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untraced_requests_have_no_metrics() {
        let (ctx, _rx) = RequestCtx::new(Endpoint::Completions, None, None);
        assert!(ctx.metrics(Instant::now()).is_none());
    }

    #[test]
    fn traced_requests_report_their_arrival() {
        let names: Arc<[String]> = vec!["decode".to_string()].into();
        let (ctx, _rx) = RequestCtx::new(Endpoint::Completions, None, Some(StageTrace::new(names)));
        let m = ctx.metrics(ctx.arrived).expect("traced");
        assert_eq!(m.arrival_time, ctx.arrival_time);
        assert_eq!(m.num_preemptions, Some(0));
    }
}
