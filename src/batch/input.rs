//! The reader's half of a batch file: one line's envelope (`custom_id`, `method`, `url`,
//! `body`) checked and taken apart. The body itself is left for the pipeline's decode stage,
//! so it is read by exactly the code that reads HTTP bodies.

use std::collections::HashMap;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::endpoint::Endpoint;
use crate::http::server::{no_route, usable_request_id};

/// What one line of the batch file asks for.
#[derive(Debug)]
pub enum Line {
    /// A request for the pipeline.
    Request(Request),
    /// A line that cannot be run; it becomes an error line of its own.
    Bad { custom_id: Option<String>, error: ApiError },
}

#[derive(Debug)]
pub struct Request {
    pub custom_id: String,
    pub endpoint: Endpoint,
    /// The body's bytes, as an HTTP client would send them.
    pub body: Bytes,
    /// The body's `request_id`, which names the response as on HTTP.
    pub request_id: Option<String>,
}

fn bad(custom_id: Option<String>, param: &str, message: String) -> Line {
    Line::Bad { custom_id, error: ApiError::invalid(param, message) }
}

/// Reads one non-blank line; `number` (1-based) is for messages.
pub fn parse_line(text: &str, number: usize) -> Line {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let error = ApiError::bad_request(format!("line {number} is not valid JSON: {e}")).with_code("invalid_json");
            return Line::Bad { custom_id: None, error };
        }
    };
    let Value::Object(mut map) = v else {
        return bad(None, "", format!("line {number} must be a JSON object with custom_id, method, url and body"));
    };
    let custom_id = match map.remove("custom_id") {
        Some(Value::String(s)) => s,
        Some(other) => return bad(None, "custom_id", format!("line {number}: custom_id must be a string, not {other}")),
        None => return bad(None, "custom_id", format!("line {number} has no custom_id")),
    };
    let id = Some(custom_id.clone());
    let method = match map.remove("method") {
        Some(Value::String(s)) => s,
        _ => return bad(id, "method", format!("line {number}: method must be the string \"POST\"")),
    };
    let url = match map.remove("url") {
        Some(Value::String(s)) => s,
        _ => return bad(id, "url", format!("line {number}: url must be a string such as \"/v1/chat/completions\"")),
    };
    if !method.eq_ignore_ascii_case("POST") {
        let error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("line {number}: method {method:?} is not allowed; batch requests are POST"),
        );
        return Line::Bad { custom_id: id, error: ApiError { param: Some("method".into()), ..error } };
    }
    let Some(endpoint) = Endpoint::from_path(&url) else {
        let error = no_route("POST", &url);
        let message = format!(
            "{} Batch lines may use /v1/chat/completions, /v1/completions, /v1/embeddings, /pooling, /classify, \
             /score, /rerank, /v1/audio/transcriptions and /v1/audio/translations.",
            error.message
        );
        return Line::Bad { custom_id: id, error: ApiError { message, param: Some("url".into()), ..error } };
    };
    let body = match map.remove("body") {
        Some(b) => b,
        None => return bad(id, "body", format!("line {number} has no body")),
    };
    let request_id = body.get("request_id").and_then(Value::as_str).and_then(usable_request_id).map(str::to_string);
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    Line::Request(Request { custom_id, endpoint, body: Bytes::from(bytes), request_id })
}

/// Remembers custom_ids and which line first used each.
#[derive(Default)]
pub struct SeenIds {
    first_line: HashMap<String, usize>,
}

impl SeenIds {
    /// The line that already used `id`, or None (and `id` is now taken by `line`).
    pub fn claim(&mut self, id: &str, line: usize) -> Option<usize> {
        match self.first_line.get(id) {
            Some(&first) => Some(first),
            None => {
                self.first_line.insert(id.to_string(), line);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(line: Line) -> (Option<String>, ApiError) {
        match line {
            Line::Bad { custom_id, error } => (custom_id, error),
            Line::Request(r) => panic!("expected an error, got {r:?}"),
        }
    }

    #[test]
    fn a_good_line_keeps_its_body() {
        let l = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "request_id": " r1 "}}"#;
        let Line::Request(r) = parse_line(l, 1) else { panic!() };
        assert_eq!(r.custom_id, "a");
        assert_eq!(r.endpoint, Endpoint::ChatCompletions);
        assert_eq!(&r.body[..], br#"{"model":"m","request_id":" r1 "}"#);
        assert_eq!(r.request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let (id, e) = error_of(parse_line("{oops", 3));
        assert_eq!(id, None);
        assert!(e.message.starts_with("line 3 is not valid JSON"), "{}", e.message);
        let (id, e) = error_of(parse_line(r#"{"custom_id": "x", "method": "POST", "url": "/v1/nope", "body": {}}"#, 4));
        assert_eq!(id.as_deref(), Some("x"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.message.starts_with("No route for POST /v1/nope."), "{}", e.message);
        let (_, e) = error_of(parse_line(r#"{"custom_id": "x", "method": "GET", "url": "/v1/completions", "body": {}}"#, 5));
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        let (_, e) = error_of(parse_line(r#"{"custom_id": 7, "method": "POST", "url": "/v1/completions", "body": {}}"#, 6));
        assert_eq!(e.param.as_deref(), Some("custom_id"));
        let (_, e) = error_of(parse_line(r#"{"custom_id": "y", "method": "POST", "url": "/v1/completions"}"#, 7));
        assert_eq!(e.param.as_deref(), Some("body"));
    }

    #[test]
    fn duplicates_name_the_first_line() {
        let mut seen = SeenIds::default();
        assert_eq!(seen.claim("a", 1), None);
        assert_eq!(seen.claim("b", 2), None);
        assert_eq!(seen.claim("a", 3), Some(1));
    }
}
