//! vLLM's `/tokenize` and `/detokenize`: the served model's tokenizer (and chat template)
//! as a service, answered at the HTTP edge since they need no engine. Bodies are read
//! field by field like generation requests, so every error names its field. A vision
//! model's `messages` may carry image parts: they are read and preprocessed as the media
//! stage does (the same `Fetcher`, limits and 400s), and each image's placeholder is
//! repeated once per merged patch, so the ids are the ones the model is fed.

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
use crate::stages::media::{Fetcher, expand_placeholders};
use crate::stages::render::render_chat;

pub async fn tokenize(State(app): State<Arc<AppState>>, req: Request) -> Response {
    // Reading images blocks (a fetch, decoding, resizing): off the async workers.
    answer(app, req, |app, fields| tokenize_body(&app.serving, app.media.as_deref(), fields)).await
}

pub async fn detokenize(State(app): State<Arc<AppState>>, req: Request) -> Response {
    answer(app, req, |app, fields| detokenize_body(&app.serving, fields)).await
}

async fn answer(
    app: Arc<AppState>,
    req: Request,
    f: impl FnOnce(&AppState, Fields) -> Result<Value, ApiError> + Send + 'static,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_json_body(&parts.headers, body, app.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let answer = tokio::task::spawn_blocking(move || Fields::parse(&body).and_then(|fields| f(&app, fields))).await;
    match answer {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("tokenization failed: {e}")).into_response(),
    }
}

/// `model` is optional here, but must be one of ours when given.
fn check_model(s: &ServingContext, f: &mut Fields) -> Result<(), ApiError> {
    match f.take::<String>("model")? {
        Some(m) if !s.served_names.contains(&m) => Err(ApiError::model_not_found(&m, &s.served_names)),
        _ => Ok(()),
    }
}

/// A `/tokenize` body → its answer. `media` reads a vision model's images (None: image
/// parts cannot be read here, a 500 if one comes).
pub fn tokenize_body(s: &ServingContext, media: Option<&Fetcher>, mut f: Fields) -> Result<Value, ApiError> {
    check_model(s, &mut f)?;
    let prompt = f.take::<String>("prompt")?;
    let messages = f.take::<Vec<Value>>("messages")?;
    let add_special_tokens = f.take::<bool>("add_special_tokens")?;
    let return_token_strs = f.take::<bool>("return_token_strs")?.unwrap_or(false);
    let processor = match &s.vision {
        Some(v) => crate::api::validate::media::processor_kwargs(&mut f, v)?,
        None => {
            f.refuse_processor_kwargs()?;
            None
        }
    };
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
            let mut sources = Vec::new();
            let messages = {
                let mut parts = ImageParts::for_model(s, &mut sources);
                messages.into_iter().enumerate().map(|(i, m)| chat_message(i, m, format, &mut parts)).collect::<Result<_, _>>()?
            };
            crate::api::validate::media::check_image_count(s.vision.as_deref(), sources.len())?;
            let chat = ChatPrompt {
                messages,
                add_generation_prompt,
                continue_final_message,
                add_special_tokens: add_special_tokens.unwrap_or(false),
                template,
                template_kwargs: f.take::<Map<String, Value>>("chat_template_kwargs")?.unwrap_or_default(),
                documents: None,
                tools: f.take::<Vec<Value>>("tools")?,
            };
            let mut text = render_chat(s, &chat)?;
            if !sources.is_empty() {
                let (Some(vision), Some(media)) = (s.vision.as_deref(), media) else {
                    return Err(ApiError::internal("this server cannot read images on /tokenize"));
                };
                let images = media.images(&sources, processor.as_deref().unwrap_or(&vision.processor), vision)?;
                text = expand_placeholders(&text, &vision.placeholder, &images)?;
            }
            (text, chat.add_special_tokens)
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
