//! audio: an uploaded file → what the engine runs, on worker threads: decode (wav, mp3,
//! flac, ogg, m4a), mix to mono, resample to 16 kHz, cut into 30 s windows at quiet points,
//! and compute each window's log-mel features; then Whisper's decoder prompt (the
//! request's `prompt` as previous text, language, task, timestamps), one per window.
//!
//! Windows are padded as faster-whisper and openai-whisper's `transcribe` pad them (the
//! log-mel of the audio alone, zeros after it): sluice's transcripts are held to
//! faster-whisper's. A file that does not decode is the client's error (a 400 naming
//! `file`), found here since decoding is the work this stage exists for.

use std::sync::Arc;

use crate::api::audio::{AudioFacts, AudioJob};
use crate::api::error::ApiError;
use crate::audio::features::{FeatureExtractor, Padding};
use crate::audio::split::{SplitConfig, split};
use crate::audio::{self, AudioError, SAMPLE_RATE};
use crate::engine::EncoderInput;
use crate::model::tokenizer::Tokenizer;
use crate::model::whisper::prompt::{PromptSpec, decoder_prompt};
use crate::model::whisper::tokens::WhisperTokens;
use crate::pipeline::{Outlet, Stage};
use crate::stages::item::{Item, Payload};

/// The longest audio a request may carry, in seconds.
pub const MAX_AUDIO_SECONDS: u64 = 3600;

/// What preparing audio for a Whisper model needs.
pub struct AudioPrep {
    pub features: FeatureExtractor,
    pub tokens: Arc<WhisperTokens>,
    pub tokenizer: Arc<Tokenizer>,
    /// The decoder's positions (448).
    pub max_target_positions: usize,
}

pub struct AudioStage {
    pub prep: Arc<AudioPrep>,
}

impl Stage<Item> for AudioStage {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Audio(mut job) = item.payload else { unreachable!("audio takes audio jobs") };
        if item.ctx.is_cancelled() {
            return;
        }
        match self.prep.prepare(&mut job) {
            Ok(facts) => {
                let _ = item.ctx.audio().facts.set(facts);
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Audio(job) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}

impl AudioPrep {
    /// Decodes the upload and fills in the job's prompts and windows.
    pub fn prepare(&self, job: &mut AudioJob) -> Result<AudioFacts, ApiError> {
        let ext = job.upload.extension();
        let samples = audio::load(job.upload.bytes.to_vec(), ext.as_deref(), MAX_AUDIO_SECONDS).map_err(file_error)?;
        let windows = split(&samples, SplitConfig::vllm(SAMPLE_RATE));
        let features: Vec<Vec<f32>> =
            windows.iter().map(|r| self.features.extract_padded(&samples[r.clone()], Padding::Features)).collect();
        let t = &self.tokens;
        // As openai-whisper and faster-whisper encode an initial prompt: after a space.
        let previous = match job.prompt.trim() {
            "" => Vec::new(),
            p => self.tokenizer.encode(&format!(" {p}"), false).map_err(|e| ApiError::internal(format!("tokenizer: {e}")))?,
        };
        // Without a language, a multilingual model's prompts hold a stand-in that the
        // engine replaces with the detected language.
        let stand_in = t.language_ids().first().copied();
        let detect = job.language.is_none() && t.multilingual;
        let spec = PromptSpec {
            language: if detect { stand_in } else { job.language },
            task: job.task,
            timestamps: job.timestamps,
            previous: &previous,
        };
        let prompt = decoder_prompt(t, &spec, self.max_target_positions).map_err(|m| ApiError::invalid("prompt", m))?;
        let language_at = t.multilingual.then(|| prompt.iter().position(|&id| id == t.sot).map(|i| i + 1)).flatten();
        let rate = SAMPLE_RATE as f64;
        let facts = AudioFacts {
            duration: samples.len() as f64 / rate,
            window_starts: windows.iter().map(|r| r.start as f64 / rate).collect(),
            window_ends: windows.iter().map(|r| r.end as f64 / rate).collect(),
            language_at,
        };
        job.prompts = vec![prompt; windows.len()];
        job.encoder = Some(EncoderInput {
            windows: features,
            timestamps: job.timestamps,
            detect_language_at: if detect { language_at } else { None },
        });
        Ok(facts)
    }
}

/// A file that is not usable audio, as the client's error on `file`.
fn file_error(e: AudioError) -> ApiError {
    let hint = match e {
        AudioError::TooLong { .. } => "; send a shorter recording",
        _ => "",
    };
    ApiError::invalid("file", format!("The file cannot be transcribed: {e}{hint}."))
}
