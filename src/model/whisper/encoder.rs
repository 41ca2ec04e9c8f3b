//! Whisper's audio encoder: two convolutions over the log-mel frames (the second halves
//! them), GELU after each, the position table added, pre-norm transformer layers, a final
//! layer norm. Runs once per 30 s window; its output feeds every decoder step through the
//! cross-attention keys and values (`decoder::CrossKv`).
//!
//! Follows transformers' `WhisperEncoder` operation for operation: queries are scaled
//! before the product (`q_proj(x) · d^-½`), as the original implementation does.

use tch::{Kind, Tensor};

use super::config::WhisperConfig;
use super::layers::{LayerNorm, Linear, Loader};
use crate::model::LoadError;

struct EncoderLayer {
    attn_norm: LayerNorm,
    /// Q, K, V stacked: `[3·D, D]`.
    qkv: Linear,
    out: Linear,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct Encoder {
    conv1: Linear,
    conv2: Linear,
    /// `[max_source_positions, D]`.
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    norm: LayerNorm,
    heads: i64,
    d_model: i64,
    mels: i64,
    frames: i64,
    dtype: Kind,
}

impl Encoder {
    pub(crate) fn load(cfg: &WhisperConfig, l: &Loader) -> Result<Self, LoadError> {
        let (d, mels, ffn) = (cfg.d_model as i64, cfg.num_mel_bins as i64, cfg.encoder_ffn as i64);
        let conv = |name: &str, inp: i64| -> Result<Linear, LoadError> {
            Ok(Linear {
                w: l.get(&format!("model.encoder.{name}.weight"), &[d, inp, 3])?,
                b: Some(l.get(&format!("model.encoder.{name}.bias"), &[d])?),
            })
        };
        let mut layers = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let p = format!("model.encoder.layers.{i}");
            layers.push(EncoderLayer {
                attn_norm: l.norm(&format!("{p}.self_attn_layer_norm"), d)?,
                qkv: l.qkv(&format!("{p}.self_attn"), d)?,
                out: l.linear(&format!("{p}.self_attn.out_proj"), d, d, true)?,
                mlp_norm: l.norm(&format!("{p}.final_layer_norm"), d)?,
                fc1: l.linear(&format!("{p}.fc1"), ffn, d, true)?,
                fc2: l.linear(&format!("{p}.fc2"), d, ffn, true)?,
            });
        }
        Ok(Encoder {
            conv1: conv("conv1", mels)?,
            conv2: conv("conv2", d)?,
            positions: l.get("model.encoder.embed_positions.weight", &[cfg.max_source_positions as i64, d])?,
            layers,
            norm: l.norm("model.encoder.layer_norm", d)?,
            heads: cfg.encoder_heads as i64,
            d_model: d,
            mels,
            frames: cfg.num_frames() as i64,
            dtype: l.dtype,
        })
    }

    /// Encoder states `[B, max_source_positions, D]` (model dtype) of float32 log-mel
    /// features `[B, mels, frames]`; frames must be exactly twice the positions (3000).
    pub fn forward(&self, features: &Tensor) -> Result<Tensor, String> {
        let size = features.size();
        if size.len() != 3 || size[1] != self.mels || size[2] != self.frames {
            return Err(format!("features must be [batch, {}, {}], got {size:?}", self.mels, self.frames));
        }
        let _guard = tch::no_grad_guard();
        let dev = self.positions.device();
        let x = features.to_device(dev).to_kind(self.dtype);
        let x = x.conv1d(&self.conv1.w, self.conv1.b.as_ref(), [1], [1], [1], 1).gelu("none");
        let x = x.conv1d(&self.conv2.w, self.conv2.b.as_ref(), [2], [1], [1], 1).gelu("none");
        let mut x = x.permute([0, 2, 1]) + &self.positions; // [B, S, D]
        let (b, s) = (size[0], self.frames / 2);
        let (h, d) = (self.heads, self.d_model / self.heads);
        let scaling = (d as f64).powf(-0.5);
        for layer in &self.layers {
            let hs = layer.attn_norm.forward(&x);
            let qkv = layer.qkv.forward(&hs).view([b, s, 3, h, d]).permute([2, 0, 3, 1, 4]); // [3, B, H, S, d]
            let (q, k, v) = ((qkv.get(0) * scaling).contiguous(), qkv.get(1).contiguous(), qkv.get(2).contiguous());
            let attn = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, 1.0, false);
            let attn = attn.transpose(1, 2).reshape([b, s, self.d_model]);
            x += layer.out.forward(&attn);
            let hs = layer.mlp_norm.forward(&x);
            x = &x + layer.fc2.forward(&layer.fc1.forward(&hs).gelu("none"));
        }
        Ok(self.norm.forward(&x))
    }
}
