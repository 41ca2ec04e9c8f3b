//! Rotary position embeddings and their scaling types, as transformers computes them
//! (`modeling_rope_utils`): the inverse frequencies in float32 with the same operations,
//! and the attention factor that multiplies cos and sin.
//!
//! cos and sin are computed per step for the positions in the batch (a few thousand values)
//! rather than kept as tables of every position: a 128k-context model with a 256-wide head
//! would otherwise hold hundreds of megabytes of tables per rotary variant.

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

/// How the inverse frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum Scaling {
    None,
    /// Positions divided by `factor` (`rope_type: linear`).
    Linear { factor: f64 },
    /// Llama 3.1's low/high frequency bands (`rope_type: llama3`).
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: f64 },
    /// YaRN (`rope_type: yarn`), with its attention factor already resolved.
    Yarn { factor: f64, original_max: f64, beta_fast: f64, beta_slow: f64, truncate: bool, attention_factor: f64 },
    /// Phi-3's LongRoPE (`longrope`, formerly `su`): per-dimension divisors, the long set once
    /// a sequence is longer than `original_max` tokens.
    LongRope { short: Vec<f64>, long: Vec<f64>, original_max: usize, attention_factor: f64 },
    /// Per-dimension divisors as llama.cpp stores them (`rope_freqs.weight`).
    Factors(Vec<f64>),
}

/// One rotary embedding: its base, how many leading dimensions of a head it turns, and its
/// scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Rotated dimensions (the head size, or less with `partial_rotary_factor`).
    pub dim: usize,
    pub scaling: Scaling,
}

/// What a config's rope parameters are read against.
pub struct RopeContext {
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    /// A top-level `original_max_position_embeddings` (Phi-3 keeps it there; it wins).
    pub original_max_top: Option<usize>,
    pub default_theta: f64,
}

impl Rope {
    /// Reads a `rope_parameters` (transformers 5) or `rope_scaling` object; `theta` is the
    /// top-level `rope_theta` when the object has none.
    pub fn from_params(params: Option<&Json>, theta: Option<f64>, ctx: &RopeContext) -> Result<Rope, String> {
        let p = |k: &str| params.and_then(|p| p.get(k)).filter(|v| !v.is_null());
        let f = |k: &str| p(k).and_then(Json::as_f64);
        let theta = f("rope_theta").or(theta).unwrap_or(ctx.default_theta);
        let partial = f("partial_rotary_factor").unwrap_or(1.0);
        let dim = (ctx.head_dim as f64 * partial) as usize;
        if dim == 0 || dim % 2 != 0 || dim > ctx.head_dim {
            return Err(format!("partial_rotary_factor {partial} gives {dim} rotary dimensions of {}", ctx.head_dim));
        }
        let kind = p("rope_type").or_else(|| p("type")).and_then(Json::as_str).unwrap_or("default");
        let original_max = || -> f64 {
            ctx.original_max_top
                .map(|v| v as f64)
                .or_else(|| f("original_max_position_embeddings"))
                .unwrap_or(ctx.max_position_embeddings as f64)
        };
        let need = |k: &str| f(k).ok_or_else(|| format!("rope type {kind:?} needs {k}"));
        let factors = |k: &str| -> Result<Vec<f64>, String> {
            let v: Vec<f64> = p(k).and_then(Json::as_array).map(|a| a.iter().filter_map(Json::as_f64).collect()).unwrap_or_default();
            if v.len() != dim / 2 {
                return Err(format!("rope {k} must list {} numbers (half the rotary dimensions), got {}", dim / 2, v.len()));
            }
            Ok(v)
        };
        let scaling = match kind {
            "default" => Scaling::None,
            "linear" => Scaling::Linear { factor: need("factor")? },
            "llama3" => Scaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max: original_max(),
            },
            "yarn" => {
                let original_max = original_max();
                let factor = f("factor").unwrap_or(ctx.max_position_embeddings as f64 / original_max);
                let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention_factor = match (f("attention_factor"), f("mscale"), f("mscale_all_dim")) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                };
                Scaling::Yarn {
                    factor,
                    original_max,
                    beta_fast: f("beta_fast").filter(|v| *v != 0.0).unwrap_or(32.0),
                    beta_slow: f("beta_slow").filter(|v| *v != 0.0).unwrap_or(1.0),
                    truncate: p("truncate").and_then(Json::as_bool).unwrap_or(true),
                    attention_factor,
                }
            }
            "longrope" => {
                let original_max = original_max();
                let factor = f("factor").unwrap_or(ctx.max_position_embeddings as f64 / original_max);
                let attention_factor = f("attention_factor").unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / original_max.ln()).sqrt()
                });
                Scaling::LongRope {
                    short: factors("short_factor")?,
                    long: factors("long_factor")?,
                    original_max: original_max as usize,
                    attention_factor,
                }
            }
            "dynamic" => {
                return Err("rope type \"dynamic\" is not supported: its frequencies change with each sequence's \
                            length, which a shared paged KV cache cannot follow (default, linear, llama3, yarn, \
                            longrope are)"
                    .into());
            }
            other => return Err(format!("rope type {other:?} is not supported (default, linear, llama3, yarn, longrope are)")),
        };
        Ok(Rope { theta, dim, scaling })
    }

    /// The multiplier of cos and sin.
    pub fn attention_factor(&self) -> f64 {
        match &self.scaling {
            Scaling::Yarn { attention_factor, .. } | Scaling::LongRope { attention_factor, .. } => *attention_factor,
            _ => 1.0,
        }
    }

    /// The inverse frequencies `[dim / 2]` in float32 on the CPU (`long`: LongRoPE's long set).
    pub fn inv_freq(&self, long: bool) -> Tensor {
        let d = self.dim as i64;
        let cpu = (Kind::Int64, Device::Cpu);
        let shape = Tensor::arange_start_step(0, d, 2, cpu).to_kind(Kind::Float) / d as f64;
        let pos_freqs = Tensor::from(self.theta).to_kind(Kind::Float).pow(&shape); // base ** (2i / d)
        let base = pos_freqs.reciprocal();
        let list = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float);
        match &self.scaling {
            Scaling::None => base,
            Scaling::Linear { factor } => base / *factor,
            Scaling::Factors(f) => base / list(f),
            Scaling::LongRope { short, long: l, .. } => (list(if long { l } else { short }) * pos_freqs).reciprocal(),
            Scaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                let low_wavelen = original_max / low_freq_factor;
                let high_wavelen = original_max / high_freq_factor;
                let wavelen = (base.reciprocal() * (2.0 * std::f64::consts::PI)).to_kind(Kind::Float);
                let scaled = base.where_self(&wavelen.le(low_wavelen), &(&base / *factor));
                let smooth = (wavelen.reciprocal() * *original_max - *low_freq_factor) / (high_freq_factor - low_freq_factor);
                let rest: Tensor = 1.0 - &smooth;
                let smoothed: Tensor = (rest * &scaled) / *factor + &smooth * &scaled;
                let medium = wavelen.ge(high_wavelen).logical_and(&wavelen.le(low_wavelen));
                smoothed.where_self(&medium, &scaled)
            }
            Scaling::Yarn { factor, original_max, beta_fast, beta_slow, truncate, .. } => {
                let dimf = self.dim as f64;
                let correction = |rot: f64| (dimf * (original_max / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * self.theta.ln());
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dimf - 1.0));
                if low == high {
                    high += 0.001;
                }
                let ramp = ((Tensor::arange(d / 2, (Kind::Float, Device::Cpu)) - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                let interpolation = (&pos_freqs * *factor).reciprocal();
                interpolation * (1.0 - &extrapolation) + base * extrapolation
            }
        }
    }
}

/// A rope ready for steps: its frequencies on the device.
pub struct RopeTables {
    inv_freq: Tensor,
    /// LongRoPE: the long set and the length past which a sequence uses it.
    long: Option<(Tensor, usize)>,
    attention_factor: f64,
    pub dim: usize,
}

impl RopeTables {
    pub fn new(rope: &Rope, device: Device) -> Self {
        let long = match &rope.scaling {
            Scaling::LongRope { original_max, .. } => Some((rope.inv_freq(true).to_device(device), *original_max)),
            _ => None,
        };
        RopeTables { inv_freq: rope.inv_freq(false).to_device(device), long, attention_factor: rope.attention_factor(), dim: rope.dim }
    }

    /// cos and sin `[n, dim]` in `dtype` for `positions: f32 [n]`, as transformers' rotary
    /// module computes them. `context_lens: [n]`, each token's sequence length this step,
    /// picks LongRoPE's set per token (transformers decides per forward pass, on the
    /// sequence's length then).
    pub fn cos_sin(&self, positions: &Tensor, context_lens: &[i64], dtype: Kind) -> (Tensor, Tensor) {
        let inv = match &self.long {
            Some((long, original)) if context_lens.iter().any(|&l| l as usize > *original) => {
                let rows: Vec<bool> = context_lens.iter().map(|&l| l as usize > *original).collect();
                let is_long = Tensor::from_slice(&rows).to_device(positions.device()).unsqueeze(1);
                long.unsqueeze(0).where_self(&is_long, &self.inv_freq.unsqueeze(0)) // [n, dim/2]
            }
            _ => self.inv_freq.unsqueeze(0),
        };
        let freqs = positions.unsqueeze(1) * inv;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (mut cos, mut sin) = (emb.cos(), emb.sin());
        if self.attention_factor != 1.0 {
            cos *= self.attention_factor;
            sin *= self.attention_factor;
        }
        (cos.to_kind(dtype), sin.to_kind(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> RopeContext {
        RopeContext { head_dim: 64, max_position_embeddings: 131072, original_max_top: None, default_theta: 10000.0 }
    }

    #[test]
    fn reads_the_rope_types_and_refuses_unknown_ones() {
        let r = Rope::from_params(Some(&json!({"rope_type": "linear", "factor": 8.0})), Some(1e6), &ctx()).unwrap();
        assert_eq!(r, Rope { theta: 1e6, dim: 64, scaling: Scaling::Linear { factor: 8.0 } });
        let old = Rope::from_params(Some(&json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})), Some(5e5), &ctx()).unwrap();
        assert!(matches!(old.scaling, Scaling::Llama3 { original_max, .. } if original_max == 8192.0));
        let e = Rope::from_params(Some(&json!({"rope_type": "dynamic", "factor": 2.0})), None, &ctx()).unwrap_err();
        assert!(e.contains("\"dynamic\" is not supported"), "{e}");
        let e = Rope::from_params(Some(&json!({"rope_type": "mrope"})), None, &ctx()).unwrap_err();
        assert!(e.contains("rope type \"mrope\" is not supported (default, linear, llama3, yarn, longrope are)"), "{e}");
        let e = Rope::from_params(Some(&json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]})), None, &ctx());
        assert!(e.unwrap_err().contains("must list 32 numbers"));
    }
}
