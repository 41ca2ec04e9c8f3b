//! Request bodies read under `--max-request-body`. A body over the limit is refused with 413,
//! but only after the rest of it (up to [`DRAIN_CAP`]) has been read and dropped: a client
//! still sending when the answer comes would otherwise see its connection reset (a broken
//! pipe) instead of the 413 that says what was wrong.

use axum::body::Body;
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::api::error::ApiError;

/// The most of a refused body read before the connection is let go.
const DRAIN_CAP: u64 = 64 << 20;

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("The request body is larger than {limit} bytes (--max-request-body)."))
        .with_code("request_too_large")
}

/// The whole body, or 413 when it holds more than `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("The request body cannot be read: {e}.")))?;
        if out.len() + chunk.len() > limit {
            discard(stream, chunk.len() as u64).await;
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// 413 for a body whose declared length is over `limit`, once what it sends is dropped.
pub async fn refuse(body: Body, limit: usize) -> ApiError {
    discard(body.into_data_stream(), 0).await;
    too_large(limit)
}

async fn discard(mut stream: axum::body::BodyDataStream, mut read: u64) {
    while read < DRAIN_CAP {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => return,
        }
    }
}
