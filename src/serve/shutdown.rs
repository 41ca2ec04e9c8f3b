//! Stopping on SIGTERM or SIGINT, with vLLM's `--shutdown-timeout` meaning.
//!
//! The first signal turns the pipeline's lifecycle to draining: `/health` and new requests
//! answer 503 from then on, while requests in flight go on for up to the timeout (0: none
//! at all). Then they are aborted: a stream ends with a chunk whose `finish_reason` is
//! `"abort"` and `[DONE]`, a request waiting for a whole answer gets an error. Once none is
//! left the caller stops listening and the process exits 0. A second signal exits at once
//! with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT).
//!
//! The listener keeps accepting while the server drains, so that readiness checks see the
//! 503 rather than a refused connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::pipeline::Lifecycle;

/// How long aborted requests get to send their last words before the server stops anyway.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// How often the drain looks at the requests in flight.
const POLL: Duration = Duration::from_millis(10);

/// SIGTERM and SIGINT, listened to from creation on (until then a signal ends the process
/// as it would any program).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Starts listening; needs a running tokio runtime.
    pub fn listen() -> Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// The next signal: its name and number.
    pub async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", libc::SIGTERM),
            _ = self.int.recv() => ("SIGINT", libc::SIGINT),
        }
    }

    /// From now on, a signal ends the process at once (128 + its number), saying so.
    pub fn exit_on_next(mut self) {
        tokio::spawn(async move {
            let (name, number) = self.next().await;
            tracing::warn!("{name} received again: exiting now, without finishing");
            // At once: no destructors run, so none can wait on a thread that is busy.
            // SAFETY: _exit(2) only ends the process.
            unsafe { libc::_exit(128 + number) }
        });
    }
}

/// Waits for the first signal, then drains: returns once no request is in flight (after
/// aborting those still running when `timeout` has passed).
pub async fn drain_on_signal(mut signals: Signals, lifecycle: Arc<Lifecycle>, timeout: Duration) {
    let (name, _) = signals.next().await;
    let in_flight = lifecycle.in_flight();
    lifecycle.drain();
    if timeout.is_zero() {
        lifecycle.abort();
    }
    tracing::info!(
        "{name} received: shutting down; /health and new requests answer 503; {in_flight} requests in flight {}; \
         a second signal exits at once",
        fate(timeout)
    );
    signals.exit_on_next();
    drain(&lifecycle, timeout).await;
}

/// What happens to the requests in flight after a signal, for the log line that announces it.
pub fn fate(timeout: Duration) -> String {
    if timeout.is_zero() {
        "are aborted now (--shutdown-timeout 0)".to_string()
    } else {
        format!("get up to {}s to finish (--shutdown-timeout)", timeout.as_secs())
    }
}

/// Waits until no request is in flight, aborting them when `timeout` has passed.
pub async fn drain(lifecycle: &Lifecycle, timeout: Duration) {
    let drain_until = Instant::now() + timeout;
    let mut give_up = None;
    loop {
        let left = lifecycle.in_flight();
        if left == 0 {
            return;
        }
        let now = Instant::now();
        if !lifecycle.is_aborting() && now >= drain_until {
            tracing::info!("--shutdown-timeout passed: aborting the {left} requests still in flight");
            lifecycle.abort();
        }
        if lifecycle.is_aborting() && now >= *give_up.get_or_insert(now + ABORT_GRACE) {
            tracing::warn!("{left} aborted requests did not end within {}s; stopping anyway", ABORT_GRACE.as_secs());
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
