//! Chat messages and the chat-template options of a request, shared by chat
//! completions, the pooling APIs' chat form and `/tokenize`.

use std::sync::Arc;

use serde_json::Value;

use super::{Fields, media};
use crate::api::context::{ContentFormat, ServingContext};
use crate::api::error::ApiError;
use crate::api::protocol::ChatMessage;
use crate::model::chat_template::ChatTemplate;

/// `add_generation_prompt` (default as given) and `continue_final_message`, which cannot
/// both be true (as vLLM).
pub fn chat_prompt_flags(f: &mut Fields, add_generation_prompt_default: bool) -> Result<(bool, bool), ApiError> {
    let add_generation_prompt = f.take::<bool>("add_generation_prompt")?.unwrap_or(add_generation_prompt_default);
    let continue_final_message = f.take::<bool>("continue_final_message")?.unwrap_or(false);
    if continue_final_message && add_generation_prompt {
        return Err(ApiError::invalid(
            "continue_final_message",
            "`continue_final_message` and `add_generation_prompt` cannot both be true; set add_generation_prompt to false.",
        ));
    }
    Ok((add_generation_prompt, continue_final_message))
}

/// A request's own `chat_template`, compiled: refused unless the server trusts request
/// templates (`--trust-request-chat-template`).
pub fn request_chat_template(f: &mut Fields, serving: &ServingContext) -> Result<Option<Arc<ChatTemplate>>, ApiError> {
    match f.take::<String>("chat_template")? {
        None => Ok(None),
        Some(_) if !serving.trust_request_chat_template => Err(ApiError::invalid(
            "chat_template",
            "A per-request `chat_template` is refused unless the server runs with --trust-request-chat-template.",
        )),
        Some(src) => ChatTemplate::new(&src)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| ApiError::invalid("chat_template", format!("The chat template does not compile: {e}"))),
    }
}

/// What becomes of a message's image parts.
pub enum ImageParts<'a> {
    /// The served model takes no images: an image part is a 400 saying so.
    Refuse,
    /// Kept in the message (the template places them) and their sources collected, in order.
    Collect(&'a mut Vec<media::ImageSource>),
}

impl<'a> ImageParts<'a> {
    /// Image parts for the served model: collected into `sink` if it takes images.
    pub fn for_model(serving: &ServingContext, sink: &'a mut Vec<media::ImageSource>) -> Self {
        if serving.vision.is_some() { ImageParts::Collect(sink) } else { ImageParts::Refuse }
    }
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Checks one message and puts its content in the template's format.
pub fn chat_message(i: usize, m: Value, format: ContentFormat, images: &mut ImageParts<'_>) -> Result<ChatMessage, ApiError> {
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
        // As vLLM: no content (an assistant turn of only tool calls) is no text, so that
        // templates that add strings to it render.
        None | Some(Value::Null) => match format {
            ContentFormat::String => Value::String(String::new()),
            ContentFormat::OpenAi => Value::Array(Vec::new()),
        },
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
                    (Some("image_url"), _) => {
                        // The part's shape and data are checked first, so a malformed one
                        // says what is wrong with it.
                        let part = format!("{param}.content[{j}]");
                        let source = media::image_part(&part, p)?;
                        match images {
                            ImageParts::Collect(sink) => sink.push(source),
                            ImageParts::Refuse => {
                                return Err(ApiError::invalid(
                                    part,
                                    format!(
                                        "The served model takes no images: `messages[{i}].content[{j}]` is an image_url \
                                         part; send only \"text\" parts to this model."
                                    ),
                                ));
                            }
                        }
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
