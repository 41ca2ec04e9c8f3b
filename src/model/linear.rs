//! A linear layer: `x · Wᵀ (+ b)`. Every projection of the decoders goes through it, so
//! that another way of holding weights (quantized blocks with their own kernels) changes
//! this type, not the forward passes.

use tch::{Device, Kind, Tensor};

pub struct Linear {
    /// `[out, in]`, in the model's dtype on its device.
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from CPU tensors in Hugging Face layout, placed as the model runs.
    pub fn new(weight: Tensor, bias: Option<Tensor>, device: Device, dtype: Kind) -> Self {
        let place = |t: Tensor| t.to_device(device).to_kind(dtype).contiguous();
        Linear { weight: place(weight), bias: bias.map(place) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// The weight `[out, in]` (what an LM head's rows are read from).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}
