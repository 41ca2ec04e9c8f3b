//! CTranslate2 `model.bin` files (faster-whisper's weights): the variable index and
//! aliases, then every variable read as a tensor (int8 ones with their scales) and as a
//! scalar, as the Whisper loader reads them.

#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sluice::model::ct2::Ct2Model;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("model.bin", data);
    let Ok(model) = Ct2Model::open(&path) else { return };
    let names: Vec<String> =
        model.variables().iter().map(|v| v.name.clone()).chain(model.aliases().keys().cloned()).collect();
    for name in &names {
        let _ = model.tensor(name);
        let _ = model.scalar_int(name);
    }
});
