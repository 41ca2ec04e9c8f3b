//! `sluice bench`: a load generator for any OpenAI-compatible server (sluice, vLLM,
//! llama.cpp's llama-server, …). It keeps `--concurrency` streaming requests in flight,
//! each with its own synthetic prompt of about `--prompt-tokens` tokens and exactly
//! `--max-tokens` output tokens (`ignore_eos`; a structured-output constraint given with
//! `--extra-body` may end one sooner), and reports throughput, time to first
//! token and inter-token latency. With `--server-pid` it also reports how much CPU the
//! server and everything else on the machine used during the run, since a shared machine
//! can halve a CPU server's speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server's base URL (without /v1).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// Model name to send; default: the first one /v1/models lists.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Requests in all (default: 4 × concurrency, at least 8).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Which API the requests use: `completions` (a prompt) or `chat` (the prompt as one
    /// user message, through the model's chat template).
    #[arg(long, value_enum, default_value_t = Endpoint::Completions)]
    pub endpoint: Endpoint,
    /// Approximate prompt length in tokens (synthetic English words).
    #[arg(long, default_value_t = 200)]
    pub prompt_tokens: usize,
    /// Output tokens per request (sent with ignore_eos).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Picks the prompts: runs with different seeds share no prompt, so repeated runs
    /// against one server do not find their prompts in its prefix cache.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests sent before measuring, to warm the server up.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// The server's process id, to report its CPU use and everyone else's.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the requests this run would send as a batch file for `run-batch` (same
    /// prompts and lengths, not streamed) instead of sending them; needs --model.
    #[arg(long, value_name = "FILE")]
    pub write_batch: Option<std::path::PathBuf>,

    /// Fields merged into every request body, as a JSON object or `@FILE` holding one, e.g.
    /// '{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {…}}}}'.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }

    /// Request `i`'s body (greedy, `ignore_eos`, so every request has the same length).
    fn body(self, model: &str, i: usize, args: &BenchArgs) -> Value {
        let text = prompt(args.seed, i, args.prompt_tokens);
        let mut body = json!({"model": model, "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": true});
        let fields = body.as_object_mut().expect("an object");
        match self {
            Endpoint::Completions => fields.insert("prompt".into(), json!(text)),
            Endpoint::Chat => fields.insert("messages".into(), json!([{"role": "user", "content": text}])),
        };
        body
    }

    /// The text a streamed chunk carries, if any.
    fn chunk_text(self, chunk: &Value) -> Option<&str> {
        match self {
            Endpoint::Completions => chunk["choices"][0]["text"].as_str(),
            Endpoint::Chat => chunk["choices"][0]["delta"]["content"].as_str(),
        }
    }
}

/// `--extra-body`: the object given inline or in a file.
fn extra_body(arg: Option<&str>) -> Result<serde_json::Map<String, Value>> {
    let Some(arg) = arg else { return Ok(Default::default()) };
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => arg.to_string(),
    };
    match serde_json::from_str(&text).context("--extra-body is not valid JSON")? {
        Value::Object(m) => Ok(m),
        _ => bail!("--extra-body must be a JSON object"),
    }
}

#[derive(Default)]
struct Record {
    ttft: Vec<f64>,
    itl: Vec<f64>,
    output_tokens: usize,
    prompt_tokens: usize,
    errors: usize,
}

const WORDS: &[&str] = &[
    "river", "stone", "market", "window", "garden", "letter", "silver", "harbor", "lantern", "meadow", "engine",
    "island", "forest", "castle", "thunder", "pencil", "bridge", "winter", "orange", "camera", "planet", "violin",
    "mirror", "ladder", "tunnel", "basket", "candle", "desert", "feather", "compass", "anchor", "blanket",
];

/// A prompt of about `tokens` tokens, different from every other request's, and from every
/// request of another seed's, from its first word on (so that no prefix cache can share it).
fn prompt(seed: u64, i: usize, tokens: usize) -> String {
    let mut x = crate::ids::splitmix((i as u64 + 1) ^ (seed << 32));
    let mut s = if seed == 0 { format!("Request {i}: tell a story about") } else { format!("Request {seed}-{i}: tell a story about") };
    // Common words are one token each with a leading space, in most BPE vocabularies.
    for _ in 0..tokens.saturating_sub(8) {
        x = crate::ids::splitmix(x);
        s.push(' ');
        s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    s.push('.');
    s
}

/// `--write-batch`: the measured requests as batch lines, in the order they are sent.
fn write_batch(args: &BenchArgs, path: &std::path::Path) -> Result<()> {
    let model = args.model.as_deref().context("--write-batch needs --model (no server is asked)")?;
    let total = args.requests.unwrap_or((args.concurrency * 4).max(8));
    let mut text = String::new();
    for i in 0..total {
        let body = args.endpoint.body(model, i, args);
        let line = json!({"custom_id": format!("request-{i}"), "method": "POST", "url": args.endpoint.path(), "body": body});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("--write-batch {}: cannot write it", path.display()))
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(path) = &args.write_batch {
        return write_batch(args, path);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &BenchArgs) -> Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3600)).build()?;
    let auth = |r: reqwest::RequestBuilder| match &args.api_key {
        Some(k) => r.bearer_auth(k),
        None => r,
    };
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let models: Value = auth(client.get(format!("{}/v1/models", args.base_url)))
                .send()
                .await
                .context("GET /v1/models")?
                .json()
                .await?;
            models["data"][0]["id"].as_str().context("no model listed")?.to_string()
        }
    };
    let total = args.requests.unwrap_or((args.concurrency * 4).max(8));
    let extra = extra_body(args.extra_body.as_deref())?;
    let send = |i: usize| {
        let mut body = args.endpoint.body(&model, i, args);
        let fields = body.as_object_mut().expect("an object");
        fields.insert("stream".into(), json!(true));
        fields.insert("stream_options".into(), json!({"include_usage": true}));
        fields.extend(extra.clone());
        auth(client.post(format!("{}{}", args.base_url, args.endpoint.path()))).json(&body).send()
    };
    for w in 0..args.warmup {
        let mut r = Record::default();
        one(args.endpoint, send(1_000_000 + w).await, &mut r, Instant::now()).await;
        if r.errors > 0 {
            bail!("the warm-up request failed");
        }
    }

    let cpu_before = cpu_snapshot(args.server_pid);
    let record = Arc::new(Mutex::new(Record::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (record, next, send) = (record.clone(), next.clone(), &send);
        tasks.push(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t0 = Instant::now();
                let mut r = Record::default();
                one(args.endpoint, send(i).await, &mut r, t0).await;
                let mut all = record.lock().await;
                all.ttft.extend(r.ttft);
                all.itl.extend(r.itl);
                all.output_tokens += r.output_tokens;
                all.prompt_tokens += r.prompt_tokens;
                all.errors += r.errors;
            }
        });
    }
    futures_util::future::join_all(tasks).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = cpu_snapshot(args.server_pid);
    let r = record.lock().await;

    let q = |v: &[f64], p: f64| -> f64 {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for x in v {
            let _ = h.record(((x * 1e6) as u64).max(1));
        }
        h.value_at_quantile(p) as f64 / 1e3
    };
    let mut out = json!({
        "base_url": args.base_url, "model": model, "concurrency": args.concurrency, "requests": total,
        "errors": r.errors, "prompt_tokens_per_request": r.prompt_tokens as f64 / total as f64,
        "max_tokens": args.max_tokens, "seconds": elapsed,
        "output_tokens_per_s": r.output_tokens as f64 / elapsed,
        "output_tokens_per_request": r.output_tokens as f64 / (total - r.errors).max(1) as f64,
        "requests_per_s": (total - r.errors) as f64 / elapsed,
        "ttft_ms": {"p50": q(&r.ttft, 0.5), "p90": q(&r.ttft, 0.9), "p99": q(&r.ttft, 0.99)},
        "itl_ms": {"p50": q(&r.itl, 0.5), "p90": q(&r.itl, 0.9), "p99": q(&r.itl, 0.99)},
    });
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        let wall = b.total - a.total;
        let server = b.server - a.server;
        let busy = b.busy - a.busy;
        out["cpu"] = json!({
            "cores": b.cores,
            "server_cores_used": server / wall * b.cores as f64,
            "others_cores_used": (busy - server).max(0.0) / wall * b.cores as f64,
        });
    }
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{} requests, concurrency {}, ~{:.0} prompt tokens, up to {} output tokens each ({:.1} on average; {} errors)",
            total,
            args.concurrency,
            out["prompt_tokens_per_request"].as_f64().unwrap_or(0.0),
            args.max_tokens,
            out["output_tokens_per_request"].as_f64().unwrap_or(0.0),
            r.errors
        );
        println!("  output tokens/s   {:>9.1}", out["output_tokens_per_s"].as_f64().unwrap_or(0.0));
        println!("  requests/s        {:>9.3}", out["requests_per_s"].as_f64().unwrap_or(0.0));
        for (name, key) in [("TTFT ms", "ttft_ms"), ("ITL ms ", "itl_ms")] {
            println!(
                "  {name}   p50 {:>8.1}  p90 {:>8.1}  p99 {:>8.1}",
                out[key]["p50"].as_f64().unwrap_or(0.0),
                out[key]["p90"].as_f64().unwrap_or(0.0),
                out[key]["p99"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(c) = out.get("cpu") {
            println!(
                "  CPU (cores of {}): server {:.2}, everything else {:.2}",
                c["cores"], c["server_cores_used"].as_f64().unwrap_or(0.0), c["others_cores_used"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// Reads one streamed completion, recording its timings into `r`.
async fn one(endpoint: Endpoint, resp: reqwest::Result<reqwest::Response>, r: &mut Record, t0: Instant) {
    let Ok(resp) = resp else {
        r.errors += 1;
        return;
    };
    if !resp.status().is_success() {
        r.errors += 1;
        return;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut last: Option<Instant> = None;
    let mut chunks = 0;
    let mut usage: Option<(usize, usize)> = None;
    while let Some(Ok(bytes)) = stream.next().await {
        buf.extend_from_slice(&bytes);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let line = String::from_utf8_lossy(&event);
            let Some(data) = line.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                usage = Some((
                    u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                    u["completion_tokens"].as_u64().unwrap_or(0) as usize,
                ));
            }
            let has_text = endpoint.chunk_text(&v).is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match last {
                    None => r.ttft.push(now.duration_since(t0).as_secs_f64()),
                    Some(prev) => r.itl.push(now.duration_since(prev).as_secs_f64()),
                }
                last = Some(now);
                chunks += 1;
            }
        }
    }
    match usage {
        Some((p, c)) => {
            r.prompt_tokens += p;
            r.output_tokens += c;
        }
        None => r.output_tokens += chunks,
    }
}

struct Cpu {
    /// Jiffies of all cores, busy and idle.
    total: f64,
    busy: f64,
    server: f64,
    cores: usize,
}

fn cpu_snapshot(pid: Option<u32>) -> Option<Cpu> {
    let pid = pid?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = cpu.iter().sum();
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    let cores = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    let pstat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = pstat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; counted from the state (field 3), 11 and 12.
    let server = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(Cpu { total, busy: total - idle, server, cores })
}

#[cfg(test)]
mod tests {
    use super::prompt;

    #[test]
    fn prompts_differ_by_request_and_by_seed_from_the_first_word() {
        let first_words = |s: &str| s.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let a = prompt(0, 3, 50);
        assert_eq!(first_words(&a), "Request 3:");
        assert_eq!(a, prompt(0, 3, 50), "a prompt is a function of seed and index");
        assert_ne!(first_words(&a), first_words(&prompt(0, 4, 50)));
        let b = prompt(7, 3, 50);
        assert_eq!(first_words(&b), "Request 7-3:");
        // Past the header the words differ too, so no shared stretch is long.
        assert_ne!(a.split_once(':').unwrap().1, b.split_once(':').unwrap().1);
        assert!((40..60).contains(&b.split(' ').count()), "about the asked length: {b}");
    }
}
