//! Audio for the speech models: from an uploaded file to Whisper's input.
//!
//! - `decode`: wav, mp3, flac, ogg (vorbis), m4a (aac) → samples, with symphonia;
//! - `mono`: channels mixed down to one;
//! - `resample`: any rate → 16 kHz (windowed-sinc, the filter ffmpeg uses by default);
//! - `mel` and `features`: Whisper's log-mel spectrogram, as transformers'
//!   `WhisperFeatureExtractor` computes it, in 30 s windows;
//! - `split`: long audio cut into windows at its quietest points, as vLLM does.
//!
//! Everything here is plain Rust on the calling thread (no libtorch), so the audio stage's
//! worker threads never start a second OpenMP pool beside the engine's.

pub mod decode;
pub mod features;
pub mod mel;
pub mod mono;
pub mod resample;
pub mod split;

/// The sample rate Whisper's features are computed at.
pub const SAMPLE_RATE: u32 = 16_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AudioError {
    #[error("the file is not audio in a supported format (wav, mp3, flac, ogg, m4a): {0}")]
    NotAudio(String),
    #[error("the file has no audio track")]
    NoTrack,
    #[error("the audio codec is not supported: {0}")]
    UnsupportedCodec(String),
    #[error("the audio could not be decoded: {0}")]
    Corrupt(String),
    #[error("the file holds no audio samples")]
    Empty,
    #[error("the audio is longer than the {max_seconds} s allowed")]
    TooLong { max_seconds: u64 },
    #[error("the audio's sample rate {0} Hz is not supported (1 Hz to 384 kHz are)")]
    BadRate(u32),
}

/// Decodes a file's bytes to 16 kHz mono float samples, at most `max_seconds` long.
pub fn load(bytes: Vec<u8>, extension: Option<&str>, max_seconds: u64) -> Result<Vec<f32>, AudioError> {
    let decoded = decode::decode(bytes, extension, max_seconds)?;
    Ok(resample::resample(&decoded.samples, decoded.sample_rate, SAMPLE_RATE))
}
