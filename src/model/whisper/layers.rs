//! The pieces Whisper's encoder and decoder share: linear layers with biases, layer norms,
//! and a loader that places named weights on the device in the compute dtype.

use tch::{Device, Kind, Tensor};

use crate::model::LoadError;
use crate::model::weights::WeightSource;

pub(crate) struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

pub(crate) struct LayerNorm {
    pub w: Tensor,
    pub b: Tensor,
}

impl LayerNorm {
    /// torch's LayerNorm as transformers runs it (statistics in float32 inside the op for
    /// reduced-precision inputs, eps 1e-5).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().expect("a layer norm input has a last dimension");
        x.layer_norm([d], Some(&self.w), Some(&self.b), 1e-5, false)
    }
}

/// Reads Hugging Face-named weights and places them, checking shapes.
pub(crate) struct Loader<'a> {
    pub src: &'a dyn WeightSource,
    pub device: Device,
    pub dtype: Kind,
}

impl Loader<'_> {
    pub fn raw(&self, name: &str, shape: &[i64]) -> Result<Tensor, LoadError> {
        let t = self.src.get(name)?.ok_or_else(|| LoadError::MissingTensor(name.to_owned()))?;
        if t.size() != shape {
            return Err(LoadError::Unsupported(format!("tensor {name} has shape {:?}, expected {shape:?}", t.size())));
        }
        Ok(t)
    }

    pub fn place(&self, t: Tensor) -> Tensor {
        t.to_device(self.device).to_kind(self.dtype).contiguous()
    }

    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, LoadError> {
        Ok(self.place(self.raw(name, shape)?))
    }

    /// `{prefix}.weight` `[out, inp]` and `{prefix}.bias` `[out]` (required when `bias`).
    pub fn linear(&self, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Linear, LoadError> {
        let w = self.get(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias { Some(self.get(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Linear { w, b })
    }

    pub fn norm(&self, prefix: &str, d: i64) -> Result<LayerNorm, LoadError> {
        Ok(LayerNorm { w: self.get(&format!("{prefix}.weight"), &[d])?, b: self.get(&format!("{prefix}.bias"), &[d])? })
    }

    /// Q, K and V of an attention stacked into one projection `[3·D, D]`, its bias with
    /// zeros for K where the checkpoint has none (Whisper's `k_proj` has no bias).
    pub fn qkv(&self, prefix: &str, d: i64) -> Result<Linear, LoadError> {
        let w = Tensor::cat(
            &[
                self.raw(&format!("{prefix}.q_proj.weight"), &[d, d])?,
                self.raw(&format!("{prefix}.k_proj.weight"), &[d, d])?,
                self.raw(&format!("{prefix}.v_proj.weight"), &[d, d])?,
            ],
            0,
        );
        let q_bias = self.raw(&format!("{prefix}.q_proj.bias"), &[d])?;
        let k_bias = match self.src.get(&format!("{prefix}.k_proj.bias"))? {
            Some(b) => b,
            None => q_bias.zeros_like(),
        };
        let v_bias = self.raw(&format!("{prefix}.v_proj.bias"), &[d])?;
        let b = Tensor::cat(&[q_bias, k_bias.to_kind(v_bias.kind()), v_bias], 0);
        Ok(Linear { w: self.place(w), b: Some(self.place(b)) })
    }
}
