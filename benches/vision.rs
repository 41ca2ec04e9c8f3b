//! Images: what one image costs before the language model sees it.
//!
//!     cargo bench --bench vision
//!
//! - decode + preprocess (Qwen2-VL's processor, default pixel bounds) per image size: a
//!   synthetic photo-like image encoded as PNG and as JPEG, decoded and preprocessed on one
//!   thread (what a media stage worker does per image);
//! - the vision tower of the tiny test model (tests/fixtures/tiny-qwen2-vl) per image size,
//!   float32 on the CPU: the engine runs it once per image when it admits a request.
//!
//! Each figure is the median of `ROUNDS` runs after a warm-up; sizes are interleaved
//! round by round so that a change in the machine's load touches all of them alike.

use std::io::Cursor;
use std::time::{Duration, Instant};

use sluice::model::qwen2_vl::{ImageInput, config_from_hf, VisionTower};
use sluice::model::weights::SafetensorsWeights;
use sluice::vision::RgbImage;
use sluice::vision::qwen2_vl::{ProcessorConfig, preprocess};

const ROUNDS: usize = 15;
const SIZES: [(usize, usize); 4] = [(224, 224), (448, 336), (640, 480), (1280, 960)];

fn synthetic(width: usize, height: usize) -> RgbImage {
    let mut data = Vec::with_capacity(width * height * 3);
    let mut seed = 0x9e37_79b9u32;
    for y in 0..height {
        for x in 0..width {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let noise = (seed & 15) as usize;
            data.push(((x * 255 / width + noise) & 255) as u8);
            data.push(((y * 255 / height + noise) & 255) as u8);
            data.push((((x + y) * 128 / (width + height) + noise) & 255) as u8);
        }
    }
    RgbImage::new(width, height, data)
}

fn encoded(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone()).unwrap();
    let mut out = Cursor::new(Vec::new());
    buf.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    tch::set_num_threads(1);
    let cfg = ProcessorConfig::qwen2_vl();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen2-vl");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/config.json")).unwrap()).unwrap();
    let vision = config_from_hf(&config).unwrap().vision.unwrap();
    let weights = SafetensorsWeights::open_as(std::path::Path::new(dir), tch::Kind::Float).unwrap();
    let tower = VisionTower::load(vision, &weights, tch::Device::Cpu, tch::Kind::Float).unwrap();

    let inputs: Vec<_> = SIZES
        .iter()
        .map(|&(w, h)| {
            let img = synthetic(w, h);
            (encoded(&img, image::ImageFormat::Png), encoded(&img, image::ImageFormat::Jpeg))
        })
        .collect();
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; SIZES.len()];
    let mut patches = Vec::new();
    for round in 0..=ROUNDS {
        for (i, (png, jpeg)) in inputs.iter().enumerate() {
            let t0 = Instant::now();
            let rgb = sluice::vision::decode::decode(png, u64::MAX).unwrap();
            let t1 = Instant::now();
            let p = preprocess(&rgb, &cfg).unwrap();
            let t2 = Instant::now();
            sluice::vision::decode::decode(jpeg, u64::MAX).unwrap();
            let t3 = Instant::now();
            let image = ImageInput::new(p);
            let t4 = Instant::now();
            let _ = tower.encode(&[&image.patches]);
            let t5 = Instant::now();
            if round > 0 {
                times[i][0].push(t1 - t0);
                times[i][1].push(t3 - t2);
                times[i][2].push(t2 - t1);
                times[i][3].push(t5 - t4);
            } else {
                patches.push((image.patches.grid_thw, image.patches.num_tokens));
            }
        }
    }
    println!("size | PNG decode ms | JPEG decode ms | preprocess ms | grid (t, h, w) | tokens | tiny tower ms");
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        let [png, jpeg, pre, tower] = times[i].clone();
        let (grid, tokens) = patches[i];
        println!(
            "{w}x{h} | {:.2} | {:.2} | {:.2} | {grid:?} | {tokens} | {:.2}",
            median(png),
            median(jpeg),
            median(pre),
            median(tower)
        );
    }
}
