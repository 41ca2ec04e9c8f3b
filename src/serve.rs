//! `sluice serve`: load the model, start the pipeline, listen.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{self, CorsLayer};
use tch::{Device, Kind};

use crate::api::server::{AppState, router};
use crate::cli::{ContentFormatArg, DeviceArg, SchedulingPolicy, ServeArgs};
use crate::engine::scheduler::SchedulerConfig;
use crate::engine::{Engine, EngineConfig};
use crate::model::chat_template::ChatTemplate;
use crate::model::kv_cache::KvCache;
use crate::model::decoder_pool::{FromToken, is_decoder_reward};
use crate::model::encoder::{self, encoder_arch};
use crate::model::{self, LoadOptions, resolve};
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::sampling::SamplingDefaults;
use crate::serving::{ContentFormat, ServingContext, Task};
use crate::stages;

pub fn device(arg: DeviceArg) -> Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda | DeviceArg::Auto => {
            crate::device::load_cuda_backend();
            match (arg, tch::Cuda::is_available()) {
                (_, true) => Device::Cuda(0),
                (DeviceArg::Auto, false) => Device::Cpu,
                _ => bail!("--device cuda was asked for, but no CUDA device is available"),
            }
        }
    })
}

/// vLLM flags accepted so that its command lines run unchanged: parallelism must be 1
/// (one device), and the flags that are what sluice always does are noted in the log.
fn check_vllm_flags(args: &ServeArgs) -> Result<()> {
    if args.tensor_parallel_size != 1 || args.pipeline_parallel_size != 1 {
        bail!(
            "--tensor-parallel-size {} --pipeline-parallel-size {}: sluice runs a model on one device; leave them at 1",
            args.tensor_parallel_size,
            args.pipeline_parallel_size
        );
    }
    if args.trust_remote_code {
        tracing::info!("--trust-remote-code: no model code is ever loaded (architectures are built in); nothing changes");
    }
    if args.enforce_eager {
        tracing::info!("--enforce-eager: every step already runs eagerly; nothing changes");
    }
    Ok(())
}

/// `--chat-template`: a readable file's contents, else the argument itself.
fn chat_template_arg(arg: &str) -> Result<String> {
    let path = std::path::Path::new(arg);
    if !arg.contains("{%") && !arg.contains("{{") {
        return std::fs::read_to_string(path).with_context(|| format!("--chat-template {arg}: cannot read the file"));
    }
    Ok(arg.to_string())
}

/// Everything `serve` starts, ready to listen.
pub struct Server {
    pub app: Arc<AppState>,
    pub pipeline: Pipeline<crate::job::Item>,
}

impl Server {
    /// Closes the pipeline's entry and waits for every stage to finish its work.
    pub fn shutdown(self) {
        let Server { app, pipeline } = self;
        drop(app);
        pipeline.shutdown();
    }
}

/// What `--task` asks for, checked against the model's architectures (vLLM's rules:
/// `auto` picks generation for `*ForCausalLM` and GGUF files, embeddings for encoders,
/// classification for `*ForSequenceClassification`, rewards for reward models; `embed` or
/// `score` on a causal LM pools its last token, `reward` returns its tokens' hidden states,
/// and `classify` needs a head — the folder's, or one `classifier_from_token` converts from
/// the LM head).
pub fn resolve_task(arg: crate::cli::TaskArg, archs: &[String], from_token: bool) -> Result<Task> {
    let encoder = archs.iter().find_map(|a| encoder_arch(a));
    let named = archs.first().map(String::as_str).unwrap_or("the model");
    let generative = archs.is_empty() || archs.iter().any(|a| a.ends_with("ForCausalLM"));
    use crate::cli::TaskArg;
    if archs.iter().any(|a| is_decoder_reward(a)) {
        return match arg {
            TaskArg::Auto | TaskArg::Reward => Ok(Task::Reward),
            _ => bail!(
                "--task {}: {named} is a reward model; serve it with --task reward (per-token rewards on /pooling)",
                format!("{arg:?}").to_lowercase()
            ),
        };
    }
    Ok(match (arg, encoder) {
        (TaskArg::Reward, None) if generative => Task::Reward,
        (TaskArg::Reward, Some(_)) => {
            bail!("--task reward: {named} is not a reward model or a causal LM; serve it with --task embed, classify or score")
        }
        (TaskArg::Auto | TaskArg::Generate, None) if generative => Task::Generate,
        (TaskArg::Auto, Some(false)) | (TaskArg::Embed, Some(false)) | (TaskArg::Score, Some(false)) => Task::Embed,
        (TaskArg::Auto, Some(true)) | (TaskArg::Classify, Some(true)) | (TaskArg::Score, Some(true)) => Task::Classify,
        (TaskArg::Generate, Some(_)) => {
            bail!("--task generate: {named} is a pooling model; serve it with --task embed, classify or score")
        }
        (TaskArg::Embed, Some(true)) => {
            bail!("--task embed: {named} is a classifier; serve it with --task classify or score")
        }
        (TaskArg::Classify, Some(false)) => {
            bail!("--task classify: {named} has no classification head; serve it with --task embed or score")
        }
        (TaskArg::Embed | TaskArg::Score, None) if generative => Task::Embed,
        (TaskArg::Classify, None) if generative && from_token => Task::Classify,
        (TaskArg::Classify, None) if generative => bail!(
            "--task classify: {named} has no classification head; serve a *ForSequenceClassification model, or \
             convert this one from its LM head with --hf-overrides '{{\"classifier_from_token\": [...], \"method\": \
             \"from_2_way_softmax\" or \"no_post_processing\"}}' (a causal LM serves --task embed, with last-token \
             pooling)"
        ),
        (_, None) => bail!(
            "architecture {named} is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and \
             their ForSequenceClassification forms, Qwen2ForRewardModel, BertModel, BertForSequenceClassification, \
             XLMRobertaModel, XLMRobertaForSequenceClassification are)"
        ),
    })
}

/// `--task`, or newer vLLM's `--runner` and `--convert` (one spelling at a time):
/// `--convert embed|classify|reward` is that task, `--runner generate` is `--task
/// generate`, and `--runner pooling` alone serves the architecture's own pooling task —
/// embeddings for a causal LM.
pub fn resolve_runner(args: &ServeArgs, archs: &[String], from_token: bool) -> Result<Task> {
    use crate::cli::{ConvertArg, RunnerArg, TaskArg};
    if args.task != TaskArg::Auto && (args.runner != RunnerArg::Auto || args.convert != ConvertArg::Auto) {
        bail!("give either --task or --runner/--convert, not both");
    }
    let pick = |t| resolve_task(t, archs, from_token);
    match (args.runner, args.convert) {
        (RunnerArg::Auto, ConvertArg::Auto) => pick(args.task),
        (RunnerArg::Generate, ConvertArg::Auto | ConvertArg::None) => pick(TaskArg::Generate),
        (RunnerArg::Generate, c) => bail!("--convert {}: conversions are for --runner pooling", format!("{c:?}").to_lowercase()),
        (_, ConvertArg::Embed) => pick(TaskArg::Embed),
        (_, ConvertArg::Classify) => pick(TaskArg::Classify),
        (_, ConvertArg::Reward) => pick(TaskArg::Reward),
        (RunnerArg::Auto, ConvertArg::None) => pick(TaskArg::Auto),
        (RunnerArg::Pooling, ConvertArg::Auto | ConvertArg::None) => match pick(TaskArg::Auto)? {
            Task::Generate => pick(TaskArg::Embed),
            pooling => Ok(pooling),
        },
    }
}

/// Where requests enter the pipeline: HTTP connections (`serve`) or the lines of a JSONL
/// file (`run-batch`). Everything after the entry is the same.
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

/// Loads the model and starts the pipeline for HTTP (shared by `serve` and the tests).
pub fn build(args: &ServeArgs) -> Result<Server> {
    build_for(args, Edge::Http)
}

/// Loads the model and starts the pipeline fed by `edge`.
pub fn build_for(args: &ServeArgs, edge: Edge) -> Result<Server> {
    check_vllm_flags(args)?;
    let mut location = resolve::resolve_source(&args.model_source())?;
    if let Some(arg) = &args.hf_overrides {
        let overrides = resolve::parse_overrides(arg).map_err(anyhow::Error::msg)?;
        tracing::info!("--hf-overrides over config.json: {overrides}");
        location.hf_overrides = Some(overrides);
    }
    let from_token = FromToken::from_config(location.config()?.as_ref())
        .map_err(|m| anyhow::anyhow!("--hf-overrides / config.json: {m}"))?
        .is_some();
    let task = resolve_runner(args, &encoder::architectures(&location)?, from_token)?;
    if args.override_pooler_config.is_some() && task == Task::Generate {
        bail!("--override-pooler-config is for pooling models; this model is served for --task generate");
    }
    if from_token && task != Task::Classify {
        // vLLM, too, converts only a model served as a classifier.
        tracing::warn!(
            "classifier_from_token is not used for --task {}: serve the model with --task classify, or name a \
             *ForSequenceClassification architecture in --hf-overrides so that --task score and auto classify",
            task.name()
        );
    }
    // The pipeline file before the weights: a wrong one should not wait for the model to load.
    let spec = match (&args.pipeline, task, edge) {
        (Some(path), _, _) => PipelineSpec::load(path)?,
        (None, Task::Generate, Edge::Http) => PipelineSpec::parse(stages::SERVE_TOML, "stages/serve.toml (built in)")?,
        (None, _, Edge::Http) => PipelineSpec::parse(stages::POOLING_TOML, "stages/pooling.toml (built in)")?,
        (None, Task::Generate, Edge::Jsonl) => PipelineSpec::parse(stages::BATCH_TOML, "stages/batch.toml (built in)")?,
        (None, _, Edge::Jsonl) => {
            PipelineSpec::parse(stages::BATCH_POOLING_TOML, "stages/batch-pooling.toml (built in)")?
        }
    };
    if let Some(t) = args.threads {
        tch::set_num_threads(t as i32);
    }
    let device = device(args.device)?;
    tracing::info!("loading {} from {} for --task {}", location.default_name, location.path().display(), task.name());
    let t0 = Instant::now();
    if task != Task::Generate {
        return build_pooling(args, location, task, &spec, device, t0, edge);
    }
    let opts = LoadOptions { device, dtype: &args.dtype, max_model_len: args.max_model_len };
    let loaded = model::on_passing_thread(|| model::load(location, &opts))?;
    let llama = loaded.llama;
    let info = loaded.info;
    let c = &llama.cfg;
    tracing::info!(
        "loaded in {:.1}s: {:?}, {} layers, hidden {}, {} heads ({} KV), vocab {}, dtype {:?}, device {:?}, context {}",
        t0.elapsed().as_secs_f64(),
        c.arch,
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        llama.dtype,
        device,
        info.max_model_len
    );

    let mut serving = serving_with_template(args, &info)?;
    serving.priority_scheduling = args.scheduling_policy == SchedulingPolicy::Priority;
    serving.log_requests = (args.enable_log_requests && !args.disable_log_requests).then(|| args.max_log_len.unwrap_or(usize::MAX));
    serving.response_role = args.response_role.clone();
    serving.tokens_as_ids = args.return_tokens_as_token_ids;
    serving.max_logprobs = args.max_logprobs;
    serving.tool_parser = args.tool_call_parser.filter(|_| args.enable_auto_tool_choice);
    serving.defaults = sampling_defaults(&args.generation_config, &info)?;
    let serving = Arc::new(serving);
    if args.chat_template_content_format == ContentFormatArg::Auto && serving.chat_template.is_some() {
        tracing::info!(
            "Detected the chat template content format to be '{}'",
            match serving.content_format {
                ContentFormat::String => "string",
                ContentFormat::OpenAi => "openai",
            }
        );
    }

    let engine_cfg = engine_config(args, &llama.cfg, llama.dtype, llama.device, &info)?;
    let engine = Engine::new(llama, engine_cfg);
    let engine_stats = engine.stats();

    let mut registry = stages::registry(serving.clone(), engine);
    registry.source(edge.source(), stages::SOURCE_OUTPUT);
    let pipeline = Pipeline::start(&spec, &registry)?;
    let app = Arc::new(AppState {
        serving,
        entry: pipeline.entry().clone(),
        api_key: args.api_key.clone(),
        max_body_bytes: args.max_request_body as usize,
        request_id_headers: args.enable_request_id_headers,
        engine_stats,
        task,
        stages: pipeline.metrics.clone(),
        root_path: root_path(args)?,
        traced_stages: args.enable_per_request_metrics.then(|| pipeline.stage_names()),
    });
    Ok(Server { app, pipeline })
}

/// The serving context with the chat template (`--chat-template`, else the model's) and
/// the flags that govern it.
fn serving_with_template(args: &ServeArgs, info: &model::ModelInfo) -> Result<ServingContext> {
    let template_src = match &args.chat_template {
        Some(arg) => Some(chat_template_arg(arg)?),
        None => info.chat_template.clone(),
    };
    let template = match template_src {
        Some(src) => Some(ChatTemplate::new(&src).map_err(|e| anyhow::anyhow!("the chat template does not compile: {e}"))?),
        None => {
            tracing::warn!("the model has no chat template: chat requests will be refused (see --chat-template)");
            None
        }
    };
    let content_format = match args.chat_template_content_format {
        ContentFormatArg::Auto => None,
        ContentFormatArg::String => Some(ContentFormat::String),
        ContentFormatArg::Openai => Some(ContentFormat::OpenAi),
    };
    let mut serving = ServingContext::new(info, served_names(args, info), template, content_format);
    serving.trust_request_chat_template = args.trust_request_chat_template;
    Ok(serving)
}

fn served_names(args: &ServeArgs, info: &model::ModelInfo) -> Vec<String> {
    if args.served_model_name.is_empty() {
        vec![info.location.default_name.clone()]
    } else {
        args.served_model_name.clone()
    }
}

/// An encoder for embeddings, classification or scores, behind the pooling pipeline.
fn build_pooling(
    args: &ServeArgs,
    location: resolve::ModelLocation,
    task: Task,
    spec: &PipelineSpec,
    device: Device,
    t0: Instant,
    edge: Edge,
) -> Result<Server> {
    let loaded = model::on_passing_thread(|| encoder::load(location, task, device, &args.dtype, args.max_model_len))?;
    let (mut model, info) = (loaded.model, loaded.info);
    if let Some(arg) = &args.override_pooler_config {
        let overrides: serde_json::Value =
            serde_json::from_str(arg).map_err(|e| anyhow::anyhow!("--override-pooler-config is not valid JSON ({e}): {arg}"))?;
        model.override_pooler(&overrides).map_err(|m| anyhow::anyhow!("--override-pooler-config: {m}"))?;
    }
    tracing::info!(
        "loaded in {:.1}s: {}, device {:?}, longest input {} tokens",
        t0.elapsed().as_secs_f64(),
        model.backbone.describe(),
        device,
        info.max_model_len
    );
    if args.max_num_seqs == 0 || args.max_num_batched_tokens == 0 {
        bail!("--max-num-seqs and --max-num-batched-tokens must be at least 1");
    }
    let serving = Arc::new(serving_with_template(args, &info)?);
    let engine_stats = Arc::new(crate::engine::stats::EngineStats::default());
    let mut registry =
        stages::pooling_registry(serving.clone(), model, args.max_num_seqs, args.max_num_batched_tokens, engine_stats.clone());
    registry.source(edge.source(), stages::SOURCE_OUTPUT);
    let pipeline = Pipeline::start(spec, &registry)?;
    let app = Arc::new(AppState {
        serving,
        entry: pipeline.entry().clone(),
        api_key: args.api_key.clone(),
        max_body_bytes: args.max_request_body as usize,
        task,
        request_id_headers: args.enable_request_id_headers,
        engine_stats,
        stages: pipeline.metrics.clone(),
        root_path: root_path(args)?,
        traced_stages: args.enable_per_request_metrics.then(|| pipeline.stage_names()),
    });
    Ok(Server { app, pipeline })
}

fn root_path(args: &ServeArgs) -> Result<String> {
    crate::api::docs::normalize_root_path(args.root_path.as_deref()).map_err(anyhow::Error::msg)
}

/// `--generation-config`: which generation_config.json gives the sampling defaults.
fn sampling_defaults(arg: &str, info: &model::ModelInfo) -> Result<SamplingDefaults> {
    let config = match arg {
        "vllm" => None,
        "auto" => info.generation_config.clone(),
        folder => {
            let path = std::path::Path::new(folder).join("generation_config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--generation-config {folder}: cannot read {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("--generation-config: {} is not JSON", path.display()))?)
        }
    };
    let defaults = config.as_ref().map(SamplingDefaults::from_generation_config).unwrap_or_default();
    if !defaults.is_empty() {
        tracing::info!(
            "sampling defaults from the model's generation_config.json (requests override them; \
             --generation-config vllm turns them off): {defaults:?}"
        );
    }
    Ok(defaults)
}

/// Bytes for the KV cache: `--kv-cache-memory` when given; on CUDA, the share of the
/// device that `--gpu-memory-utilization` allows, less what is in use once the weights are
/// loaded and an estimate of the largest step's activations; 2 GiB on CPU.
fn kv_cache_budget(args: &ServeArgs, cfg: &model::config::LlamaConfig, kind: Kind, device: Device) -> Result<u64> {
    let util = args.gpu_memory_utilization;
    if !(util > 0.0 && util <= 1.0) {
        bail!("--gpu-memory-utilization must be in (0, 1], got {util}");
    }
    if let Some(bytes) = args.kv_cache_memory {
        return Ok(bytes);
    }
    if device == Device::Cpu {
        return Ok(2 << 30);
    }
    let Some((free, total)) = crate::device::cuda_memory() else {
        bail!("cannot read the CUDA device's memory to size the KV cache: give --kv-cache-memory");
    };
    // A step's transient tensors: per batched token, the residual stream, attention
    // projections and the MLP's gate/up/act; per sequence, float32 logits and the sampler's
    // copies of them.
    let elt = kind.elt_size_in_bytes() as u64;
    let per_token = (6 * cfg.hidden_size + 3 * cfg.intermediate_size) as u64 * elt;
    let per_seq = 3 * 4 * cfg.vocab_size as u64;
    let activations = args.max_num_batched_tokens as u64 * per_token + args.max_num_seqs as u64 * per_seq + (256 << 20);
    let allowed = (total as f64 * util) as u64;
    let used = total - free;
    let budget = allowed.saturating_sub(used).saturating_sub(activations);
    tracing::info!(
        "GPU memory: {:.2} GiB total, {:.2} GiB in use after loading, {:.2} GiB allowed (--gpu-memory-utilization {util}), \
         {:.2} GiB kept for activations",
        gib(total),
        gib(used),
        gib(allowed),
        gib(activations)
    );
    if budget == 0 {
        bail!("--gpu-memory-utilization {util} leaves no room for the KV cache on this device: raise it or give --kv-cache-memory");
    }
    Ok(budget)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn engine_config(
    args: &ServeArgs,
    cfg: &model::config::LlamaConfig,
    kind: Kind,
    device: Device,
    info: &model::ModelInfo,
) -> Result<EngineConfig> {
    if args.block_size == 0 || args.block_size > 1024 {
        bail!("--block-size must be between 1 and 1024");
    }
    let budget = kv_cache_budget(args, cfg, kind, device)?;
    let per_block = KvCache::bytes_per_block(cfg.num_layers, args.block_size, cfg.num_kv_heads, cfg.head_dim, kind);
    let num_blocks = (budget as usize) / per_block;
    let tokens = num_blocks.saturating_sub(1) * args.block_size; // block 0 is padding
    if tokens < info.max_model_len {
        bail!(
            "the KV cache ({budget} bytes) holds {tokens} tokens, fewer than the context length {}: raise --kv-cache-memory \
             (or --gpu-memory-utilization on CUDA) or lower --max-model-len",
            info.max_model_len
        );
    }
    tracing::info!(
        "KV cache: {num_blocks} blocks of {} tokens = {tokens} tokens ({:.2} GiB)",
        args.block_size,
        gib((num_blocks * per_block) as u64)
    );
    if args.max_num_seqs == 0 || args.max_num_batched_tokens == 0 {
        bail!("--max-num-seqs and --max-num-batched-tokens must be at least 1");
    }
    Ok(EngineConfig {
        block_size: args.block_size,
        num_blocks,
        scheduler: SchedulerConfig {
            max_num_seqs: args.max_num_seqs,
            max_batched_tokens: args.max_num_batched_tokens,
            policy: args.scheduling_policy,
            prefix_caching: !args.no_enable_prefix_caching,
        },
        max_model_len: info.max_model_len,
        eos_ids: info.eos_ids.clone(),
    })
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let cors = cors(args)?;
    let server = build(args)?;
    let addr = format!("{}:{}", args.host, args.port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(
            "serving {} on http://{}",
            server.app.serving.served_names.join(", "),
            listener.local_addr().map(|a| a.to_string()).unwrap_or(addr.clone())
        );
        let root = server.app.root_path.clone();
        use tower_layer::Layer as _;
        let app = axum::middleware::map_request(move |req| {
            let root = root.clone();
            async move { crate::api::docs::strip_root_path(&root, req) }
        })
        .layer(router(server.app.clone()).layer(cors));
        axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server stopped")
    })?;
    tracing::info!("shutting down");
    Ok(())
}

/// vLLM's CORS flags as a layer around every route (outside the API key check, so that
/// browsers' preflight requests are answered).
fn cors(args: &ServeArgs) -> Result<CorsLayer> {
    let any = |l: &[String]| l.iter().any(|v| v == "*");
    let creds = args.allow_credentials;
    // With credentials a wildcard is not allowed on the wire: mirror the request instead.
    let mut layer = CorsLayer::new().allow_credentials(creds);
    layer = match (any(&args.allowed_origins.0), creds) {
        (true, false) => layer.allow_origin(cors::Any),
        (true, true) => layer.allow_origin(cors::AllowOrigin::mirror_request()),
        (false, _) => layer.allow_origin(parse_all("allowed-origins", &args.allowed_origins.0, |o| HeaderValue::from_str(o).ok())?),
    };
    layer = match (any(&args.allowed_methods.0), creds) {
        (true, false) => layer.allow_methods(cors::Any),
        (true, true) => layer.allow_methods(cors::AllowMethods::mirror_request()),
        (false, _) => layer.allow_methods(parse_all("allowed-methods", &args.allowed_methods.0, |m| Method::from_bytes(m.as_bytes()).ok())?),
    };
    layer = match (any(&args.allowed_headers.0), creds) {
        (true, false) => layer.allow_headers(cors::Any),
        (true, true) => layer.allow_headers(cors::AllowHeaders::mirror_request()),
        (false, _) => {
            layer.allow_headers(parse_all("allowed-headers", &args.allowed_headers.0, |h| HeaderName::from_bytes(h.as_bytes()).ok())?)
        }
    };
    Ok(layer)
}

/// Every value of a list flag, parsed; the error names the flag and the value.
fn parse_all<T>(flag: &str, values: &[String], parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    values.iter().map(|v| parse(v).with_context(|| format!("--{flag}: {v:?} is not valid there"))).collect()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
