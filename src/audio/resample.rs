//! Sample-rate conversion: a windowed-sinc (Kaiser) low-pass evaluated at each output
//! instant, with the filter ffmpeg's resampler uses by default (32 taps at unity, cutoff
//! 0.97 of the lower Nyquist frequency, Kaiser β = 9, normalised to unit gain per phase).
//!
//! Why our own rather than a crate: faster-whisper (through PyAV) and openai-whisper
//! (through the ffmpeg command) both resample with ffmpeg's filter, so using the same design
//! keeps our features close to the reference implementations'; the whole of it is the
//! filter formula and one loop, where a resampling crate brings a dependency tree and an
//! API built for streaming. Rates with a small rational ratio (every common one) use a
//! table of the filter's phases; others compute taps per output sample.

/// ffmpeg's defaults: taps at unity ratio, cutoff as a fraction of Nyquist, Kaiser β.
const FILTER_SIZE: f64 = 32.0;
const CUTOFF: f64 = 0.97;
const KAISER_BETA: f64 = 9.0;
/// Largest number of phases tabulated (11025 → 16000 needs 640).
const MAX_PHASES: u64 = 4096;

/// `samples` at `from` Hz resampled to `to` Hz (the output instant `n` is input instant
/// `n · from / to`; beyond the ends the input is silence).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || samples.is_empty() || from == 0 || to == 0 {
        return samples.to_vec();
    }
    let g = gcd(from as u64, to as u64);
    let (up, down) = (to as u64 / g, from as u64 / g);
    let filter = Filter::new(from, to);
    let out_len = (samples.len() as u64 * up).div_ceil(down) as usize;
    let table = (up <= MAX_PHASES).then(|| (0..up).map(|p| filter.taps(p as f64 / up as f64)).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len as u64 {
        // t = n · down / up = base + phase / up.
        let pos = n * down;
        let (base, phase) = ((pos / up) as i64, pos % up);
        let computed;
        let taps: &[f64] = match &table {
            Some(t) => &t[phase as usize],
            None => {
                computed = filter.taps(phase as f64 / up as f64);
                &computed
            }
        };
        let first = base - filter.center;
        let mut acc = 0.0f64;
        for (i, &h) in taps.iter().enumerate() {
            let k = first + i as i64;
            if k >= 0 && (k as usize) < samples.len() {
                acc += h * samples[k as usize] as f64;
            }
        }
        out.push(acc as f32);
    }
    out
}

struct Filter {
    /// Cutoff relative to the input's Nyquist frequency (≤ 1).
    factor: f64,
    taps: usize,
    /// Taps before the one at the output instant's integer part.
    center: i64,
}

impl Filter {
    fn new(from: u32, to: u32) -> Self {
        let factor = (to as f64 * CUTOFF / from as f64).min(1.0);
        let taps = ((FILTER_SIZE / factor).ceil() as usize).max(1);
        Filter { factor, taps, center: ((taps - 1) / 2) as i64 }
    }

    /// The taps for an output instant `frac` (in [0, 1)) past an input sample, summing to 1.
    fn taps(&self, frac: f64) -> Vec<f64> {
        let mut h: Vec<f64> = (0..self.taps)
            .map(|i| {
                // Distance in input samples from the output instant to tap i.
                let d = (i as i64 - self.center) as f64 - frac;
                let x = std::f64::consts::PI * d * self.factor;
                let sinc = if x == 0.0 { 1.0 } else { x.sin() / x };
                let w = 2.0 * d / self.taps as f64;
                sinc * bessel_i0(KAISER_BETA * (1.0 - w * w).max(0.0).sqrt())
            })
            .collect();
        let norm: f64 = h.iter().sum();
        h.iter_mut().for_each(|x| *x /= norm);
        h
    }
}

/// The modified Bessel function of the first kind, order 0 (its power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..200 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, seconds: f64) -> Vec<f32> {
        (0..(rate as f64 * seconds) as usize).map(|i| (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin() as f32 * 0.5).collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn a_tone_keeps_its_shape_at_common_rates() {
        for from in [8000, 11025, 22050, 24000, 32000, 44100, 48000, 12345] {
            let x = tone(from, 440.0, 0.5);
            let y = resample(&x, from, 16000);
            assert_eq!(y.len(), (x.len() as u64 * 16000).div_ceil(from as u64) as usize);
            let want = tone(16000, 440.0, 0.5);
            // Away from the edges, where the filter reads past the ends.
            let err = (200..y.len() - 200).map(|i| (y[i] - want[i]).abs()).fold(0.0f32, f32::max);
            assert!(err < 2e-3, "{from} Hz: largest error {err}");
        }
    }

    #[test]
    fn frequencies_above_the_new_nyquist_are_removed() {
        let x = tone(44100, 10_000.0, 0.5);
        let y = resample(&x, 44100, 16000);
        let ratio = rms(&y[200..y.len() - 200]) / rms(&x);
        assert!(ratio < 1e-3, "a 10 kHz tone kept {ratio} of its level");
        // And a passband tone keeps its level.
        let x = tone(48000, 6000.0, 0.5);
        let y = resample(&x, 48000, 16000);
        let ratio = rms(&y[200..y.len() - 200]) / rms(&x);
        assert!((ratio - 1.0).abs() < 0.01, "a 6 kHz tone changed level by {ratio}");
    }

    #[test]
    fn same_rate_is_a_copy_and_dc_stays() {
        let x = vec![0.25f32; 1000];
        assert_eq!(resample(&x, 16000, 16000), x);
        let y = resample(&x, 22050, 16000);
        assert!(y[100..y.len() - 100].iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}
