//! The audio front end against its references (tests/fixtures/audio, made by
//! make_audio_fixtures.py there): log-mel features equal transformers'
//! `WhisperFeatureExtractor` within 1e-4 on the same 16 kHz samples (and faster-whisper's,
//! with its padding), and every supported container/codec decodes to the clip it was
//! encoded from.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::audio::features::{FeatureExtractor, MelConfig, Padding};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio").join(rel)
}

fn samples(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let ext = name.rsplit('.').next();
    sluice::audio::load(bytes, ext, 60).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn log_mel_matches_whisper_feature_extractor() {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(fixture("mel.json")).unwrap()).unwrap();
    let fe = FeatureExtractor::new(MelConfig::whisper(80));
    for (name, m) in meta["clips"].as_object().unwrap() {
        let x = samples(&format!("{name}.wav"));
        assert_eq!(x.len() as u64, m["samples"].as_u64().unwrap(), "{name}: sample count");
        let got = fe.extract(&x);
        let frames = m["frames"].as_u64().unwrap() as usize;
        let raw = std::fs::read(fixture(&format!("{name}.mel.f32"))).unwrap();
        let want: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(want.len(), 80 * frames);
        let mut worst = 0.0f32;
        for mel in 0..80 {
            for f in 0..frames {
                worst = worst.max((got[mel * 3000 + f] - want[mel * frames + f]).abs());
            }
            if let Some(floor) = m["floor"].as_f64() {
                let rest = &got[mel * 3000 + frames..(mel + 1) * 3000];
                assert!(rest.iter().all(|&v| (v as f64 - floor).abs() < 1e-4), "{name}: mel {mel} after the audio");
            }
        }
        assert!(worst < 1e-4, "{name}: largest difference {worst}");
    }
}

#[test]
fn feature_padding_matches_faster_whisper() {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(fixture("mel.json")).unwrap()).unwrap();
    let frames = meta["faster_whisper"]["chirp"]["frames"].as_u64().unwrap() as usize;
    let raw = std::fs::read(fixture("chirp.fw.mel.f32")).unwrap();
    let want: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let got = FeatureExtractor::new(MelConfig::whisper(80)).extract_padded(&samples("chirp.wav"), Padding::Features);
    let mut worst = 0.0f32;
    for mel in 0..80 {
        for f in 0..frames {
            worst = worst.max((got[mel * 3000 + f] - want[mel * frames + f]).abs());
        }
        assert!(got[mel * 3000 + frames..(mel + 1) * 3000].iter().all(|&v| v == 0.0), "mel {mel}: not zero after the audio");
    }
    assert!(worst < 1e-4, "largest difference {worst}");
}

/// Normalised cross-correlation of `a` against `b` at the best lag within ±`max_lag`.
fn best_correlation(a: &[f32], b: &[f32], max_lag: i64) -> (f64, i64) {
    let mut best = (f64::MIN, 0);
    for lag in -max_lag..=max_lag {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &y) in b.iter().enumerate() {
            let j = i as i64 + lag;
            if j < 0 || j as usize >= a.len() {
                continue;
            }
            let x = a[j as usize] as f64;
            ab += x * y as f64;
            aa += x * x;
            bb += (y as f64) * (y as f64);
        }
        let c = ab / (aa.sqrt() * bb.sqrt()).max(1e-12);
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

#[test]
fn every_container_decodes_to_the_clip() {
    let original = samples("speech2.wav");
    // Lossless at another rate: our resampler brings it back within the passband's noise.
    for (file, min_corr) in [("speech2.flac", 0.999), ("speech2.mp3", 0.98), ("speech2.ogg", 0.95), ("speech2.m4a", 0.95)] {
        let x = samples(file);
        let seconds = x.len() as f64 / 16000.0;
        let want = original.len() as f64 / 16000.0;
        assert!((seconds - want).abs() < 0.1, "{file}: {seconds} s, the clip is {want} s");
        let (corr, lag) = best_correlation(&x, &original, 2500);
        assert!(corr > min_corr, "{file}: correlation {corr} at lag {lag}");
    }
}

#[test]
fn resampled_features_stay_close() {
    // The flac is the clip upsampled to 22.05 kHz by ffmpeg; brought back by our resampler,
    // its features stay within a small distance of the original's.
    let fe = FeatureExtractor::new(MelConfig::whisper(80));
    let a = fe.extract(&samples("speech2.wav"));
    let b = fe.extract(&samples("speech2.flac"));
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean < 0.01, "mean feature difference {mean}");
}

