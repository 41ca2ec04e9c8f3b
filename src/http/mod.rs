//! The HTTP edge: the axum routes, the API key and CORS layers, and the hand-off between
//! connections and the pipeline's first stage. The wire format and its validation are
//! `crate::api`'s; this part only moves bytes between sockets and stages.

pub mod audio;
pub mod body;
pub mod cors;
pub mod docs;
pub mod responses;
pub mod server;
pub mod tokenize;
