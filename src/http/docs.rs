//! The API's own description: `/openapi.json` (the document kept in `schemas/`, with this
//! build's version and the `--root-path` as its server) and `/docs`, a Swagger UI page over
//! it. Also the `--root-path` rewrite: behind a proxy that forwards `/prefix/v1/...`
//! unchanged, requests under the prefix reach the same routes as without it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::server::AppState;

const OPENAPI: &str = include_str!("../../schemas/openapi.json");

/// The OpenAPI document as served: version filled in, `servers` from the root path.
pub fn openapi_document(root_path: &str) -> String {
    let mut doc: Value = serde_json::from_str(OPENAPI).expect("schemas/openapi.json is valid JSON");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    if !root_path.is_empty() {
        doc["servers"] = json!([{"url": root_path}]);
    }
    serde_json::to_string(&doc).expect("a JSON value serializes")
}

pub async fn openapi(State(app): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], openapi_document(&app.root_path)).into_response()
}

/// Swagger UI, its script and style from a CDN as FastAPI's `/docs` does.
pub async fn swagger(State(app): State<Arc<AppState>>) -> Html<String> {
    Html(format!(
        r##"<!doctype html>
<html><head><meta charset="utf-8"><title>sluice — API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "{}/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>"##,
        app.root_path
    ))
}

/// Strips the root path from a request's path before routing, when it carries it.
pub fn strip_root_path(root: &str, mut req: Request) -> Request {
    if root.is_empty() {
        return req;
    }
    let uri = req.uri();
    let Some(rest) = uri.path().strip_prefix(root) else { return req };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return req; // "/apiary" is not under "/api"
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(new) = Uri::from_parts(parts) {
            *req.uri_mut() = new;
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_after(root: &str, uri: &str) -> String {
        let req = Request::builder().uri(uri).body(axum::body::Body::empty()).unwrap();
        strip_root_path(root, req).uri().to_string()
    }

    #[test]
    fn the_root_path_is_stripped_only_as_a_whole_segment() {
        assert_eq!(path_after("/api", "/api/v1/models"), "/v1/models");
        assert_eq!(path_after("/api", "/api/v1/models?x=1"), "/v1/models?x=1");
        assert_eq!(path_after("/api", "/api"), "/");
        assert_eq!(path_after("/api", "/apiary/v1/models"), "/apiary/v1/models");
        assert_eq!(path_after("/api", "/v1/models"), "/v1/models");
        assert_eq!(path_after("", "/api/v1/models"), "/api/v1/models");
    }

    #[test]
    fn the_document_names_every_route_and_its_version() {
        let doc: Value = serde_json::from_str(&openapi_document("/p")).unwrap();
        assert_eq!(doc["servers"][0]["url"], "/p");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in crate::http::server::ROUTES {
            let op = paths.get(*path).unwrap_or_else(|| panic!("{path} missing from schemas/openapi.json"));
            assert!(op.get(method.to_lowercase()).is_some(), "{method} {path} missing from schemas/openapi.json");
        }
        assert_eq!(paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(), crate::http::server::ROUTES.len());
    }
}
