//! Command line: vLLM's flag names, parsed by clap. What the flags mean is resolved once,
//! in `crate::config` (`ServeConfig::resolve`); nothing else reads them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "An OpenAI-compatible LLM server: a pipeline of stages over libtorch")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// How much to log: critical, error, warning, info, debug, trace (RUST_LOG wins).
    /// `--uvicorn-log-level`, vLLM's name for the HTTP server's level, is the same flag.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info, alias = "uvicorn-log-level")]
    pub log_level: LogLevel,
}

impl Cli {
    /// Parses the command line, taking vLLM's two-letter single-dash flags (`-tp 2`,
    /// `-pp=1`) as their long forms: clap's short flags are one letter.
    pub fn parse_vllm() -> Self {
        Cli::parse_from(std::env::args_os().map(|a| match a.to_str() {
            Some(s) => match s.split_once('=').map_or((s, None), |(f, v)| (f, Some(v))) {
                ("-tp", v) => format!("--tp{}", v.map(|v| format!("={v}")).unwrap_or_default()).into(),
                ("-pp", v) => format!("--pp{}", v.map(|v| format!("={v}")).unwrap_or_default()).into(),
                _ => a,
            },
            None => a,
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over the OpenAI API (a drop-in for `vllm serve`).
    Serve(Box<ServeArgs>),
    /// Run a JSONL file of requests through the model, offline (vLLM's batch format).
    RunBatch(Box<BatchArgs>),
    /// Run a workload through the pipeline in this process and show where the time goes.
    Profile(Box<ProfileArgs>),
    /// Drive an OpenAI-compatible server with streaming requests and report its speed.
    Bench(crate::bench::BenchArgs),
}

/// How much the server logs (RUST_LOG, when set, wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Critical,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Critical | LogLevel::Error => "error",
            LogLevel::Warning => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

/// vLLM's `--scheduling-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchedulingPolicyArg {
    /// First come, first served.
    Fcfs,
    /// By the request's `priority` (lower first), then arrival; a waiting request may
    /// preempt a running one of lower priority.
    Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContentFormatArg {
    Auto,
    String,
    Openai,
}

/// `--task`: vLLM's names. `auto` reads config.json's `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    Auto,
    Generate,
    Embed,
    Classify,
    Score,
    Reward,
    /// Speech to text (Whisper): /v1/audio/transcriptions and /v1/audio/translations.
    Transcription,
}

/// `--runner`: newer vLLM's spelling of the task's first half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunnerArg {
    Auto,
    Generate,
    Pooling,
}

/// `--convert`: how a model becomes a pooling model under `--runner pooling` (vLLM 0.10's
/// names; `reward` is `--task reward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvertArg {
    Auto,
    None,
    Embed,
    Classify,
    Reward,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A GGUF file, a Hugging Face model folder, or a Hugging Face id (ORG/NAME; ORG/NAME:QUANT
    /// for one GGUF file of a repository): the local Hugging Face cache first, else downloaded
    /// into it. Default: SmolLM2-135M-Instruct as installed by the project's setup.
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,

    /// The model, as a flag (same as MODEL).
    #[arg(long, conflicts_with = "model_tag")]
    pub model: Option<String>,

    /// The model's revision on the Hub: a branch, tag or commit hash (default: main).
    #[arg(long)]
    pub revision: Option<String>,

    /// The tokenizer (and chat template) from another folder or Hugging Face id than the model.
    #[arg(long)]
    pub tokenizer: Option<String>,

    /// The tokenizer's revision on the Hub (default: main).
    #[arg(long)]
    pub tokenizer_revision: Option<String>,

    /// The Hugging Face cache folder to find and download models in (default: HF_HUB_CACHE,
    /// else $HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub download_dir: Option<PathBuf>,

    /// What to serve the model for: text generation, a pooling task (embed, classify,
    /// score, reward), or transcription (Whisper). auto picks from the model's architecture.
    #[arg(long, value_enum, default_value_t = TaskArg::Auto)]
    pub task: TaskArg,

    /// Newer vLLM's form of --task: generate, or pooling (with --convert saying which kind;
    /// auto: the architecture's own, embeddings for a causal LM).
    #[arg(long, value_enum, default_value_t = RunnerArg::Auto)]
    pub runner: RunnerArg,

    /// With --runner pooling (or alone): embed, classify or reward, as --task would say.
    #[arg(long, value_enum, default_value_t = ConvertArg::Auto)]
    pub convert: ConvertArg,

    /// A JSON object merged over the model's config.json before anything reads it (vLLM's
    /// flag), e.g. '{"architectures": ["Qwen2ForSequenceClassification"],
    /// "classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"}'.
    /// `--hf_overrides`, as vLLM's own recipes spell it, is the same flag.
    #[arg(long, value_name = "JSON", alias = "hf_overrides")]
    pub hf_overrides: Option<String>,

    /// A process reward model's STEP pooling, as vLLM's pooler config: a JSON object with
    /// `step_tag_id` (the step token; Qwen2's `<extra_0>`, 151651, by default) and
    /// `returned_token_ids` (which labels to keep). `--pooler-config` is the same flag.
    #[arg(long, value_name = "JSON", alias = "pooler-config")]
    pub override_pooler_config: Option<String>,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// Require `Authorization: Bearer <key>` on /v1 routes.
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Names the model answers to (the first is reported in responses).
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,

    /// Weights and activations dtype: auto, float32, bfloat16, float16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,

    /// How a GGUF file's quantized matrices run: `gguf` keeps them in their blocks and runs
    /// the linear layers on quantized kernels (CPU); `none` dequantizes them to --dtype when
    /// loading. Default: gguf for a GGUF generation model on the CPU, none under
    /// --dtype float32 and everywhere else.
    #[arg(long, short = 'q', value_name = "METHOD")]
    pub quantization: Option<String>,

    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Context length (prompt + output); default: the model's.
    #[arg(long)]
    pub max_model_len: Option<usize>,

    /// A chat template: a file path, or the template itself.
    #[arg(long)]
    pub chat_template: Option<String>,

    /// How message content reaches the template: joined text, or OpenAI's list of parts.
    #[arg(long, value_enum, default_value_t = ContentFormatArg::Auto)]
    pub chat_template_content_format: ContentFormatArg,

    /// CORS: origins allowed to call the API from a browser, as a JSON list.
    #[arg(long, default_value = r#"["*"]"#, value_parser = json_list)]
    pub allowed_origins: StringList,

    /// CORS: methods allowed, as a JSON list.
    #[arg(long, default_value = r#"["*"]"#, value_parser = json_list)]
    pub allowed_methods: StringList,

    /// CORS: request headers allowed, as a JSON list.
    #[arg(long, default_value = r#"["*"]"#, value_parser = json_list)]
    pub allowed_headers: StringList,

    /// CORS: allow credentials (cookies, authorization) in cross-origin requests.
    #[arg(long)]
    pub allow_credentials: bool,

    /// Log each request as it arrives (its prompt and sampling parameters).
    #[arg(long, overrides_with = "disable_log_requests")]
    pub enable_log_requests: bool,

    /// Do not log requests (the default; vLLM's older flag).
    #[arg(long, overrides_with = "enable_log_requests")]
    pub disable_log_requests: bool,

    /// Characters of a prompt that a request's log line shows at most.
    #[arg(long)]
    pub max_log_len: Option<usize>,

    /// Answer with an X-Request-Id header: the client's, or the response id.
    #[arg(long)]
    pub enable_request_id_headers: bool,

    /// The role of chat answers (with add_generation_prompt).
    #[arg(long, default_value = "assistant")]
    pub response_role: String,

    /// Show tokens in logprobs as `token_id:<id>` unless a request says otherwise.
    #[arg(long)]
    pub return_tokens_as_token_ids: bool,

    /// Let requests bring their own `chat_template` (off: a template is code the server runs).
    #[arg(long)]
    pub trust_request_chat_template: bool,

    /// Most multimodal items per prompt, as JSON by modality (vLLM's flag): `{"image": N}`
    /// (default 999, as vLLM).
    #[arg(long, value_name = "JSON")]
    pub limit_mm_per_prompt: Option<String>,

    /// The folder `file://` image URLs may read from (and below it); without it, `file://`
    /// URLs are refused.
    #[arg(long, value_name = "DIR")]
    pub allowed_local_media_path: Option<PathBuf>,

    /// Pipeline file (default: the built-in stages/serve.toml).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,

    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,

    /// Memory for the KV cache, e.g. 2GiB or 500MB. Default: 2GiB on CPU; on CUDA, what
    /// --gpu-memory-utilization leaves once the weights are loaded.
    #[arg(long, value_parser = parse_bytes, env = "SLUICE_KV_CACHE_MEMORY")]
    pub kv_cache_memory: Option<u64>,

    /// Share of the GPU's memory this server may use in all (weights, activations, KV
    /// cache), as vLLM's flag; sizes the KV cache on CUDA unless --kv-cache-memory is given.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,

    /// Sequences per step at most.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,

    /// Tokens per step at most (long prompts are prefilled in chunks of this size).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,

    /// Share the KV cache of equal prompt prefixes between requests (on by default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,

    /// Turn prefix caching off.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,

    /// Sampling defaults: `auto` takes the model's generation_config.json, `vllm` uses
    /// none (OpenAI's defaults), a folder takes the generation_config.json in it.
    #[arg(long, default_value = "auto", value_name = "auto|vllm|FOLDER")]
    pub generation_config: String,

    /// Order of admission: fcfs, or priority (the request field `priority`, lower first).
    #[arg(long, value_enum, default_value_t = SchedulingPolicyArg::Fcfs)]
    pub scheduling_policy: SchedulingPolicyArg,

    /// Threads for tensor maths (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Read tool calls out of chat answers when a request's `tool_choice` is "auto" (with
    /// --tool-call-parser), as vLLM's flag.
    #[arg(long, requires = "tool_call_parser")]
    pub enable_auto_tool_choice: bool,

    /// The format tool calls are read in, by vLLM's names: hermes (`<tool_call>{json}</tool_call>`:
    /// Hermes, Qwen2.5, Qwen3), llama3_json (Llama 3.1–3.3 JSON calls), mistral
    /// (`[TOOL_CALLS]`), pythonic (`[f(a=1)]`: Llama 3.2/4), qwen3_coder (Qwen3-Coder XML).
    #[arg(long, value_enum)]
    pub tool_call_parser: Option<crate::api::tools::ToolParser>,

    /// Split the reasoning off chat answers into `reasoning_content`, by vLLM's names:
    /// deepseek_r1, qwen3 (`<think>…</think>`), granite. Structured outputs then constrain
    /// only the answer after the reasoning.
    #[arg(long, value_enum)]
    pub reasoning_parser: Option<crate::api::reasoning::ReasoningParser>,

    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}` (with
    /// `store`, the default); the oldest goes first when full. 0 keeps none.
    #[arg(long, default_value_t = 1000)]
    pub responses_store_size: usize,

    /// Seconds a stored response is kept after it was created.
    #[arg(long, default_value_t = 3600)]
    pub responses_store_ttl: u64,

    /// Most top logprobs a request may ask for (`logprobs`, `top_logprobs`,
    /// `prompt_logprobs`), as vLLM's flag.
    #[arg(long, default_value_t = 20)]
    pub max_logprobs: usize,

    /// Ranks (processes) the model is split over, Megatron-style: each holds 1/N of the
    /// attention heads, of the MLP and of the vocabulary; they meet over libtorch's c10d
    /// (Gloo, CPU tensors). This process is rank 0 and starts the others.
    #[arg(long, visible_alias = "tp", default_value_t = 1)]
    pub tensor_parallel_size: usize,

    /// vLLM's pipeline parallelism: sluice does not split by layers, so only 1 is accepted.
    #[arg(long, visible_alias = "pp", default_value_t = 1)]
    pub pipeline_parallel_size: usize,

    /// Machines the tensor-parallel ranks are spread over (vLLM's flag); each runs
    /// `--tensor-parallel-size / --nnodes` of them. The other machines run the same
    /// command with their `--node-rank`, and serve no HTTP.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,

    /// This machine's place among `--nnodes` (0 serves HTTP and holds rank 0).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,

    /// The address of node 0, where the ranks meet (its c10d TCPStore listens there).
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,

    /// The port of that store; default: a free one (one machine only).
    #[arg(long)]
    pub master_port: Option<u16>,

    /// Accepted for vLLM command lines: model architectures are built into sluice, so no
    /// code from a model's repository ever runs, with or without it.
    #[arg(long)]
    pub trust_remote_code: bool,

    /// Accepted for vLLM command lines: sluice runs every step eagerly (it captures no
    /// CUDA graphs), with or without it.
    #[arg(long)]
    pub enforce_eager: bool,

    /// The path prefix a proxy forwards requests under (FastAPI's root_path, as vLLM):
    /// routes answer with and without it, and /openapi.json names it as the server URL.
    #[arg(long)]
    pub root_path: Option<String>,

    /// Add a `metrics` object to every answer (the last chunk of a stream): arrival time,
    /// queue, time to first token, prefill, decode, end to end, and each stage's queue
    /// wait and service time for this request, in milliseconds.
    #[arg(long)]
    pub enable_per_request_metrics: bool,

    /// Largest request body accepted.
    #[arg(long, value_parser = parse_bytes, default_value = "32MiB")]
    pub max_request_body: u64,

    /// On SIGTERM or SIGINT, how long (seconds) requests in flight may go on before they
    /// are aborted; 0 aborts them at once. New requests and /health answer 503 meanwhile;
    /// a second signal exits at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub shutdown_timeout: u64,
}

/// `sluice run-batch`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// The batch file: one request per line, {"custom_id", "method": "POST", "url", "body"}.
    #[arg(short = 'i', long = "input-file", value_name = "FILE")]
    pub input_file: PathBuf,

    /// Where the answers go: one line per request, in input order, written as they complete.
    #[arg(short = 'o', long = "output-file", value_name = "FILE")]
    pub output_file: PathBuf,

    /// Keep the output file's complete lines and run only the requests whose custom_id it
    /// lacks (after an interrupted run).
    #[arg(long)]
    pub resume: bool,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `sluice profile`.
#[derive(Debug, Clone, Args)]
pub struct ProfileArgs {
    /// A batch file to run (vLLM's format, as `run-batch` takes); without it, a synthetic
    /// workload of --num-prompts requests.
    #[arg(short = 'i', long = "input-file", value_name = "FILE")]
    pub input_file: Option<PathBuf>,

    /// Synthetic workload: how many requests.
    #[arg(long, default_value_t = 32)]
    pub num_prompts: usize,

    /// Synthetic workload: words in each prompt (about as many tokens).
    #[arg(long, default_value_t = 64)]
    pub input_len: usize,

    /// Synthetic workload: tokens generated per request (end of sequence ignored).
    #[arg(long, default_value_t = 32)]
    pub output_len: usize,

    /// Also draw the profile as an SVG chart (stacked bars per stage) in this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

impl ServeArgs {
    pub fn model_arg(&self) -> Option<&str> {
        self.model_tag.as_deref().or(self.model.as_deref())
    }
}

/// A flag's list of strings.
#[derive(Debug, Clone)]
pub struct StringList(pub Vec<String>);

/// A JSON list of strings, as vLLM's CORS flags take (`'["*"]'`).
fn json_list(s: &str) -> Result<StringList, String> {
    serde_json::from_str::<Vec<String>>(s).map(StringList).map_err(|e| format!("{s:?} is not a JSON list of strings ({e}); e.g. '[\"*\"]'"))
}

/// "2GiB", "500MB", "1048576" → bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 512MB, 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit {u:?} (use B, KB, MB, GB, KiB, MiB or GiB)")),
    };
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
    }
}
