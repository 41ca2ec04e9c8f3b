//! Speed of the int8 tile product by ggml type, instruction set and number of activation
//! rows, on random blocks of an 8B model's square projection (4096 × 4096). Each shape runs
//! the best build the CPU has against the AVX2 build in interleaved rounds, and prints each
//! round's time and their ratio. Run: `cargo bench --bench quant_kernels` (env THREADS=n,
//! ROUNDS, default 3; ROWS and COLS for another matrix).

use std::time::Instant;

use sluice::model::kernels::{QuantIsa, QuantPath, quant_isa, quant_linear_into};
use sluice::model::quant::{GgmlType, QuantTensor};
use tch::{Device, Kind, Tensor};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap())
}

/// Random bytes with float16 scales of a trained model's size at the places `ty` keeps them
/// (speed does not depend on the values, but NaN scales would make the floats slow).
fn random_blocks(ty: GgmlType, rows: usize, cols: usize) -> QuantTensor {
    let (elems, bytes) = ty.block();
    let random = Tensor::randint(256, [(rows * cols / elems * bytes) as i64], (Kind::Uint8, Device::Cpu));
    let mut data = Vec::<u8>::try_from(&random).unwrap();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for b in data.chunks_exact_mut(bytes) {
        match ty {
            GgmlType::Q6K => b[208..210].copy_from_slice(&scale),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K => {
                b[0..2].copy_from_slice(&scale);
                b[2..4].copy_from_slice(&scale);
            }
            _ => b[0..2].copy_from_slice(&scale),
        }
    }
    QuantTensor::new(ty, rows, cols, &data).unwrap()
}

fn main() {
    if let Ok(t) = std::env::var("THREADS") {
        tch::set_num_threads(t.parse().unwrap());
    }
    let (rows, cols, rounds) = (env("ROWS", 4096), env("COLS", 4096), env("ROUNDS", 3));
    println!("{rows} x {cols}, threads {}, best build {}, bfloat16 activations", tch::get_num_threads(), quant_isa());
    let types = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
    for ty in types {
        let w = random_blocks(ty, rows, cols);
        for n in [16i64, 64, 256] {
            let x = Tensor::randn([n, cols as i64], (Kind::BFloat16, Device::Cpu));
            let mut out = Tensor::zeros([n, rows as i64], (Kind::BFloat16, Device::Cpu));
            let mut time = |isa| {
                quant_linear_into(&mut out, &x, &w, 0, QuantPath::Int8Tiles, isa);
                let iters = (4096 / n).max(4);
                let t0 = Instant::now();
                for _ in 0..iters {
                    quant_linear_into(&mut out, &x, &w, 0, QuantPath::Int8Tiles, isa);
                }
                t0.elapsed().as_secs_f64() * 1e3 / iters as f64
            };
            let mut line = format!("{ty:?} n={n:<4}");
            for _ in 0..rounds {
                let (best, avx2) = (time(QuantIsa::Best), time(QuantIsa::Avx2));
                let gmacs = (n as usize * rows * cols) as f64 / best / 1e6;
                line += &format!("  {best:.2} / {avx2:.2} ms ({:.2}, {gmacs:.0} GMAC/s)", best / avx2);
            }
            println!("{line}");
        }
    }
}
