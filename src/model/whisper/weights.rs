//! A CTranslate2 Whisper's variables under Hugging Face names, so that one loader reads
//! both formats.
//!
//! CTranslate2 fuses the self-attention's Q, K and V (`self_attention/linear_0`: `[3·D, D]`)
//! and the cross-attention's K and V (`attention/linear_1`: `[2·D, D]`); they are split here
//! into `q_proj`, `k_proj`, `v_proj`. Its layer norms are `gamma`/`beta`, its output
//! projection an alias of the token embeddings.

use tch::Tensor;

use crate::model::LoadError;
use crate::model::ct2::Ct2Model;
use crate::model::weights::WeightSource;

pub struct Ct2Weights<'a> {
    pub model: &'a Ct2Model,
}

/// Where a Hugging Face tensor lives in the CTranslate2 file: a variable, or one of the
/// `parts` equal row blocks of a fused one.
struct Place {
    name: String,
    part: Option<(i64, i64)>,
}

fn place(hf: &str) -> Option<Place> {
    let whole = |name: String| Some(Place { name, part: None });
    let fixed = match hf {
        "model.encoder.conv1.weight" => "encoder/conv1/weight",
        "model.encoder.conv1.bias" => "encoder/conv1/bias",
        "model.encoder.conv2.weight" => "encoder/conv2/weight",
        "model.encoder.conv2.bias" => "encoder/conv2/bias",
        "model.encoder.embed_positions.weight" => "encoder/position_encodings/encodings",
        "model.encoder.layer_norm.weight" => "encoder/layer_norm/gamma",
        "model.encoder.layer_norm.bias" => "encoder/layer_norm/beta",
        "model.decoder.embed_tokens.weight" => "decoder/embeddings/weight",
        "model.decoder.embed_positions.weight" => "decoder/position_encodings/encodings",
        "model.decoder.layer_norm.weight" => "decoder/layer_norm/gamma",
        "model.decoder.layer_norm.bias" => "decoder/layer_norm/beta",
        "proj_out.weight" => "decoder/projection/weight",
        _ => "",
    };
    if !fixed.is_empty() {
        return whole(fixed.to_owned());
    }
    let (side, rest) = if let Some(r) = hf.strip_prefix("model.encoder.layers.") {
        ("encoder", r)
    } else {
        ("decoder", hf.strip_prefix("model.decoder.layers.")?)
    };
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let norm = |block: &str| {
        let s = match suffix {
            "weight" => "gamma",
            "bias" => "beta",
            _ => return None,
        };
        whole(format!("{side}/layer_{layer}/{block}/layer_norm/{s}"))
    };
    let linear = |block: &str, i: usize, part: Option<(i64, i64)>| {
        Some(Place { name: format!("{side}/layer_{layer}/{block}/linear_{i}/{suffix}"), part })
    };
    match module {
        "self_attn_layer_norm" => norm("self_attention"),
        "self_attn.q_proj" => linear("self_attention", 0, Some((0, 3))),
        "self_attn.k_proj" => linear("self_attention", 0, Some((1, 3))),
        "self_attn.v_proj" => linear("self_attention", 0, Some((2, 3))),
        "self_attn.out_proj" => linear("self_attention", 1, None),
        "encoder_attn_layer_norm" if side == "decoder" => norm("attention"),
        "encoder_attn.q_proj" if side == "decoder" => linear("attention", 0, None),
        "encoder_attn.k_proj" if side == "decoder" => linear("attention", 1, Some((0, 2))),
        "encoder_attn.v_proj" if side == "decoder" => linear("attention", 1, Some((1, 2))),
        "encoder_attn.out_proj" if side == "decoder" => linear("attention", 2, None),
        "final_layer_norm" => norm("ffn"),
        "fc1" => linear("ffn", 0, None),
        "fc2" => linear("ffn", 1, None),
        _ => None,
    }
}

impl WeightSource for Ct2Weights<'_> {
    fn get(&self, name: &str) -> Result<Option<Tensor>, LoadError> {
        let Some(p) = place(name) else { return Ok(None) };
        let Some(t) = self.model.tensor(&p.name) else { return Ok(None) };
        let Some((i, parts)) = p.part else { return Ok(Some(t)) };
        let rows = t.size().first().copied().unwrap_or(0);
        if rows % parts != 0 {
            return Err(LoadError::Format {
                path: self.model.path.clone(),
                msg: format!("fused variable {} has {rows} rows, not a multiple of {parts}", p.name),
            });
        }
        let n = rows / parts;
        Ok(Some(t.narrow(0, i * n, n).contiguous()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_ct2_variables() {
        let p = place("model.decoder.layers.3.encoder_attn.v_proj.bias").unwrap();
        assert_eq!((p.name.as_str(), p.part), ("decoder/layer_3/attention/linear_1/bias", Some((1, 2))));
        let p = place("model.encoder.layers.0.self_attn.k_proj.weight").unwrap();
        assert_eq!((p.name.as_str(), p.part), ("encoder/layer_0/self_attention/linear_0/weight", Some((1, 3))));
        let p = place("model.encoder.layers.1.final_layer_norm.bias").unwrap();
        assert_eq!(p.name, "encoder/layer_1/ffn/layer_norm/beta");
        assert!(place("model.encoder.layers.0.encoder_attn.q_proj.weight").is_none());
        assert!(place("lm_head.weight").is_none());
    }
}
