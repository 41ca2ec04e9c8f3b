//! Embeddings, pooling, classify, score and rerank bodies: validation against an
//! embedding model's and a classifier's pooling settings, then the chat form's rendering.
//! The first byte picks the endpoint and the model kind; the rest is the body.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::api::endpoint::Endpoint;
use sluice::api::request::PoolInput;
use sluice::api::validate::pooling_request;
use sluice::model::encoder::PoolingInfo;
use sluice::stages::render::render_chat;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let endpoints = [Endpoint::Embeddings, Endpoint::Pooling, Endpoint::Classify, Endpoint::Score, Endpoint::Rerank];
    let endpoint = endpoints[pick as usize % endpoints.len()];
    let embedding = (pick / 8) % 2 == 0;
    let model = PoolingInfo {
        embedding,
        normalizes: embedding,
        matryoshka: None,
        width: if embedding { 384 } else { 2 },
        labels: if embedding { vec![] } else { vec!["NEGATIVE".into(), "POSITIVE".into()] },
        per_token: false,
        join_pairs: !embedding,
    };
    let serving = common::chat_serving();
    let Ok(job) = pooling_request(endpoint, body, serving, &model) else { return };
    for input in &job.inputs {
        if let PoolInput::Chat(chat) = input {
            let _ = render_chat(serving, chat);
        }
    }
});
