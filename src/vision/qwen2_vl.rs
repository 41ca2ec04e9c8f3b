//! Qwen2-VL's image processor (transformers' `Qwen2VLImageProcessor`): the image resized
//! (antialiased bicubic) to the nearest size whose sides are multiples of
//! `patch_size * merge_size` and whose area lies within `[min_pixels, max_pixels]`;
//! rescaled and normalised per channel; cut into `patch_size` squares, each repeated
//! `temporal_patch_size` times (a still image is a one-frame video), listed so that each
//! `merge_size x merge_size` group of neighbours is consecutive (the order the vision
//! tower's patch merger folds them in). The grid `[t, h, w]` counts patches; the language
//! model sees `t * h * w / merge_size²` placeholder tokens per image.

use serde::Deserialize;

use super::resize::resize_bicubic;
use super::{ImageError, RgbImage};

/// The settings of `preprocessor_config.json` the processor uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
}

/// Why a `preprocessor_config.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("preprocessor_config.json is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("preprocessor_config.json: {0}")]
    Unsupported(String),
}

#[derive(Deserialize)]
struct RawSize {
    shortest_edge: Option<u64>,
    longest_edge: Option<u64>,
}

#[derive(Deserialize)]
struct Raw {
    min_pixels: Option<u64>,
    max_pixels: Option<u64>,
    size: Option<RawSize>,
    #[serde(default = "default_patch")]
    patch_size: usize,
    #[serde(default = "default_temporal")]
    temporal_patch_size: usize,
    #[serde(default = "default_merge")]
    merge_size: usize,
    #[serde(default = "default_mean")]
    image_mean: [f64; 3],
    #[serde(default = "default_std")]
    image_std: [f64; 3],
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default = "bicubic")]
    resample: u32,
}

fn default_patch() -> usize {
    14
}
fn default_temporal() -> usize {
    2
}
fn default_merge() -> usize {
    2
}
fn default_mean() -> [f64; 3] {
    [0.48145466, 0.4578275, 0.40821073]
}
fn default_std() -> [f64; 3] {
    [0.26862954, 0.26130258, 0.27577711]
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}

impl ProcessorConfig {
    /// Qwen2-VL's defaults: 56² to 28² x 1280 pixels, 14-pixel patches, 2x2 merging.
    pub fn qwen2_vl() -> Self {
        ProcessorConfig {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: default_patch(),
            temporal_patch_size: default_temporal(),
            merge_size: default_merge(),
            image_mean: default_mean(),
            image_std: default_std(),
            rescale_factor: default_rescale(),
        }
    }

    /// Reads a checkpoint's `preprocessor_config.json` (pixel bounds as `min_pixels` /
    /// `max_pixels` or as `size.shortest_edge` / `size.longest_edge`).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = serde_json::from_str(text)?;
        if !(raw.do_resize && raw.do_rescale && raw.do_normalize) {
            return Err(ConfigError::Unsupported("do_resize, do_rescale and do_normalize must be true".into()));
        }
        if raw.resample != 3 {
            return Err(ConfigError::Unsupported(format!("resample {} (only 3, bicubic, is supported)", raw.resample)));
        }
        let size = raw.size.as_ref();
        let defaults = Self::qwen2_vl();
        let cfg = ProcessorConfig {
            min_pixels: raw.min_pixels.or(size.and_then(|s| s.shortest_edge)).unwrap_or(defaults.min_pixels),
            max_pixels: raw.max_pixels.or(size.and_then(|s| s.longest_edge)).unwrap_or(defaults.max_pixels),
            patch_size: raw.patch_size,
            temporal_patch_size: raw.temporal_patch_size,
            merge_size: raw.merge_size,
            image_mean: raw.image_mean,
            image_std: raw.image_std,
            rescale_factor: raw.rescale_factor,
        };
        cfg.check().map_err(ConfigError::Unsupported)?;
        Ok(cfg)
    }

    /// The same settings with other pixel bounds (a request's `mm_processor_kwargs`).
    pub fn with_pixel_bounds(&self, min_pixels: Option<u64>, max_pixels: Option<u64>) -> Result<Self, String> {
        let cfg = ProcessorConfig {
            min_pixels: min_pixels.unwrap_or(self.min_pixels),
            max_pixels: max_pixels.unwrap_or(self.max_pixels),
            ..self.clone()
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return Err("patch_size, merge_size and temporal_patch_size must be positive".into());
        }
        if self.image_std.iter().any(|&s| s <= 0.0) {
            return Err("image_std must be positive".into());
        }
        let factor = self.factor() as u64;
        if self.max_pixels < factor * factor {
            return Err(format!("max_pixels must be at least {} (one {factor}x{factor} block)", factor * factor));
        }
        if self.min_pixels > self.max_pixels {
            return Err(format!("min_pixels ({}) must not exceed max_pixels ({})", self.min_pixels, self.max_pixels));
        }
        Ok(())
    }

    /// The side every resized image is a multiple of: one merged group of patches.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// The float32 each 8-bit level of each channel becomes: transformers fuses rescale and
    /// normalisation into `(x - mean/rescale) / (std/rescale)`, with both in float32.
    pub fn level_tables(&self) -> [[f32; 256]; 3] {
        let inverse = (1.0 / self.rescale_factor) as f32;
        let mut tables = [[0f32; 256]; 3];
        for (c, table) in tables.iter_mut().enumerate() {
            let mean = self.image_mean[c] as f32 * inverse;
            let std = self.image_std[c] as f32 * inverse;
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 - mean) / std;
            }
        }
        tables
    }
}

/// The size (height, width) an image of `height` x `width` is resized to: each side a
/// multiple of `factor`, the area within the bounds, the aspect ratio kept as well as that
/// allows (transformers' `smart_resize`, Python's rounding of halves to even included).
pub fn smart_resize(height: usize, width: usize, factor: usize, min_pixels: u64, max_pixels: u64) -> Result<(usize, usize), ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::Empty);
    }
    if height.max(width) as f64 / height.min(width) as f64 > 200.0 {
        return Err(ImageError::AspectRatio { width, height });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// One image ready for the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePatches {
    /// `[patches, 3 * temporal_patch_size * patch_size²]`, row-major.
    pub pixel_values: Vec<f32>,
    /// Patches along time, height and width.
    pub grid_thw: [usize; 3],
    /// The length of one row of `pixel_values`.
    pub patch_width: usize,
    /// How many placeholder tokens stand for the image in the prompt.
    pub num_tokens: usize,
}

/// Preprocesses one RGB image as `Qwen2VLImageProcessor` does.
pub fn preprocess(image: &RgbImage, cfg: &ProcessorConfig) -> Result<ImagePatches, ImageError> {
    let (height, width) = smart_resize(image.height, image.width, cfg.factor(), cfg.min_pixels, cfg.max_pixels)?;
    let resized = if (height, width) == (image.height, image.width) {
        image.clone()
    } else {
        resize_bicubic(image, width, height)
    };
    let tables = cfg.level_tables();
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (grid_h, grid_w) = (height / p, width / p);
    let patch_width = 3 * t * p * p;
    let mut pixel_values = Vec::with_capacity(grid_h * grid_w * patch_width);
    for block_y in 0..grid_h / m {
        for block_x in 0..grid_w / m {
            for in_y in 0..m {
                for in_x in 0..m {
                    let (y0, x0) = ((block_y * m + in_y) * p, (block_x * m + in_x) * p);
                    for (c, table) in tables.iter().enumerate() {
                        for _ in 0..t {
                            for y in y0..y0 + p {
                                let row = &resized.data[(y * width + x0) * 3..][..p * 3];
                                pixel_values.extend(row.chunks_exact(3).map(|px| table[px[c] as usize]));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ImagePatches { pixel_values, grid_thw: [1, grid_h, grid_w], patch_width, num_tokens: grid_h * grid_w / (m * m) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_keeps_within_bounds_in_multiples_of_the_factor() {
        assert_eq!(smart_resize(48, 64, 28, 3136, 50176).unwrap(), (56, 56));
        assert_eq!(smart_resize(100, 150, 28, 3136, 28 * 28 * 8).unwrap(), (56, 84));
        // 42 / 28 = 1.5 rounds to even (2), 70 / 28 = 2.5 rounds to even (2).
        assert_eq!(smart_resize(42, 70, 28, 0, 1 << 30).unwrap(), (56, 56));
        assert_eq!(smart_resize(10, 10, 28, 3136, 50176).unwrap(), (56, 56));
        assert!(matches!(smart_resize(1, 300, 28, 3136, 50176), Err(ImageError::AspectRatio { .. })));
    }

    #[test]
    fn bounds_are_checked() {
        let cfg = ProcessorConfig::qwen2_vl();
        assert!(cfg.with_pixel_bounds(Some(100_000), Some(50_000)).is_err());
        assert!(cfg.with_pixel_bounds(None, Some(100)).is_err());
        assert_eq!(cfg.with_pixel_bounds(Some(784), None).unwrap().min_pixels, 784);
    }
}
