//! An audio request (transcription or translation) as validation leaves it: the upload,
//! what to decode it into, and how to answer. The audio stage fills in the decoder
//! prompts and the encoder input; `AudioMeta` travels on the request's context to the
//! stage that writes the answer.

use std::sync::{Arc, OnceLock};

use crate::api::form::Upload;
use crate::engine::EncoderInput;
use crate::model::whisper::tokens::Task;
use crate::sampling::SamplingParams;

/// `response_format` of the audio APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Json,
    Text,
    Srt,
    VerboseJson,
    Vtt,
}

impl AudioFormat {
    pub const NAMES: &'static str = "json, text, srt, verbose_json, vtt";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "json" => AudioFormat::Json,
            "text" => AudioFormat::Text,
            "srt" => AudioFormat::Srt,
            "verbose_json" => AudioFormat::VerboseJson,
            "vtt" => AudioFormat::Vtt,
            _ => return None,
        })
    }

    /// Whether the answer needs segment times (the model writes timestamp tokens).
    pub fn timestamps(self) -> bool {
        matches!(self, AudioFormat::Srt | AudioFormat::VerboseJson | AudioFormat::Vtt)
    }
}

/// A validated transcription or translation request.
#[derive(Debug)]
pub struct AudioJob {
    pub upload: Upload,
    pub task: Task,
    /// The language token when the request names the language (multilingual models);
    /// None: detected from the first window (or an English-only model, which takes none).
    pub language: Option<u32>,
    /// Text to condition on (`prompt`), as previous text.
    pub prompt: String,
    pub timestamps: bool,
    pub sampling: Arc<SamplingParams>,
    /// Filled by the audio stage: one decoder prompt per window, and the windows' features.
    pub prompts: Vec<Vec<u32>>,
    pub encoder: Option<EncoderInput>,
}

/// How an audio request is answered; set on the request's context by decode.
#[derive(Debug)]
pub struct AudioMeta {
    pub model: String,
    pub task: Task,
    pub format: AudioFormat,
    pub stream: bool,
    pub include_usage: bool,
    /// Usage on every chunk (`stream_continuous_usage_stats`).
    pub continuous_usage: bool,
    pub temperature: f32,
    /// The language code the request gave.
    pub language: Option<String>,
    /// What the audio stage found; set before the engine sees the request.
    pub facts: OnceLock<AudioFacts>,
}

/// What decoding the audio told.
#[derive(Debug, Clone)]
pub struct AudioFacts {
    /// Seconds of audio.
    pub duration: f64,
    /// Where each window starts, in seconds.
    pub window_starts: Vec<f64>,
    /// Where each window ends, in seconds.
    pub window_ends: Vec<f64>,
    /// The prompt position of the language token (multilingual models).
    pub language_at: Option<usize>,
}
