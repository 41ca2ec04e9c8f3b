//! A response as it is written: the answer's pieces (reasoning, text, tool calls) become
//! output items, and each step of that is one of OpenAI's typed events, in OpenAI's
//! order — `response.created`, `response.in_progress`, then per item
//! `response.output_item.added`, its content part and deltas, their `.done` events and
//! `response.output_item.done`, and last `response.completed` (or `.incomplete`). Every
//! event carries its `sequence_number`. The same writer builds the whole response object
//! when the request does not stream, so both answers hold the same items.

use serde_json::{json, Value};

use super::ResponsesMeta;
use crate::api::answer::Piece;

/// A new item id: the item kind's prefix and 32 hex digits.
fn item_id(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}_{:032x}", rand::rng().random::<u128>())
}

/// One server-sent event: its type and its JSON.
pub type Event = (&'static str, Value);

pub struct ResponseWriter {
    id: String,
    created_at: u64,
    model: String,
    seq: u64,
    /// Finished items, and the one being written (last, while `open` is set).
    items: Vec<Value>,
    open: Option<Open>,
    /// Text held before a message has anything but whitespace in it.
    pending_ws: String,
    /// Per tool call index: its item's position in `items`.
    calls: Vec<usize>,
}

enum Open {
    Reasoning { text: String },
    Message { text: String },
    Call { arguments: String },
}

/// How the generation ended, for the response's status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    Completed,
    /// Cut at `max_output_tokens`.
    Length,
    Failed,
}

/// Token counts, as the Responses API reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub input: usize,
    pub output: usize,
    pub reasoning: usize,
}

impl ResponseWriter {
    pub fn new(id: String, created_at: u64, model: String) -> Self {
        ResponseWriter { id, created_at, model, seq: 0, items: Vec::new(), open: None, pending_ws: String::new(), calls: Vec::new() }
    }

    fn event(&mut self, ty: &'static str, mut body: Value) -> Event {
        body["type"] = Value::from(ty);
        body["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        (ty, body)
    }

    /// The response object as it stands, with this status and (when done) usage.
    pub fn object(&self, meta: &ResponsesMeta, status: &str, end: Option<(End, Counts)>) -> Value {
        let usage = end.map(|(_, c)| {
            json!({
                "input_tokens": c.input,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": c.output,
                "output_tokens_details": {"reasoning_tokens": c.reasoning},
                "total_tokens": c.input + c.output,
            })
        });
        let incomplete = matches!(end, Some((End::Length, _))).then(|| json!({"reason": "max_output_tokens"}));
        let error = matches!(end, Some((End::Failed, _)))
            .then(|| json!({"code": "server_error", "message": "The generation failed; see the server log."}));
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": meta.background,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": meta.instructions,
            "max_output_tokens": meta.max_output_tokens,
            "metadata": meta.metadata,
            "model": self.model,
            "output": self.items,
            "parallel_tool_calls": meta.parallel_tool_calls,
            "previous_response_id": meta.previous_response_id,
            "reasoning": meta.reasoning,
            "store": meta.store,
            "temperature": meta.temperature,
            "text": meta.text,
            "tool_choice": meta.tool_choice,
            "tools": meta.tools,
            "top_p": meta.top_p,
            "truncation": meta.truncation,
            "usage": usage,
            "user": meta.user,
        })
    }

    /// The first events: the response exists and is in progress.
    pub fn start(&mut self, meta: &ResponsesMeta) -> Vec<Event> {
        let created = self.object(meta, "in_progress", None);
        vec![
            self.event("response.created", json!({"response": created.clone()})),
            self.event("response.in_progress", json!({"response": created})),
        ]
    }

    /// The events the answer's next pieces make.
    pub fn pieces(&mut self, pieces: Vec<Piece>) -> Vec<Event> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Reasoning(text) => {
                    if !matches!(self.open, Some(Open::Reasoning { .. })) {
                        out.extend(self.close());
                        out.extend(self.open_item(
                            json!({"type": "reasoning", "id": item_id("rs"), "summary": [], "content": [], "status": "in_progress"}),
                            Some(json!({"type": "reasoning_text", "text": ""})),
                            Open::Reasoning { text: String::new() },
                        ));
                    }
                    out.push(self.delta("response.reasoning_text.delta", text));
                }
                Piece::Content(text) => {
                    if !matches!(self.open, Some(Open::Message { .. })) {
                        // A message begins with its first visible text.
                        if text.trim().is_empty() {
                            self.pending_ws.push_str(&text);
                            continue;
                        }
                        self.pending_ws.clear();
                        out.extend(self.close());
                        out.extend(self.open_item(
                            json!({"type": "message", "id": item_id("msg"), "status": "in_progress", "role": "assistant", "content": []}),
                            Some(json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []})),
                            Open::Message { text: String::new() },
                        ));
                        out.push(self.delta("response.output_text.delta", text.trim_start().to_string()));
                    } else {
                        out.push(self.delta("response.output_text.delta", text));
                    }
                }
                Piece::Call(d) => {
                    if let Some(name) = d.function.name {
                        out.extend(self.close());
                        let call_id = d.id.unwrap_or_default();
                        out.extend(self.open_item(
                            json!({"type": "function_call", "id": item_id("fc"), "call_id": call_id,
                                   "name": name, "arguments": "", "status": "in_progress"}),
                            None,
                            Open::Call { arguments: String::new() },
                        ));
                        self.calls.push(self.items.len() - 1);
                    }
                    if let Some(args) = d.function.arguments.filter(|a| !a.is_empty()) {
                        // A whole forced call comes as one piece.
                        if d.index + 1 == self.calls.len() {
                            out.push(self.delta("response.function_call_arguments.delta", args));
                        }
                    }
                }
            }
        }
        out
    }

    fn open_item(&mut self, item: Value, part: Option<Value>, open: Open) -> Vec<Event> {
        self.items.push(item.clone());
        self.open = Some(open);
        let index = self.items.len() - 1;
        let mut out = vec![self.event("response.output_item.added", json!({"output_index": index, "item": item}))];
        if let Some(part) = part {
            let item_id = self.items[index]["id"].clone();
            out.push(self.event("response.content_part.added", json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part})));
        }
        out
    }

    fn delta(&mut self, ty: &'static str, delta: String) -> Event {
        let index = self.items.len() - 1;
        let item_id = self.items[index]["id"].clone();
        let body = match self.open.as_mut().expect("an open item") {
            Open::Reasoning { text } => {
                text.push_str(&delta);
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta})
            }
            Open::Message { text } => {
                text.push_str(&delta);
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []})
            }
            Open::Call { arguments } => {
                arguments.push_str(&delta);
                json!({"item_id": item_id, "output_index": index, "delta": delta})
            }
        };
        self.event(ty, body)
    }

    /// Ends the item being written: its `.done` events, and the item in its final form.
    fn close(&mut self) -> Vec<Event> {
        let Some(open) = self.open.take() else { return Vec::new() };
        let index = self.items.len() - 1;
        let item_id = self.items[index]["id"].clone();
        let mut out = Vec::new();
        match open {
            Open::Reasoning { text } => {
                out.push(self.event("response.reasoning_text.done", json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text})));
                let part = json!({"type": "reasoning_text", "text": text});
                out.push(self.event("response.content_part.done", json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part})));
                self.items[index]["content"] = json!([part]);
            }
            Open::Message { text } => {
                out.push(self.event("response.output_text.done", json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []})));
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                out.push(self.event("response.content_part.done", json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part})));
                self.items[index]["content"] = json!([part]);
            }
            Open::Call { arguments } => {
                let name = self.items[index]["name"].clone();
                out.push(self.event("response.function_call_arguments.done", json!({"item_id": item_id, "output_index": index, "arguments": arguments, "name": name})));
                self.items[index]["arguments"] = Value::from(arguments);
            }
        }
        self.items[index]["status"] = Value::from("completed");
        let item = self.items[index].clone();
        out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
        out
    }

    /// The last events, and the finished response object.
    pub fn finish(&mut self, meta: &ResponsesMeta, end: End, counts: Counts) -> (Vec<Event>, Value) {
        let mut out = self.close();
        if end == End::Length {
            if let Some(last) = self.items.last_mut() {
                last["status"] = Value::from("incomplete");
            }
        }
        let (status, ty) = match end {
            End::Completed => ("completed", "response.completed"),
            End::Length => ("incomplete", "response.incomplete"),
            End::Failed => ("failed", "response.failed"),
        };
        let object = self.object(meta, status, Some((end, counts)));
        out.push(self.event(ty, json!({"response": object.clone()})));
        (out, object)
    }

    /// The output as chat messages, to continue the conversation from: one assistant
    /// turn with its text, reasoning and calls.
    pub fn history_messages(&self) -> Vec<Value> {
        let mut message = json!({"role": "assistant", "content": null});
        let mut text = String::new();
        let mut calls = Vec::new();
        for item in &self.items {
            match item["type"].as_str() {
                Some("message") => text.push_str(item["content"][0]["text"].as_str().unwrap_or("")),
                Some("reasoning") => message["reasoning_content"] = item["content"][0]["text"].clone(),
                Some("function_call") => calls.push(json!({"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}})),
                _ => {}
            }
        }
        if !text.is_empty() {
            message["content"] = Value::from(text);
        }
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        vec![message]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tools::{FunctionDelta, ToolCallDelta};

    fn meta() -> ResponsesMeta {
        ResponsesMeta {
            instructions: Value::Null,
            max_output_tokens: Value::Null,
            temperature: 1.0,
            top_p: 1.0,
            tools: json!([]),
            tool_choice: json!("auto"),
            text: json!({"format": {"type": "text"}}),
            reasoning: json!({"effort": null, "summary": null}),
            store: true,
            background: false,
            previous_response_id: Value::Null,
            metadata: json!({}),
            parallel_tool_calls: true,
            user: Value::Null,
            truncation: json!("disabled"),
            history: vec![],
        }
    }

    #[test]
    fn events_come_in_openais_order() {
        let m = meta();
        let mut w = ResponseWriter::new("resp_1".into(), 0, "m".into());
        let mut events = w.start(&m);
        events.extend(w.pieces(vec![Piece::Reasoning("Think".into()), Piece::Reasoning("ing.".into()), Piece::Content("\n\n".into())]));
        events.extend(w.pieces(vec![Piece::Content("Hi".into()), Piece::Content(" there".into())]));
        let call = ToolCallDelta { index: 0, id: Some("call_1".into()), kind: Some("function"), function: FunctionDelta { name: Some("f".into()), arguments: Some(String::new()) } };
        let args = ToolCallDelta { index: 0, id: None, kind: None, function: FunctionDelta { name: None, arguments: Some("{}".into()) } };
        events.extend(w.pieces(vec![Piece::Call(call), Piece::Call(args)]));
        let (end, object) = w.finish(&m, End::Completed, Counts { input: 5, output: 7, reasoning: 2 });
        events.extend(end);
        let types: Vec<&str> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            types,
            [
                "response.created", "response.in_progress",
                "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta", "response.reasoning_text.delta",
                "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
                "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done", "response.output_item.done",
                "response.output_item.added", "response.function_call_arguments.delta",
                "response.function_call_arguments.done", "response.output_item.done",
                "response.completed",
            ]
        );
        let seqs: Vec<u64> = events.iter().map(|e| e.1["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
        assert_eq!(object["output"][1]["content"][0]["text"], "Hi there");
        assert_eq!(object["output"][0]["content"][0]["text"], "Thinking.");
        assert_eq!(object["output"][2]["arguments"], "{}");
        assert_eq!(object["usage"]["total_tokens"], 12);
        assert_eq!(object["usage"]["output_tokens_details"]["reasoning_tokens"], 2);
        let h = w.history_messages();
        assert_eq!(h[0]["content"], "Hi there");
        assert_eq!(h[0]["tool_calls"][0]["id"], "call_1");
    }

    #[test]
    fn a_cut_answer_is_incomplete() {
        let m = meta();
        let mut w = ResponseWriter::new("resp_2".into(), 0, "m".into());
        w.pieces(vec![Piece::Content("Hel".into())]);
        let (events, object) = w.finish(&m, End::Length, Counts::default());
        assert_eq!(events.last().unwrap().0, "response.incomplete");
        assert_eq!(object["status"], "incomplete");
        assert_eq!(object["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(object["output"][0]["status"], "incomplete");
    }
}
