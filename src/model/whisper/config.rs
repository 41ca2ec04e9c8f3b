//! Whisper's shape: from a Hugging Face `config.json`, or, for a CTranslate2 folder (whose
//! `config.json` holds only token lists), from the weights themselves.

use serde_json::Value as Json;

use crate::model::ct2::Ct2Model;

#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_heads: usize,
    pub encoder_ffn: usize,
    pub decoder_layers: usize,
    pub decoder_heads: usize,
    pub decoder_ffn: usize,
    pub num_mel_bins: usize,
    /// Encoder positions (1500): the features have twice as many frames.
    pub max_source_positions: usize,
    /// Decoder positions (448): the longest prompt plus output.
    pub max_target_positions: usize,
    pub vocab_size: usize,
    /// The dtype the checkpoint was saved in, for `--dtype auto`.
    pub torch_dtype: Option<String>,
}

impl WhisperConfig {
    /// Mel frames one window of features has (3000 for 30 s).
    pub fn num_frames(&self) -> usize {
        2 * self.max_source_positions
    }

    pub fn encoder_head_dim(&self) -> usize {
        self.d_model / self.encoder_heads
    }

    pub fn decoder_head_dim(&self) -> usize {
        self.d_model / self.decoder_heads
    }

    pub fn from_hf(c: &Json) -> Result<Self, String> {
        let need = |k: &str| {
            c.get(k).and_then(Json::as_u64).map(|v| v as usize).ok_or_else(|| format!("config.json lacks a numeric {k}"))
        };
        let act = c.get("activation_function").and_then(Json::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return Err(format!("activation_function {act:?} is not supported (Whisper's gelu is)"));
        }
        if c.get("scale_embedding").and_then(Json::as_bool) == Some(true) {
            return Err("scale_embedding: true is not supported (Whisper checkpoints use false)".into());
        }
        let cfg = WhisperConfig {
            d_model: need("d_model")?,
            encoder_layers: need("encoder_layers")?,
            encoder_heads: need("encoder_attention_heads")?,
            encoder_ffn: need("encoder_ffn_dim")?,
            decoder_layers: need("decoder_layers")?,
            decoder_heads: need("decoder_attention_heads")?,
            decoder_ffn: need("decoder_ffn_dim")?,
            num_mel_bins: need("num_mel_bins")?,
            max_source_positions: need("max_source_positions")?,
            max_target_positions: need("max_target_positions")?,
            vocab_size: need("vocab_size")?,
            torch_dtype: c.get("torch_dtype").or_else(|| c.get("dtype")).and_then(Json::as_str).map(str::to_owned),
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// The shape of a CTranslate2 `WhisperSpec` model, read off its variables.
    pub fn from_ct2(m: &Ct2Model) -> Result<Self, String> {
        if m.spec != "WhisperSpec" {
            return Err(format!("the CTranslate2 model is a {:?}, not a WhisperSpec", m.spec));
        }
        let shape = |name: &str| {
            m.variable(name).map(|v| v.shape.clone()).ok_or_else(|| format!("the model lacks variable {name}"))
        };
        let dim = |name: &str, i: usize, rank: usize| -> Result<usize, String> {
            let s = shape(name)?;
            if s.len() != rank {
                return Err(format!("variable {name} has shape {s:?}, expected rank {rank}"));
            }
            Ok(s[i])
        };
        let layers = |prefix: &str| (0..).take_while(|i| m.variable(&format!("{prefix}/layer_{i}/ffn/linear_0/weight")).is_some()).count();
        let heads = |name: &str| -> Result<usize, String> {
            match m.scalar_int(name) {
                Some(h) if h > 0 => Ok(h as usize),
                _ => Err(format!("the model lacks a positive integer {name}")),
            }
        };
        let embed = "decoder/embeddings/weight";
        let cfg = WhisperConfig {
            d_model: dim(embed, 1, 2)?,
            encoder_layers: layers("encoder"),
            encoder_heads: heads("encoder/num_heads")?,
            encoder_ffn: dim("encoder/layer_0/ffn/linear_0/weight", 0, 2)?,
            decoder_layers: layers("decoder"),
            decoder_heads: heads("decoder/num_heads")?,
            decoder_ffn: dim("decoder/layer_0/ffn/linear_0/weight", 0, 2)?,
            num_mel_bins: dim("encoder/conv1/weight", 1, 3)?,
            max_source_positions: dim("encoder/position_encodings/encodings", 0, 2)?,
            max_target_positions: dim("decoder/position_encodings/encodings", 0, 2)?,
            vocab_size: dim(embed, 0, 2)?,
            torch_dtype: m.variable(embed).map(|v| v.dtype.torch_name().to_owned()),
        };
        if let Some(act) = m.scalar_int("decoder/activation") {
            // CTranslate2's ActivationType: 3 is GELU (erf), as Whisper uses.
            if act != 3 {
                return Err(format!("decoder/activation is {act}; only GELU (3) is supported"));
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let fields = [
            ("d_model", self.d_model),
            ("encoder_layers", self.encoder_layers),
            ("encoder heads", self.encoder_heads),
            ("decoder_layers", self.decoder_layers),
            ("decoder heads", self.decoder_heads),
            ("num_mel_bins", self.num_mel_bins),
            ("max_source_positions", self.max_source_positions),
            ("max_target_positions", self.max_target_positions),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        for (what, heads) in [("encoder", self.encoder_heads), ("decoder", self.decoder_heads)] {
            if self.d_model % heads != 0 {
                return Err(format!("d_model {} is not a multiple of the {what}'s {heads} heads", self.d_model));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_hugging_face_config() {
        let c = json!({"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
            "decoder_layers": 4, "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "num_mel_bins": 80,
            "max_source_positions": 1500, "max_target_positions": 448, "vocab_size": 51864, "torch_dtype": "float32"});
        let cfg = WhisperConfig::from_hf(&c).unwrap();
        assert_eq!((cfg.num_frames(), cfg.decoder_head_dim(), cfg.torch_dtype.as_deref()), (3000, 64, Some("float32")));
        let mut bad = c.clone();
        bad["encoder_attention_heads"] = json!(5);
        assert!(WhisperConfig::from_hf(&bad).unwrap_err().contains("not a multiple"));
        let mut bad = c;
        bad.as_object_mut().unwrap().remove("vocab_size");
        assert!(WhisperConfig::from_hf(&bad).unwrap_err().contains("vocab_size"));
    }
}
