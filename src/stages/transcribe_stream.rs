//! transcribe_stream: the text of an audio request's windows → the answer, in the
//! requested format. Windows run side by side in the engine; their texts join in window
//! order, as vLLM joins them.
//!
//! Streaming (json or text formats) sends vLLM's `transcription.chunk` /
//! `translation.chunk` deltas in window order: the first unfinished window streams as its
//! text comes, later windows' text waits for the ones before it. The last chunk carries
//! the finish reason; with `stream_include_usage` a usage chunk follows (usage on every
//! chunk with `stream_continuous_usage_stats`), then `[DONE]`. Prompt tokens count the
//! decoder prompts and the audio's mel frames (10 ms each), as vLLM counts them.

use std::sync::Arc;
use std::time::Instant;

use crate::api::audio::{AudioFormat, AudioMeta};
use crate::api::error::ApiError;
use crate::api::protocol::Usage;
use crate::api::transcription::*;
use crate::engine::latency::FinishedReason;
use crate::engine::stats::EngineStats;
use crate::engine::{Finish, StopReason};
use crate::model::tokenizer::Tokenizer;
use crate::model::whisper::tokens::{Task, WhisperTokens, language_name};
use crate::pipeline::{Inlet, Outlet, Stage};
use crate::stages::gather;
use crate::stages::item::{Item, Reply, RequestCtx, TextEvent};

pub struct TranscribeStream {
    pub tokenizer: Arc<Tokenizer>,
    pub tokens: Arc<WhisperTokens>,
    pub stats: Arc<EngineStats>,
}

#[derive(Default)]
struct Window {
    text: String,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    prompt: Option<Arc<Vec<u32>>>,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: Option<Finish>,
    /// Bytes of `text` streamed so far.
    streamed: usize,
}

struct Pending {
    windows: Vec<Window>,
    finished: usize,
    /// Streaming: the first window not streamed to its end.
    streaming: usize,
}

impl Stage<Item> for TranscribeStream {
    fn process(&self, _item: Item, _out: &Outlet<Item>) {
        unreachable!("transcribe_stream keeps per-worker state and runs its own loop")
    }

    fn run(&self, inlet: Inlet<Item>, _out: Outlet<Item>) {
        let fresh = |ev: &TextEvent| Pending { windows: (0..ev.choices).map(|_| Window::default()).collect(), finished: 0, streaming: 0 };
        gather::per_request(inlet, "transcribe_stream", fresh, |ctx, p, ev| self.on_event(ctx, p, ev));
    }
}

fn stop_reason(f: &Option<Finish>) -> Option<serde_json::Value> {
    match f {
        Some(Finish::Stop(Some(StopReason::Token(t)))) => Some((*t).into()),
        Some(Finish::Stop(Some(StopReason::Text(s)))) => Some(s.clone().into()),
        _ => None,
    }
}

impl TranscribeStream {
    /// Handles one window's new text; true when the request is complete.
    fn on_event(&self, ctx: &Arc<RequestCtx>, p: &mut Pending, ev: TextEvent) -> bool {
        let meta = ctx.audio().clone();
        let Some(w) = p.windows.get_mut(ev.choice) else { return p.finished == p.windows.len() };
        if w.finish.is_some() {
            return p.finished == p.windows.len();
        }
        w.text.push_str(&ev.text);
        w.tokens.extend(&ev.tokens);
        w.logprobs.extend(ev.logprobs.iter().map(|l| l.logprob));
        if ev.prompt.is_some() {
            w.prompt = ev.prompt.clone();
        }
        w.prompt_tokens = ev.prompt_tokens;
        w.completion_tokens = ev.completion_tokens;
        if let Some(f) = ev.finish {
            w.finish = Some(f);
            p.finished += 1;
        }
        let complete = p.finished == p.windows.len();
        let aborted = p.windows.iter().any(|w| w.finish == Some(Finish::Abort));
        if aborted || ctx.is_cancelled() {
            // The client left, the engine failed (and said so already), or the server is
            // shutting down (then it is said here).
            if aborted && !ctx.is_cancelled() && !ctx.has_failed() {
                ctx.fail(ApiError::aborted());
            }
            if complete {
                self.stats.latency.on_finished(&ctx.timeline, FinishedReason::Abort, Instant::now());
            }
            return complete;
        }
        if meta.stream {
            self.stream(ctx, &meta, p);
        }
        if !complete {
            return false;
        }
        let reason = if p.windows.iter().any(|w| w.finish == Some(Finish::Length)) {
            FinishedReason::Length
        } else {
            FinishedReason::Stop
        };
        // Counted before the last reply, so that whoever got the answer sees it counted.
        self.stats.latency.on_finished(&ctx.timeline, reason, Instant::now());
        ctx.record_output_tokens(p.windows.iter().map(|w| w.completion_tokens as u64).sum());
        if meta.stream {
            if meta.include_usage {
                let chunk = self.chunk(ctx, &meta, vec![], Some(usage(&meta, p)), ctx.metrics(Instant::now()));
                ctx.reply(Reply::Chunk(chunk));
            }
            ctx.reply(Reply::Done);
        } else {
            ctx.reply(self.answer(ctx, &meta, p));
        }
        true
    }

    /// Sends what can be streamed: window after window, in order.
    fn stream(&self, ctx: &RequestCtx, meta: &AudioMeta, p: &mut Pending) {
        let n = p.windows.len();
        while p.streaming < n {
            let i = p.streaming;
            let w = &mut p.windows[i];
            let done = w.finish.is_some();
            let last = done && i + 1 == n;
            let delta = w.text[w.streamed..].to_string();
            w.streamed = w.text.len();
            // Windows after the first begin with the space Whisper writes before a word.
            if !delta.is_empty() || last {
                let finish = last.then(|| w.finish.as_ref().map(Finish::as_str)).flatten();
                let stop = if last { stop_reason(&w.finish) } else { None };
                let usage = meta.continuous_usage.then(|| usage(meta, p));
                let metrics = if last && !meta.include_usage { ctx.metrics(Instant::now()) } else { None };
                let choice = StreamChoice { delta: Delta { content: delta }, finish_reason: finish, stop_reason: stop };
                let chunk = self.chunk(ctx, meta, vec![choice], usage, metrics);
                ctx.reply(Reply::Chunk(chunk));
            }
            if !done {
                break;
            }
            p.streaming += 1;
        }
    }

    fn chunk(
        &self,
        ctx: &RequestCtx,
        meta: &AudioMeta,
        choices: Vec<StreamChoice>,
        usage: Option<Usage>,
        metrics: Option<crate::api::request_metrics::RequestMetrics>,
    ) -> String {
        let object = match meta.task {
            Task::Transcribe => "transcription.chunk",
            Task::Translate => "translation.chunk",
        };
        let chunk = StreamChunk { id: &ctx.id, object, created: ctx.created, model: &meta.model, choices, usage, metrics };
        serde_json::to_string(&chunk).expect("chunks serialize")
    }

    /// The whole answer of a request that does not stream.
    fn answer(&self, ctx: &RequestCtx, meta: &AudioMeta, p: &Pending) -> Reply {
        let text: String = p.windows.iter().map(|w| w.text.as_str()).collect::<String>().trim().to_string();
        let duration = meta.facts.get().map_or(0.0, |f| f.duration);
        let usage = (meta.task == Task::Transcribe).then(|| DurationUsage::of(duration));
        match meta.format {
            AudioFormat::Json => json(&TextResponse { text, usage, metrics: ctx.metrics(Instant::now()) }),
            AudioFormat::Text => Reply::Text { body: text, content_type: "text/plain; charset=utf-8" },
            AudioFormat::Srt => Reply::Text { body: srt(&self.segments(meta, p)), content_type: "text/plain; charset=utf-8" },
            AudioFormat::Vtt => Reply::Text { body: vtt(&self.segments(meta, p)), content_type: "text/vtt; charset=utf-8" },
            AudioFormat::VerboseJson => json(&VerboseResponse {
                task: match meta.task {
                    Task::Transcribe => "transcribe",
                    Task::Translate => "translate",
                },
                language: self.language(meta, p),
                duration,
                text,
                segments: self.segments(meta, p),
                usage,
                metrics: ctx.metrics(Instant::now()),
            }),
        }
    }

    /// The language's English name: the one the request gave, else the one detected (in
    /// the first window's prompt), else English (English-only models).
    fn language(&self, meta: &AudioMeta, p: &Pending) -> String {
        let detected = || {
            let at = meta.facts.get()?.language_at?;
            let token = *p.windows.first()?.prompt.as_ref()?.get(at)?;
            self.tokens.language_code(token).map(str::to_owned)
        };
        let code = meta.language.clone().or_else(detected).unwrap_or_else(|| "en".into());
        language_name(&code).unwrap_or(&code).to_string()
    }

    /// Every window's segments, in order, on the audio's clock.
    fn segments(&self, meta: &AudioMeta, p: &Pending) -> Vec<Segment> {
        let facts = meta.facts.get();
        let mut out = Vec::new();
        for (i, w) in p.windows.iter().enumerate() {
            let start = facts.and_then(|f| f.window_starts.get(i).copied()).unwrap_or(0.0);
            let end = facts.and_then(|f| f.window_ends.get(i).copied()).unwrap_or(start + 30.0);
            let eot = self.tokens.eot;
            let (tokens, logprobs): (Vec<u32>, Vec<f32>) = match w.tokens.iter().position(|&t| t == eot) {
                // The end of text closes the last segment; its logprob counts with it.
                Some(at) => (w.tokens[..at].to_vec(), w.logprobs.clone()),
                None => (w.tokens.clone(), w.logprobs.clone()),
            };
            let timestamp = |t: u32| self.tokens.timestamp_seconds(t);
            for (s, e, text_tokens, lps) in cut_segments(&tokens, &logprobs, timestamp, end - start) {
                let text = self.tokenizer.decode(&text_tokens, true);
                if text.trim().is_empty() {
                    continue;
                }
                out.push(Segment {
                    id: out.len(),
                    seek: (start * 100.0).round() as u64,
                    start: round_ms(start + s),
                    end: round_ms(start + e),
                    compression_ratio: compression_ratio(&text),
                    text,
                    tokens: text_tokens,
                    temperature: meta.temperature,
                    avg_logprob: if lps.is_empty() { 0.0 } else { lps.iter().map(|&l| l as f64).sum::<f64>() / lps.len() as f64 },
                    no_speech_prob: None,
                });
            }
        }
        out
    }
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// Prompt tokens (the decoder prompts and the audio's mel frames) and tokens generated.
fn usage(meta: &AudioMeta, p: &Pending) -> Usage {
    let frames = meta.facts.get().map_or(0, |f| (f.duration * 100.0).ceil() as usize);
    let prompt = p.windows.iter().map(|w| w.prompt_tokens).sum::<usize>() + frames;
    Usage::new(prompt, p.windows.iter().map(|w| w.completion_tokens).sum())
}

fn json(v: &impl serde::Serialize) -> Reply {
    Reply::Body(serde_json::to_string(v).expect("responses serialize"))
}
