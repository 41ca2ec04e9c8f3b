//! The stage kinds that `stages/*.toml` can name, one file each, and the registry that
//! tells the pipeline runtime how to build them and what each takes and gives.

pub mod audio;
pub mod audio_decode;
pub mod decode;
pub mod detokenize;
pub mod encode;
pub mod encode_images;
pub mod engine;
pub mod gather;
pub mod guide;
pub mod item;
pub mod media;
pub mod pool_decode;
pub mod pool_stream;
pub mod pool_tokenize;
pub mod render;
pub mod stream;
pub mod tokenize;
pub mod transcribe_stream;

use std::sync::{Arc, Mutex};

use crate::engine::Engine;
use crate::model::encoder::EncoderModel;
use crate::stages::item::Item;
use crate::pipeline::{Catalog, Faults, Lifecycle, Registry, Stage, StageShape};
use crate::api::context::ServingContext;

/// The built-in pipeline for `sluice serve`; `--pipeline FILE` replaces it.
pub const SERVE_TOML: &str = include_str!("../../stages/serve.toml");

/// The built-in pipeline for pooling models (`--task embed|classify|score`).
pub const POOLING_TOML: &str = include_str!("../../stages/pooling.toml");

/// The built-in pipeline for `sluice run-batch` with a generative model.
pub const BATCH_TOML: &str = include_str!("../../stages/batch.toml");

/// The built-in pipeline for `sluice run-batch` with a pooling model.
pub const BATCH_POOLING_TOML: &str = include_str!("../../stages/batch-pooling.toml");

/// The built-in pipeline for a Whisper model (`--task transcription`).
pub const TRANSCRIBE_TOML: &str = include_str!("../../stages/transcribe.toml");

/// The built-in pipeline for `sluice run-batch` with a Whisper model.
pub const BATCH_TRANSCRIBE_TOML: &str = include_str!("../../stages/batch-transcribe.toml");

/// What every source (HTTP or JSONL) hands the first stage: request bodies. The caller
/// registers the source its edge provides.
pub const SOURCE_OUTPUT: &str = "bodies";

/// The stage kinds of a generator's pipeline, what each takes and gives, and its worker
/// rules. The command adds the source its edge provides (`Catalog::source`).
pub fn generation_catalog() -> Catalog {
    let mut c = Catalog::new();
    c.kind("decode", StageShape::new("bodies", "requests"))
        .kind("render", StageShape::new("requests", "prompts"))
        .kind("media", StageShape::new("prompts", "prompts"))
        .kind("tokenize", StageShape::new("prompts", "tokenized requests"))
        .kind("guide", StageShape::new("tokenized requests", "ready requests"))
        .kind(
            "encode_images",
            StageShape::new("ready requests", "ready requests").single("the stage owns the vision tower and its encoder-output cache"),
        )
        .kind("engine", StageShape::new("ready requests", "tokens").single("the engine owns the model and the KV cache"))
        .kind("detokenize", StageShape::new("tokens", "text").ordered())
        .kind("stream", StageShape::new("text", "nothing").ordered());
    c
}

/// The stage kinds of a pooling model's pipeline (embeddings, classification, scores).
pub fn pooling_catalog() -> Catalog {
    let mut c = Catalog::new();
    c.kind("pool_decode", StageShape::new("bodies", "pooling requests"))
        .kind("pool_tokenize", StageShape::new("pooling requests", "tokenized pooling requests"))
        .kind("encode", StageShape::new("tokenized pooling requests", "pooled outputs").single("the encoder owns the pooling model"))
        .kind("pool_stream", StageShape::new("pooled outputs", "nothing"));
    c
}

/// The stage kinds of a speech-to-text pipeline (Whisper): the audio APIs' requests are
/// decoded, their audio turned into windows of features, transcribed by the engine, and
/// the windows' texts joined into the answer.
pub fn transcription_catalog() -> Catalog {
    let mut c = Catalog::new();
    c.kind("audio_decode", StageShape::new("bodies", "audio requests"))
        .kind("audio", StageShape::new("audio requests", "audio windows"))
        .kind("engine", StageShape::new("audio windows", "tokens").single("the engine owns the model and the KV cache"))
        .kind("detokenize", StageShape::new("tokens", "text").ordered())
        .kind("transcribe_stream", StageShape::new("text", "nothing").ordered());
    c
}

fn boxed<S: Stage<Item>>(s: S) -> Result<Arc<dyn Stage<Item>>, String> {
    Ok(Arc::new(s))
}

/// What the stages that run a model are told from outside: when to abort the work they
/// hold (shutdown), and the faults injected into them (tests only).
#[derive(Clone, Default)]
pub struct Control {
    pub lifecycle: Arc<Lifecycle>,
    pub faults: Faults,
}

/// The `engine` kind (built once: the engine owns the model and its cache) and the
/// `detokenize` kind that follows it, shared by the generation and transcription registries.
fn engine_and_detokenize(r: &mut Registry<Item>, engine: Engine, serving: &ServingContext, control: &Control) {
    let engine = Mutex::new(Some(engine));
    let lifecycle = control.lifecycle.clone();
    let step_fault = control.faults.at("engine:step");
    r.make(
        "engine",
        Box::new(move || {
            let e = engine.lock().unwrap_or_else(|e| e.into_inner()).take();
            e.map(|e| Arc::new(engine::EngineStage::new(e, lifecycle.clone(), step_fault.clone())) as Arc<dyn Stage<Item>>)
                .ok_or_else(|| "a pipeline can have only one engine stage".to_string())
        }),
    );
    let tok = serving.tokenizer.clone();
    r.make("detokenize", Box::new(move || boxed(detokenize::Detokenize { tokenizer: tok.clone() })));
}

/// The generation catalog's kinds, bound to the served model: the engine holds the
/// language model, `encode_images` a vision model's tower. Each can be built once only.
pub fn registry(
    catalog: Catalog,
    serving: Arc<ServingContext>,
    engine: Engine,
    tower: Option<crate::model::qwen2_vl::VisionTower>,
    control: &Control,
) -> Registry<Item> {
    let mut r = Registry::with_catalog(catalog);
    let s = serving.clone();
    r.make("decode", Box::new(move || boxed(decode::Decode { serving: s.clone() })));
    let s = serving.clone();
    r.make("render", Box::new(move || boxed(render::Render { serving: s.clone() })));
    let s = serving.clone();
    r.make("media", Box::new(move || Ok(Arc::new(media::Media::new(s.clone())?) as Arc<dyn Stage<Item>>)));
    let s = serving.clone();
    r.make("tokenize", Box::new(move || boxed(tokenize::Tokenize { serving: s.clone() })));
    let guides = Arc::new(crate::guided::Guides::new(serving.tokenizer.clone(), engine.cfg.eos_ids.clone()));
    r.make("guide", Box::new(move || boxed(guide::GuideStage { guides: guides.clone() })));
    let tower = Mutex::new(Some(tower));
    r.make(
        "encode_images",
        Box::new(move || {
            let t = tower.lock().unwrap_or_else(|e| e.into_inner()).take();
            t.map(|t| Arc::new(encode_images::EncodeImages::new(t)) as Arc<dyn Stage<Item>>)
                .ok_or_else(|| "a pipeline can have only one encode_images stage".to_string())
        }),
    );
    let stats = engine.stats();
    engine_and_detokenize(&mut r, engine, &serving, control);
    let tok = serving.tokenizer.clone();
    let store = serving.responses.clone();
    r.make("stream", Box::new(move || boxed(stream::Stream { tokenizer: tok.clone(), stats: stats.clone(), responses: store.clone() })));
    r
}

/// The pooling catalog's kinds, bound to the served model. The encoder can be built once
/// only; `max_seqs` and `max_tokens` bound each forward pass.
pub fn pooling_registry(
    catalog: Catalog,
    serving: Arc<ServingContext>,
    model: EncoderModel,
    max_seqs: usize,
    max_tokens: usize,
    stats: Arc<crate::engine::stats::EngineStats>,
    control: &Control,
) -> Registry<Item> {
    let info = Arc::new(model.info());
    let mut r = Registry::with_catalog(catalog);
    let (s, i) = (serving.clone(), info.clone());
    r.make("pool_decode", Box::new(move || boxed(pool_decode::PoolDecode { serving: s.clone(), model: i.clone() })));
    let s = serving.clone();
    r.make("pool_tokenize", Box::new(move || Ok(Arc::new(pool_tokenize::PoolTokenize::new(s.clone())?) as Arc<dyn Stage<Item>>)));
    let model = Mutex::new(Some(model));
    let st = stats.clone();
    let lifecycle = control.lifecycle.clone();
    r.make(
        "encode",
        Box::new(move || {
            let m = model.lock().unwrap_or_else(|e| e.into_inner()).take();
            m.map(|m| Arc::new(encode::Encode::new(m, max_seqs, max_tokens, st.clone(), lifecycle.clone())) as Arc<dyn Stage<Item>>)
                .ok_or_else(|| "a pipeline can have only one encode stage".to_string())
        }),
    );
    let i = info.clone();
    let st = stats;
    r.make("pool_stream", Box::new(move || boxed(pool_stream::PoolStream { model: i.clone(), stats: st.clone() })));
    r
}

/// The transcription catalog's kinds, bound to the served Whisper model. The engine can
/// be built once only.
pub fn transcription_registry(
    catalog: Catalog,
    serving: Arc<ServingContext>,
    engine: Engine,
    prep: Arc<audio::AudioPrep>,
    control: &Control,
) -> Registry<Item> {
    let mut r = Registry::with_catalog(catalog);
    let s = serving.clone();
    r.make("audio_decode", Box::new(move || boxed(audio_decode::AudioDecode { serving: s.clone() })));
    let p = prep.clone();
    r.make("audio", Box::new(move || boxed(audio::AudioStage { prep: p.clone() })));
    let stats = engine.stats();
    engine_and_detokenize(&mut r, engine, &serving, control);
    let (tok, tokens) = (serving.tokenizer.clone(), prep.tokens.clone());
    r.make(
        "transcribe_stream",
        Box::new(move || {
            boxed(transcribe_stream::TranscribeStream { tokenizer: tok.clone(), tokens: tokens.clone(), stats: stats.clone() })
        }),
    );
    r
}

pub use crate::pipeline::panic_message;
