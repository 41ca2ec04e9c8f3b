//! Flags resolved once: clap's `ServeArgs` (vLLM's names, as typed) become a `ServeConfig`
//! (what `serve`, `run-batch` and `profile` assemble the pipeline from). Everything that
//! can be checked before the weights load is checked here, so that a wrong command line
//! stops at once with a message naming the flag.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use axum::http::{HeaderName, HeaderValue, Method};
use serde_json::Value;
use tch::Device;

use crate::api::context::ContentFormat;
use crate::api::tools::ToolParser;
use crate::cli::{ContentFormatArg, ConvertArg, DeviceArg, RunnerArg, SchedulingPolicyArg, ServeArgs, StringList, TaskArg};
use crate::engine::scheduler::{SchedulerConfig, SchedulingPolicy};
use crate::model::arch;
use crate::model::Quantization;
use crate::model::decoder_pool::{FromToken, is_decoder_reward};
use crate::model::encoder::{self, encoder_arch};
use crate::model::resolve::{self, ModelLocation};
use crate::model::task::Task;

/// Everything a command that runs the pipeline needs from its flags, resolved.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where the model is, with `--hf-overrides` applied to its config.
    pub location: ModelLocation,
    pub task: Task,
    pub device: Device,
    /// `--dtype` as given (`auto` is resolved per model by the loader).
    pub dtype: String,
    /// `--quantization`: how a GGUF file's quantized matrices are run.
    pub quantization: Quantization,
    pub max_model_len: Option<usize>,
    /// libtorch threads (`--threads`); None: all cores.
    pub threads: Option<usize>,
    /// `--pipeline`; None: the built-in file for the task and the edge.
    pub pipeline_file: Option<PathBuf>,
    /// `--override-pooler-config`, parsed.
    pub pooler_overrides: Option<Value>,
    pub engine: EngineSettings,
    pub serving: ServingSettings,
    pub http: HttpSettings,
    /// `--enable-per-request-metrics`.
    pub per_request_metrics: bool,
    /// `--shutdown-timeout`: how long requests in flight may go on after a signal.
    pub shutdown_timeout: std::time::Duration,
    /// Faults to inject (`SLUICE_FAULTS`, for tests only); empty otherwise.
    pub faults: crate::pipeline::Faults,
    /// Tensor parallelism: the ranks and where they meet.
    pub parallel: Parallel,
}

/// `--tensor-parallel-size` and the multi-node flags, with this process's rank.
#[derive(Debug, Clone)]
pub struct Parallel {
    /// Ranks in all (1: no tensor parallelism).
    pub size: usize,
    /// Ranks per machine (`size / --nnodes`).
    pub per_node: usize,
    pub node_rank: usize,
    /// This process's rank: the node's first (`node_rank · per_node`), or the one a
    /// node's first process gave a process it started (`RANK_VAR`).
    pub rank: usize,
    pub master_addr: String,
    /// None: rank 0 picks a free port (one machine).
    pub master_port: Option<u16>,
    /// The address the ranks' transport binds to (loopback when the master is), or
    /// torch's `GLOO_SOCKET_IFNAME` interface; neither: the hostname's address.
    pub bind_addr: Option<String>,
    pub ifname: Option<String>,
}

/// Set by a node's first process on the ranks it starts: their rank, and the store's port.
pub const RANK_VAR: &str = "SLUICE_TP_RANK";
pub const PORT_VAR: &str = "SLUICE_TP_MASTER_PORT";

impl Parallel {
    /// Whether this process starts the node's other ranks (it is the node's first).
    pub fn starts_others(&self) -> bool {
        self.size > 1 && self.rank == self.node_rank * self.per_node
    }
}

/// The variable naming faults to inject (see `pipeline::faults`); for tests only.
pub const FAULTS_VAR: &str = "SLUICE_FAULTS";

/// How the engine (or the encoder) is sized and scheduled.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Tokens per KV block.
    pub block_size: usize,
    pub kv_cache: KvBudget,
    pub scheduler: SchedulerConfig,
}

/// How much memory the KV cache gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvBudget {
    /// Exactly this many bytes (`--kv-cache-memory`): the prefix cache may fill them.
    Bytes(u64),
    /// On the CPU without `--kv-cache-memory`: a pool of `CPU_KV_CACHE_BYTES`, of which
    /// only what the load has held at once becomes resident (`engine::BlockReuse`).
    CpuDefault,
    /// On CUDA: this share of the device's memory for the whole server
    /// (`--gpu-memory-utilization`), less what is in use once the weights are loaded.
    GpuShare(f64),
}

/// The KV cache a CPU server gets unless `--kv-cache-memory` says otherwise.
pub const CPU_KV_CACHE_BYTES: u64 = 2 << 30;

/// What validation and the answers need beyond the model itself.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    /// Names clients may use in `model`; the first is reported in responses.
    pub served_names: Vec<String>,
    /// `--chat-template`'s source text; None: the model's own.
    pub chat_template: Option<String>,
    /// `--chat-template-content-format`; None: detected from the template.
    pub content_format: Option<ContentFormat>,
    pub response_role: String,
    pub tokens_as_ids: bool,
    /// `--enable-log-requests`: log each request, its prompt cut to this many characters.
    pub log_requests: Option<usize>,
    pub trust_request_chat_template: bool,
    /// `--enable-auto-tool-choice --tool-call-parser`.
    pub tool_parser: Option<ToolParser>,
    /// `--reasoning-parser`.
    pub reasoning_parser: Option<crate::api::reasoning::ReasoningParser>,
    /// `--responses-store-size`, `--responses-store-ttl` (seconds).
    pub responses_store: (usize, u64),
    pub max_logprobs: usize,
    pub generation_config: GenerationConfig,
    pub media: MediaSettings,
}

/// How image parts are read, for models that take images.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// `--limit-mm-per-prompt '{"image": N}'`.
    pub max_images: usize,
    /// `--allowed-local-media-path`, made canonical.
    pub local_root: Option<PathBuf>,
    /// `VLLM_IMAGE_FETCH_TIMEOUT` (seconds, vLLM's variable; default 5).
    pub fetch_timeout: std::time::Duration,
    /// The most bytes one image may have.
    pub max_bytes: usize,
}

/// The largest image file taken (fetched, read or inline).
pub const MAX_IMAGE_BYTES: usize = 20 << 20;

fn media_settings(args: &ServeArgs) -> Result<MediaSettings> {
    let mut max_images = 999;
    if let Some(arg) = &args.limit_mm_per_prompt {
        let bad = |why: String| anyhow::anyhow!("--limit-mm-per-prompt {arg}: {why} (give JSON such as '{{\"image\": 2}}')");
        let v: serde_json::Map<String, Value> = serde_json::from_str(arg).map_err(|e| bad(format!("not a JSON object ({e})")))?;
        for (k, n) in &v {
            let n = n.as_u64().ok_or_else(|| bad(format!("the limit of {k:?} must be a non-negative integer")))?;
            match k.as_str() {
                "image" => max_images = n as usize,
                // Modalities this server does not take in chat: a limit on them changes nothing.
                "video" | "audio" => {}
                other => return Err(bad(format!("unknown modality {other:?} (image, video, audio are)"))),
            }
        }
    }
    let local_root = match &args.allowed_local_media_path {
        None => None,
        Some(p) => {
            let c = std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("--allowed-local-media-path {}: {e}", p.display()))?;
            if !c.is_dir() {
                bail!("--allowed-local-media-path {}: not a folder", p.display());
            }
            Some(c)
        }
    };
    let fetch_timeout = match std::env::var("VLLM_IMAGE_FETCH_TIMEOUT") {
        Ok(v) => {
            let secs: f64 = v.trim().parse().ok().filter(|s: &f64| *s > 0.0 && s.is_finite()).ok_or_else(|| {
                anyhow::anyhow!("VLLM_IMAGE_FETCH_TIMEOUT={v:?}: give a positive number of seconds")
            })?;
            std::time::Duration::from_secs_f64(secs)
        }
        Err(_) => std::time::Duration::from_secs(5),
    };
    Ok(MediaSettings { max_images, local_root, fetch_timeout, max_bytes: MAX_IMAGE_BYTES })
}

/// `--generation-config`: where requests' sampling defaults come from.
#[derive(Debug, Clone)]
pub enum GenerationConfig {
    /// The model's generation_config.json (`auto`).
    Model,
    /// None: OpenAI's defaults (`vllm`).
    None,
    /// A folder's generation_config.json, read.
    Given(Value),
}

/// The HTTP edge's settings (`serve` only; the other commands refuse these flags).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `host:port` to listen on.
    pub address: String,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// `--enable-request-id-headers`.
    pub request_id_headers: bool,
    /// `--root-path`, normalized ("" or "/prefix").
    pub root_path: String,
    pub cors: CorsSettings,
}

/// vLLM's CORS flags, parsed.
#[derive(Debug, Clone)]
pub struct CorsSettings {
    pub origins: Allowed<HeaderValue>,
    pub methods: Allowed<Method>,
    pub headers: Allowed<HeaderName>,
    pub credentials: bool,
}

/// A CORS list: `["*"]`, or the values given.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed<T> {
    Any,
    Only(Vec<T>),
}

impl ServeConfig {
    /// Checks and resolves every flag; reads the model's config (not its weights).
    pub fn resolve(args: &ServeArgs) -> Result<ServeConfig> {
        check_vllm_flags(args)?;
        let mut location = resolve::resolve_source(&model_source(args))?;
        if let Some(arg) = &args.hf_overrides {
            let overrides = resolve::parse_overrides(arg).map_err(anyhow::Error::msg)?;
            tracing::info!("--hf-overrides over config.json: {overrides}");
            location.hf_overrides = Some(overrides);
        }
        let from_token = FromToken::from_config(location.config()?.as_ref())
            .map_err(|m| anyhow::anyhow!("--hf-overrides / config.json: {m}"))?
            .is_some();
        let task = match crate::model::whisper::detect(location.path()) {
            Some(_) => whisper_task(args)?,
            None if args.task == TaskArg::Transcription => bail!(
                "--task transcription serves Whisper models (a WhisperForConditionalGeneration folder, or a CTranslate2 \
                 Whisper folder); {} is not one",
                location.path().display()
            ),
            None => resolve_runner(args, &encoder::architectures(&location)?, from_token)?,
        };
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
        let pooler_overrides = match &args.override_pooler_config {
            None => None,
            Some(arg) => Some(
                serde_json::from_str(arg)
                    .map_err(|e| anyhow::anyhow!("--override-pooler-config is not valid JSON ({e}): {arg}"))?,
            ),
        };
        let device = device(args.device)?;
        let quantization = quantization(args, &location, task, device)?;
        let engine = engine_settings(args, device)?;
        let served_names =
            if args.served_model_name.is_empty() { vec![location.default_name.clone()] } else { args.served_model_name.clone() };
        let serving = ServingSettings {
            served_names,
            chat_template: args.chat_template.as_deref().map(chat_template_arg).transpose()?,
            content_format: match args.chat_template_content_format {
                ContentFormatArg::Auto => None,
                ContentFormatArg::String => Some(ContentFormat::String),
                ContentFormatArg::Openai => Some(ContentFormat::OpenAi),
            },
            response_role: args.response_role.clone(),
            tokens_as_ids: args.return_tokens_as_token_ids,
            log_requests: (args.enable_log_requests && !args.disable_log_requests)
                .then(|| args.max_log_len.unwrap_or(usize::MAX)),
            trust_request_chat_template: args.trust_request_chat_template,
            tool_parser: args.tool_call_parser.filter(|_| args.enable_auto_tool_choice),
            reasoning_parser: args.reasoning_parser,
            responses_store: (args.responses_store_size, args.responses_store_ttl),
            max_logprobs: args.max_logprobs,
            generation_config: generation_config(&args.generation_config)?,
            media: media_settings(args)?,
        };
        let http = HttpSettings {
            address: format!("{}:{}", args.host, args.port),
            api_key: args.api_key.clone(),
            max_body_bytes: args.max_request_body as usize,
            request_id_headers: args.enable_request_id_headers,
            root_path: normalize_root_path(args.root_path.as_deref()).map_err(anyhow::Error::msg)?,
            cors: cors_settings(args)?,
        };
        Ok(ServeConfig {
            location,
            task,
            device,
            dtype: args.dtype.clone(),
            quantization,
            max_model_len: args.max_model_len,
            threads: args.threads,
            pipeline_file: args.pipeline.clone(),
            pooler_overrides,
            engine,
            serving,
            http,
            per_request_metrics: args.enable_per_request_metrics,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
            faults: faults()?,
            parallel: parallel(args, task, device)?,
        })
    }
}

/// The faults `SLUICE_FAULTS` names, read once here; a wrong list stops start-up.
fn faults() -> Result<crate::pipeline::Faults> {
    let Ok(list) = std::env::var(FAULTS_VAR) else { return Ok(crate::pipeline::Faults::none()) };
    let faults = crate::pipeline::Faults::parse(&list).map_err(|e| anyhow::anyhow!("{FAULTS_VAR}: {e}"))?;
    if !faults.is_empty() {
        tracing::warn!("{FAULTS_VAR} is set: injecting faults for tests ({list})");
    }
    Ok(faults)
}

/// The model argument with the Hub flags that say where its files come from.
fn model_source(args: &ServeArgs) -> resolve::ModelSource<'_> {
    resolve::ModelSource {
        model: args.model_arg(),
        revision: args.revision.as_deref(),
        tokenizer: args.tokenizer.as_deref(),
        tokenizer_revision: args.tokenizer_revision.as_deref(),
        download_dir: args.download_dir.as_deref(),
    }
}

/// `--quantization`, checked against the model, its task and the device. Absent, a GGUF
/// file's blocks stay quantized wherever the kernels run them (a generation model on the
/// CPU), except under `--dtype float32`: the kernels quantize activations to int8 for small
/// batches, which a request for float32 precision does not ask for.
fn quantization(args: &ServeArgs, location: &ModelLocation, task: Task, device: Device) -> Result<Quantization> {
    let gguf = matches!(location.format, resolve::Format::Gguf(_));
    let Some(value) = args.quantization.as_deref() else {
        let float32 = crate::model::resolve_dtype_named(&args.dtype, None, device).is_ok_and(|k| k == tch::Kind::Float);
        let keep = gguf && task == Task::Generate && device == Device::Cpu && !float32;
        return Ok(if keep { Quantization::Gguf } else { Quantization::Dequantize });
    };
    let q = Quantization::parse(value).map_err(anyhow::Error::msg)?;
    if q.keeps_blocks() {
        if !gguf {
            bail!("--quantization gguf needs a GGUF file; {} is not one", location.path().display());
        }
        if task != Task::Generate {
            bail!("--quantization gguf runs generation models only (this one is served for {})", task.name());
        }
        if device != Device::Cpu {
            bail!("--quantization gguf runs on the CPU only; on {device:?} use --quantization none");
        }
    }
    Ok(q)
}

/// The device a `--device` flag names (auto: CUDA when there is one).
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

fn engine_settings(args: &ServeArgs, device: Device) -> Result<EngineSettings> {
    let util = args.gpu_memory_utilization;
    if !(util > 0.0 && util <= 1.0) {
        bail!("--gpu-memory-utilization must be in (0, 1], got {util}");
    }
    if args.block_size == 0 || args.block_size > 1024 {
        bail!("--block-size must be between 1 and 1024");
    }
    if args.max_num_seqs == 0 || args.max_num_batched_tokens == 0 {
        bail!("--max-num-seqs and --max-num-batched-tokens must be at least 1");
    }
    Ok(EngineSettings {
        block_size: args.block_size,
        kv_cache: match (args.kv_cache_memory, device) {
            (Some(bytes), _) => KvBudget::Bytes(bytes),
            (None, Device::Cpu) => KvBudget::CpuDefault,
            (None, _) => KvBudget::GpuShare(util),
        },
        scheduler: SchedulerConfig {
            max_num_seqs: args.max_num_seqs,
            max_batched_tokens: args.max_num_batched_tokens,
            policy: match args.scheduling_policy {
                SchedulingPolicyArg::Fcfs => SchedulingPolicy::Fcfs,
                SchedulingPolicyArg::Priority => SchedulingPolicy::Priority,
            },
            prefix_caching: !args.no_enable_prefix_caching,
        },
    })
}

/// `--tensor-parallel-size` with the multi-node flags; this process's rank.
fn parallel(args: &ServeArgs, task: Task, device: Device) -> Result<Parallel> {
    let size = args.tensor_parallel_size;
    if size == 0 {
        bail!("--tensor-parallel-size must be at least 1");
    }
    if args.nnodes == 0 || size % args.nnodes != 0 {
        bail!("--nnodes {} must divide --tensor-parallel-size {size}", args.nnodes);
    }
    if args.node_rank >= args.nnodes {
        bail!("--node-rank {} is not below --nnodes {}", args.node_rank, args.nnodes);
    }
    let per_node = size / args.nnodes;
    let env_usize = |name: &str| -> Result<Option<usize>> {
        match std::env::var(name) {
            Ok(v) => v.parse().map(Some).map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
            Err(_) => Ok(None),
        }
    };
    let rank = env_usize(RANK_VAR)?.unwrap_or(args.node_rank * per_node);
    let master_port = match env_usize(PORT_VAR)? {
        Some(p) => Some(u16::try_from(p).map_err(|_| anyhow::anyhow!("{PORT_VAR}={p} is not a port"))?),
        None => args.master_port,
    };
    let loopback = args.master_addr == "localhost" || args.master_addr.starts_with("127.");
    if size > 1 {
        if task != Task::Generate {
            bail!("--tensor-parallel-size {size}: tensor parallelism serves generation models (--task generate), not --task {}", task.name());
        }
        if device != Device::Cpu {
            bail!(
                "--tensor-parallel-size {size}: tensor parallelism runs on the CPU (c10d's Gloo) in this build; NCCL for CUDA \
                 devices is not wired yet"
            );
        }
        if !crate::dist::available() {
            bail!(
                "--tensor-parallel-size {size}: this build has no Gloo (gloo's headers were missing when it was built: run \
                 scripts/setup.sh, then build again)"
            );
        }
        if args.nnodes > 1 && args.master_port.is_none() {
            bail!("--nnodes {}: give every node the same --master-addr (node 0's address) and --master-port", args.nnodes);
        }
    }
    Ok(Parallel {
        size,
        per_node,
        node_rank: args.node_rank,
        rank,
        master_addr: args.master_addr.clone(),
        master_port,
        bind_addr: loopback.then(|| "127.0.0.1".to_string()),
        ifname: std::env::var("GLOO_SOCKET_IFNAME").ok().filter(|s| !s.is_empty()),
    })
}

/// vLLM flags accepted so that its command lines run unchanged: pipeline parallelism must
/// be 1, and the flags that are what sluice always does are noted in the log.
fn check_vllm_flags(args: &ServeArgs) -> Result<()> {
    if args.pipeline_parallel_size != 1 {
        bail!(
            "--pipeline-parallel-size {}: sluice does not split a model by layers; leave it at 1 (--tensor-parallel-size \
             splits each layer)",
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

/// `--generation-config`: auto, vllm, or a folder whose generation_config.json is read now.
fn generation_config(arg: &str) -> Result<GenerationConfig> {
    Ok(match arg {
        "auto" => GenerationConfig::Model,
        "vllm" => GenerationConfig::None,
        folder => {
            let path = std::path::Path::new(folder).join("generation_config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--generation-config {folder}: cannot read {}", path.display()))?;
            GenerationConfig::Given(
                serde_json::from_str(&text).with_context(|| format!("--generation-config: {} is not JSON", path.display()))?,
            )
        }
    })
}

/// `--root-path`: a value starting with `/` and without a trailing `/` (empty: none).
pub fn normalize_root_path(arg: Option<&str>) -> Result<String, String> {
    match arg.map(|s| s.trim_end_matches('/')) {
        None | Some("") => Ok(String::new()),
        Some(p) if p.starts_with('/') && !p.contains(['?', '#']) => Ok(p.to_string()),
        Some(p) => Err(format!("--root-path must be a path starting with '/', got {p:?}")),
    }
}

/// vLLM's CORS flags: `["*"]` allows any value; otherwise each value must be valid there.
fn cors_settings(args: &ServeArgs) -> Result<CorsSettings> {
    Ok(CorsSettings {
        origins: allowed("allowed-origins", &args.allowed_origins, |o| HeaderValue::from_str(o).ok())?,
        methods: allowed("allowed-methods", &args.allowed_methods, |m| Method::from_bytes(m.as_bytes()).ok())?,
        headers: allowed("allowed-headers", &args.allowed_headers, |h| HeaderName::from_bytes(h.as_bytes()).ok())?,
        credentials: args.allow_credentials,
    })
}

/// Every value of a list flag, parsed; the error names the flag and the value.
fn allowed<T>(flag: &str, values: &StringList, parse: impl Fn(&str) -> Option<T>) -> Result<Allowed<T>> {
    if values.0.iter().any(|v| v == "*") {
        return Ok(Allowed::Any);
    }
    let parsed = values.0.iter().map(|v| parse(v).with_context(|| format!("--{flag}: {v:?} is not valid there")));
    Ok(Allowed::Only(parsed.collect::<Result<_>>()?))
}

/// What `--task` asks for, checked against the model's architectures (vLLM's rules:
/// `auto` picks generation for `*ForCausalLM` and GGUF files, embeddings for encoders,
/// classification for `*ForSequenceClassification`, rewards for reward models; `embed` or
/// `score` on a causal LM pools its last token, `reward` returns its tokens' hidden states,
/// and `classify` needs a head — the folder's, or one `classifier_from_token` converts from
/// the LM head).
pub fn resolve_task(arg: TaskArg, archs: &[String], from_token: bool) -> Result<Task> {
    let encoder = archs.iter().find_map(|a| encoder_arch(a));
    let named = archs.first().map(String::as_str).unwrap_or("the model");
    let generative = archs.is_empty() || archs.iter().any(|a| arch::has_role(a, arch::Role::CausalLm));
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
        (TaskArg::Transcription, _) => bail!("--task transcription: {named} is not a Whisper model"),
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
        (_, None) => bail!("{}", arch::unsupported(named)),
    })
}

/// A Whisper model is served for transcription (vLLM picks it from the architecture);
/// any other task is refused.
fn whisper_task(args: &ServeArgs) -> Result<Task> {
    if args.runner != RunnerArg::Auto || args.convert != ConvertArg::Auto {
        bail!("--runner/--convert: a Whisper model is served for --task transcription; leave them out");
    }
    match args.task {
        TaskArg::Auto | TaskArg::Transcription => Ok(Task::Transcription),
        other => bail!(
            "--task {}: this is a Whisper model; serve it with --task transcription (or leave --task out)",
            format!("{other:?}").to_lowercase()
        ),
    }
}

/// `--task`, or newer vLLM's `--runner` and `--convert` (one spelling at a time):
/// `--convert embed|classify|reward` is that task, `--runner generate` is `--task
/// generate`, and `--runner pooling` alone serves the architecture's own pooling task —
/// embeddings for a causal LM.
pub fn resolve_runner(args: &ServeArgs, archs: &[String], from_token: bool) -> Result<Task> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_path_flag_is_checked() {
        assert_eq!(normalize_root_path(Some("/api/")).unwrap(), "/api");
        assert_eq!(normalize_root_path(None).unwrap(), "");
        assert!(normalize_root_path(Some("api")).is_err());
    }
}
