//! `sluice run-batch`: a JSONL file of requests (vLLM's and OpenAI's batch format) through
//! the same pipeline `sluice serve` runs. A reader thread takes each line's envelope and
//! feeds its body to the first stage (source "jsonl" in `stages/batch.toml`); the writer
//! waits for the answers and writes them in input order as they complete.

pub mod input;
pub mod output;
pub mod progress;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::api::error::ApiError;
use crate::http::server::{AppState, refuse_endpoint};
use crate::cli::{BatchArgs, ServeArgs};
use crate::stages::item::{Item, Payload, Reply, RequestCtx};
use crate::pipeline::{FaultPoint, Lifecycle, SendError};
use crate::config::ServeConfig;
use crate::serve::shutdown::{self, Signals};
use crate::serve::{Edge, Server, build};
use input::{Line, SeenIds, parse_line};
use output::{Answer, Previous, Writer, format_line, open_for_resume};
use progress::Progress;


/// A line on its way to the output: already answered, or waiting for the pipeline.
enum Pending {
    Ready { line: String, ok: bool },
    Running { custom_id: String, ctx: Arc<RequestCtx>, rx: UnboundedReceiver<Reply> },
    /// Lines an earlier run already answered (sent once, after the last line).
    Skipped(usize),
}

/// Flags of `serve` that only the HTTP edge uses: refused here rather than ignored.
pub fn refuse_http_flags(s: &ServeArgs) -> Result<()> {
    let given = [
        ("--host", s.host != "127.0.0.1"),
        ("--port", s.port != 8000),
        ("--allowed-origins", s.allowed_origins.0 != ["*"]),
        ("--allowed-methods", s.allowed_methods.0 != ["*"]),
        ("--allowed-headers", s.allowed_headers.0 != ["*"]),
        ("--allow-credentials", s.allow_credentials),
        ("--enable-request-id-headers", s.enable_request_id_headers),
        ("--root-path", s.root_path.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        bail!("{flag} is a flag of `sluice serve`; this command reads a file and listens on no port");
    }
    Ok(())
}

pub fn run(args: &BatchArgs) -> Result<()> {
    refuse_http_flags(&args.serve)?;
    let path = &args.input_file;
    let total = BufReader::new(File::open(path).with_context(|| format!("--input-file {}: cannot open it", path.display()))?)
        .lines()
        .map(|l| l.map(|l| usize::from(!l.trim().is_empty())))
        .sum::<std::io::Result<usize>>()
        .with_context(|| format!("--input-file {}: cannot read it", path.display()))?;
    let (out_file, previous) = if args.resume {
        open_for_resume(&args.output_file)?
    } else {
        let f = File::create(&args.output_file)
            .with_context(|| format!("--output-file {}: cannot create it", args.output_file.display()))?;
        (f, Previous::default())
    };
    if previous.dropped_partial {
        tracing::warn!("--resume: dropped a cut-off last line of {}", args.output_file.display());
    }
    if args.resume {
        tracing::info!(
            "--resume: {} answered lines in {} are kept; their requests are skipped",
            previous.custom_ids.len() + previous.without_id,
            args.output_file.display()
        );
    }

    let config = ServeConfig::resolve(&args.serve)?;
    let server = build(&config, Edge::Jsonl)?;
    tracing::info!("running the {total} lines of {}", path.display());
    let input = File::open(path).with_context(|| format!("--input-file {}: cannot open it", path.display()))?;
    let lines = BufReader::new(input).lines();
    let stopping =
        Stopping { on_signal: true, timeout: config.shutdown_timeout, write_fault: config.faults.at("batch:write") };
    let progress = execute(&server, lines, total, previous, out_file, stopping)
        .with_context(|| format!("{} -> {}", path.display(), args.output_file.display()))?;
    let secs = progress.elapsed().as_secs_f64();
    tracing::info!(
        "done: {} lines answered ({} failed), {} skipped as already answered; {} output tokens in {:.1}s = {:.1} tok/s; wrote {}",
        progress.done,
        progress.failed,
        progress.skipped,
        progress.output_tokens,
        secs,
        progress.tokens_per_second(),
        args.output_file.display()
    );
    server.shutdown();
    Ok(())
}

/// How a batch run may end early.
#[derive(Default)]
pub struct Stopping {
    /// On SIGTERM or SIGINT: take no more lines, give those in flight `timeout`, write
    /// what finished (in input order) and fail, naming `--resume`.
    pub on_signal: bool,
    /// `--shutdown-timeout`: how long lines in flight may go on after a signal.
    pub timeout: Duration,
    /// A fault injected into the output's writes (tests only).
    pub write_fault: Option<Arc<FaultPoint>>,
}

/// How the writer's loop ended.
enum Ended {
    /// Every line was read and answered.
    Complete,
    /// A signal stopped the run (its name).
    Interrupted(&'static str),
}

/// Runs request lines through a started pipeline and writes the output lines to `out` in
/// input order; `previous` names what an earlier run already answered. Returns the tally.
/// A run that a signal or a failed write stops is an error; the lines written by then are
/// complete, each once, so that `--resume` finishes the file.
pub fn execute<L>(
    server: &Server,
    lines: L,
    total: usize,
    previous: Previous,
    out: impl Write + Send + 'static,
    stopping: Stopping,
) -> Result<Progress>
where
    L: Iterator<Item = std::io::Result<String>> + Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    let app = server.app.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let reader_stop = stop.clone();
    let reader = std::thread::Builder::new()
        .name("batch-reader".into())
        .spawn(move || read_lines(lines, &app, previous, tx, &reader_stop))
        .context("starting the batch reader")?;
    let mut progress = Progress::new(total);
    let mut writer = Writer::with_fault(out, stopping.write_fault.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the batch writer")?;
    let ended = rt.block_on(async {
        let signals = if stopping.on_signal { Some(Signals::listen()?) } else { None };
        let ended = collect(rx, &mut writer, &mut progress, signals, stopping.timeout, &stop, &server.lifecycle).await;
        anyhow::Ok(ended)
    })?;
    progress.finish();
    if !matches!(ended, Ok(Ended::Complete)) {
        // Take no more lines, and end the requests still in the pipeline now: their
        // answers would not be written.
        stop.store(true, Ordering::SeqCst);
        server.lifecycle.abort();
    }
    reader.join().map_err(|_| anyhow::anyhow!("the batch reader failed"))??;
    let (written, waiting) = writer.counts();
    let written = written + progress.skipped;
    match ended {
        Ok(Ended::Complete) => Ok(progress),
        Ok(Ended::Interrupted(name)) => bail!(
            "{name} received: stopped after writing {written} of {total} lines{}; run the same command with --resume to finish",
            if waiting > 0 { format!(" ({waiting} finished after an unfinished line are not written: they run again)") } else { String::new() }
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "writing the output failed after {written} of {total} lines; those are kept: make room and run the same command \
             with --resume to finish"
        ))),
    }
}

/// The reader thread: every line, in order, becomes a pending answer; requests go into the
/// pipeline, waiting while its first queue is full.
fn read_lines(
    lines: impl Iterator<Item = std::io::Result<String>>,
    app: &Arc<AppState>,
    previous: Previous,
    tx: UnboundedSender<(usize, Pending)>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut seen = SeenIds::default();
    let mut without_id_to_skip = previous.without_id;
    let mut seq = 0usize;
    let mut skipped = 0usize;
    let mut send = |p: Pending| {
        let _ = tx.send((seq, p));
        seq += 1;
    };
    for (i, text) in lines.enumerate() {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let text = text.with_context(|| format!("cannot read line {}", i + 1))?;
        if text.trim().is_empty() {
            continue;
        }
        let number = i + 1;
        let line = parse_line(&text, number);
        // A custom_id the output file already answers was done by an earlier run.
        let id = match &line {
            Line::Request(r) => Some(r.custom_id.as_str()),
            Line::Bad { custom_id, .. } => custom_id.as_deref(),
        };
        match id {
            Some(id) if previous.custom_ids.contains(id) => {
                skipped += 1;
                // Still claimed, so a later duplicate is reported.
                seen.claim(id, number);
                continue;
            }
            None if without_id_to_skip > 0 => {
                without_id_to_skip -= 1;
                skipped += 1;
                continue;
            }
            _ => {}
        }
        let (custom_id, error) = match line {
            Line::Bad { custom_id, error } => (custom_id, error),
            Line::Request(r) => {
                if let Some(first) = seen.claim(&r.custom_id, number) {
                    tracing::warn!("line {number}: custom_id {:?} is already used by line {first}", r.custom_id);
                    let e = ApiError::invalid(
                        "custom_id",
                        format!("line {number}: custom_id {:?} is already used by line {first}; each request needs its own", r.custom_id),
                    )
                    .with_code("duplicate_custom_id");
                    (Some(r.custom_id), e)
                } else if let Some(e) = refuse_endpoint(&app.serving, app.task, r.endpoint) {
                    (Some(r.custom_id), e)
                } else {
                    let (ctx, rx) = RequestCtx::new(r.endpoint, r.request_id.as_deref(), app.new_trace());
                    match app.entry.send(Item { ctx: ctx.clone(), payload: Payload::Body(r.body) }) {
                        Ok(()) => {}
                        Err(SendError::Closed | SendError::Full) => bail!("the pipeline stopped before the batch was read"),
                    }
                    send(Pending::Running { custom_id: r.custom_id, ctx, rx });
                    continue;
                }
            }
        };
        if let Some(id) = &custom_id {
            seen.claim(id, number);
        }
        let request_id = format!("batch-req-{}", crate::ids::random_hex(number as u64));
        let body = error.to_json();
        let answer = Answer {
            custom_id: custom_id.as_deref(),
            status: error.status.as_u16(),
            request_id: &request_id,
            body: Some(&body),
            error: Some(&error),
        };
        send(Pending::Ready { line: format_line(&answer, number as u64), ok: false });
    }
    if skipped > 0 {
        let _ = tx.send((seq, Pending::Skipped(skipped)));
    }
    Ok(())
}

/// The writer: gathers answers as they complete and writes them in input order. A signal
/// stops the reader and ends the loop once the lines in flight are answered or `timeout`
/// has passed (0: at once); a failed write ends it with the error.
async fn collect(
    mut incoming: UnboundedReceiver<(usize, Pending)>,
    writer: &mut Writer,
    progress: &mut Progress,
    mut signals: Option<Signals>,
    timeout: Duration,
    stop: &AtomicBool,
    lifecycle: &Lifecycle,
) -> std::io::Result<Ended> {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    let mut interrupted = None;
    // Armed by a signal; until then, far away.
    let deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(deadline);
    while open || !running.is_empty() {
        tokio::select! {
            msg = incoming.recv(), if open => match msg {
                Some((_, Pending::Skipped(n))) => progress.skip(n),
                Some((seq, Pending::Ready { line, ok })) => {
                    writer.complete(seq, line)?;
                    progress.finish_one(ok, 0);
                }
                Some((seq, Pending::Running { custom_id, ctx, rx })) => running.push(answer(seq, custom_id, ctx, rx)),
                None => open = false,
            },
            Some((seq, line, ok, tokens)) = running.next(), if !running.is_empty() => {
                writer.complete(seq, line)?;
                progress.finish_one(ok, tokens);
            }
            (name, _) = next_signal(&mut signals) => {
                interrupted = Some(name);
                stop.store(true, Ordering::SeqCst);
                lifecycle.drain();
                tracing::info!(
                    "{name} received: taking no more lines; the {} lines in flight {}; a second signal exits at once",
                    running.len(),
                    shutdown::fate(timeout)
                );
                if let Some(s) = signals.take() {
                    s.exit_on_next();
                }
                if timeout.is_zero() {
                    break;
                }
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            () = &mut deadline, if interrupted.is_some() => {
                tracing::info!("--shutdown-timeout passed: the {} lines still in flight are aborted", running.len());
                break;
            }
        }
    }
    Ok(match interrupted {
        Some(name) => Ended::Interrupted(name),
        None => Ended::Complete,
    })
}

/// The next signal, when listening for them; else never.
async fn next_signal(signals: &mut Option<Signals>) -> (&'static str, i32) {
    match signals {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for one request's answer and turns it into its output line: (seq, line, ok,
/// output tokens).
async fn answer(
    seq: usize,
    custom_id: String,
    ctx: Arc<RequestCtx>,
    mut rx: UnboundedReceiver<Reply>,
) -> (usize, String, bool, u64) {
    let reply = rx.recv().await;
    let line = |status: u16, body: Option<&str>, error: Option<&ApiError>| {
        format_line(&Answer { custom_id: Some(&custom_id), status, request_id: &ctx.id, body, error }, ctx.key)
    };
    match reply {
        // The final stage records the generated tokens on the request (0 for pooling).
        Some(Reply::Body(json)) => (seq, line(200, Some(&json), None), true, ctx.output_tokens()),
        // A text answer (the audio APIs' text, srt and vtt formats) is the body as a JSON string.
        Some(Reply::Text { body, .. }) => {
            let json = serde_json::to_string(&body).expect("a string serializes");
            (seq, line(200, Some(&json), None), true, ctx.output_tokens())
        }
        Some(Reply::Error(e)) => (seq, line(e.status.as_u16(), Some(&e.to_json()), Some(&e)), false, 0),
        Some(Reply::Chunk(_) | Reply::Event(..)) => {
            ctx.cancel();
            let e = ApiError::invalid("stream", "A batch file cannot hold a stream of events; leave `stream` out or set it to false.");
            (seq, line(400, Some(&e.to_json()), Some(&e)), false, 0)
        }
        Some(Reply::Done | Reply::End) | None => {
            let e = ApiError::internal("The request ended without a response.");
            (seq, line(500, Some(&e.to_json()), Some(&e)), false, 0)
        }
    }
}

