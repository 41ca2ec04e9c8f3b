//! Whisper's text decoder, built for the engine's continuous batching.
//!
//! One call runs one step for many sequences laid end to end (`StepBatch`), exactly as the
//! Llama decoder does: each layer's self-attention keys and values go into the paged
//! `KvCache` at the batch's slots and are read back through the same `AttnPlan` (CPU kernel
//! for one-token rows, causal attention for prompt chunks). Cross-attention reads the
//! sequence's own `CrossKv`, computed once per request from the encoder output and passed
//! in batch order; every sequence may come from a different audio window.
//!
//! Follows transformers' `WhisperDecoder`: learned positions added to the token
//! embeddings, pre-norm layers (self-attention, cross-attention, GELU MLP), a final layer
//! norm, logits from the tied embeddings; queries scaled before the product.

use tch::{Device, Kind, Tensor};

use super::config::WhisperConfig;
use super::layers::{LayerNorm, Linear, Loader};
use crate::model::LoadError;
use crate::model::batch::StepBatch;
use crate::model::kv_cache::KvCache;
use crate::model::attention::{AttnPlan, ScoreRule};

struct DecoderLayer {
    self_norm: LayerNorm,
    /// Q, K, V of the self-attention stacked: `[3·D, D]`.
    self_qkv: Linear,
    self_out: Linear,
    cross_norm: LayerNorm,
    cross_q: Linear,
    /// K and V of the cross-attention stacked: `[2·D, D]` (applied to the encoder output
    /// once per request, in `cross_kv`).
    cross_kv: Linear,
    cross_out: Linear,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct Decoder {
    embed: Tensor,
    /// `[max_target_positions, D]`.
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    norm: LayerNorm,
    lm_head: Tensor,
    heads: i64,
    d_model: i64,
}

/// One sequence's cross-attention keys and values for every decoder layer, each
/// `[heads, source_len, head_dim]`: what the encoder output contributes to every step.
pub struct CrossKv {
    layers: Vec<(Tensor, Tensor)>,
}

impl CrossKv {
    /// Bytes held, for accounting against the KV budget.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.numel() + v.numel()) * k.kind().elt_size_in_bytes()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("the step has {got} sequences but {given} cross-attention inputs")]
    CrossCount { got: usize, given: usize },
    #[error("position {0} is past the decoder's {1} positions")]
    Position(i64, usize),
    #[error("token {0} is outside the vocabulary of {1}")]
    Token(i64, usize),
}

impl Decoder {
    pub(crate) fn load(cfg: &WhisperConfig, l: &Loader) -> Result<Self, LoadError> {
        let (d, ffn) = (cfg.d_model as i64, cfg.decoder_ffn as i64);
        let mut layers = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let p = format!("model.decoder.layers.{i}");
            let k = l.raw(&format!("{p}.encoder_attn.k_proj.weight"), &[d, d])?;
            let v = l.raw(&format!("{p}.encoder_attn.v_proj.weight"), &[d, d])?;
            let v_bias = l.raw(&format!("{p}.encoder_attn.v_proj.bias"), &[d])?;
            let k_bias = match l.src.get(&format!("{p}.encoder_attn.k_proj.bias"))? {
                Some(b) => b.to_kind(v_bias.kind()),
                None => v_bias.zeros_like(),
            };
            layers.push(DecoderLayer {
                self_norm: l.norm(&format!("{p}.self_attn_layer_norm"), d)?,
                self_qkv: l.qkv(&format!("{p}.self_attn"), d)?,
                self_out: l.linear(&format!("{p}.self_attn.out_proj"), d, d, true)?,
                cross_norm: l.norm(&format!("{p}.encoder_attn_layer_norm"), d)?,
                cross_q: l.linear(&format!("{p}.encoder_attn.q_proj"), d, d, true)?,
                cross_kv: Linear { w: l.place(Tensor::cat(&[k, v], 0)), b: Some(l.place(Tensor::cat(&[k_bias, v_bias], 0))) },
                cross_out: l.linear(&format!("{p}.encoder_attn.out_proj"), d, d, true)?,
                mlp_norm: l.norm(&format!("{p}.final_layer_norm"), d)?,
                fc1: l.linear(&format!("{p}.fc1"), ffn, d, true)?,
                fc2: l.linear(&format!("{p}.fc2"), d, ffn, true)?,
            });
        }
        let vocab = cfg.vocab_size as i64;
        let embed = l.get("model.decoder.embed_tokens.weight", &[vocab, d])?;
        let lm_head = match l.src.get("proj_out.weight")? {
            Some(w) if w.size() == [vocab, d] => l.place(w),
            Some(w) => return Err(LoadError::Unsupported(format!("proj_out.weight has shape {:?}, expected [{vocab}, {d}]", w.size()))),
            None => embed.shallow_clone(),
        };
        Ok(Decoder {
            embed,
            positions: l.get("model.decoder.embed_positions.weight", &[cfg.max_target_positions as i64, d])?,
            layers,
            norm: l.norm("model.decoder.layer_norm", d)?,
            lm_head,
            heads: cfg.decoder_heads as i64,
            d_model: d,
        })
    }

    fn head_dim(&self) -> i64 {
        self.d_model / self.heads
    }

    /// A paged KV cache for this decoder's self-attention.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        let (h, d) = (self.heads as usize, self.head_dim() as usize);
        KvCache::new(self.layers.len(), num_blocks, block_size, h, d, self.embed.kind(), self.embed.device())
    }

    /// Bytes one cache block takes across the decoder's layers.
    pub fn cache_bytes_per_block(&self, block_size: usize) -> usize {
        KvCache::bytes_per_block(self.layers.len(), block_size, self.heads as usize, self.head_dim() as usize, self.embed.kind())
    }

    /// The cross-attention keys and values of one sequence from its encoder output
    /// `[source_len, D]` (one row of `Encoder::forward`).
    pub fn cross_kv(&self, encoded: &Tensor) -> CrossKv {
        let _guard = tch::no_grad_guard();
        let s = encoded.size()[0];
        let (h, d) = (self.heads, self.head_dim());
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let kv = l.cross_kv.forward(encoded).view([s, 2, h, d]).permute([1, 2, 0, 3]); // [2, H, S, d]
                (kv.get(0).contiguous(), kv.get(1).contiguous())
            })
            .collect();
        CrossKv { layers }
    }

    /// One step: float32 logits `[batch.logits_rows.len(), vocab]`. `cross[i]` belongs to
    /// `batch.seqs[i]`.
    pub fn forward(&self, batch: &StepBatch, cache: &mut KvCache, cross: &[&CrossKv]) -> Result<Tensor, StepError> {
        if cross.len() != batch.seqs.len() {
            return Err(StepError::CrossCount { got: batch.seqs.len(), given: cross.len() });
        }
        let max_pos = self.positions.size()[0];
        if let Some(&p) = batch.positions.iter().find(|&&p| p < 0 || p >= max_pos) {
            return Err(StepError::Position(p, max_pos as usize));
        }
        let vocab = self.embed.size()[0];
        if let Some(&t) = batch.tokens.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(StepError::Token(t, vocab as usize));
        }
        let _guard = tch::no_grad_guard();
        let dev = self.embed.device();
        let (h, d) = (self.heads, self.head_dim());
        let n = batch.tokens.len() as i64;
        let scaling = (d as f64).powf(-0.5);
        let tokens = Tensor::from_slice(&batch.tokens).to_device(dev);
        let positions = Tensor::from_slice(&batch.positions).to_device(dev);
        let slots = Tensor::from_slice(&batch.slots).to_device(dev);
        let plan = AttnPlan::new(batch, dev, None);

        let mut x = self.embed.index_select(0, &tokens) + self.positions.index_select(0, &positions); // [n, D]
        for (li, layer) in self.layers.iter().enumerate() {
            let hs = layer.self_norm.forward(&x);
            let qkv = layer.self_qkv.forward(&hs).view([n, 3, h, d]);
            let q = (qkv.select(1, 0) * scaling).contiguous();
            cache.write(li, &slots, &qkv.select(1, 1), &qkv.select(1, 2));
            let attn = plan.attend(&q, cache.keys(li), cache.values(li), h, ScoreRule { scale: 1.0, softcap: None });
            x += layer.self_out.forward(&attn.reshape([n, self.d_model]));

            let hs = layer.cross_norm.forward(&x);
            let q = (layer.cross_q.forward(&hs) * scaling).view([n, h, d]);
            let attn = cross_attention(&q, batch, cross, li);
            x += layer.cross_out.forward(&attn.reshape([n, self.d_model]));

            let hs = layer.mlp_norm.forward(&x);
            x = &x + layer.fc2.forward(&layer.fc1.forward(&hs).gelu("none"));
        }
        let rows = Tensor::from_slice(&batch.logits_rows).to_device(dev);
        let last = self.norm.forward(&x.index_select(0, &rows));
        Ok(last.linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float))
    }

    pub fn device(&self) -> Device {
        self.embed.device()
    }
}

/// Each sequence's queries `[len, H, d]` (scaled) against its own keys and values, one
/// product per sequence (the windows differ, so nothing is shared). Returns `[n, H, d]`.
fn cross_attention(q: &Tensor, batch: &StepBatch, cross: &[&CrossKv], layer: usize) -> Tensor {
    let out = q.zeros_like();
    for (span, kv) in batch.seqs.iter().zip(cross) {
        let (k, v) = &kv.layers[layer];
        let (row, len) = (span.row as i64, span.len as i64);
        let qs = q.narrow(0, row, len).transpose(0, 1).unsqueeze(0); // [1, H, len, d]
        let o = Tensor::scaled_dot_product_attention(&qs, &k.unsqueeze(0), &v.unsqueeze(0), None::<&Tensor>, 0.0, false, 1.0, false);
        out.narrow(0, row, len).copy_(&o.squeeze_dim(0).transpose(0, 1));
    }
    out
}
