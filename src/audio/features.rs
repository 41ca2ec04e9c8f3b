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

    /// Features `[n_mels × window_frames]` (mel-major) of one window of 16 kHz samples:
    /// shorter input is padded with silence, longer is cut.
    pub fn extract(&self, samples: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let total = c.window_samples();
        let x = &samples[..samples.len().min(total)];
        let (n_fft, hop, pad) = (c.n_fft, c.hop_length, c.n_fft / 2);
        let frames = c.window_frames();
        let bins = n_fft / 2 + 1;
        // Sample `i` of the reflect-padded window (the window is `x` then zeros up to `total`).
        let at = |i: usize| -> f64 {
            let j = i as i64 - pad as i64;
            let idx = if j < 0 {
                -j
            } else if j >= total as i64 {
                2 * (total as i64 - 1) - j
            } else {
                j
            };
            x.get(idx as usize).map_or(0.0, |&v| v as f64)
        };
        // Frames past this one only see the silence after the audio (reflect padding at the
        // end mirrors that silence unless the audio fills the window).
        let live = if x.len() + pad >= total { frames } else { ((x.len() + pad).div_ceil(hop) + 1).min(frames) };
        let mut log_spec = vec![f64::NEG_INFINITY; c.n_mels * frames];
        let mut buf = vec![Complex::new(0.0, 0.0); n_fft];
        let mut power = vec![0.0f64; bins];
        for f in 0..live {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = Complex::new(at(f * hop + k) * self.window[k], 0.0);
            }
            self.fft.process(&mut buf);
            for (p, b) in power.iter_mut().zip(&buf) {
                *p = b.norm_sqr();
            }
            for (m, filt) in self.filters.iter().enumerate() {
                let e: f64 = filt.iter().zip(&power).map(|(w, p)| w * p).sum();
                log_spec[m * frames + f] = e.max(1e-10).log10();
            }
        }
        // Silent frames: power 0, clamped to 1e-10.
        for m in 0..c.n_mels {
            log_spec[m * frames + live..(m + 1) * frames].fill(-10.0);
        }
        let max = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        log_spec.iter().map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32).collect()
    }
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
    fn reads_preprocessor_config() {
        let p = serde_json::json!({"feature_size": 128, "n_fft": 400, "hop_length": 160, "sampling_rate": 16000, "chunk_length": 30});
        assert_eq!(MelConfig::from_preprocessor(Some(&p), 128).unwrap(), MelConfig::whisper(128));
        assert!(MelConfig::from_preprocessor(Some(&p), 80).unwrap_err().contains("128 mel bins"));
        assert_eq!(MelConfig::from_preprocessor(None, 80).unwrap().window_frames(), 3000);
    }
}
