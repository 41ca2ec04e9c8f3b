//! `sluice serve`: resolve the flags, assemble the pipeline, listen.

mod assemble;
mod kv;
mod whisper;

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
        axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server stopped")
    })?;
    tracing::info!("shutting down");
    Ok(())
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
