//! The Responses API's routes. `POST /v1/responses` goes through the pipeline like a
//! chat completion; with `background: true` it is answered at once with the queued
//! response, stored, while the generation runs on (poll `GET /v1/responses/{id}`, stop
//! it with `POST /v1/responses/{id}/cancel`). Stored responses are read, cancelled and
//! deleted here; an id the store does not hold (never stored, expired, deleted) is a 404.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::server::{read_json_body, refuse_endpoint, submit_body, AppState};
use crate::api::endpoint::Endpoint;
use crate::api::error::ApiError;
use crate::api::responses::events::ResponseWriter;
use crate::api::responses::responses_request;
use crate::api::responses::store::CancelError;
use crate::stages::item::Reply;

pub async fn create(State(app): State<Arc<AppState>>, req: Request) -> Response {
    if let Some(refusal) = refuse_endpoint(&app.serving, app.task, Endpoint::Responses) {
        return refusal.into_response();
    }
    let (parts, body) = req.into_parts();
    let body = match read_json_body(&parts.headers, body, app.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let background = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("background")?.as_bool()) == Some(true);
    if !background {
        return submit_body(app, Endpoint::Responses, &parts.headers, body).await;
    }
    // Checked here too, to answer the queued response (or the client's mistake) at once.
    let meta = match responses_request(&body, &app.serving) {
        Ok((_, meta)) => meta,
        Err(e) => return e.into_response(),
    };
    let (ctx, mut rx, ticket) = match super::server::enqueue(&app, Endpoint::Responses, &parts.headers, body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let rmeta = meta.responses.clone().expect("a Responses request");
    let queued = ResponseWriter::new(ctx.id.clone(), ctx.created, meta.model.clone()).object(&rmeta, "queued", None);
    let store = app.serving.responses.clone();
    let handle = ctx.clone();
    store.put_running(&ctx.id, queued.clone(), Arc::new(move || handle.cancel()));
    // The stream stage stores the finished response; a failure is stored here.
    let answer = queued.clone();
    tokio::spawn(async move {
        // In flight until its answer is stored.
        let _ticket = ticket;
        while let Some(reply) = rx.recv().await {
            match reply {
                Reply::Error(e) => {
                    let mut failed = queued.clone();
                    failed["status"] = Value::from("failed");
                    failed["error"] = json!({"code": "server_error", "message": e.message});
                    store.put(&ctx.id, failed, Vec::new());
                    break;
                }
                Reply::Body(_) | Reply::Text { .. } | Reply::Done | Reply::End => break,
                Reply::Chunk(_) | Reply::Event(..) => {}
            }
        }
    });
    Json(answer).into_response()
}

fn not_found(id: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, format!("Response with id '{id}' not found.")).with_param("response_id").into_response()
}

pub async fn get(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match app.serving.responses.get(&id) {
        Some(r) => Json(r).into_response(),
        None => not_found(&id),
    }
}

pub async fn cancel(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match app.serving.responses.cancel(&id) {
        Ok(r) => Json(r).into_response(),
        Err(CancelError::NotFound) => not_found(&id),
        Err(CancelError::NotBackground) => {
            ApiError::invalid("response_id", "Only responses created with `background: true` can be cancelled.").into_response()
        }
    }
}

pub async fn delete(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if app.serving.responses.delete(&id) {
        Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        not_found(&id)
    }
}
