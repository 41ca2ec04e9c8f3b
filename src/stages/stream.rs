//! stream: text events → the OpenAI response for the waiting connection. Streaming
//! requests get one chunk per event (chat: a first chunk with the role, then content
//! deltas, then the finish reason; with `include_usage`, a last chunk with usage).
//! Other requests are gathered here until every choice has finished, then answered whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::api::protocol::*;
use crate::api::request_metrics::RequestMetrics;
use crate::engine::latency::FinishedReason;
use crate::engine::stats::EngineStats;
use crate::api::answer::{read_whole, AnswerReader, Piece};
use crate::api::endpoint::Endpoint;
use crate::api::error::ApiError;
use crate::api::responses::events::{Counts, End, ResponseWriter};
use crate::api::responses::store::ResponseStore;
use crate::engine::{Finish, StopReason};
use crate::stages::gather;
use crate::stages::item::{Item, Reply, RequestCtx, TextEvent};
use crate::model::tokenizer::Tokenizer;
use crate::pipeline::{Inlet, Outlet, Stage};
use crate::sampling::TokenLogprobs;

pub struct Stream {
    pub tokenizer: Arc<Tokenizer>,
    /// Where finished requests are counted and their latencies recorded.
    pub stats: Arc<EngineStats>,
    /// Where Responses API answers with `store` are kept.
    pub responses: Arc<ResponseStore>,
}

#[derive(Default)]
struct ChoiceAcc {
    text: String,
    completion_tokens: usize,
    finish: Option<Finish>,
    /// Completions' logprobs so far.
    completion_lp: Option<CompletionLogprobs>,
    chat_lp: Option<ChatLogprobs>,
    started: bool,
    /// Bytes of text sent or gathered so far (for completions' `text_offset`).
    emitted: usize,
    prompt_logprobs: Option<PromptLogprobs>,
    /// Sum of the sampled tokens' logprobs (ranks choices for `best_of`).
    cumulative_logprob: f64,
    /// Streaming chat: reads reasoning, content and tool calls as they come.
    reader: Option<AnswerReader>,
    /// Prompt tokens of this choice's prompt.
    prompt_tokens: usize,
    /// A Responses API answer being written.
    writer: Option<ResponseWriter>,
}

struct Pending {
    choices: Vec<ChoiceAcc>,
    finished: usize,
    /// Prompt length per prompt index.
    prompts: BTreeMap<usize, usize>,
}

impl Stage<Item> for Stream {
    fn process(&self, _item: Item, _out: &Outlet<Item>) {
        unreachable!("stream keeps per-worker state and runs its own loop")
    }

    fn run(&self, inlet: Inlet<Item>, _out: Outlet<Item>) {
        let fresh = |ev: &TextEvent| Pending {
            choices: (0..ev.choices).map(|_| ChoiceAcc::default()).collect(),
            finished: 0,
            prompts: BTreeMap::new(),
        };
        gather::per_request(inlet, "stream", fresh, |ctx, p, ev| self.on_event(ctx, p, ev));
    }
}

/// A whole request's reason: aborted if any choice was, else cut at the length limit if
/// any was, else stopped.
fn finished_reason(p: &Pending) -> FinishedReason {
    let any = |f: fn(&Finish) -> bool| p.choices.iter().any(|c| c.finish.as_ref().is_some_and(f));
    if any(|f| matches!(f, Finish::Abort)) {
        FinishedReason::Abort
    } else if any(|f| matches!(f, Finish::Length)) {
        FinishedReason::Length
    } else {
        FinishedReason::Stop
    }
}

fn stop_reason(f: &Option<Finish>) -> Option<Value> {
    match f {
        Some(Finish::Stop(Some(StopReason::Token(t)))) => Some(Value::from(*t)),
        Some(Finish::Stop(Some(StopReason::Text(s)))) => Some(Value::from(s.clone())),
        _ => None,
    }
}

impl Stream {
    /// Counts a complete request in the latency metrics and records its generated tokens on
    /// the request; before its last reply, so that whoever got the answer sees it counted.
    fn finished(&self, ctx: &RequestCtx, p: &Pending) {
        ctx.record_output_tokens(p.choices.iter().map(|c| c.completion_tokens as u64).sum());
        self.stats.latency.on_finished(&ctx.timeline, finished_reason(p), Instant::now());
    }

    /// Handles one event; true when the request is complete.
    fn on_event(&self, ctx: &Arc<RequestCtx>, p: &mut Pending, ev: TextEvent) -> bool {
        if ctx.endpoint == Endpoint::Responses {
            return self.on_response_event(ctx, p, ev);
        }
        let meta = ctx.meta().clone();
        let chat = ctx.endpoint == Endpoint::ChatCompletions;
        p.prompts.insert(ev.prompt_index, ev.prompt_tokens);
        let ev_prompt_logprobs = ev.prompt_logprobs.clone();
        let acc = &mut p.choices[ev.choice];
        if acc.finish.is_some() {
            return p.finished == p.choices.len();
        }
        let first = !acc.started;
        acc.started = true;
        let mut text = ev.text.clone();
        if let (Some(prompt), false) = (&ev.echo_prompt, chat) {
            text.insert_str(0, prompt);
        }
        if let (Some(echo), true, true) = (&meta.output.chat_echo, chat, first) {
            text.insert_str(0, echo);
        }
        acc.completion_tokens = ev.completion_tokens;
        acc.cumulative_logprob += ev.logprobs.iter().map(|l| l.logprob as f64).sum::<f64>();
        let lp_delta = meta.logprobs.map(|_| &ev.logprobs);
        let (c_lp, ch_lp) = match lp_delta {
            Some(lps) if chat => (None, Some(self.chat_logprobs(lps, meta.tokens_as_ids))),
            Some(lps) => {
                let start = acc.emitted + (text.len() - ev.text.len());
                (Some(self.completion_logprobs(lps, start, meta.tokens_as_ids)), None)
            }
            None => (None, None),
        };
        acc.emitted += text.len();
        let finish = ev.finish.clone();
        if finish.is_some() {
            p.finished += 1;
        }
        let acc = &mut p.choices[ev.choice];
        acc.finish = finish.clone();

        acc.prompt_tokens = ev.prompt_tokens;

        if meta.output.stream {
            let finish_reason = finish.as_ref().map(Finish::as_str);
            // The last chunk a client sees before [DONE] carries the metrics: the usage
            // chunk when there is one, else the finish of the choice that ends last.
            let complete = p.finished == p.choices.len();
            let metrics = || if complete && !meta.output.include_usage { ctx.metrics(Instant::now()) } else { None };
            let acc = &mut p.choices[ev.choice];
            // `continuous_usage_stats`: this choice's usage so far on every chunk.
            let usage = meta.output.continuous_usage.then(|| Usage::new(acc.prompt_tokens, acc.completion_tokens));
            if ctx.is_cancelled() {
                // The client is gone; keep counting so the state is dropped when complete.
            } else if chat {
                let content_only = ctx.answer_is_content();
                let reader = acc.reader.get_or_insert_with(|| AnswerReader::new(&meta.answer, content_only));
                let pieces = reader.push(&text, ev.tokens.len(), finish.is_some());
                // Calls read by the parser end the choice with "tool_calls"; a forced call
                // keeps the choice's own reason, as vLLM answers.
                let called = reader.parser_called();
                if first {
                    let usage = meta.output.continuous_usage.then(|| Usage::new(acc.prompt_tokens, 0));
                    let delta = ChatDelta { role: Some(meta.output.response_role.clone()), content: Some(String::new()), ..Default::default() };
                    self.send_chat_chunk(ctx, &meta.model, ev.choice, delta, None, (None, None), usage, None);
                }
                let mut deltas: Vec<ChatDelta> = pieces.into_iter().map(delta_of).collect();
                if deltas.is_empty() && (finish.is_some() || ch_lp.as_ref().is_some_and(|l| !l.content.is_empty())) {
                    deltas.push(ChatDelta::default());
                }
                let n = deltas.len();
                let mut lp = ch_lp;
                for (i, delta) in deltas.into_iter().enumerate() {
                    let end = (i + 1 == n).then_some(()).and(finish.as_ref());
                    let (reason, stop, m) = match end {
                        Some(_) if called => (Some("tool_calls"), None, metrics()),
                        Some(f) => (Some(f.as_str()), stop_reason(&Some(f.clone())), metrics()),
                        None => (None, None, None),
                    };
                    self.send_chat_chunk(ctx, &meta.model, ev.choice, delta, lp.take(), (reason, stop), usage.clone(), m);
                }
            } else if !text.is_empty() || finish.is_some() || c_lp.is_some() {
                let chunk = CompletionResponse {
                    id: ctx.id.clone(),
                    object: "text_completion",
                    created: ctx.created,
                    model: meta.model.clone(),
                    choices: vec![CompletionChoice {
                        index: ev.choice,
                        text,
                        logprobs: c_lp,
                        finish_reason,
                        stop_reason: stop_reason(&finish),
                        prompt_logprobs: None, // refused with streaming
                    }],
                    usage,
                    metrics: if finish.is_some() { metrics() } else { None },
                };
                ctx.reply(Reply::Chunk(serde_json::to_string(&chunk).expect("chunks serialize")));
            }
            if complete {
                if meta.output.include_usage && !ctx.is_cancelled() {
                    self.send_usage(ctx, &meta.model, p, chat);
                }
                self.finished(ctx, p);
                ctx.reply(Reply::Done);
                return true;
            }
            return false;
        }

        // Not streaming: gather.
        acc.text.push_str(&text);
        if let Some(lps) = &ev_prompt_logprobs {
            acc.prompt_logprobs = Some(self.prompt_logprobs(lps, meta.tokens_as_ids));
        }
        if let Some(l) = c_lp {
            let all = acc.completion_lp.get_or_insert_with(CompletionLogprobs::default);
            all.text_offset.extend(l.text_offset);
            all.token_logprobs.extend(l.token_logprobs);
            all.tokens.extend(l.tokens);
            all.top_logprobs.extend(l.top_logprobs);
        }
        if let Some(l) = ch_lp {
            acc.chat_lp.get_or_insert_with(ChatLogprobs::default).content.extend(l.content);
        }
        if p.finished < p.choices.len() {
            return false;
        }
        if finished_reason(p) == FinishedReason::Abort && !ctx.is_cancelled() {
            // Ended by the server (shutdown), not by the model: no partial answer, an error,
            // unless one has been sent already.
            if !ctx.has_failed() {
                ctx.fail(ApiError::aborted());
            }
            self.finished(ctx, p);
            return true;
        }
        if !ctx.is_cancelled() {
            if let Some(keep) = meta.best_of_keep {
                keep_best(p, keep);
            }
            let usage = usage(p);
            let body = if chat {
                serde_json::to_string(&ChatResponse {
                    id: ctx.id.clone(),
                    object: "chat.completion",
                    created: ctx.created,
                    model: meta.model.clone(),
                    choices: p
                        .choices
                        .iter_mut()
                        .enumerate()
                        .map(|(i, c)| {
                            let answer = read_whole(&meta.answer, std::mem::take(&mut c.text), ctx.answer_is_content());
                            let called = answer.parser_called;
                            ChatChoice {
                                index: i,
                                message: ChatResponseMessage {
                                    role: meta.output.response_role.clone(),
                                    reasoning_content: answer.reasoning.clone(),
                                    reasoning: answer.reasoning,
                                    content: answer.content,
                                    tool_calls: answer.calls,
                                },
                                logprobs: c.chat_lp.take(),
                                finish_reason: if called { Some("tool_calls") } else { c.finish.as_ref().map(Finish::as_str) },
                                stop_reason: if called { None } else { stop_reason(&c.finish) },
                            }
                        })
                        .collect(),
                    usage,
                    prompt_logprobs: p.choices.first_mut().and_then(|c| c.prompt_logprobs.take()),
                    metrics: ctx.metrics(Instant::now()),
                })
            } else {
                serde_json::to_string(&CompletionResponse {
                    id: ctx.id.clone(),
                    object: "text_completion",
                    created: ctx.created,
                    model: meta.model.clone(),
                    choices: p
                        .choices
                        .iter_mut()
                        .enumerate()
                        .map(|(i, c)| CompletionChoice {
                            index: i,
                            text: std::mem::take(&mut c.text),
                            logprobs: c.completion_lp.take(),
                            finish_reason: c.finish.as_ref().map(Finish::as_str),
                            stop_reason: stop_reason(&c.finish),
                            prompt_logprobs: c.prompt_logprobs.take(),
                        })
                        .collect(),
                    usage: Some(usage),
                    metrics: ctx.metrics(Instant::now()),
                })
            };
            self.finished(ctx, p);
            ctx.reply(Reply::Body(body.expect("responses serialize")));
        } else {
            self.finished(ctx, p);
        }
        true
    }

    /// A Responses API answer (one choice): its typed events as they come when
    /// streaming, else the response object at the end; stored when asked.
    fn on_response_event(&self, ctx: &Arc<RequestCtx>, p: &mut Pending, ev: TextEvent) -> bool {
        let meta = ctx.meta().clone();
        let rmeta = meta.responses.clone().expect("decode sets the Responses fields");
        p.prompts.insert(ev.prompt_index, ev.prompt_tokens);
        let acc = &mut p.choices[ev.choice];
        if acc.finish.is_some() {
            return p.finished == p.choices.len();
        }
        let first = !acc.started;
        acc.started = true;
        acc.completion_tokens = ev.completion_tokens;
        let content_only = ctx.answer_is_content();
        let writer = acc.writer.get_or_insert_with(|| ResponseWriter::new(ctx.id.clone(), ctx.created, meta.model.clone()));
        let reader = acc.reader.get_or_insert_with(|| AnswerReader::new(&meta.answer, content_only));
        let mut events = if first { writer.start(&rmeta) } else { Vec::new() };
        let pieces = reader.push(&ev.text, ev.tokens.len(), ev.finish.is_some());
        events.extend(writer.pieces(pieces));
        let mut object = None;
        if let Some(f) = &ev.finish {
            let end = match f {
                Finish::Length => End::Length,
                Finish::Abort => End::Failed,
                Finish::Stop(_) => End::Completed,
            };
            let counts = Counts { input: ev.prompt_tokens, output: acc.completion_tokens, reasoning: reader.reasoning_tokens };
            let (more, done) = writer.finish(&rmeta, end, counts);
            events.extend(more);
            if rmeta.store && !ctx.is_cancelled() {
                let mut history = rmeta.history.clone();
                history.extend(writer.history_messages());
                self.responses.put(&ctx.id, done.clone(), history);
            }
            acc.finish = ev.finish.clone();
            p.finished += 1;
            object = Some(done);
        }
        if meta.output.stream && !ctx.is_cancelled() {
            for (ty, body) in events {
                ctx.reply(Reply::Event(ty, body.to_string()));
            }
        }
        let Some(object) = object else { return false };
        self.finished(ctx, p);
        ctx.reply(if meta.output.stream { Reply::End } else { Reply::Body(object.to_string()) });
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn send_chat_chunk(
        &self,
        ctx: &RequestCtx,
        model: &str,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        (finish_reason, stop_reason): (Option<&'static str>, Option<Value>),
        usage: Option<Usage>,
        metrics: Option<RequestMetrics>,
    ) {
        let chunk = ChatChunk {
            id: ctx.id.clone(),
            object: "chat.completion.chunk",
            created: ctx.created,
            model: model.to_string(),
            choices: vec![ChatChunkChoice { index, delta, logprobs, finish_reason, stop_reason }],
            usage,
            metrics,
        };
        ctx.reply(Reply::Chunk(serde_json::to_string(&chunk).expect("chunks serialize")));
    }

    fn send_usage(&self, ctx: &RequestCtx, model: &str, p: &Pending, chat: bool) {
        let usage = Some(usage(p));
        let metrics = ctx.metrics(Instant::now());
        let json = if chat {
            serde_json::to_string(&ChatChunk {
                id: ctx.id.clone(),
                object: "chat.completion.chunk",
                created: ctx.created,
                model: model.to_string(),
                choices: vec![],
                usage,
                metrics,
            })
        } else {
            serde_json::to_string(&CompletionResponse {
                id: ctx.id.clone(),
                object: "text_completion",
                created: ctx.created,
                model: model.to_string(),
                choices: vec![],
                usage,
                metrics,
            })
        };
        ctx.reply(Reply::Chunk(json.expect("chunks serialize")));
    }

    fn token_text(&self, id: u32, as_id: bool) -> String {
        if as_id { format!("token_id:{id}") } else { self.tokenizer.decode(&[id], false) }
    }

    /// vLLM's `prompt_logprobs`: nothing for the first prompt token, then each token's
    /// logprob, rank and text, with the most likely alternatives, keyed by token id.
    fn prompt_logprobs(&self, lps: &[TokenLogprobs], as_ids: bool) -> PromptLogprobs {
        let entry = |id: u32, logprob: f32, rank: usize| {
            serde_json::json!({"logprob": logprob, "rank": rank, "decoded_token": self.token_text(id, as_ids)})
        };
        let mut out = vec![None];
        for l in lps {
            let mut m = Map::new();
            m.insert(l.token.to_string(), entry(l.token, l.logprob, l.rank));
            for (r, &(id, lp)) in l.top.iter().enumerate() {
                m.entry(id.to_string()).or_insert_with(|| entry(id, lp, r + 1));
            }
            out.push(Some(m));
        }
        out
    }

    fn chat_logprobs(&self, lps: &[TokenLogprobs], as_ids: bool) -> ChatLogprobs {
        let entry = |id: u32, lp: f32| {
            let token = self.token_text(id, as_ids);
            let bytes = token.as_bytes().to_vec();
            (token, lp, bytes)
        };
        ChatLogprobs {
            content: lps
                .iter()
                .map(|l| {
                    let (token, logprob, bytes) = entry(l.token, l.logprob);
                    ChatTokenLogprob {
                        token,
                        logprob,
                        bytes,
                        top_logprobs: l
                            .top
                            .iter()
                            .map(|&(id, lp)| {
                                let (token, logprob, bytes) = entry(id, lp);
                                ChatTopLogprob { token, logprob, bytes }
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// `offset` is where the first token's text starts in the choice's whole text.
    fn completion_logprobs(&self, lps: &[TokenLogprobs], offset: usize, as_ids: bool) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        let mut at = offset;
        for l in lps {
            let token = self.token_text(l.token, as_ids);
            out.text_offset.push(at);
            at += token.len();
            out.token_logprobs.push(Some(l.logprob));
            let mut top = Map::new();
            // The chosen token is always listed, as OpenAI does.
            top.insert(token.clone(), Value::from(l.logprob));
            for &(id, lp) in &l.top {
                top.entry(self.token_text(id, as_ids)).or_insert(Value::from(lp));
            }
            out.tokens.push(token);
            out.top_logprobs.push(Some(top));
        }
        out
    }
}

/// `best_of`: of each prompt's choices (consecutive, `best_of` of them), keeps the `keep`
/// with the highest cumulative logprob, best first (ties: the earlier choice).
fn keep_best(p: &mut Pending, keep: usize) {
    let per_prompt = p.choices.len() / p.prompts.len().max(1);
    let mut kept = Vec::with_capacity(p.prompts.len() * keep);
    let mut all = std::mem::take(&mut p.choices).into_iter();
    while all.len() > 0 {
        let mut group: Vec<ChoiceAcc> = all.by_ref().take(per_prompt).collect();
        group.sort_by(|a, b| b.cumulative_logprob.total_cmp(&a.cumulative_logprob));
        kept.extend(group.into_iter().take(keep));
    }
    p.choices = kept;
}

/// A piece of a streamed answer as a chat delta. Reasoning goes out under both of vLLM's
/// names, `reasoning_content` and the newer `reasoning`.
fn delta_of(piece: Piece) -> ChatDelta {
    match piece {
        Piece::Reasoning(r) => ChatDelta { reasoning_content: Some(r.clone()), reasoning: Some(r), ..Default::default() },
        Piece::Content(c) => ChatDelta { content: Some(c), ..Default::default() },
        Piece::Call(d) => ChatDelta { tool_calls: Some(vec![d]), ..Default::default() },
    }
}

fn usage(p: &Pending) -> Usage {
    let prompt: usize = p.prompts.values().sum();
    let completion: usize = p.choices.iter().map(|c| c.completion_tokens).sum();
    Usage::new(prompt, completion)
}
