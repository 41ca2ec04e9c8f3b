//! Validation: an OpenAI/vLLM wire request → a validated internal request
//! (`crate::api::request`). Every malformed or out-of-range field is answered here with a
//! 400 that names the field and what is allowed; nothing invalid travels further. The
//! decode stages only call in here.
//!
//! - `generation`: completions and chat completions → `Job` + `RequestMeta`;
//! - `pooling`: embeddings, pooling, classify, score, rerank → `PoolJob`;
//! - `chat`: chat messages and template options, shared by both and by `/tokenize`;
//! - `structured`: the structured-output fields, in every spelling;
//! - `audio`: transcriptions and translations (forms, or batch lines' JSON) → `AudioJob`.
//! - `media`: image content parts (their shape, data: URLs decoded).

pub mod audio;
pub mod chat;
pub mod generation;
pub mod media;
pub mod pooling;
pub mod structured;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::error::ApiError;

pub use audio::audio_request;
pub use generation::generation_request;
pub use pooling::pooling_request;

/// A request body's fields, taken one by one so that every error names its field.
/// What is left after the known fields are taken is checked against `NOT_YET`.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// A body already read as an object.
    pub fn from_map(map: Map<String, Value>) -> Self {
        Fields { map }
    }

    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Fields { map }),
            Ok(_) => Err(ApiError::bad_request("The request body must be a JSON object.")),
            Err(e) => Err(ApiError::bad_request(format!("The request body is not valid JSON: {e}"))),
        }
    }

    /// Removes and converts one field; absent or null is None.
    pub fn take<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_path_to_error::deserialize(v).map(Some).map_err(|e| {
                let inner = e.path().to_string();
                let param = if inner == "." { name.to_string() } else { format!("{name}.{inner}") };
                ApiError::invalid(param.clone(), format!("Invalid value for `{param}`: {}.", e.inner()))
            }),
        }
    }

    /// Whether the body still has the field (not taken yet).
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Names of the fields not taken yet.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Drops a field whether or not it is present.
    pub fn ignore(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// `mm_processor_kwargs` for a text-only model: empty is nothing, options are a 400.
    pub fn refuse_processor_kwargs(&mut self) -> Result<(), ApiError> {
        if self.take::<Map<String, Value>>("mm_processor_kwargs")?.is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::invalid(
                "mm_processor_kwargs",
                "This model takes text only, so `mm_processor_kwargs` has nothing to act on; leave it out.",
            ));
        }
        Ok(())
    }

    /// Refuses fields this server knows but does not act on yet, unless they are at
    /// their neutral value; anything else left is ignored, as OpenAI's API does.
    pub(super) fn reject_unsupported(&self) -> Result<(), ApiError> {
        for (name, neutral) in NOT_YET {
            if let Some(v) = self.map.get(*name) {
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
}

/// Request fields this server recognises but does not act on yet, with the value that
/// means "off". Setting one to anything else is a 400 rather than being silently ignored.
const NOT_YET: &[(&str, fn(&Value) -> bool)] = &[
    ("suffix", |v| v.as_str() == Some("")),
    ("functions", |_| false),
    ("function_call", |v| v.as_str() == Some("none")),
    ("vllm_xargs", |v| v.as_object().is_some_and(|o| o.is_empty())),
];
