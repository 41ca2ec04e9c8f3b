//! sluice: an OpenAI-compatible LLM serving engine, built as a pipeline of stages.
//! ARCHITECTURE.md has the map; in short, from the edges in:
//!
//! - `cli`, `config`: flags as typed, and resolved once into a `ServeConfig`.
//! - `serve`, `batch`, `profile`, `bench`: the commands; `serve::build` assembles the
//!   pipeline for all of them.
//! - `http`: the HTTP edge (routes, API key, CORS, SSE). `api`: the OpenAI wire format,
//!   errors, and the validation that turns a wire request into an internal one.
//! - `stages`: the stage kinds (decode, render, media, tokenize, guide, encode_images,
//!   engine, detokenize, stream; the pooling stages) and the items that flow between them.
//! - `engine`: scheduling, KV blocks, sequences, behind its own request/event types.
//! - `model`: model files, tokenizer, chat template, forward pass. `sampling`: logits to
//!   tokens. `guided`: constraints compiled to token masks. `detok`: incremental text.
//!   `audio`: audio files to Whisper's log-mel features. `vision`: image bytes to a vision
//!   model's pixel patches.
//! - `pipeline`: the generic staged-dataflow runtime (channels, wiring, metrics).
//! - `dist`: collectives between processes over libtorch's c10d (tensor parallelism).

pub mod api;
pub mod audio;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod config;
pub mod detok;
pub mod device;
pub mod dist;
pub mod engine;
pub mod guided;
pub mod http;
pub mod ids;
pub mod model;
pub mod pipeline;
pub mod profile;
pub mod sampling;
pub mod serve;
pub mod stages;
pub mod vision;
