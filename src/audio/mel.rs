//! The slaney mel filterbank Whisper's features use (librosa's `filters.mel` with
//! `htk=False, norm="slaney"`, transformers' `mel_filter_bank`), computed in float64: triangles
//! centred on points evenly spaced on the slaney mel scale (linear below 1 kHz, logarithmic
//! above) between 0 Hz and the Nyquist frequency, each scaled to equal area.

/// Hertz to slaney mels.
pub fn hz_to_mel(hz: f64) -> f64 {
    let (min_log_hz, min_log_mel) = (1000.0, 15.0);
    let logstep = 27.0 / 6.4f64.ln();
    if hz >= min_log_hz { min_log_mel + (hz / min_log_hz).ln() * logstep } else { 3.0 * hz / 200.0 }
}

/// Slaney mels to hertz.
pub fn mel_to_hz(mel: f64) -> f64 {
    let (min_log_hz, min_log_mel) = (1000.0, 15.0);
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { min_log_hz * (logstep * (mel - min_log_mel)).exp() } else { 200.0 * mel / 3.0 }
}

/// The filterbank as `[n_mels][n_fft / 2 + 1]` weights (mel-major), from 0 Hz to
/// `sample_rate / 2`.
pub fn filterbank(n_mels: usize, n_fft: usize, sample_rate: u32) -> Vec<Vec<f64>> {
    let bins = n_fft / 2 + 1;
    let nyquist = (sample_rate / 2) as f64;
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    // n_mels + 2 edge frequencies: filter m rises from edge m to m+1 and falls to m+2.
    let edges: Vec<f64> =
        (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let fft_hz: Vec<f64> = (0..bins).map(|k| nyquist * k as f64 / (bins - 1) as f64).collect();
    (0..n_mels)
        .map(|m| {
            let (left, center, right) = (edges[m], edges[m + 1], edges[m + 2]);
            let norm = 2.0 / (right - left);
            fft_hz
                .iter()
                .map(|&f| {
                    let down = (f - left) / (center - left);
                    let up = (right - f) / (right - center);
                    down.min(up).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_linear_then_logarithmic() {
        assert_eq!(hz_to_mel(200.0), 3.0);
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        for hz in [0.0, 440.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    #[test]
    fn filters_cover_the_band_with_equal_area() {
        let fb = filterbank(80, 400, 16000);
        assert_eq!((fb.len(), fb[0].len()), (80, 201));
        // Every filter has some weight, none on bins outside its triangle.
        assert!(fb.iter().all(|f| f.iter().any(|&w| w > 0.0)));
        assert_eq!(fb[0][3..].iter().filter(|&&w| w > 0.0).count(), 0);
        let fb128 = filterbank(128, 400, 16000);
        assert_eq!(fb128.len(), 128);
    }
}
