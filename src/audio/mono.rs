//! Channels mixed down to one: the mean of each frame's samples (what ffmpeg's default
//! downmix, librosa's `to_mono` and torchaudio's `mean(dim=0)` do for stereo).

/// Appends the mono mix of `interleaved` samples of `channels` channels to `out`.
pub fn mix_interleaved(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    match channels {
        0 => {}
        1 => out.extend_from_slice(interleaved),
        c => {
            let scale = 1.0 / c as f32;
            out.extend(interleaved.chunks_exact(c).map(|frame| frame.iter().sum::<f32>() * scale));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_each_frame() {
        let mut out = vec![9.0];
        mix_interleaved(&[1.0, 3.0, -1.0, 1.0, 0.5, 0.5], 2, &mut out);
        assert_eq!(out, [9.0, 2.0, 0.0, 0.5]);
        let mut mono = Vec::new();
        mix_interleaved(&[0.25, -0.5], 1, &mut mono);
        assert_eq!(mono, [0.25, -0.5]);
    }
}
