//! The Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`, cancel, delete), as
//! the official openai client's `client.responses.create(…)` speaks it. A Responses
//! request becomes a chat job (`validate`): its input items become chat messages, its
//! function tools chat tools, `text.format` a response format, so it runs through the
//! same stages as chat completions. The stream stage writes its answer as a response
//! object or as OpenAI's typed server-sent events (`events`), and stored responses
//! (`store`) serve `previous_response_id` and retrieval.

pub mod events;
pub mod store;
pub mod validate;

pub use validate::{responses_request, ResponsesMeta};
