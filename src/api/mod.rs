//! The OpenAI/vLLM wire format: response types, errors as clients expect them, and the
//! validation that turns a wire request into a validated internal request.

pub mod answer;
pub mod audio;
pub mod context;
pub mod endpoint;
pub mod error;
pub mod form;
pub mod pooling;
pub mod protocol;
pub mod request;
pub mod reasoning;
pub mod request_metrics;
pub mod responses;
#[cfg(test)]
pub(crate) mod stream_cuts;
pub mod tools;
pub mod transcription;
pub mod validate;
