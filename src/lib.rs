//! sluice: an OpenAI-compatible LLM serving engine, built as a pipeline of stages.
//!
//! - `pipeline`: the generic staged-dataflow runtime (channels, wiring, metrics).
//! - `stages`: the stage kinds (decode, render, tokenize, guide, engine, detokenize, stream).
//! - `api`: the OpenAI wire format, errors and the HTTP edge.
//! - `model`: model files, tokenizer, chat template, forward pass.
//! - `batch`: `run-batch`, JSONL files through the same pipeline. `profile`: where time goes.
//! - `engine`: scheduling, KV blocks, sequences. `sampling`: logits to tokens.
//! - `guided`: structured-output constraints compiled to token masks.
//! - `audio`: audio files to Whisper's log-mel features.

pub mod api;
pub mod audio;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod detok;
pub mod device;
pub mod engine;
pub mod guided;
pub mod job;
pub mod model;
pub mod pipeline;
pub mod profile;
pub mod sampling;
pub mod serve;
pub mod serving;
pub mod stages;
