//! `/tokenize` and `/detokenize` bodies, answered in full (they need no engine): the
//! prompt or chat messages rendered and tokenized, or token ids decoded. The first byte
//! picks the route; the rest is the body.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::api::validate::Fields;
use sluice::http::tokenize::{detokenize_body, tokenize_body};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let serving = common::chat_serving();
    let Ok(fields) = Fields::parse(body) else { return };
    let _ = if pick % 2 == 0 { tokenize_body(serving, None, fields) } else { detokenize_body(serving, None, fields) };
});
