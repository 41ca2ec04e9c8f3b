//! vLLM's `/tokenize` and `/detokenize`: the served model's tokenizer (and chat template)
//! as a service, answered at the HTTP edge since they need no engine. Bodies are read
//! field by field like generation requests, so every error names its field.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::api::context::ServingContext;
use crate::api::error::ApiError;
use super::server::{AppState, read_json_body};
use crate::api::request::ChatPrompt;
use crate::api::validate::Fields;
use crate::api::validate::chat::{ImageParts, chat_message, chat_prompt_flags, request_chat_template};
use crate::stages::render::render_chat;

pub async fn tokenize(State(app): State<Arc<AppState>>, req: Request) -> Response {
    answer(app, req, tokenize_body).await
}

pub async fn detokenize(State(app): State<Arc<AppState>>, req: Request) -> Response {
    answer(app, req, detokenize_body).await
}

async fn answer(app: Arc<AppState>, req: Request, f: fn(&ServingContext, Fields) -> Result<Value, ApiError>) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_json_body(&parts.headers, body, app.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match Fields::parse(&body).and_then(|fields| f(&app.serving, fields)) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `model` is optional here, but must be one of ours when given.
fn check_model(s: &ServingContext, f: &mut Fields) -> Result<(), ApiError> {
    match f.take::<String>("model")? {
        Some(m) if !s.served_names.contains(&m) => Err(ApiError::model_not_found(&m, &s.served_names)),
        _ => Ok(()),
    }
}

/// A `/tokenize` body → its answer.
pub fn tokenize_body(s: &ServingContext, mut f: Fields) -> Result<Value, ApiError> {
    check_model(s, &mut f)?;
    let prompt = f.take::<String>("prompt")?;
    let messages = f.take::<Vec<Value>>("messages")?;
    let add_special_tokens = f.take::<bool>("add_special_tokens")?;
    let return_token_strs = f.take::<bool>("return_token_strs")?.unwrap_or(false);
    f.refuse_processor_kwargs()?;
    let (text, add_special_tokens) = match (prompt, messages) {
        (Some(p), None) => (p, add_special_tokens.unwrap_or(true)),
        (None, Some(messages)) => {
            if messages.is_empty() {
                return Err(ApiError::invalid("messages", "`messages` must contain at least one message."));
            }
            // The same template and options a chat completion would render with.
            let template = request_chat_template(&mut f, s)?;
            let format = s.content_format_for(template.as_deref());
            let (add_generation_prompt, continue_final_message) = chat_prompt_flags(&mut f, true)?;
            let chat = ChatPrompt {
                messages: messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| chat_message(i, m, format, &mut ImageParts::not_here(s, "/tokenize")))
                    .collect::<Result<_, _>>()?,
                add_generation_prompt,
                continue_final_message,
                add_special_tokens: add_special_tokens.unwrap_or(false),
                template,
                template_kwargs: f.take::<Map<String, Value>>("chat_template_kwargs")?.unwrap_or_default(),
                documents: None,
                tools: f.take::<Vec<Value>>("tools")?,
            };
            (render_chat(s, &chat)?, chat.add_special_tokens)
        }
        _ => return Err(ApiError::invalid("prompt", "Give exactly one of `prompt` and `messages`.")),
    };
    let tokens = s.tokenizer.encode(&text, add_special_tokens).map_err(|e| ApiError::internal(format!("tokenizer: {e}")))?;
    let token_strs = return_token_strs
        .then(|| tokens.iter().map(|&t| s.tokenizer.id_to_token(t).unwrap_or_default()).collect::<Vec<_>>());
    Ok(json!({"count": tokens.len(), "max_model_len": s.max_model_len, "tokens": tokens, "token_strs": token_strs}))
}

/// A `/detokenize` body → its answer.
pub fn detokenize_body(s: &ServingContext, mut f: Fields) -> Result<Value, ApiError> {
    check_model(s, &mut f)?;
    let tok = &s.tokenizer;
    let tokens = f.take::<Vec<i64>>("tokens")?.ok_or_else(|| ApiError::invalid("tokens", "`tokens` is required."))?;
    let vocab = tok.vocab_size() as i64;
    if let Some(bad) = tokens.iter().find(|&&t| !(0..vocab).contains(&t)) {
        return Err(ApiError::invalid("tokens", format!("Token id {bad} is out of vocabulary (0..{vocab}).")));
    }
    let ids: Vec<u32> = tokens.into_iter().map(|t| t as u32).collect();
    Ok(json!({"prompt": tok.decode(&ids, false)}))
}
