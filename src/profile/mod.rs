//! `sluice profile`: runs a workload through the pipeline in this process (a synthetic one,
//! or a batch file) and shows where the time goes, stage by stage and inside the engine's
//! steps, from the same histograms `/metrics` exports.

pub mod report;
pub mod svg;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::batch::{execute, output::Previous};
use crate::cli::ProfileArgs;
use crate::config::ServeConfig;
use crate::serve::{Edge, build};
use crate::model::task::Task;
use report::Report;


const WORDS: [&str; 24] = [
    "river", "stone", "light", "garden", "window", "music", "paper", "cloud", "market", "engine", "forest", "letter",
    "bridge", "winter", "silver", "harbor", "signal", "candle", "orange", "planet", "quiet", "number", "yellow", "travel",
];

/// The synthetic requests: chat for generative models, the pooling model's own API for others.
fn synthetic(args: &ProfileArgs, model: &str, task: Task) -> Vec<String> {
    (0..args.num_prompts)
        .map(|i| {
            let text: Vec<&str> = (0..args.input_len)
                .map(|w| WORDS[(crate::ids::splitmix((i * 7919 + w) as u64) % WORDS.len() as u64) as usize])
                .collect();
            let text = text.join(" ");
            let (url, body) = match task {
                Task::Generate => (
                    "/v1/chat/completions",
                    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}],
                                       "max_tokens": args.output_len, "ignore_eos": true, "temperature": 0}),
                ),
                Task::Embed => ("/v1/embeddings", serde_json::json!({"model": model, "input": text})),
                Task::Classify => ("/classify", serde_json::json!({"model": model, "input": text})),
                Task::Reward => ("/pooling", serde_json::json!({"model": model, "input": text})),
                Task::Transcription => unreachable!("a Whisper model is profiled on a batch file"),
            };
            serde_json::json!({"custom_id": format!("profile-{i}"), "method": "POST", "url": url, "body": body}).to_string()
        })
        .collect()
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    crate::batch::refuse_http_flags(&args.serve)?;
    if args.serve.shutdown_timeout != 0 {
        bail!("--shutdown-timeout is for `sluice serve` and `sluice run-batch`; a profile ends at once on a signal");
    }
    if args.input_file.is_none() && (args.num_prompts == 0 || args.output_len == 0) {
        bail!("--num-prompts and --output-len must be at least 1");
    }
    let config = ServeConfig::resolve(&args.serve)?;
    if config.task == Task::Transcription && args.input_file.is_none() {
        bail!(
            "a Whisper model is profiled on a batch file of audio requests: give -i FILE with \
             /v1/audio/transcriptions lines whose body has the audio as `file_url` (a data: URL)"
        );
    }
    let server = build(&config, Edge::Jsonl)?;
    let (lines, total): (Vec<std::io::Result<String>>, usize) = match &args.input_file {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("--input-file {}: cannot open it", path.display()))?;
            let lines: Vec<_> = BufReader::new(f).lines().collect();
            let n = lines.iter().filter(|l| l.as_ref().is_ok_and(|l| !l.trim().is_empty())).count();
            (lines, n)
        }
        None => {
            let lines = synthetic(args, server.app.serving.model_name(), server.app.task);
            let n = lines.len();
            (lines.into_iter().map(Ok).collect(), n)
        }
    };
    tracing::info!("profiling {total} requests");
    let start = Instant::now();
    let progress = execute(&server, lines.into_iter(), total, Previous::default(), std::io::sink(), Default::default())?;
    let wall = start.elapsed().as_secs_f64();
    if progress.failed > 0 {
        tracing::warn!("{} of {} requests failed; run the file with `run-batch` to see why", progress.failed, total);
    }
    // Stages record a request's figures just after answering it: let them all finish first.
    let (stages, stats) = (server.app.stages.clone(), server.app.engine_stats.clone());
    server.shutdown();
    let report = Report::gather(&stages, &stats, wall, progress.output_tokens);
    print!("{}", report.table());
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::render(&report)).with_context(|| format!("--svg {}: cannot write it", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}
