//! How an encoder's hidden states become one vector per input, as a sentence-transformers
//! folder describes it: `modules.json` lists the modules (Transformer, Pooling, Normalize),
//! `1_Pooling/config.json` the pooling mode, `sentence_bert_config.json` the longest input.
//! A folder without them gets vLLM's default for its kind of model, normalized: the
//! `[CLS]` state for BERT, the last token's for decoders.

use std::path::Path;

use serde_json::Value as Json;
use tch::{Kind, Tensor};

use super::{LoadError, read_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// Average over the real tokens (`[CLS]` and `[SEP]` included).
    Mean,
    /// The first token's state.
    Cls,
    /// The last real token's state.
    Last,
    /// Element-wise maximum over the real tokens.
    Max,
    /// Sum over the real tokens divided by the square root of their count.
    MeanSqrtLen,
}

#[derive(Debug, Clone)]
pub struct PoolingConfig {
    pub mode: PoolingMode,
    /// A Normalize module follows the pooling: vectors have unit length.
    pub normalize: bool,
    /// sentence-transformers' `max_seq_length`: the longest input it embeds.
    pub max_seq_length: Option<usize>,
    /// Where the settings came from, for the start-up log.
    pub source: &'static str,
}

impl PoolingConfig {
    /// vLLM's default: `mode`, normalized.
    pub fn default_for(mode: PoolingMode) -> Self {
        PoolingConfig { mode, normalize: true, max_seq_length: None, source: "default (no modules.json)" }
    }

    /// Reads a sentence-transformers folder's module list and pooling settings; without
    /// them, `default_mode`, normalized.
    pub fn from_dir(dir: &Path, default_mode: PoolingMode) -> Result<Self, LoadError> {
        let bad = |path: &Path, msg: String| LoadError::Format { path: path.to_owned(), msg };
        let max_seq_length = read_json(&dir.join("sentence_bert_config.json"))?
            .and_then(|c| c.get("max_seq_length").and_then(Json::as_u64))
            .map(|v| v as usize);
        let modules_path = dir.join("modules.json");
        let Some(modules) = read_json(&modules_path)? else {
            return Ok(PoolingConfig { max_seq_length, ..Self::default_for(default_mode) });
        };
        let list = modules.as_array().ok_or_else(|| bad(&modules_path, "not a list of modules".into()))?;
        let mut mode = None;
        let mut normalize = false;
        for m in list {
            let ty = m.get("type").and_then(Json::as_str).unwrap_or("");
            let short = ty.rsplit('.').next().unwrap_or(ty);
            match short {
                "Transformer" => {}
                "Normalize" => normalize = true,
                "Pooling" => {
                    let sub = m.get("path").and_then(Json::as_str).unwrap_or("1_Pooling");
                    let path = dir.join(sub).join("config.json");
                    let cfg = read_json(&path)?.ok_or_else(|| bad(&path, "missing".into()))?;
                    mode = Some(pooling_mode(&cfg).map_err(|msg| bad(&path, msg))?);
                }
                other => {
                    return Err(bad(
                        &modules_path,
                        format!("sentence-transformers module {other:?} is not supported (Transformer, Pooling, Normalize are)"),
                    ));
                }
            }
        }
        Ok(PoolingConfig {
            mode: mode.unwrap_or(default_mode),
            normalize,
            max_seq_length,
            source: "modules.json",
        })
    }
}

fn pooling_mode(cfg: &Json) -> Result<PoolingMode, String> {
    let on = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
    let modes: Vec<PoolingMode> = [
        ("pooling_mode_mean_tokens", PoolingMode::Mean),
        ("pooling_mode_cls_token", PoolingMode::Cls),
        ("pooling_mode_lasttoken", PoolingMode::Last),
        ("pooling_mode_max_tokens", PoolingMode::Max),
        ("pooling_mode_mean_sqrt_len_tokens", PoolingMode::MeanSqrtLen),
    ]
    .into_iter()
    .filter(|(k, _)| on(k))
    .map(|(_, m)| m)
    .collect();
    if on("pooling_mode_weightedmean_tokens") {
        return Err("weighted-mean pooling is not supported (mean, cls, lasttoken, max, mean_sqrt_len are)".into());
    }
    match modes.as_slice() {
        [m] => Ok(*m),
        [] => Err("no pooling mode is switched on".into()),
        _ => Err("several pooling modes at once (concatenated) are not supported".into()),
    }
}

/// Pools hidden states `[B, L, H]` under a mask `[B, L]` (1 for real tokens) into float32
/// vectors `[B, H]`.
pub fn pool(hidden: &Tensor, mask: &Tensor, mode: PoolingMode) -> Tensor {
    let x = hidden.to_kind(Kind::Float);
    let m = mask.to_kind(Kind::Float).unsqueeze(-1); // [B, L, 1]
    let counts = mask.to_kind(Kind::Float).sum_dim_intlist([1i64].as_slice(), true, Kind::Float); // [B, 1]
    match mode {
        PoolingMode::Mean => (&x * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) / counts.clamp_min(1e-9),
        PoolingMode::MeanSqrtLen => {
            (&x * &m).sum_dim_intlist([1i64].as_slice(), false, Kind::Float) / counts.clamp_min(1e-9).sqrt()
        }
        PoolingMode::Cls => x.select(1, 0),
        PoolingMode::Last => {
            let last = (counts - 1.0).clamp_min(0.0).to_kind(Kind::Int64); // [B, 1]
            let h = x.size()[2];
            x.gather(1, &last.unsqueeze(-1).expand([-1, 1, h], false), false).squeeze_dim(1)
        }
        PoolingMode::Max => {
            let masked = x.masked_fill(&m.eq(0.0), f64::from(f32::MIN));
            masked.amax([1i64].as_slice(), false)
        }
    }
}

/// Softmax of one row.
pub fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = v.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Scales each row to unit length (rows of zeros stay zero), as `F.normalize` does.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_respect_the_mask() {
        // Two rows of three tokens, hidden 2; the second row has one padded token.
        let h = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 1., 1., 3., 3., 100., 100.]).view([2, 3, 2]);
        let mask = Tensor::from_slice(&[1f32, 1., 1., 1., 1., 0.]).view([2, 3]);
        let rows = |t: Tensor| -> Vec<f32> { Vec::try_from(t.reshape([-1])).unwrap() };
        assert_eq!(rows(pool(&h, &mask, PoolingMode::Mean)), vec![3., 4., 2., 2.]);
        assert_eq!(rows(pool(&h, &mask, PoolingMode::Cls)), vec![1., 2., 1., 1.]);
        assert_eq!(rows(pool(&h, &mask, PoolingMode::Last)), vec![5., 6., 3., 3.]);
        assert_eq!(rows(pool(&h, &mask, PoolingMode::Max)), vec![5., 6., 3., 3.]);
    }

    #[test]
    fn one_mode_is_required() {
        assert_eq!(pooling_mode(&serde_json::json!({"pooling_mode_mean_tokens": true})).unwrap(), PoolingMode::Mean);
        assert!(pooling_mode(&serde_json::json!({})).is_err());
        assert!(
            pooling_mode(&serde_json::json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true})).is_err()
        );
    }
}
