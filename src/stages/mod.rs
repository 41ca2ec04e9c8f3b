//! The stage kinds that `stages/*.toml` can name, one file each, and the registry that
//! tells the pipeline runtime how to build them and what each takes and gives.

pub mod decode;
pub mod detokenize;
pub mod encode;
pub mod engine;
pub mod guide;
pub mod item;
pub mod pool_decode;
pub mod pool_stream;
pub mod pool_tokenize;
pub mod render;
pub mod stream;
pub mod tokenize;

use std::sync::{Arc, Mutex};

use crate::engine::Engine;
use crate::model::encoder::EncoderModel;
use crate::stages::item::Item;
use crate::pipeline::{Registry, Stage, StageShape};
use crate::api::context::ServingContext;

/// The built-in pipeline for `sluice serve`; `--pipeline FILE` replaces it.
pub const SERVE_TOML: &str = include_str!("../../stages/serve.toml");

/// The built-in pipeline for pooling models (`--task embed|classify|score`).
pub const POOLING_TOML: &str = include_str!("../../stages/pooling.toml");

/// The built-in pipeline for `sluice run-batch` with a generative model.
pub const BATCH_TOML: &str = include_str!("../../stages/batch.toml");

/// The built-in pipeline for `sluice run-batch` with a pooling model.
pub const BATCH_POOLING_TOML: &str = include_str!("../../stages/batch-pooling.toml");

/// What every source (HTTP or JSONL) hands the first stage: request bodies. The caller
/// registers the source its edge provides.
pub const SOURCE_OUTPUT: &str = "bodies";

const fn shape(input: &'static str, output: &'static str, ordered: bool) -> StageShape {
    StageShape { input, output, ordered }
}

fn boxed<S: Stage<Item>>(s: S) -> Result<Arc<dyn Stage<Item>>, String> {
    Ok(Arc::new(s))
}

/// Every stage kind, bound to the served model. The engine can be built once only. The
/// caller adds the source (`Registry::source`).
pub fn registry(serving: Arc<ServingContext>, engine: Engine) -> Registry<Item> {
    let mut r = Registry::new();
    let s = serving.clone();
    r.stage("decode", shape("bodies", "requests", false), Box::new(move || boxed(decode::Decode { serving: s.clone() })));
    let s = serving.clone();
    r.stage("render", shape("requests", "prompts", false), Box::new(move || boxed(render::Render { serving: s.clone() })));
    let s = serving.clone();
    r.stage(
        "tokenize",
        shape("prompts", "tokenized requests", false),
        Box::new(move || boxed(tokenize::Tokenize { serving: s.clone() })),
    );
    let guides = Arc::new(crate::guided::Guides::new(serving.tokenizer.clone(), engine.cfg.eos_ids.clone()));
    r.stage(
        "guide",
        shape("tokenized requests", "ready requests", false),
        Box::new(move || boxed(guide::GuideStage { guides: guides.clone() })),
    );
    let stats = engine.stats();
    let engine = Mutex::new(Some(engine));
    r.stage(
        "engine",
        shape("ready requests", "tokens", false),
        Box::new(move || {
            let e = engine.lock().unwrap_or_else(|e| e.into_inner()).take();
            e.map(|e| Arc::new(engine::EngineStage::new(e)) as Arc<dyn Stage<Item>>)
                .ok_or_else(|| "a pipeline can have only one engine stage".to_string())
        }),
    );
    let tok = serving.tokenizer.clone();
    r.stage(
        "detokenize",
        shape("tokens", "text", true),
        Box::new(move || boxed(detokenize::Detokenize { tokenizer: tok.clone() })),
    );
    let tok = serving.tokenizer.clone();
    r.stage(
        "stream",
        shape("text", "nothing", true),
        Box::new(move || boxed(stream::Stream { tokenizer: tok.clone(), stats: stats.clone() })),
    );
    r
}

/// Every stage kind of a pooling model's pipeline, bound to the served model. The encoder
/// can be built once only; `max_seqs` and `max_tokens` bound each forward pass.
pub fn pooling_registry(
    serving: Arc<ServingContext>,
    model: EncoderModel,
    max_seqs: usize,
    max_tokens: usize,
    stats: Arc<crate::engine::stats::EngineStats>,
) -> Registry<Item> {
    let info = Arc::new(model.info());
    let mut r = Registry::new();
    let (s, i) = (serving.clone(), info.clone());
    r.stage(
        "pool_decode",
        shape("bodies", "pooling requests", false),
        Box::new(move || boxed(pool_decode::PoolDecode { serving: s.clone(), model: i.clone() })),
    );
    let s = serving.clone();
    r.stage(
        "pool_tokenize",
        shape("pooling requests", "tokenized pooling requests", false),
        Box::new(move || boxed(pool_tokenize::PoolTokenize { serving: s.clone() })),
    );
    let model = Mutex::new(Some(model));
    let st = stats.clone();
    r.stage(
        "encode",
        shape("tokenized pooling requests", "pooled outputs", false),
        Box::new(move || {
            let m = model.lock().unwrap_or_else(|e| e.into_inner()).take();
            m.map(|m| Arc::new(encode::Encode::new(m, max_seqs, max_tokens, st.clone())) as Arc<dyn Stage<Item>>)
                .ok_or_else(|| "a pipeline can have only one encode stage".to_string())
        }),
    );
    let i = info.clone();
    let st = stats;
    r.stage(
        "pool_stream",
        shape("pooled outputs", "nothing", false),
        Box::new(move || boxed(pool_stream::PoolStream { model: i.clone(), stats: st.clone() })),
    );
    r
}

/// What a caught panic said (its `String` or `&str` payload).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown error")
}
