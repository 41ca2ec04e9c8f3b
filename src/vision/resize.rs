//! Antialiased bicubic resampling of 8-bit RGB images, in the fixed point torch uses for
//! uint8 tensors (`interpolate(mode="bicubic", antialias=True)`, which torchvision's
//! `resize` and so transformers' default image processors call): separable, horizontal
//! pass first, each pass rounding back to 8 bits; the filter is Keys' cubic (a = -0.5)
//! stretched by the scale when shrinking; weights are normalised in f64 and turned into
//! 16-bit integers with as many fraction bits as the largest weight allows.

use super::RgbImage;

/// Resizes `image` to `width` x `height`.
pub fn resize_bicubic(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    assert!(width > 0 && height > 0, "resize to an empty image");
    let mut current = image.clone();
    if width != current.width {
        current = horizontal(&current, width);
    }
    if height != current.height {
        current = vertical(&current, height);
    }
    current
}

/// For each output position along one axis: the first input position it reads and the
/// integer weights of the inputs from there; with the number of fraction bits.
struct Taps {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
    precision: u32,
}

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

fn taps(input: usize, output: usize) -> Taps {
    let scale = input as f64 / output as f64;
    let (support, invscale) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    let mut starts = Vec::with_capacity(output);
    let mut float_weights = Vec::with_capacity(output);
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        let start = ((center - support + 0.5) as i64).max(0) as usize;
        let end = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let mut w: Vec<f64> = (start..end).map(|j| cubic((j as f64 - center + 0.5) * invscale)).collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        starts.push(start);
        float_weights.push(w);
    }
    let w_max = float_weights.iter().flatten().fold(0.0f64, |m, &v| m.max(v));
    let mut precision = 0u32;
    while precision < 22 {
        if (0.5 + w_max * (1u32 << (precision + 1)) as f64) as i32 >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let unit = (1u32 << precision) as f64;
    let weights = float_weights
        .iter()
        .map(|w| w.iter().map(|&v| if v < 0.0 { (-0.5 + v * unit) as i32 } else { (0.5 + v * unit) as i32 }).collect())
        .collect();
    Taps { starts, weights, precision }
}

fn round_back(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

fn horizontal(image: &RgbImage, width: usize) -> RgbImage {
    let t = taps(image.width, width);
    let half = 1i32 << t.precision.saturating_sub(1);
    let mut out = vec![0u8; width * image.height * 3];
    for y in 0..image.height {
        let row = &image.data[y * image.width * 3..(y + 1) * image.width * 3];
        for x in 0..width {
            let mut acc = [half; 3];
            for (k, &w) in t.weights[x].iter().enumerate() {
                let px = &row[(t.starts[x] + k) * 3..][..3];
                for c in 0..3 {
                    acc[c] += px[c] as i32 * w;
                }
            }
            for c in 0..3 {
                out[(y * width + x) * 3 + c] = round_back(acc[c], t.precision);
            }
        }
    }
    RgbImage::new(width, image.height, out)
}

fn vertical(image: &RgbImage, height: usize) -> RgbImage {
    let t = taps(image.height, height);
    let half = 1i32 << t.precision.saturating_sub(1);
    let stride = image.width * 3;
    let mut out = vec![0u8; stride * height];
    let mut acc = vec![0i32; stride];
    for y in 0..height {
        acc.iter_mut().for_each(|a| *a = half);
        for (k, &w) in t.weights[y].iter().enumerate() {
            let row = &image.data[(t.starts[y] + k) * stride..][..stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * w;
            }
        }
        for (o, &a) in out[y * stride..(y + 1) * stride].iter_mut().zip(&acc) {
            *o = round_back(a, t.precision);
        }
    }
    RgbImage::new(image.width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_stays_flat_at_any_size() {
        let image = RgbImage::new(7, 5, [10u8, 200, 255].repeat(35));
        for (w, h) in [(28, 28), (3, 2), (7, 11), (56, 1)] {
            let out = resize_bicubic(&image, w, h);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.data.chunks(3).all(|p| p == [10, 200, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn the_same_size_is_the_same_image() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let image = RgbImage::new(4, 3, data);
        assert_eq!(resize_bicubic(&image, 4, 3), image);
    }
}
