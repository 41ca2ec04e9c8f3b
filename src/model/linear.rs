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

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.weight {
            Weight::Dense(w) => x.linear(w, self.bias.as_ref()),
            Weight::Quantized { parts, dtype } => {
                let size = x.size();
                let cols = *size.last().expect("x has a last dimension");
                let flat = x.reshape([-1, cols]).to_kind(*dtype).contiguous();
                let rows: usize = parts.iter().map(|p| p.rows).sum();
                let mut out = Tensor::empty([flat.size()[0], rows as i64], (*dtype, Device::Cpu));
                let mut col0 = 0;
                for p in parts {
                    kernels::quant_linear_into(&mut out, &flat, p, col0, QuantPath::Auto, QuantIsa::Best);
                    col0 += p.rows;
                }
                if let Some(b) = &self.bias {
                    out += b;
                }
                let mut shape = size[..size.len() - 1].to_vec();
                shape.push(rows as i64);
                out.view(shape.as_slice())
            }
        }
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
