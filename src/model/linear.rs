//! A linear layer: `x · Wᵀ (+ b)`. Every projection of the decoders goes through it, so
//! that another way of holding weights (quantized blocks with their own kernels) changes
//! this type, not the forward passes.

use tch::{Device, Kind, Tensor};

use super::kernels::{self, QuantIsa, QuantPath};
use super::quant::QuantTensor;

enum Weight {
    /// `[out, in]`, in the model's dtype on its device.
    Dense(Tensor),
    /// GGUF blocks on the CPU: the output rows of each part in turn (parts of different
    /// types, e.g. a Q4_K query beside a Q6_K value projection, stay apart).
    Quantized { parts: Vec<QuantTensor>, dtype: Kind },
}

/// The row count a matrix product of `n` rows runs on: `n` rounded up to a multiple of a
/// sixteenth of the power of two at or above it, or of `min_step` if that is larger (eight
/// shapes per doubling, under 12.5% filler rows; with `min_step` 1, exact up to 16 rows).
///
/// Why: libtorch's oneDNN matrix products (bfloat16 and other reduced precisions on the
/// CPU) keep a compiled kernel per distinct shape in a cache of up to 1,024 entries
/// (`LRU_CACHE_CAPACITY`), each a few hundred KiB of code and buffers. With one row per
/// token, every new token count of a batch or a step is new kernels (one per weight shape),
/// so a server fed varied inputs grew by about a megabyte a request until the cache was
/// full (hundreds of MiB), and then churned. With rounded rows the cache holds every shape
/// a server meets and its memory levels off after a warm-up.
pub fn round_rows(n: usize, min_step: usize) -> usize {
    let step = (n.max(1).next_power_of_two() / 16).max(min_step);
    n.div_ceil(step).max(1) * step
}

/// The rows a product of `n` rows runs on, on `device` in `dtype`: `round_rows` where
/// libtorch's oneDNN products cache kernels by shape (reduced precision on the CPU), else `n`.
pub fn product_rows(n: i64, device: Device, dtype: Kind) -> i64 {
    if device == Device::Cpu && dtype != Kind::Float && n > 0 { round_rows(n as usize, 1) as i64 } else { n }
}

/// `x: [n, cols]` with zero rows after it up to `rows` (filler whose outputs are never read).
pub fn pad_rows(x: &Tensor, rows: i64) -> Tensor {
    let n = x.size()[0];
    if rows == n { x.shallow_clone() } else { x.constant_pad_nd([0, 0, 0, rows - n]) }
}

pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from CPU tensors in Hugging Face layout, placed as the model runs.
    pub fn new(weight: Tensor, bias: Option<Tensor>, device: Device, dtype: Kind) -> Self {
        let place = |t: Tensor| t.to_device(device).to_kind(dtype).contiguous();
        Linear { weight: Weight::Dense(place(weight)), bias: bias.map(place) }
    }

    /// A layer run on the quantized kernels, on the CPU: its output rows are those of
    /// `parts` one after another (neighbours of one type are joined, so that a product is
    /// one kernel call); inputs and outputs in `dtype`.
    pub fn quantized(parts: Vec<QuantTensor>, bias: Option<Tensor>, dtype: Kind) -> Self {
        let mut joined: Vec<QuantTensor> = Vec::new();
        for p in parts {
            match joined.last_mut() {
                Some(last) if last.ty == p.ty && last.cols == p.cols => {
                    *last = QuantTensor::cat(&[&*last, &p]).expect("same type and width");
                }
                _ => joined.push(p),
            }
        }
        let bias = bias.map(|b| b.to_kind(dtype).contiguous());
        Linear { weight: Weight::Quantized { parts: joined, dtype }, bias }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized { .. })
    }

    /// `x · Wᵀ (+ b)` over the last dimension of `x`. A dense layer in reduced precision on
    /// the CPU runs on `round_rows` rows (filler rows are zeros whose outputs are dropped),
    /// so a server meets few product shapes.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let cols = *size.last().expect("x has a last dimension");
        let n: i64 = size[..size.len() - 1].iter().product();
        let out = match &self.weight {
            Weight::Dense(w) => {
                let rows = product_rows(n, w.device(), w.kind());
                if rows == n {
                    return x.linear(w, self.bias.as_ref());
                }
                pad_rows(&x.reshape([n, cols]), rows).linear(w, self.bias.as_ref()).narrow(0, 0, n)
            }
            Weight::Quantized { parts, dtype } => {
                let flat = x.reshape([n, cols]).to_kind(*dtype).contiguous();
                let rows: usize = parts.iter().map(|p| p.rows).sum();
                let mut out = Tensor::empty([n, rows as i64], (*dtype, Device::Cpu));
                let mut col0 = 0;
                for p in parts {
                    kernels::quant_linear_into(&mut out, &flat, p, col0, QuantPath::Auto, QuantIsa::Best);
                    col0 += p.rows;
                }
                if let Some(b) = &self.bias {
                    out += b;
                }
                out
            }
        };
        let mut shape = size[..size.len() - 1].to_vec();
        shape.push(out.size()[1]);
        out.view(shape.as_slice())
    }

    /// The weight `[out, in]` (what an LM head's rows are read from), in the layer's dtype;
    /// dequantized when the layer is quantized.
    pub fn weight(&self) -> Tensor {
        match &self.weight {
            Weight::Dense(w) => w.shallow_clone(),
            Weight::Quantized { parts, dtype } => {
                Tensor::cat(&parts.iter().map(|p| p.dequantize()).collect::<Vec<_>>(), 0).to_kind(*dtype)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_exact_up_to_16_then_eight_shapes_per_doubling() {
        for n in 1..=16 {
            assert_eq!(round_rows(n, 1), n);
        }
        assert_eq!(round_rows(17, 1), 18);
        assert_eq!(round_rows(33, 1), 36);
        assert_eq!(round_rows(1500, 1), 1536);
        let shapes: std::collections::BTreeSet<usize> = (1..=2048).map(|n| round_rows(n, 1)).collect();
        assert_eq!(shapes.len(), 16 + 8 * 7);
        for n in 1..=8192 {
            let r = round_rows(n, 1);
            assert!(r >= n && (r - n) * 8 < n.max(8), "{n} -> {r}");
            assert_eq!(round_rows(r, 1), r, "a rounded count is its own rounding");
        }
    }

    #[test]
    fn filler_rows_change_no_real_row() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let w = Tensor::randn([24, 40], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([24], (Kind::Float, Device::Cpu));
        let layer = Linear::new(w.shallow_clone(), Some(b.shallow_clone()), Device::Cpu, Kind::BFloat16);
        for n in [1, 5, 17, 37, 130] {
            let x = Tensor::randn([n, 40], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let got = layer.forward(&x);
            assert_eq!(got.size(), vec![n, 24]);
            let want = x.to_kind(Kind::Float).linear(&w.to_kind(Kind::BFloat16).to_kind(Kind::Float), Some(&b.to_kind(Kind::BFloat16).to_kind(Kind::Float)));
            let diff = (got.to_kind(Kind::Float) - want).abs().max().double_value(&[]);
            assert!(diff < 0.1, "{n} rows: {diff}");
        }
    }
}
