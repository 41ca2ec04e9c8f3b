//! From a resolved `ServeConfig` to a running pipeline: the one path `serve`, `run-batch`
//! and `profile` all take. It picks the pipeline file, loads the model (a generator behind
//! the engine, or a pooling model behind the encoder), builds the serving context, starts
//! the stages and the state the HTTP edge (or the batch reader) hands requests to.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::api::context::{ContentFormat, ServingContext};
use crate::config::{GenerationConfig, ServeConfig};
use crate::engine::Engine;
use crate::engine::scheduler::SchedulingPolicy;
use crate::engine::stats::EngineStats;
use crate::http::server::AppState;
use crate::model::chat_template::ChatTemplate;
use crate::model::encoder;
use crate::model::task::Task;
use crate::model::{self, LoadOptions};
use crate::pipeline::{Catalog, Lifecycle, Pipeline, PipelineSpec, Registry};
use crate::sampling::SamplingDefaults;
use crate::stages::{self, Control, item::Item};

/// Where requests enter the pipeline: HTTP connections (`serve`) or the lines of a JSONL
/// file (`run-batch`, `profile`). Everything after the entry is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Http,
    Jsonl,
}

impl Edge {
    /// The pipeline file's `source` for this edge.
    pub fn source(self) -> &'static str {
        match self {
            Edge::Http => "http",
            Edge::Jsonl => "jsonl",
        }
    }
}

/// Everything a command starts, ready to take requests.
pub struct Server {
    pub app: Arc<AppState>,
    pub pipeline: Pipeline<Item>,
    /// Whether the pipeline takes new requests, and how many it holds (shutdown).
    pub lifecycle: Arc<Lifecycle>,
}

impl Server {
    /// Closes the pipeline's entry and waits for every stage to finish its work.
    pub fn shutdown(self) {
        let Server { app, pipeline, .. } = self;
        drop(app);
        pipeline.shutdown();
        super::tp::stop_ranks();
    }
}

/// Loads the model and starts the pipeline fed by `edge`.
pub fn build(cfg: &ServeConfig, edge: Edge) -> Result<Server> {
    // The pipeline file before the weights: a wrong one should not wait for the model to load.
    let spec = pipeline_spec(cfg, edge)?;
    let mut catalog = match cfg.task {
        Task::Generate => stages::generation_catalog(),
        Task::Transcription => stages::transcription_catalog(),
        _ => stages::pooling_catalog(),
    };
    catalog.source(edge.source(), stages::SOURCE_OUTPUT);
    catalog.check(&spec)?;
    crate::pipeline::check_faults(&spec, &cfg.faults)?;
    if cfg.parallel.rank != 0 {
        // A rank other than 0 runs its shard of rank 0's steps, and nothing else.
        match super::tp::follow(cfg) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                tracing::error!("{e:#}");
                std::process::exit(1)
            }
        }
    }
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t as i32);
    }
    tracing::info!("loading {} from {} for --task {}", cfg.location.default_name, cfg.location.path().display(), cfg.task.name());
    let t0 = Instant::now();
    let control = Control { lifecycle: Lifecycle::new(), faults: cfg.faults.clone() };
    let (registry, serving, engine_stats) = match cfg.task {
        Task::Generate => generator(cfg, catalog, t0, &control)?,
        Task::Transcription => super::whisper::transcriber(cfg, catalog, t0, &control)?,
        _ => pooling_model(cfg, catalog, t0, &control)?,
    };
    let pipeline = Pipeline::start_with_faults(&spec, &registry, &cfg.faults)?;
    let media = match serving.vision {
        Some(_) => Some(Arc::new(stages::media::Fetcher::new().map_err(|e| anyhow::anyhow!(e))?)),
        None => None,
    };
    let app = Arc::new(AppState {
        media,
        serving,
        entry: pipeline.entry().clone(),
        api_key: cfg.http.api_key.clone(),
        max_body_bytes: cfg.http.max_body_bytes,
        request_id_headers: cfg.http.request_id_headers,
        engine_stats,
        task: cfg.task,
        stages: pipeline.metrics.clone(),
        root_path: cfg.http.root_path.clone(),
        traced_stages: cfg.per_request_metrics.then(|| pipeline.stage_names()),
        lifecycle: control.lifecycle.clone(),
    });
    Ok(Server { app, pipeline, lifecycle: control.lifecycle })
}

/// `--pipeline`, or the built-in file for the task and the edge.
fn pipeline_spec(cfg: &ServeConfig, edge: Edge) -> Result<PipelineSpec> {
    let generates = cfg.task == Task::Generate;
    Ok(match (&cfg.pipeline_file, generates, edge) {
        (Some(path), _, _) => PipelineSpec::load(path)?,
        (None, _, Edge::Http) if cfg.task == Task::Transcription => {
            PipelineSpec::parse(stages::TRANSCRIBE_TOML, "stages/transcribe.toml (built in)")?
        }
        (None, _, Edge::Jsonl) if cfg.task == Task::Transcription => {
            PipelineSpec::parse(stages::BATCH_TRANSCRIBE_TOML, "stages/batch-transcribe.toml (built in)")?
        }
        (None, true, Edge::Http) => PipelineSpec::parse(stages::SERVE_TOML, "stages/serve.toml (built in)")?,
        (None, false, Edge::Http) => PipelineSpec::parse(stages::POOLING_TOML, "stages/pooling.toml (built in)")?,
        (None, true, Edge::Jsonl) => PipelineSpec::parse(stages::BATCH_TOML, "stages/batch.toml (built in)")?,
        (None, false, Edge::Jsonl) => PipelineSpec::parse(stages::BATCH_POOLING_TOML, "stages/batch-pooling.toml (built in)")?,
    })
}

pub(super) type Assembled = (Registry<Item>, Arc<ServingContext>, Arc<EngineStats>);

/// A causal LM behind the engine.
fn generator(cfg: &ServeConfig, catalog: Catalog, t0: Instant, control: &Control) -> Result<Assembled> {
    let shard = super::tp::launch(cfg)?;
    let opts = LoadOptions {
        device: cfg.device,
        dtype: &cfg.dtype,
        max_model_len: cfg.max_model_len,
        quantization: cfg.quantization,
        shard: shard.clone(),
    };
    let location = cfg.location.clone();
    let loaded = model::on_passing_thread(|| model::load(location, &opts))?;
    let (mut decoder, info) = (loaded.decoder, loaded.info);
    let c = &decoder.cfg;
    tracing::info!(
        "loaded in {:.1}s: {:?}, {} layers, hidden {}, {} heads ({} KV), vocab {}, dtype {:?}, device {:?}, context {}{}",
        t0.elapsed().as_secs_f64(),
        c.arch,
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        decoder.dtype,
        cfg.device,
        info.max_model_len,
        if decoder.is_quantized() {
            format!(", GGUF blocks kept quantized (int8 dot products: {})", model::kernels::quant_isa())
        } else {
            String::new()
        }
    );
    let mut serving = serving_context(cfg, &info)?;
    if let Some(tower) = &decoder.vision {
        serving.vision = Some(Arc::new(vision_serving(cfg, &info, tower.cfg.image_token_id)?));
    }
    let serving = Arc::new(serving);
    let engine_cfg = super::kv::engine_config(&cfg.engine, &decoder.cfg, decoder.heads().1, decoder.dtype, decoder.device, &info)?;
    if let Some(s) = &shard {
        model::tp::announce_cache(s, engine_cfg.num_blocks, engine_cfg.block_size).map_err(anyhow::Error::msg)?;
        model::tp::heartbeat(s, super::tp::fail);
        tracing::info!("tensor parallelism: {} ranks, {} attention heads and {} KV heads on each", s.world, decoder.heads().0, decoder.heads().1);
    }
    // The vision tower runs in the encode_images stage, apart from the engine.
    let tower = decoder.vision.take();
    let engine = Engine::new(decoder, engine_cfg);
    let stats = engine.stats();
    Ok((stages::registry(catalog, serving.clone(), engine, tower, control), serving, stats))
}

/// An encoder (or a decoder used for pooling) behind the encode stage.
fn pooling_model(cfg: &ServeConfig, catalog: Catalog, t0: Instant, control: &Control) -> Result<Assembled> {
    let location = cfg.location.clone();
    let loaded =
        model::on_passing_thread(|| encoder::load(location, cfg.task, cfg.device, &cfg.dtype, cfg.max_model_len))?;
    let (mut model, info) = (loaded.model, loaded.info);
    if let Some(overrides) = &cfg.pooler_overrides {
        model.override_pooler(overrides).map_err(|m| anyhow::anyhow!("--override-pooler-config: {m}"))?;
    }
    tracing::info!(
        "loaded in {:.1}s: {}, device {:?}, longest input {} tokens",
        t0.elapsed().as_secs_f64(),
        model.backbone.describe(),
        cfg.device,
        info.max_model_len
    );
    let mut serving = serving_context(cfg, &info)?;
    if let Some(token) = model.backbone.image_token() {
        serving.vision = Some(Arc::new(vision_serving(cfg, &info, token)?));
    }
    let serving = Arc::new(serving);
    let stats = Arc::new(EngineStats::default());
    let sched = &cfg.engine.scheduler;
    let registry =
        stages::pooling_registry(catalog, serving.clone(), model, sched.max_num_seqs, sched.max_batched_tokens, stats.clone(), control);
    Ok((registry, serving, stats))
}

/// What validating and answering requests needs: the model's tokenizer and limits, the
/// chat template (`--chat-template`, else the model's), and the serving flags.
fn serving_context(cfg: &ServeConfig, info: &model::ModelInfo) -> Result<ServingContext> {
    let s = &cfg.serving;
    let template = match s.chat_template.as_ref().or(info.chat_template.as_ref()) {
        Some(src) => Some(ChatTemplate::new(src).map_err(|e| anyhow::anyhow!("the chat template does not compile: {e}"))?),
        None => {
            tracing::warn!("the model has no chat template: chat requests will be refused (see --chat-template)");
            None
        }
    };
    let mut serving = ServingContext::new(info, s.served_names.clone(), template, s.content_format);
    if s.content_format.is_none() && serving.chat_template.is_some() {
        tracing::info!(
            "Detected the chat template content format to be '{}'",
            match serving.content_format {
                ContentFormat::String => "string",
                ContentFormat::OpenAi => "openai",
            }
        );
    }
    serving.trust_request_chat_template = s.trust_request_chat_template;
    serving.priority_scheduling = cfg.engine.scheduler.policy == SchedulingPolicy::Priority;
    serving.log_requests = s.log_requests;
    serving.response_role = s.response_role.clone();
    serving.tokens_as_ids = s.tokens_as_ids;
    serving.max_logprobs = s.max_logprobs;
    serving.tool_parser = s.tool_parser;
    serving.reasoning_parser = s.reasoning_parser;
    serving.responses = Arc::new(crate::api::responses::store::ResponseStore::new(s.responses_store.0, std::time::Duration::from_secs(s.responses_store.1)));
    serving.defaults = sampling_defaults(&s.generation_config, info);
    Ok(serving)
}

/// How a vision model's image parts are read: its `preprocessor_config.json` (beside the
/// weights; Qwen2-VL's defaults without one), its image placeholder, the media flags.
fn vision_serving(cfg: &ServeConfig, info: &model::ModelInfo, image_token: u32) -> Result<crate::api::context::VisionServing> {
    let path = info.location.path().join("preprocessor_config.json");
    let processor = match std::fs::read_to_string(&path) {
        Ok(text) => crate::vision::qwen2_vl::ProcessorConfig::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("{} not found: images are preprocessed with Qwen2-VL's defaults", path.display());
            crate::vision::qwen2_vl::ProcessorConfig::qwen2_vl()
        }
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let placeholder = info
        .tokenizer
        .id_to_token(image_token)
        .ok_or_else(|| anyhow::anyhow!("the tokenizer has no image placeholder token (id {image_token})"))?;
    let m = &cfg.serving.media;
    Ok(crate::api::context::VisionServing {
        processor,
        placeholder,
        max_images: m.max_images,
        local_root: m.local_root.clone(),
        fetch_timeout: m.fetch_timeout,
        max_bytes: m.max_bytes,
        max_pixels: crate::vision::decode::DEFAULT_MAX_PIXELS,
    })
}

/// The sampling defaults `--generation-config` names.
fn sampling_defaults(source: &GenerationConfig, info: &model::ModelInfo) -> SamplingDefaults {
    let config = match source {
        GenerationConfig::None => None,
        GenerationConfig::Model => info.generation_config.as_ref(),
        GenerationConfig::Given(v) => Some(v),
    };
    let defaults = config.map(SamplingDefaults::from_generation_config).unwrap_or_default();
    if !defaults.is_empty() {
        tracing::info!(
            "sampling defaults from the model's generation_config.json (requests override them; \
             --generation-config vllm turns them off): {defaults:?}"
        );
    }
    defaults
}
