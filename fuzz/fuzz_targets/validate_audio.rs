//! Transcription and translation requests as batch lines carry them (a JSON body whose
//! `file_url` is a data URL): the body read into a form, then validated against the
//! Whisper model. The first byte picks the endpoint; the rest is the body.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::api::endpoint::Endpoint;
use sluice::api::validate::audio::{audio_request, form_of_json};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let endpoint = if pick % 2 == 0 { Endpoint::Transcriptions } else { Endpoint::Translations };
    let Ok(form) = form_of_json(body) else { return };
    let _ = audio_request(endpoint, form, common::whisper_serving());
});
