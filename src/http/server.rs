//! The HTTP edge: routes, the API key check, and the hand-off between connections and the
//! pipeline. A handler only wraps the body into an item, offers it to the first stage (a
//! full queue is a 503 with Retry-After) and relays what comes back: an error, a whole
//! JSON body, or a stream of server-sent events. A closed connection cancels the request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::context::ServingContext;
use crate::api::endpoint::{self, Endpoint};
use crate::api::error::ApiError;
use crate::api::protocol::{ModelCard, ModelList};
use crate::engine::stats::EngineStats;
use crate::stages::item::{Item, Payload, Reply, RequestCtx};
use crate::pipeline::{Exposition, Lifecycle, Outlet, SendError, StageMetrics, Ticket};
use crate::model::task::Task;

pub struct AppState {
    pub serving: Arc<ServingContext>,
    pub entry: Outlet<Item>,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// What the model is served for; other endpoints answer 400.
    pub task: Task,
    /// `--enable-request-id-headers`: answer with an X-Request-Id header.
    pub request_id_headers: bool,
    pub engine_stats: Arc<EngineStats>,
    /// Every stage's queue and service histograms, in pipeline order.
    pub stages: Vec<Arc<StageMetrics>>,
    /// `--root-path`, normalized ("" or "/prefix").
    pub root_path: String,
    /// `--enable-per-request-metrics`: the stage names every request's trace has slots
    /// for; None when answers carry no `metrics`.
    pub traced_stages: Option<Arc<[String]>>,
    /// Refuses new requests once shutdown begins, and counts those in flight.
    pub lifecycle: Arc<Lifecycle>,
    /// Reads the images of `/tokenize` chats (a vision model only).
    pub media: Option<Arc<crate::stages::media::Fetcher>>,
}

impl AppState {
    /// A new request's stage trace, when answers report per-request metrics.
    pub fn new_trace(&self) -> Option<crate::pipeline::StageTrace> {
        self.traced_stages.as_ref().map(|names| crate::pipeline::StageTrace::new(names.clone()))
    }
}

/// Every route `router` serves, as schemas/openapi.json must list them (a unit test in
/// `docs` checks the document against this list; keep it in step with `router`).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
    ("POST", "/v1/responses/{response_id}/cancel"),
    ("POST", "/v1/embeddings"),
    ("POST", "/pooling"),
    ("POST", "/classify"),
    ("POST", "/score"),
    ("POST", "/v1/score"),
    ("POST", "/rerank"),
    ("POST", "/v1/rerank"),
    ("POST", "/v2/rerank"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/audio/translations"),
    ("GET", "/v1/models"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/health"),
    ("GET", "/ping"),
    ("POST", "/ping"),
    ("GET", "/version"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
];

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/responses", post(super::responses::create))
        .route("/v1/responses/{response_id}", get(super::responses::get).delete(super::responses::delete))
        .route("/v1/responses/{response_id}/cancel", post(super::responses::cancel))
        .route("/v1/embeddings", post(embeddings))
        .route("/pooling", post(pooling))
        .route("/classify", post(classify))
        .route("/score", post(score))
        .route("/v1/score", post(score))
        .route("/rerank", post(rerank))
        .route("/v1/rerank", post(rerank))
        .route("/v2/rerank", post(rerank))
        .route("/v1/audio/transcriptions", post(super::audio::transcriptions))
        .route("/v1/audio/translations", post(super::audio::translations))
        .route("/v1/models", get(models))
        .route("/tokenize", post(super::tokenize::tokenize))
        .route("/detokenize", post(super::tokenize::detokenize))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(super::docs::openapi))
        .route("/docs", get(super::docs::swagger))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_api_key))
        .with_state(state)
}

/// vLLM's routes outside `/v1` that the key guards too.
const GUARDED_OUTSIDE_V1: [&str; 7] = ["/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/rerank", "/v2/rerank"];

/// `--api-key` guards the API routes; health checks stay open.
async fn require_api_key(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let path = req.uri().path();
        if path.starts_with("/v1") || GUARDED_OUTSIDE_V1.contains(&path) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

/// 200 while the server takes requests; 503 once it has begun to shut down, so that a
/// load balancer's readiness check sends no more.
async fn health(State(app): State<Arc<AppState>>) -> StatusCode {
    if app.lifecycle.is_stopping() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// Prometheus text, with vLLM's metric names.
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut out = Exposition::default();
    app.engine_stats.write(&mut out, app.serving.model_name());
    stage_histograms(&mut out, &app.stages);
    let name = "sluice_stage_panics_total";
    out.header(name, "counter", "Items whose handling panicked in a stage (the panic was contained and the request failed).");
    for s in &app.stages {
        out.sample(name, &[("stage", &s.name)], s.panics.load(std::sync::atomic::Ordering::Relaxed) as f64);
    }
    let text = out.finish();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], text).into_response()
}

/// Buckets of the per-stage histograms: stages take microseconds to seconds.
const STAGE_BUCKETS: [f64; 18] =
    [1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// `sluice_stage_queue_seconds` and `sluice_stage_service_seconds`, one series per stage.
fn stage_histograms(out: &mut Exposition, stages: &[Arc<StageMetrics>]) {
    let name = "sluice_stage_queue_seconds";
    out.header(name, "histogram", "Time items waited in a stage's queue.");
    for s in stages {
        out.histogram(name, &[("stage", &s.name)], &s.queue, &STAGE_BUCKETS);
    }
    let name = "sluice_stage_service_seconds";
    out.header(name, "histogram", "Time a stage spent on an item (the engine: on a step).");
    for s in stages {
        out.histogram(name, &[("stage", &s.name)], &s.service, &STAGE_BUCKETS);
    }
}

async fn not_found(req: Request) -> ApiError {
    no_route(req.method().as_str(), req.uri().path())
}

async fn models(State(app): State<Arc<AppState>>) -> Json<ModelList> {
    let s = &app.serving;
    let data = s
        .served_names
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model",
            created: s.started,
            owned_by: "sluice",
            root: s.root.clone(),
            parent: None,
            max_model_len: s.max_model_len,
        })
        .collect();
    Json(ModelList { object: "list", data })
}

async fn completions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::Completions, req).await
}

async fn chat_completions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::ChatCompletions, req).await
}

async fn embeddings(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::Embeddings, req).await
}

async fn pooling(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::Pooling, req).await
}

async fn classify(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::Classify, req).await
}

async fn score(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::Score, req).await
}

async fn rerank(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit(app, Endpoint::Rerank, req).await
}

/// The answer to a request for an API the model is not served for (none when it is).
pub fn refuse_endpoint(serving: &ServingContext, task: Task, endpoint: Endpoint) -> Option<ApiError> {
    (!endpoint::serves(task, endpoint)).then(|| {
        ApiError::bad_request(format!(
            "The model `{}` does not support the {} API: it is served for --task {}, which answers {}.",
            serving.model_name(),
            endpoint.api_name(),
            task.name(),
            endpoint::routes(task)
        ))
    })
}

/// The answer to a path no route serves.
pub fn no_route(method: &str, path: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("No route for {method} {path}."))
}

pub(super) async fn read_json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.trim_start().to_ascii_lowercase().starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be application/json, not {ct:?}."),
            ));
        }
    }
    super::body::read_limited(body, limit).await
}

async fn submit(app: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    if let Some(refusal) = refuse_endpoint(&app.serving, app.task, endpoint) {
        return refusal.into_response();
    }
    let (parts, body) = req.into_parts();
    let body = match read_json_body(&parts.headers, body, app.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    submit_body(app, endpoint, &parts.headers, body).await
}

/// The request id a client gave: its X-Request-Id header, else the body's `request_id`.
fn client_request_id(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let body_id = body_request_id(body);
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).or(body_id.as_deref()).and_then(usable_request_id).map(str::to_string)
}

/// A request handed to the first stage: its context, where its replies arrive, and its
/// place among the requests in flight (held until the answer is out).
pub(super) type Offered = (Arc<RequestCtx>, UnboundedReceiver<Reply>, Ticket);

/// Offers a read body to the first stage: the request's context and where its replies
/// arrive, or the 503 of a full (or closed) queue or of a server shutting down.
pub(super) fn enqueue(app: &AppState, endpoint: Endpoint, headers: &HeaderMap, body: Bytes) -> Result<Offered, ApiError> {
    // As in vLLM, a client's X-Request-Id (or else the body's `request_id`) becomes the
    // response id's tail.
    let request_id = client_request_id(headers, &body);
    offer(app, endpoint, request_id.as_deref(), Payload::Body(body))
}

/// Offers any payload to the first stage under a request id.
fn offer(app: &AppState, endpoint: Endpoint, request_id: Option<&str>, payload: Payload) -> Result<Offered, ApiError> {
    let ticket = app.lifecycle.admit().ok_or_else(ApiError::shutting_down)?;
    let (ctx, rx) = RequestCtx::new(endpoint, request_id, app.new_trace());
    match app.entry.try_send(Item { ctx: ctx.clone(), payload }) {
        Ok(()) => Ok((ctx, rx, ticket)),
        Err((SendError::Full, _)) => Err(ApiError::overloaded()),
        Err((SendError::Closed, _)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The server is shutting down.")),
    }
}

/// Submits a read body and answers with what the pipeline replies.
pub(super) async fn submit_body(app: Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap, body: Bytes) -> Response {
    let request_id = client_request_id(headers, &body);
    dispatch(app, endpoint, request_id.as_deref(), Payload::Body(body)).await
}

/// Hands a request to the first stage (a full queue is a 503) and relays its answer.
pub(super) async fn dispatch(app: Arc<AppState>, endpoint: Endpoint, request_id: Option<&str>, payload: Payload) -> Response {
    let (ctx, rx, ticket) = match offer(&app, endpoint, request_id, payload) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let echo = app.request_id_headers.then(|| request_id.map_or_else(|| ctx.id.clone(), str::to_string));
    let mut response = respond(ctx, rx, ticket).await;
    if let Some(v) = echo.and_then(|r| HeaderValue::from_str(&r).ok()) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// A client's request id as it may name a response: trimmed, not empty, at most 256 bytes.
pub fn usable_request_id(r: &str) -> Option<&str> {
    Some(r.trim()).filter(|r| !r.is_empty() && r.len() <= 256)
}

/// The body's `request_id`, read ahead of decode since it names the response. Bodies that
/// do not mention it are not parsed here.
fn body_request_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        request_id: Option<String>,
    }
    let mentions = body.windows(b"\"request_id\"".len()).any(|w| w == b"\"request_id\"");
    mentions.then(|| serde_json::from_slice::<Peek>(body).ok().and_then(|p| p.request_id)).flatten()
}

/// Cancels the request when dropped before the answer is complete, i.e. when the
/// connection goes away. Holds the request's place in flight until the answer is out.
struct CancelOnDrop {
    ctx: Arc<RequestCtx>,
    armed: bool,
    _ticket: Ticket,
}

impl CancelOnDrop {
    /// The answer is complete: nothing to cancel.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.ctx.cancel();
        }
    }
}

async fn respond(ctx: Arc<RequestCtx>, mut rx: UnboundedReceiver<Reply>, ticket: Ticket) -> Response {
    let guard = CancelOnDrop { ctx, armed: true, _ticket: ticket };
    match rx.recv().await {
        Some(Reply::Error(e)) => {
            guard.disarm();
            e.into_response()
        }
        Some(Reply::Body(json)) => {
            guard.disarm();
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response()
        }
        Some(Reply::Text { body, content_type }) => {
            guard.disarm();
            ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
        }
        Some(first @ (Reply::Chunk(_) | Reply::Event(..))) => {
            let typed = matches!(first, Reply::Event(..));
            let events = stream::unfold((Some(first), rx, guard, false), move |(first, mut rx, guard, done)| async move {
                if done {
                    guard.disarm();
                    return None;
                }
                let next = match first {
                    Some(f) => Some(f),
                    None => rx.recv().await,
                };
                match sse_frame(next, typed) {
                    SseFrame::More(frame) => Some((Ok::<_, std::convert::Infallible>(frame), (None, rx, guard, false))),
                    SseFrame::Last(frame) => Some((Ok(frame), (None, rx, guard, true))),
                    SseFrame::Over => {
                        guard.disarm();
                        None
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(events))
                .expect("valid SSE response")
        }
        Some(Reply::Done | Reply::End) | None => ApiError::internal("The request ended without a response.").into_response(),
    }
}

/// What a stream sends for one reply.
enum SseFrame {
    /// A frame, and more to come.
    More(Bytes),
    /// The stream's last frame.
    Last(Bytes),
    /// The stream is over with nothing more to send.
    Over,
}

/// The frame for the next reply of a stream. A chunk stream ends with `data: [DONE]`,
/// after an error too (as vLLM ends it, so clients that wait for `[DONE]` stop); a
/// stream of typed events (Responses) ends without one, as OpenAI's does.
fn sse_frame(next: Option<Reply>, typed: bool) -> SseFrame {
    const DONE: &[u8] = b"data: [DONE]\n\n";
    match next {
        Some(Reply::Chunk(c)) => SseFrame::More(sse(&c)),
        Some(Reply::Event(ty, json)) => SseFrame::More(typed_sse(ty, &json)),
        Some(Reply::Error(e)) if typed => SseFrame::Last(sse(&e.to_json())),
        Some(Reply::Error(e)) => SseFrame::Last(Bytes::from([sse(&e.to_json()).as_ref(), DONE].concat())),
        Some(Reply::End) => SseFrame::Over,
        Some(Reply::Done) | Some(Reply::Body(_)) | Some(Reply::Text { .. }) | None => SseFrame::Last(Bytes::from_static(DONE)),
    }
}

/// A typed event: `event: TYPE` before its data line.
fn typed_sse(ty: &str, json: &str) -> Bytes {
    let mut b = Vec::with_capacity(json.len() + ty.len() + 16);
    b.extend_from_slice(b"event: ");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\n");
    b.extend_from_slice(&sse(json));
    Bytes::from(b)
}

fn sse(json: &str) -> Bytes {
    let mut b = Vec::with_capacity(json.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(json.as_bytes());
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: SseFrame) -> (String, bool) {
        match frame {
            SseFrame::More(b) => (String::from_utf8(b.to_vec()).unwrap(), false),
            SseFrame::Last(b) => (String::from_utf8(b.to_vec()).unwrap(), true),
            SseFrame::Over => (String::new(), true),
        }
    }

    #[test]
    fn a_failed_chunk_stream_still_ends_with_done() {
        let (chunk, last) = text(sse_frame(Some(Reply::Chunk("{\"a\":1}".into())), false));
        assert_eq!((chunk.as_str(), last), ("data: {\"a\":1}\n\n", false));
        let (err, last) = text(sse_frame(Some(Reply::Error(ApiError::internal("boom"))), false));
        assert!(last);
        assert!(err.starts_with("data: {\"error\""), "{err}");
        assert!(err.contains("boom"), "{err}");
        assert!(err.ends_with("\n\ndata: [DONE]\n\n"), "{err}");
        assert_eq!(text(sse_frame(Some(Reply::Done), false)), ("data: [DONE]\n\n".into(), true));
        assert_eq!(text(sse_frame(None, false)), ("data: [DONE]\n\n".into(), true));
    }

    #[test]
    fn a_typed_event_stream_never_sends_done() {
        let (ev, last) = text(sse_frame(Some(Reply::Event("response.created", "{}".into())), true));
        assert_eq!((ev.as_str(), last), ("event: response.created\ndata: {}\n\n", false));
        let (err, last) = text(sse_frame(Some(Reply::Error(ApiError::internal("boom"))), true));
        assert!(last && !err.contains("[DONE]"), "{err}");
        assert_eq!(text(sse_frame(Some(Reply::End), true)), (String::new(), true));
    }
}
