//! The audio APIs' edge: `POST /v1/audio/transcriptions` and `/v1/audio/translations`
//! take `multipart/form-data` (OpenAI's wire format: text fields and the audio as a file
//! part named `file`). The body is read here, part by part, under `--max-request-body`
//! (beyond it: 413), into a `Form` for the pipeline's `audio_decode` stage, which
//! validates it. Anything but a multipart body is a 415.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::endpoint::Endpoint;
use crate::api::error::ApiError;
use crate::api::form::{Form, Upload};
use crate::stages::item::Payload;

use super::body::{refuse, too_large};
use super::server::{AppState, dispatch, refuse_endpoint, usable_request_id};

pub async fn transcriptions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit_form(app, Endpoint::Transcriptions, req).await
}

pub async fn translations(State(app): State<Arc<AppState>>, req: Request) -> Response {
    submit_form(app, Endpoint::Translations, req).await
}

async fn submit_form(app: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    if let Some(refusal) = refuse_endpoint(&app.serving, app.task, endpoint) {
        return refusal.into_response();
    }
    let (parts, body) = req.into_parts();
    let form = match read_form(&parts.headers, body, app.max_body_bytes).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).and_then(usable_request_id);
    dispatch(app, endpoint, request_id, Payload::Form(Box::new(form))).await
}

/// The form a `multipart/form-data` body holds, read under `limit` bytes.
pub async fn read_form(headers: &HeaderMap, body: Body, limit: usize) -> Result<Form, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type must be multipart/form-data with a boundary, not {ct:?}: the audio APIs take a form whose \
                 `file` part is the audio."
            ),
        )
        .with_code("unsupported_media_type")
    })?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(refuse(body, limit).await);
    }
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit as u64));
    let mut parts = multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut form = Form::default();
    let malformed = |e: multer::Error| match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => too_large(limit),
        e => ApiError::bad_request(format!("The multipart/form-data body cannot be read: {e}.")),
    };
    while let Some(field) = parts.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or("").to_string();
        if name.is_empty() {
            return Err(ApiError::bad_request("A part of the form has no field name (Content-Disposition: form-data; name=...)."));
        }
        let filename = field.file_name().map(str::to_owned);
        // The audio is a file part; a client that sends it without a filename still means it.
        if filename.is_some() || name == "file" {
            let bytes = field.bytes().await.map_err(malformed)?;
            form.files.push(Upload { field: name, filename, bytes });
        } else {
            let bytes = field.bytes().await.map_err(malformed)?;
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::invalid(name.clone(), format!("`{name}` must be UTF-8 text.")))?;
            form.fields.push((name, text));
        }
    }
    Ok(form)
}
