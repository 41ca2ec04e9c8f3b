//! ggml tensor encodings and their dequantization to f32.
//!
//! Block layouts follow ggml's reference definitions: each block stores one or two f16
//! scales and packed integers. Rows are dequantized in parallel (rayon), which takes
//! SmolLM2's 272 tensors from ~98 MB of Q4_1/Q8_0 to f32 in a fraction of a second.

use half::{bf16, f16};
use rayon::prelude::*;

/// The tensor types sluice can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }

    /// Bytes taken by `numel` elements, or None when they do not fill whole blocks.
    pub fn bytes_for(self, numel: usize) -> Option<usize> {
        let (elems, bytes) = self.block();
        if numel % elems == 0 { (numel / elems).checked_mul(bytes) } else { None }
    }
}

/// Dequantizes `data` (whole blocks of type `ty`) into `out`, which must hold exactly
/// the number of elements the blocks encode.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    let (elems, bytes) = ty.block();
    assert_eq!(data.len() / bytes * elems, out.len(), "dequantize: size mismatch");
    // Chunks of whole blocks, big enough to amortize rayon's scheduling.
    let blocks_per_chunk = (16384 / elems).max(1);
    data.par_chunks(blocks_per_chunk * bytes)
        .zip(out.par_chunks_mut(blocks_per_chunk * elems))
        .for_each(|(src, dst)| {
            for (b, y) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(elems)) {
                dequantize_block(ty, b, y);
            }
        });
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = f16_at(b, 0),
        GgmlType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0x0f) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                y[j] = (((qs[j] & 0x0f) | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                y[j] = ((qs[j] & 0x0f) | h0) as f32 * d + m;
                y[j + 16] = ((qs[j] >> 4) | h1) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for (n, chunk) in qs.chunks_exact(32).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * n, scales);
                let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
                let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                let out = &mut y[n * 64..n * 64 + 64];
                for l in 0..32 {
                    out[l] = d1 * (chunk[l] & 0x0f) as f32 - min1;
                    out[l + 32] = d2 * (chunk[l] >> 4) as f32 - min2;
                }
            }
        }
        GgmlType::Q6K => {
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &b[half * 64..half * 64 + 64];
                let qh = &b[128 + half * 32..128 + half * 32 + 32];
                let sc = &b[192 + half * 8..192 + half * 8 + 8];
                let out = &mut y[half * 128..half * 128 + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| (sc[is + k] as i8) as f32 * d;
                    out[l] = s(0) * q1 as f32;
                    out[l + 32] = s(2) * q2 as f32;
                    out[l + 64] = s(4) * q3 as f32;
                    out[l + 96] = s(6) * q4 as f32;
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` in a Q4_K block's 12 packed scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// A matrix kept in its ggml blocks, for the quantized kernels (kernels/quant.cpp): `rows`
/// rows of `cols` values, each row whole blocks, row after row in a byte tensor (a libtorch
/// tensor, so that the kernels take it like any other).
pub struct QuantTensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// uint8 `[rows · row_bytes]`, on the CPU.
    pub data: tch::Tensor,
}

impl QuantTensor {
    /// Whether the kernels read this type (the block types; not plain floats).
    pub fn has_kernel(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K)
    }

    /// A copy of `bytes`: `rows` × `cols` values of type `ty`. None when the type has no
    /// kernel, or the bytes are not exactly whole-block rows.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Option<Self> {
        let row_bytes = ty.bytes_for(cols)?;
        if !Self::has_kernel(ty) || rows == 0 || cols == 0 || rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return None;
        }
        Some(QuantTensor { ty, rows, cols, data: tch::Tensor::from_slice(bytes) })
    }

    pub fn row_bytes(&self) -> usize {
        self.ty.bytes_for(self.cols).expect("rows are whole blocks")
    }

    /// The same blocks (shared, not copied).
    pub fn shallow_clone(&self) -> Self {
        QuantTensor { ty: self.ty, rows: self.rows, cols: self.cols, data: self.data.shallow_clone() }
    }

    /// Rows in the order `order` (row i of the result is row `order[i]`).
    pub fn reorder_rows(&self, order: &[usize]) -> Self {
        let idx = tch::Tensor::from_slice(&order.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let rows = self.data.view([self.rows as i64, self.row_bytes() as i64]).index_select(0, &idx);
        QuantTensor { ty: self.ty, rows: order.len(), cols: self.cols, data: rows.view([-1]).contiguous() }
    }

    /// The rows of `parts` one after another, when they share type and width.
    pub fn cat(parts: &[&QuantTensor]) -> Option<Self> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.ty != first.ty || p.cols != first.cols) {
            return None;
        }
        let data = tch::Tensor::cat(&parts.iter().map(|p| &p.data).collect::<Vec<_>>(), 0);
        Some(QuantTensor { ty: first.ty, rows: parts.iter().map(|p| p.rows).sum(), cols: first.cols, data })
    }

    /// The matrix as f32 `[rows, cols]`.
    pub fn dequantize(&self) -> tch::Tensor {
        let bytes = Vec::<u8>::try_from(&self.data).expect("a byte tensor");
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.ty, &bytes, &mut out);
        tch::Tensor::from_slice(&out).view([self.rows as i64, self.cols as i64])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_of_no_columns_is_not_kept_in_blocks() {
        // Found by fuzzing (fuzz/, target `gguf`): a Q projection of 2^60 rows and 0
        // columns is 0 bytes, so the size check passed, and the row order for it could
        // not be allocated.
        assert!(QuantTensor::new(GgmlType::Q4_1, 1 << 60, 0, &[]).is_none());
        assert!(QuantTensor::new(GgmlType::Q8_0, usize::MAX, 32, &[]).is_none());
    }

    #[test]
    fn q4_1_block_decodes_nibbles_low_then_high() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16 {
            b[4 + j] = (j as u8) | (((15 - j) as u8) << 4);
        }
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.5 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    /// Random blocks of every type, dequantized by gguf-py (tests/fixtures/quants/make.py).
    #[test]
    fn every_type_matches_gguf_py() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/quants/blocks.json")).unwrap();
        let types = [
            ("Q4_0", GgmlType::Q4_0),
            ("Q4_1", GgmlType::Q4_1),
            ("Q5_0", GgmlType::Q5_0),
            ("Q5_1", GgmlType::Q5_1),
            ("Q8_0", GgmlType::Q8_0),
            ("Q4_K", GgmlType::Q4K),
            ("Q6_K", GgmlType::Q6K),
            ("F16", GgmlType::F16),
            ("BF16", GgmlType::BF16),
        ];
        for (name, ty) in types {
            let case = &fixture[name];
            let hex = case["hex"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            let want: Vec<f32> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let mut got = vec![0f32; want.len()];
            dequantize(ty, &bytes, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn sizes_must_fill_blocks() {
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(GgmlType::Q8_0.bytes_for(63), None);
        assert_eq!(GgmlType::Q6K.bytes_for(512), Some(420));
    }
}
