//! sluice: an OpenAI-compatible LLM serving engine, built as a pipeline of stages.

pub mod model;
pub mod pipeline;
