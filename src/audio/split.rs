//! Long audio cut into windows the model can take, at quiet points, as vLLM cuts it: each
//! window is at most `max_samples` long; where one must end, the last `overlap` samples
//! before that limit are searched, in steps of `energy_window` samples, for the window with
//! the least RMS energy, and the cut falls at its start. Windows follow each other without
//! gaps or overlap, so their texts join in order. vLLM's defaults: 30 s, 1 s, 1600 samples.

use std::ops::Range;

#[derive(Debug, Clone, Copy)]
pub struct SplitConfig {
    pub max_samples: usize,
    pub overlap: usize,
    pub energy_window: usize,
}

impl SplitConfig {
    /// vLLM's defaults at `rate` Hz: 30 s windows, cuts searched in the last second, 1600
    /// samples (0.1 s at 16 kHz) at a time.
    pub fn vllm(rate: u32) -> Self {
        SplitConfig { max_samples: 30 * rate as usize, overlap: rate as usize, energy_window: 1600 }
    }
}

/// The sample ranges of the windows, covering `samples` in order.
pub fn split(samples: &[f32], cfg: SplitConfig) -> Vec<Range<usize>> {
    let max = cfg.max_samples.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < samples.len() {
        if samples.len() - start <= max {
            out.push(start..samples.len());
            break;
        }
        let end = start + max;
        let search = end - cfg.overlap.min(max - 1)..end;
        let cut = quietest(samples, search, cfg.energy_window).filter(|&c| c > start).unwrap_or(end);
        out.push(start..cut);
        start = cut;
    }
    out
}

/// The start of the quietest `window`-long stretch starting in `range` at steps of `window`
/// (the first of equals); None when not even one fits.
fn quietest(samples: &[f32], range: Range<usize>, window: usize) -> Option<usize> {
    let window = window.max(1);
    let mut best: Option<(usize, f64)> = None;
    let mut i = range.start;
    while i + window < range.end {
        let e = (samples[i..i + window].iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / window as f64).sqrt();
        if best.is_none_or(|(_, b)| e < b) {
            best = Some((i, e));
        }
        i += window;
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_audio_is_one_window() {
        let x = vec![0.1f32; 1000];
        assert_eq!(split(&x, SplitConfig { max_samples: 1000, overlap: 100, energy_window: 10 }), vec![0..1000]);
        assert!(split(&[], SplitConfig::vllm(16000)).is_empty());
    }

    #[test]
    fn cuts_fall_at_the_quiet_point_before_each_limit() {
        // 2.5 windows of noise-like signal with a silent stretch at 930..950.
        let mut x: Vec<f32> = (0..2500).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.4).collect();
        x[930..950].fill(0.0);
        let cfg = SplitConfig { max_samples: 1000, overlap: 100, energy_window: 10 };
        let w = split(&x, cfg);
        assert_eq!(w[0], 0..930);
        assert!(w.windows(2).all(|p| p[0].end == p[1].start) && w.last().unwrap().end == 2500);
        assert!(w.iter().all(|r| r.len() <= 1000));
    }
}
