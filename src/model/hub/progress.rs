//! How a download shows its progress: a bar on a terminal, a log line every ten seconds
//! otherwise (a service's log should not fill with bar redraws).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    repo: String,
    total: u64,
    files: usize,
    done: AtomicU64,
    files_done: AtomicUsize,
    bar: Option<ProgressBar>,
    last_log: Mutex<Instant>,
    started: Instant,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

impl Progress {
    pub fn new(repo: &str, total: u64, files: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("{repo} (0/{files} files)"));
            bar
        });
        tracing::info!("downloading {repo}: {files} files, {:.1} MB", mb(total));
        Progress {
            repo: repo.to_string(),
            total,
            files,
            done: AtomicU64::new(0),
            files_done: AtomicUsize::new(0),
            bar,
            last_log: Mutex::new(Instant::now()),
            started: Instant::now(),
        }
    }

    /// Bytes received (or found already there, when resuming).
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                "downloading {}: {:.1} of {:.1} MB ({:.1} MB/s), {} of {} files",
                self.repo,
                mb(done),
                mb(self.total),
                mb(done) / secs,
                self.files_done.load(Ordering::Relaxed),
                self.files
            );
        }
    }

    /// Takes back bytes counted for a partial file that was thrown away.
    pub fn sub(&self, n: u64) {
        let done = self.done.fetch_sub(n.min(self.done.load(Ordering::Relaxed)), Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(done.saturating_sub(n));
        }
    }

    pub fn file_done(&self, file: &str) {
        let n = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.set_message(format!("{} ({n}/{} files)", self.repo, self.files)),
            None => tracing::debug!("downloaded {file} ({n} of {} files)", self.files),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(
            "downloaded {}: {:.1} MB in {:.1}s",
            self.repo,
            mb(self.done.load(Ordering::Relaxed)),
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
