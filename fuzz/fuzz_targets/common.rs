//! What the targets share: the served model's context, built once per process from the
//! installed default models (as `sluice serve` builds it), and a scratch file for the
//! readers that take a path.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use sluice::api::context::ServingContext;
use sluice::model::chat_template::ChatTemplate;
use sluice::model::gguf::GgufFile;
use sluice::model::resolve::{self, Format, DEFAULT_MODEL_ID, DEFAULT_WHISPER_ID};
use sluice::model::tokenizer::Tokenizer;
use sluice::model::ct2::Ct2Model;
use sluice::model::whisper::config::WhisperConfig;
use sluice::model::whisper::tokens::WhisperTokens;
use sluice::model::ModelInfo;

static DEFAULT_TEMPLATE: OnceLock<String> = OnceLock::new();

/// The default chat model's chat template, as its file has it.
pub fn default_template() -> &'static str {
    chat_serving();
    DEFAULT_TEMPLATE.get().expect("set with the context")
}

/// The default chat model's serving context (SmolLM2: its tokenizer and ChatML template).
pub fn chat_serving() -> &'static ServingContext {
    static CTX: OnceLock<ServingContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let location = resolve::resolve(Some(DEFAULT_MODEL_ID)).expect("the default model is installed (make setup)");
        let Format::Gguf(path) = &location.format else { panic!("the default model is a GGUF file") };
        let file = GgufFile::open(path).expect("the default model opens");
        let tokenizer = Tokenizer::from_gguf(&file, path).expect("its tokenizer loads");
        let template = file.get_str("tokenizer.chat_template").map(str::to_owned);
        let info = ModelInfo {
            tokenizer: Arc::new(tokenizer),
            chat_template: template.clone(),
            generation_config: None,
            eos_ids: vec![2],
            max_model_len: 8192,
            location: location.clone(),
        };
        let _ = DEFAULT_TEMPLATE.set(template.clone().unwrap_or_default());
        let template = template.map(|t| ChatTemplate::new(&t).expect("its template compiles"));
        let mut s = ServingContext::new(&info, vec![DEFAULT_MODEL_ID.into(), "m".into()], template, None);
        // Let requests bring their own template too: more of the renderer is reachable.
        s.trust_request_chat_template = true;
        s.priority_scheduling = true;
        s
    })
}

/// The default Whisper model's serving context (tiny.en: its tokenizer and special tokens).
pub fn whisper_serving() -> &'static ServingContext {
    static CTX: OnceLock<ServingContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let location = resolve::resolve(Some(DEFAULT_WHISPER_ID)).expect("the default Whisper model is installed");
        let dir = location.path().to_owned();
        let tokenizer = Tokenizer::from_hf_file(&dir.join("tokenizer.json"), None).expect("its tokenizer loads");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json")).expect("config.json is JSON");
        // The logits' width, as the loader reads it off the weights.
        let weights = Ct2Model::open(&dir.join("model.bin")).expect("its model.bin opens");
        let vocab = WhisperConfig::from_ct2(&weights).expect("its shape").vocab_size;
        let tokens = WhisperTokens::from_ct2(&config, &tokenizer, vocab).expect("its special tokens");
        let info = ModelInfo {
            tokenizer: Arc::new(tokenizer),
            chat_template: None,
            generation_config: None,
            eos_ids: vec![tokens.eot],
            max_model_len: 448,
            location,
        };
        let mut s = ServingContext::new(&info, vec![DEFAULT_WHISPER_ID.into()], None, None);
        s.whisper = Some(Arc::new(tokens));
        s
    })
}

/// A file of this process's own to hand to the readers that open a path (on tmpfs where
/// there is one), rewritten for every input.
pub fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let d = base.join(format!("sluice-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    });
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}
