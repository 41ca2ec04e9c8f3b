//! Images for the vision models: from the bytes of an image content part to a model's
//! pixel input.
//!
//! - `decode`: PNG, JPEG, WebP and GIF (its first frame) → 8-bit RGB, transparent pixels
//!   laid on white, as transformers' `convert_to_rgb` does before every image processor;
//! - `resize`: antialiased bicubic resampling of 8-bit images in fixed point, the
//!   arithmetic torch uses for uint8 images (what transformers' default image processors
//!   run), so resized pixels are equal, not merely close;
//! - `qwen2_vl`: Qwen2-VL's image processor (smart resize to multiples of 28 within the
//!   pixel bounds, normalisation, 14-pixel patches in 2x2 merge order, the grid sizes).
//!
//! Everything here is plain Rust on the calling thread (no libtorch), so a media stage's
//! worker threads never start a second OpenMP pool beside the engine's.

pub mod decode;
pub mod qwen2_vl;
pub mod resize;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`[r, g, b, r, g, b, …]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3, "an RGB image of {width}x{height} needs {} bytes", width * height * 3);
        RgbImage { width, height, data }
    }
}

/// What can be wrong with an image a client sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the image is in a format that is not supported ({0}); send PNG, JPEG, WebP or GIF")]
    UnsupportedFormat(String),
    #[error("the image could not be decoded (broken or truncated {format}): {detail}")]
    Broken { format: &'static str, detail: String },
    #[error("the image is {width}x{height} pixels, more than the {max} pixels allowed")]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("the image is {width}x{height}: its aspect ratio must be at most 200")]
    AspectRatio { width: usize, height: usize },
    #[error("the image is empty (0 pixels wide or high)")]
    Empty,
}
