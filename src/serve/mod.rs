//! `sluice serve`: resolve the flags, assemble the pipeline, listen.

mod assemble;
mod kv;
pub mod shutdown;
pub mod tp;
mod whisper;

use std::future::IntoFuture;

use anyhow::{Context, Result};

use crate::cli::ServeArgs;
use crate::config::ServeConfig;
use crate::http::server::router;
pub use assemble::{Edge, Server, build};

pub fn run(args: &ServeArgs) -> Result<()> {
    let cfg = ServeConfig::resolve(args)?;
    let server = build(&cfg, Edge::Http)?;
    let addr = cfg.http.address.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        // Signals are ours from here: before this, one ends the process as usual.
        let signals = shutdown::Signals::listen()?;
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
            async move { crate::http::docs::strip_root_path(&root, req) }
        })
        .layer(router(server.app.clone()).layer(crate::http::cors::layer(&cfg.http.cors)));
        // The listener stops only once the drain is over: until then it answers (503 to
        // new requests and to /health). Waiting on open connections instead, as a plain
        // graceful shutdown does, would wait for every stream to end.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future();
        tokio::pin!(http);
        let drained = shutdown::drain_on_signal(signals, server.lifecycle.clone(), cfg.shutdown_timeout);
        tokio::select! {
            r = &mut http => return r.context("the HTTP server stopped"),
            () = drained => {}
        }
        let _ = stop.send(());
        // Connections still open (a client still sending a body) get a moment.
        match tokio::time::timeout(CLOSE_GRACE, http).await {
            Ok(r) => r.context("the HTTP server stopped"),
            Err(_) => {
                tracing::warn!("connections still open after {}s; closing them", CLOSE_GRACE.as_secs());
                Ok(())
            }
        }
    })?;
    tp::stop_ranks();
    tracing::info!("stopped");
    Ok(())
}

/// How long open connections get once the drain is over.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
