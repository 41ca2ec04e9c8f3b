//! Image bytes → 8-bit RGB, as transformers sees an image: the first frame of a GIF, gray
//! replicated to three channels, and any alpha composited onto white with Pillow's integer
//! arithmetic (transformers' `convert_to_rgb` is `Image.alpha_composite` over a white
//! background, then the alpha dropped). Images that are RGB already are taken as decoded.

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use super::{ImageError, RgbImage};

/// The largest image (in pixels) decoded by default; larger ones are refused before their
/// pixels are allocated.
pub const DEFAULT_MAX_PIXELS: u64 = 8192 * 8192;

/// Decodes `bytes` (PNG, JPEG, WebP or GIF, told apart by their content) into RGB.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnsupportedFormat(sniff(bytes)))?;
    let name = match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        other => return Err(ImageError::UnsupportedFormat(format!("{other:?}").to_uppercase())),
    };
    let broken = |e: image::ImageError| ImageError::Broken { format: name, detail: e.to_string() };
    if format == ImageFormat::Jpeg && !ends_with_eoi(bytes) {
        // The JPEG decoder fills a cut-off scan with grey; Pillow refuses such a file.
        return Err(ImageError::Broken { format: name, detail: "the data ends before the end-of-image marker".into() });
    }
    let reader = || ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = reader().into_dimensions().map_err(broken)?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageError::TooLarge { width, height, max: max_pixels });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some((width as u64 * height as u64 * 16).max(1 << 20));
    let mut reader = reader();
    reader.limits(limits);
    let decoded = reader.decode().map_err(broken)?;
    Ok(to_rgb(decoded))
}

/// Whether a JPEG stream carries its end-of-image marker (FF D9), allowing for padding
/// some encoders write after it.
fn ends_with_eoi(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xff, 0xd9])
}

/// The format's name from its first bytes, for the error message of one not served.
fn sniff(bytes: &[u8]) -> String {
    match bytes {
        [b'B', b'M', ..] => "BMP".into(),
        [0x49, 0x49, 0x2a, 0, ..] | [0x4d, 0x4d, 0, 0x2a, ..] => "TIFF".into(),
        [0, 0, 1, 0, ..] => "ICO".into(),
        _ if bytes.len() > 12 && &bytes[4..8] == b"ftyp" => "HEIF/AVIF".into(),
        _ if bytes.is_empty() => "no bytes".into(),
        _ => "unrecognised".into(),
    }
}

fn to_rgb(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let has_alpha = image.color().has_alpha();
    let data = if has_alpha {
        image.to_rgba8().pixels().flat_map(|p| on_white(p.0)).collect()
    } else {
        image.to_rgb8().into_raw()
    };
    RgbImage::new(width, height, data)
}

/// One RGBA pixel composited over opaque white, in Pillow's fixed point (7 extra bits,
/// divisions by 255 rounded by its shift trick), so the result is Pillow's to the bit.
fn on_white([r, g, b, a]: [u8; 4]) -> [u8; 3] {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |v: u32| ((v >> 8) + v) >> 8;
    let (sa, da) = (a as u32, 255u32);
    let blend = da * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let mix = |s: u8| {
        let t = s as u32 * coef1 + 255 * coef2;
        (shift_div_255(t + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
    };
    [mix(r), mix(g), mix(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_pixels_keep_their_colour_and_clear_ones_turn_white() {
        for v in [0u8, 1, 77, 128, 254, 255] {
            assert_eq!(on_white([v, v, v, 255]), [v, v, v]);
            assert_eq!(on_white([v, 0, 255, 0]), [255, 255, 255]);
        }
    }

    #[test]
    fn bytes_that_are_no_image_are_refused() {
        assert!(matches!(decode(b"hello", DEFAULT_MAX_PIXELS), Err(ImageError::UnsupportedFormat(_))));
        assert!(matches!(decode(b"BM\0\0\0\0", DEFAULT_MAX_PIXELS), Err(ImageError::UnsupportedFormat(f)) if f == "BMP"));
        let png_header = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(matches!(decode(png_header, DEFAULT_MAX_PIXELS), Err(ImageError::Broken { format: "PNG", .. })));
    }
}
