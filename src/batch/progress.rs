//! How far a batch has come: a progress bar when stderr is a terminal (done/total, output
//! tokens per second, ETA), else a plain log line every few seconds.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    /// Lines an earlier run already answered.
    pub skipped: usize,
    pub done: usize,
    pub failed: usize,
    pub output_tokens: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ETA {eta}")
                    .expect("a valid progress template"),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        let now = Instant::now();
        Progress { bar, total, skipped: 0, done: 0, failed: 0, output_tokens: 0, started: now, last_log: now }
    }

    /// Output tokens per second since the start.
    pub fn tokens_per_second(&self) -> f64 {
        self.output_tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Lines already in the output file from an earlier run.
    pub fn skip(&mut self, n: usize) {
        self.skipped += n;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
            bar.reset_eta();
        }
    }

    /// One line answered.
    pub fn finish_one(&mut self, ok: bool, output_tokens: u64) {
        self.done += 1;
        self.failed += usize::from(!ok);
        self.output_tokens += output_tokens;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("{:.1} tok/s, {} failed", self.tokens_per_second(), self.failed));
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                tracing::info!("{}", self.line());
            }
            None => {}
        }
    }

    /// "120/2000 lines done (3 failed), 85.2 output tok/s, ETA 3m10s"
    fn line(&self) -> String {
        let finished = self.done + self.skipped;
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let left = self.total.saturating_sub(finished);
        let eta = if rate > 0.0 { format_duration(Duration::from_secs_f64(left as f64 / rate)) } else { "?".into() };
        format!(
            "{finished}/{} lines done ({} failed), {:.1} output tok/s, ETA {eta}",
            self.total,
            self.failed,
            self.tokens_per_second()
        )
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(190)), "3m10s");
        assert_eq!(format_duration(Duration::from_secs(7260)), "2h01m");
    }
}
