//! decode: a request body → a validated `Job`. Every malformed or out-of-range field is
//! answered here with a 400 that names the field and what is allowed; nothing invalid
//! travels further.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::protocol::{ChatMessage, ChatRequest, CompletionRequest, PromptInput, SamplingFields};
use crate::job::{ChatPrompt, Endpoint, Item, Job, OutputOptions, Payload, Prompt, RequestMeta};
use crate::pipeline::{Outlet, Stage};
use crate::sampling::SamplingParams;
use crate::serving::{ContentFormat, ServingContext};

/// The most top logprobs a request may ask for (vLLM's default `--max-logprobs`).
pub const MAX_LOGPROBS: i64 = 20;
const MAX_N: i64 = 128;

pub struct Decode {
    pub serving: Arc<ServingContext>,
}

impl Stage<Item> for Decode {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Body(body) = item.payload else {
            unreachable!("decode takes request bodies")
        };
        let parsed = match item.ctx.endpoint {
            Endpoint::Completions => self.completion(&body),
            Endpoint::ChatCompletions => self.chat(&body),
        };
        match parsed {
            Ok((job, meta)) => {
                item.ctx.set_meta(meta);
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Job(Box::new(job)) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}

/// Parses JSON into `T`, naming the offending field on a type error.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("The request body must be a JSON object."));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("Invalid request: {msg}"))
        } else {
            ApiError::invalid(path.clone(), format!("Invalid value for `{path}`: {msg}"))
        }
    })
}

impl Decode {
    fn check_model(&self, model: Option<&str>) -> Result<String, ApiError> {
        let model = model.ok_or_else(|| ApiError::invalid("model", "`model` is required."))?;
        if self.serving.served_names.iter().any(|n| n == model) {
            Ok(model.to_string())
        } else {
            Err(ApiError::model_not_found(model, &self.serving.served_names))
        }
    }

    fn completion(&self, body: &[u8]) -> Result<(Job, RequestMeta), ApiError> {
        let req: CompletionRequest = parse_body(body)?;
        let model = self.check_model(req.model.as_deref())?;
        let f = &req.sampling;
        let prompt = match req.prompt {
            None => return Err(ApiError::invalid("prompt", "`prompt` is required.")),
            Some(PromptInput::Text(t)) => texts(vec![t], f),
            Some(PromptInput::Texts(v)) if v.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list."));
            }
            Some(PromptInput::Texts(v)) => texts(v, f),
            Some(PromptInput::Tokens(ids)) => Prompt::Tokens(vec![ids]),
            Some(PromptInput::TokenLists(v)) if v.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list."));
            }
            Some(PromptInput::TokenLists(v)) => Prompt::Tokens(v),
        };
        let logprobs = match req.logprobs {
            None => None,
            Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
            Some(k) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}."),
                ));
            }
        };
        // OpenAI's default for completions is 16 tokens.
        let max_tokens = Some(positive("max_tokens", f.max_tokens)?.unwrap_or(16));
        let (sampling, n) = sampling_params(f, max_tokens, logprobs)?;
        let mut output = output_options(f, &self.serving)?;
        output.echo = req.echo.unwrap_or(false);
        let meta = RequestMeta { model, output, logprobs, tokens_as_ids: f.return_tokens_as_token_ids.unwrap_or(false) };
        Ok((Job { prompt, sampling: Arc::new(sampling), n }, meta))
    }

    fn chat(&self, body: &[u8]) -> Result<(Job, RequestMeta), ApiError> {
        let req: ChatRequest = parse_body(body)?;
        let model = self.check_model(req.model.as_deref())?;
        let f = &req.sampling;
        let messages = req.messages.ok_or_else(|| ApiError::invalid("messages", "`messages` is required."))?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` must contain at least one message."));
        }
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| chat_message(i, m, self.serving.content_format))
            .collect::<Result<Vec<_>, _>>()?;
        let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
            (false, Some(k)) if k > 0 => {
                return Err(ApiError::invalid("top_logprobs", "`top_logprobs` requires `logprobs` to be true."));
            }
            (false, _) => None,
            (true, None) => Some(0),
            (true, Some(k)) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
            (true, Some(k)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}."),
                ));
            }
        };
        // max_completion_tokens is the newer name; without either, the rest of the context.
        let max_tokens = match positive("max_completion_tokens", req.max_completion_tokens)? {
            Some(m) => Some(m),
            None => positive("max_tokens", f.max_tokens)?,
        };
        let (sampling, n) = sampling_params(f, max_tokens, logprobs)?;
        let output = output_options(f, &self.serving)?;
        let prompt = Prompt::Chat(ChatPrompt {
            messages,
            add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
            add_special_tokens: f.add_special_tokens.unwrap_or(false),
        });
        let meta = RequestMeta { model, output, logprobs, tokens_as_ids: f.return_tokens_as_token_ids.unwrap_or(false) };
        Ok((Job { prompt, sampling: Arc::new(sampling), n }, meta))
    }
}

fn texts(texts: Vec<String>, f: &SamplingFields) -> Prompt {
    Prompt::Texts { texts, add_special_tokens: f.add_special_tokens.unwrap_or(true) }
}

fn positive(name: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(v) if v >= 1 => Ok(Some(v as usize)),
        Some(v) => Err(ApiError::invalid(name, format!("`{name}` must be at least 1, got {v}."))),
    }
}

fn finite(name: &str, v: Option<f64>) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !x.is_finite() => Err(ApiError::invalid(name, format!("`{name}` must be a finite number."))),
        other => Ok(other),
    }
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Checks one message and puts its content in the template's format.
fn chat_message(i: usize, m: Value, format: ContentFormat) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(mut obj) = m else {
        return Err(ApiError::invalid(param, format!("`messages[{i}]` must be an object.")));
    };
    match obj.get("role") {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {}
        Some(Value::String(r)) => {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                format!("Unknown role {r:?} in `messages[{i}]`; allowed roles are {}.", ROLES.join(", ")),
            ));
        }
        _ => return Err(ApiError::invalid(format!("{param}.role"), format!("`messages[{i}].role` is required."))),
    }
    let content = match obj.remove("content") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => match format {
            ContentFormat::String => Value::String(s),
            ContentFormat::OpenAi => serde_json::json!([{"type": "text", "text": s}]),
        },
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let ty = p.get("type").and_then(Value::as_str);
                match (ty, p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => texts.push(t.to_string()),
                    (Some("text"), None) => {
                        return Err(ApiError::invalid(
                            format!("{param}.content[{j}].text"),
                            format!("`messages[{i}].content[{j}]` of type text needs a `text` string."),
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::invalid(
                            format!("{param}.content[{j}].type"),
                            format!(
                                "Content part type {:?} is not supported by this model; only \"text\" parts are.",
                                other.unwrap_or("(missing)")
                            ),
                        ));
                    }
                }
            }
            match format {
                ContentFormat::String => Value::String(texts.join("\n")),
                ContentFormat::OpenAi => Value::Array(parts),
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{param}.content"),
                format!("`messages[{i}].content` must be a string or a list of content parts."),
            ));
        }
    };
    obj.insert("content".into(), content);
    Ok(ChatMessage(obj))
}

/// Request fields this server recognises but does not act on yet, with the value that
/// means "off". Setting one to anything else is a 400 rather than being silently ignored.
const NOT_YET: &[(&str, fn(&Value) -> bool)] = &[
    ("presence_penalty", |v| v.as_f64() == Some(0.0)),
    ("frequency_penalty", |v| v.as_f64() == Some(0.0)),
    ("repetition_penalty", |v| v.as_f64() == Some(1.0)),
    ("logit_bias", |v| v.as_object().is_some_and(|o| o.is_empty())),
    ("best_of", |v| v.as_i64() == Some(1)),
    ("suffix", |v| v.as_str() == Some("")),
    ("min_tokens", |v| v.as_i64() == Some(0)),
    ("use_beam_search", |v| v.as_bool() == Some(false)),
    ("prompt_logprobs", |_| false),
    ("allowed_token_ids", |_| false),
    ("bad_words", |v| v.as_array().is_some_and(|a| a.is_empty())),
    ("guided_json", |_| false),
    ("guided_regex", |_| false),
    ("guided_choice", |_| false),
    ("guided_grammar", |_| false),
    ("structured_outputs", |_| false),
    ("structural_tag", |_| false),
    ("response_format", |v| v.get("type").and_then(Value::as_str) == Some("text")),
    ("priority", |v| v.as_i64() == Some(0)),
    ("tools", |v| v.as_array().is_some_and(|a| a.is_empty())),
    ("tool_choice", |v| v.as_str() == Some("none")),
    ("functions", |_| false),
    ("function_call", |v| v.as_str() == Some("none")),
    ("logits_processors", |v| v.as_array().is_some_and(|a| a.is_empty())),
    ("truncate_prompt_tokens", |_| false),
    ("spaces_between_special_tokens", |v| v.as_bool() == Some(true)),
    ("chat_template", |_| false),
    ("chat_template_kwargs", |v| v.as_object().is_some_and(|o| o.is_empty())),
    ("documents", |_| false),
    ("continue_final_message", |v| v.as_bool() == Some(false)),
    ("echo", |v| v.as_bool() == Some(false)),
    ("mm_processor_kwargs", |_| false),
    ("length_penalty", |v| v.as_f64() == Some(1.0)),
];

fn reject_unsupported(f: &SamplingFields) -> Result<(), ApiError> {
    for (name, neutral) in NOT_YET {
        if let Some(v) = f.rest.get(*name) {
            if !v.is_null() && !neutral(v) {
                return Err(ApiError::invalid(
                    *name,
                    format!("`{name}` is not supported by this server yet; leave it out or at its default."),
                ));
            }
        }
    }
    Ok(())
}

fn sampling_params(
    f: &SamplingFields,
    max_tokens: Option<usize>,
    logprobs: Option<usize>,
) -> Result<(SamplingParams, usize), ApiError> {
    reject_unsupported(f)?;
    let mut p = SamplingParams { max_tokens, logprobs, ..Default::default() };
    if let Some(t) = finite("temperature", f.temperature)? {
        if t < 0.0 {
            return Err(ApiError::invalid("temperature", format!("`temperature` must be at least 0, got {t}.")));
        }
        p.temperature = t as f32;
    }
    if let Some(t) = finite("top_p", f.top_p)? {
        if !(t > 0.0 && t <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {t}.")));
        }
        p.top_p = t as f32;
    }
    if let Some(k) = f.top_k {
        p.top_k = match k {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            k => return Err(ApiError::invalid("top_k", format!("`top_k` must be -1 (off) or at least 1, got {k}."))),
        };
    }
    if let Some(m) = finite("min_p", f.min_p)? {
        if !(0.0..=1.0).contains(&m) {
            return Err(ApiError::invalid("min_p", format!("`min_p` must be in [0, 1], got {m}.")));
        }
        p.min_p = m as f32;
    }
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid("n", format!("`n` must be between 1 and {MAX_N}, got {n}."))),
    };
    p.seed = f.seed.map(|s| s as u64);
    p.ignore_eos = f.ignore_eos.unwrap_or(false);
    p.stop_token_ids = f.stop_token_ids.clone().unwrap_or_default();
    Ok((p, n))
}

fn output_options(f: &SamplingFields, serving: &ServingContext) -> Result<OutputOptions, ApiError> {
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "Stop strings must not be empty."));
    }
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed when `stream` is true."));
    }
    Ok(OutputOptions {
        stream,
        include_usage: f.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
        stop,
        include_stop_str_in_output: f.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        echo: false,
        response_role: serving.response_role.clone(),
    })
}
