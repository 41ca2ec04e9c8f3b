//! The audio APIs' `multipart/form-data` uploads as the HTTP edge reads them (under a
//! body limit), then the form validated against the Whisper model, as a request to
//! `/v1/audio/transcriptions` or `/translations` goes. The input is the body; the first
//! byte picks the endpoint and whether the Content-Length header is sent.

#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use sluice::api::endpoint::Endpoint;
use sluice::api::validate::audio::audio_request;
use sluice::http::audio::read_form;

/// The boundary the seeds use; the body may use any other and fail.
const BOUNDARY: &str = "sluicefuzzboundary";
/// Small, so that the limit's path (413) is reachable by the fuzzer.
const LIMIT: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));
    let mut headers = HeaderMap::new();
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&ct).expect("header"));
    if pick & 2 != 0 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = Body::from(bytes::Bytes::copy_from_slice(body));
    let Ok(form) = rt.block_on(read_form(&headers, body, LIMIT)) else { return };
    let endpoint = if pick % 2 == 0 { Endpoint::Transcriptions } else { Endpoint::Translations };
    let _ = audio_request(endpoint, form, common::whisper_serving());
});
