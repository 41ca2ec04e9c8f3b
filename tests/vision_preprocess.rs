//! Image decoding and Qwen2-VL's image processor against transformers
//! (tests/fixtures/reference/tiny_qwen2_vl.json and qwen2_vl_pixels.u8, made by
//! qwen2_vl_reference.py there): each test image decodes to the RGB pixels transformers
//! sees, and preprocesses to the same grid and pixel values within 1e-5.
//!
//! JPEG is the exception: Pillow decodes it with libjpeg-turbo and sluice with a pure-Rust
//! decoder whose IDCT and chroma upsampling round differently, so a JPEG's decoded pixels
//! (and hence its pixel values) differ by a few levels; its grid is still checked exactly
//! and its pixel values within a bound that a wrong resize or patch order would break.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice::vision::decode::{decode, DEFAULT_MAX_PIXELS};
use sluice::vision::qwen2_vl::{preprocess, ProcessorConfig};
use sluice::vision::ImageError;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/tiny_qwen2_vl.json")).unwrap()).unwrap()
}

fn config() -> ProcessorConfig {
    ProcessorConfig::from_json(&std::fs::read_to_string(fixtures().join("tiny-qwen2-vl/preprocessor_config.json")).unwrap())
        .unwrap()
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn level_tables_equal_transformers_normalisation() {
    let want = reference()["pixel_tables"].clone();
    let got = config().level_tables();
    for c in 0..3 {
        for v in 0..256 {
            let w = want[c][v].as_f64().unwrap() as f32;
            assert_eq!(got[c][v], w, "channel {c}, level {v}");
        }
    }
}

#[test]
fn decoded_pixels_equal_what_transformers_sees() {
    for item in reference()["preprocess"].as_array().unwrap() {
        let name = item["image"].as_str().unwrap();
        let rgb = decode(&image(name), DEFAULT_MAX_PIXELS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let size = [item["size"][0].as_u64().unwrap() as usize, item["size"][1].as_u64().unwrap() as usize];
        assert_eq!([rgb.height, rgb.width], size, "{name}: size");
        if !name.ends_with(".jpg") {
            assert_eq!(hex(&rgb.data), item["decoded_rgb_sha256"].as_str().unwrap(), "{name}: decoded RGB differs");
        }
    }
}

#[test]
fn pixel_values_equal_the_image_processor() {
    let reference = reference();
    let tables = &reference["pixel_tables"];
    let blob = std::fs::read(fixtures().join("reference/qwen2_vl_pixels.u8")).unwrap();
    let base = config();
    for item in reference["preprocess"].as_array().unwrap() {
        let name = item["image"].as_str().unwrap();
        let kw = &item["kwargs"];
        let cfg = base.with_pixel_bounds(kw["min_pixels"].as_u64(), kw["max_pixels"].as_u64()).unwrap();
        let rgb = decode(&image(name), DEFAULT_MAX_PIXELS).unwrap();
        let got = preprocess(&rgb, &cfg).unwrap();
        let grid: Vec<usize> = item["grid_thw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(got.grid_thw.to_vec(), grid, "{name} {kw}: grid");
        assert_eq!(got.patch_width, item["patch_width"].as_u64().unwrap() as usize);
        let patches = item["num_patches"].as_u64().unwrap() as usize;
        assert_eq!(got.pixel_values.len(), patches * got.patch_width, "{name}: pixel count");
        assert_eq!(got.num_tokens, patches / 4);
        let offset = item["offset"].as_u64().unwrap() as usize;
        let levels = &blob[offset..offset + item["length"].as_u64().unwrap() as usize];
        // Levels are stored [patch, channel, temporal, pixel]: the channel is the position's
        // third within each patch row.
        let per_channel = got.patch_width / 3;
        let (mut worst, mut total) = (0f32, 0f64);
        for (i, (&level, &value)) in levels.iter().zip(&got.pixel_values).enumerate() {
            let channel = (i % got.patch_width) / per_channel;
            let want = tables[channel][level as usize].as_f64().unwrap() as f32;
            worst = worst.max((want - value).abs());
            total += (want - value).abs() as f64;
        }
        let mean = total / levels.len() as f64;
        eprintln!("{name} {kw}: largest difference {worst}, mean {mean}");
        if name.ends_with(".jpg") {
            // One level is about 0.015 after normalisation.
            assert!(worst < 0.2 && mean < 0.02, "{name} {kw}: largest difference {worst}, mean {mean}");
        } else {
            assert!(worst <= 1e-5, "{name} {kw}: largest difference {worst}");
        }
    }
}

#[test]
fn other_formats_and_broken_files_are_refused_clearly() {
    let err = decode(&image("tiny_20x20.bmp"), DEFAULT_MAX_PIXELS).unwrap_err();
    assert_eq!(err, ImageError::UnsupportedFormat("BMP".into()));
    assert!(err.to_string().contains("PNG, JPEG, WebP or GIF"), "{err}");
    let png = image("gradient_64x48.png");
    let err = decode(&png[..png.len() / 2], DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(err, ImageError::Broken { format: "PNG", .. }), "{err:?}");
    let jpeg = image("photo_60x90.jpg");
    assert!(matches!(decode(&jpeg[..jpeg.len() / 3], DEFAULT_MAX_PIXELS), Err(ImageError::Broken { format: "JPEG", .. })));
    let err = decode(&png, 64 * 47).unwrap_err();
    assert_eq!(err, ImageError::TooLarge { width: 64, height: 48, max: 64 * 47 });
    // The lossy WebP decodes to its size (no reference for libwebp's exact pixels).
    let webp = decode(&image("lossy_50x70.webp"), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!((webp.width, webp.height), (50, 70));
}
