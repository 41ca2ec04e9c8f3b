//! Whisper's log-mel features, as transformers' `WhisperFeatureExtractor` computes them:
//! the samples padded with silence (or cut) to one 30 s window, an STFT of 400-sample
//! frames every 160 samples with a periodic Hann window and reflect padding of 200 at both
//! ends (torch's `center=True`), the power spectrum through the slaney mel filterbank,
//! `log10` of it clamped at 1e-10, floored at 8 below its maximum, then `(x + 4) / 4`. The
//! last STFT frame is dropped, leaving 3000 frames.
//!
//! Computed in float64 and returned as float32 (transformers computes in float32; the two
//! agree within 1e-4). Frames that see only the padding silence are not transformed: their
//! power is exactly zero, their value the floor.
//!
//! openai-whisper's `transcribe` and faster-whisper fill the window differently: the log-mel
//! of the audio alone, then zeros (`Padding::Features`). Both are here; on short clips the
//! choice can change a greedy transcript.

use std::sync::Arc;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;
use serde_json::Value as Json;

use super::mel;

/// The feature extractor's settings (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct MelConfig {
    pub n_mels: usize,
    pub n_fft: usize,
    pub hop_length: usize,
    pub sample_rate: u32,
    /// Seconds in one window (30).
    pub chunk_length: usize,
}

impl MelConfig {
    pub fn whisper(n_mels: usize) -> Self {
        MelConfig { n_mels, n_fft: 400, hop_length: 160, sample_rate: 16000, chunk_length: 30 }
    }

    /// From `preprocessor_config.json` when the model has one (else Whisper's defaults with
    /// the model's mel bins); refuses settings that disagree with the model.
    pub fn from_preprocessor(config: Option<&Json>, model_mels: usize) -> Result<Self, String> {
        let mut c = MelConfig::whisper(model_mels);
        let Some(p) = config else { return Ok(c) };
        let get = |k: &str| p.get(k).and_then(Json::as_u64).map(|v| v as usize);
        c.n_mels = get("feature_size").unwrap_or(c.n_mels);
        c.n_fft = get("n_fft").unwrap_or(c.n_fft);
        c.hop_length = get("hop_length").unwrap_or(c.hop_length);
        c.sample_rate = get("sampling_rate").map_or(c.sample_rate, |v| v as u32);
        c.chunk_length = get("chunk_length").unwrap_or(c.chunk_length);
        if c.n_mels != model_mels {
            return Err(format!("preprocessor_config.json has {} mel bins, the model takes {model_mels}", c.n_mels));
        }
        if c.n_fft < 2 || c.hop_length == 0 || c.sample_rate == 0 || c.chunk_length == 0 {
            return Err(format!("preprocessor_config.json has unusable STFT settings: {c:?}"));
        }
        if c.sample_rate != super::SAMPLE_RATE {
            return Err(format!("preprocessor_config.json asks for {} Hz audio; only 16000 Hz is supported", c.sample_rate));
        }
        Ok(c)
    }

    /// Samples in one window (480000).
    pub fn window_samples(&self) -> usize {
        self.chunk_length * self.sample_rate as usize
    }

    /// Frames in one window (3000).
    pub fn window_frames(&self) -> usize {
        self.window_samples() / self.hop_length
    }
}

/// How a window is filled after the audio ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// transformers' `WhisperFeatureExtractor` (and so vLLM): the samples are padded with
    /// silence to 30 s before the log-mel, so the rest of the window holds the floor value.
    Samples,
    /// openai-whisper's `transcribe` and faster-whisper: the log-mel of the audio and 10 ms of
    /// silence, normalised over that, its frames after the audio's own set to 0.
    Features,
}

/// Computes features; holds the filterbank, the window and the FFT plan.
pub struct FeatureExtractor {
    pub config: MelConfig,
    filters: Vec<Vec<f64>>,
    window: Vec<f64>,
    fft: Arc<dyn rustfft::Fft<f64>>,
}

impl FeatureExtractor {
    pub fn new(config: MelConfig) -> Self {
        let n = config.n_fft;
        let window = (0..n).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).collect();
        let filters = mel::filterbank(config.n_mels, n, config.sample_rate);
        let fft = FftPlanner::new().plan_fft_forward(n);
        FeatureExtractor { config, filters, window, fft }
    }

    /// Features `[n_mels × window_frames]` (mel-major) of one window of 16 kHz samples, as
    /// transformers computes them (`Padding::Samples`): shorter input is padded with
    /// silence, longer is cut.
    pub fn extract(&self, samples: &[f32]) -> Vec<f32> {
        self.extract_padded(samples, Padding::Samples)
    }

    /// `extract` with the window filled after the audio as `padding` says.
    pub fn extract_padded(&self, samples: &[f32], padding: Padding) -> Vec<f32> {
        let c = &self.config;
        let total = c.window_samples();
        let frames = c.window_frames();
        let x = &samples[..samples.len().min(total)];
        let (hop, pad) = (c.hop_length, c.n_fft / 2);
        match padding {
            Padding::Samples => {
                // Frames from `live` on see only the silence after the audio (unless the
                // audio fills the window, where the end's reflection mirrors it).
                let live = if x.len() + pad >= total { frames } else { ((x.len() + pad).div_ceil(hop) + 1).min(frames) };
                let mut spec = self.log_mel(x, total, live, frames);
                // Their power is 0, clamped to 1e-10.
                for m in 0..c.n_mels {
                    spec[m * frames + live..(m + 1) * frames].fill(-10.0);
                }
                normalise(&spec)
            }
            Padding::Features => {
                // The audio and one hop of silence; the STFT's last frame is dropped, and the
                // frame after the audio's own is not part of the content.
                let len = x.len() + hop;
                let computed = len / hop;
                let content = computed.saturating_sub(1).min(frames);
                let spec = self.log_mel(x, len, computed, computed);
                let normed = normalise(&spec);
                let mut out = vec![0.0f32; c.n_mels * frames];
                for m in 0..c.n_mels {
                    out[m * frames..m * frames + content].copy_from_slice(&normed[m * computed..m * computed + content]);
                }
                out
            }
        }
    }

    /// `log10` mel energies `[n_mels × stride]` of the first `count` STFT frames of `x`
    /// followed by silence up to `len` samples, reflect-padded at both ends (the rest of
    /// each row left at -inf).
    fn log_mel(&self, x: &[f32], len: usize, count: usize, stride: usize) -> Vec<f64> {
        let c = &self.config;
        let (n_fft, hop, pad) = (c.n_fft, c.hop_length, c.n_fft / 2);
        let at = |i: usize| -> f64 {
            let j = i as i64 - pad as i64;
            let idx = if j < 0 {
                -j
            } else if j >= len as i64 {
                2 * (len as i64 - 1) - j
            } else {
                j
            };
            x.get(idx as usize).map_or(0.0, |&v| v as f64)
        };
        let mut spec = vec![f64::NEG_INFINITY; c.n_mels * stride];
        let mut buf = vec![Complex::new(0.0, 0.0); n_fft];
        let mut power = vec![0.0f64; n_fft / 2 + 1];
        for f in 0..count {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = Complex::new(at(f * hop + k) * self.window[k], 0.0);
            }
            self.fft.process(&mut buf);
            for (p, b) in power.iter_mut().zip(&buf) {
                *p = b.norm_sqr();
            }
            for (m, filt) in self.filters.iter().enumerate() {
                let e: f64 = filt.iter().zip(&power).map(|(w, p)| w * p).sum();
                spec[m * stride + f] = e.max(1e-10).log10();
            }
        }
        spec
    }
}

/// Floors at 8 below the maximum, then `(x + 4) / 4`.
fn normalise(spec: &[f64]) -> Vec<f32> {
    let max = spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    spec.iter().map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_flat_and_a_tone_lights_its_band() {
        let fe = FeatureExtractor::new(MelConfig::whisper(80));
        let silent = fe.extract(&[]);
        assert_eq!(silent.len(), 80 * 3000);
        assert!(silent.iter().all(|&v| v == -1.5), "log10(1e-10) = -10 → (-10 + 4) / 4");
        let tone: Vec<f32> = (0..16000).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin() * 0.5).collect();
        let f = fe.extract(&tone);
        let frame = 50;
        let col: Vec<f32> = (0..80).map(|m| f[m * 3000 + frame]).collect();
        let loudest = col.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let centre_hz = mel::mel_to_hz(mel::hz_to_mel(8000.0) * (loudest + 1) as f64 / 81.0);
        assert!((centre_hz - 1000.0).abs() < 80.0, "loudest band centred at {centre_hz} Hz");
        // After the audio, everything sits at the floor (max - 8).
        let floor = f.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(f[2999] == floor && f[79 * 3000 + 2500] == floor);
    }

    #[test]
    fn feature_padding_keeps_the_audio_frames_and_zeros_the_rest() {
        let fe = FeatureExtractor::new(MelConfig::whisper(80));
        let tone: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.3).sin() * 0.2).collect();
        let f = fe.extract_padded(&tone, Padding::Features);
        // (8000 + 160) / 160 = 51 frames computed, the last dropped: 50 of content.
        assert!(f[49] != 0.0 && f[50] == 0.0 && f[2999] == 0.0);
        assert!(f.iter().all(|v| v.is_finite()));
        // The audio's frames are the log-mel of the audio alone: away from its end they
        // equal the other padding's up to the normalisation, which shares the maximum here.
        let g = fe.extract(&tone);
        assert!((f[10] - g[10]).abs() < 1e-5, "{} vs {}", f[10], g[10]);
    }

    #[test]
    fn reads_preprocessor_config() {
        let p = serde_json::json!({"feature_size": 128, "n_fft": 400, "hop_length": 160, "sampling_rate": 16000, "chunk_length": 30});
        assert_eq!(MelConfig::from_preprocessor(Some(&p), 128).unwrap(), MelConfig::whisper(128));
        assert!(MelConfig::from_preprocessor(Some(&p), 80).unwrap_err().contains("128 mel bins"));
        assert_eq!(MelConfig::from_preprocessor(None, 80).unwrap().window_frames(), 3000);
    }
}
