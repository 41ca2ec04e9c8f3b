//! The OpenAI-compatible HTTP API.

pub mod docs;
pub mod error;
pub mod pooling;
pub mod protocol;
pub mod request_metrics;
pub mod server;
pub mod structured;
pub mod tokenize;
pub mod tools;
