//! vLLM's CORS flags as a layer around every route (outside the API key check, so that
//! browsers' preflight requests are answered).

use tower_http::cors::{self, CorsLayer};

use crate::config::{Allowed, CorsSettings};

pub fn layer(c: &CorsSettings) -> CorsLayer {
    let creds = c.credentials;
    // With credentials a wildcard is not allowed on the wire: mirror the request instead.
    let mut layer = CorsLayer::new().allow_credentials(creds);
    layer = match (&c.origins, creds) {
        (Allowed::Any, false) => layer.allow_origin(cors::Any),
        (Allowed::Any, true) => layer.allow_origin(cors::AllowOrigin::mirror_request()),
        (Allowed::Only(v), _) => layer.allow_origin(v.clone()),
    };
    layer = match (&c.methods, creds) {
        (Allowed::Any, false) => layer.allow_methods(cors::Any),
        (Allowed::Any, true) => layer.allow_methods(cors::AllowMethods::mirror_request()),
        (Allowed::Only(v), _) => layer.allow_methods(v.clone()),
    };
    match (&c.headers, creds) {
        (Allowed::Any, false) => layer.allow_headers(cors::Any),
        (Allowed::Any, true) => layer.allow_headers(cors::AllowHeaders::mirror_request()),
        (Allowed::Only(v), _) => layer.allow_headers(v.clone()),
    }
}
