//! A safetensors file in a model folder, as the loader reads it: the header indexed, then
//! every tensor read, converted to the serving dtype piece by piece. The first byte picks
//! the dtype tensors are read as (as stored, float32 or bfloat16).

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::model::weights::{SafetensorsWeights, WeightSource};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let path = common::scratch("model.safetensors", bytes);
    let dir = path.parent().expect("a folder");
    let opened = match pick % 3 {
        0 => SafetensorsWeights::open(dir),
        1 => SafetensorsWeights::open_as(dir, tch::Kind::Float),
        _ => SafetensorsWeights::open_as(dir, tch::Kind::BFloat16),
    };
    let Ok(weights) = opened else { return };
    // The names come from the header; the loader asks for them by name the same way.
    let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(bytes) else { return };
    for name in meta.tensors().keys() {
        let _ = weights.get(name);
    }
});
