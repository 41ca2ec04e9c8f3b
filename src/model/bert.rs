//! BERT encoders in libtorch: `BertModel` (sentence-transformers embedding models such as
//! all-MiniLM-L6-v2) and `BertForSequenceClassification` (classifiers, cross-encoders), and
//! the RoBERTa family on the same skeleton: `XLMRobertaModel` (bge-m3) and
//! `XLMRobertaForSequenceClassification` (bge-reranker-base, bge-reranker-v2-m3). RoBERTa
//! differs in three places only: positions start after the padding id and skip pad tokens
//! (`padding_idx + 1 + the count of non-pad tokens before`, pad tokens at `padding_idx`),
//! there is one token type (transformers passes no `token_type_ids`, so all are 0), and the
//! classification head is named `classifier.dense` / `classifier.out_proj` (the same
//! Linear-tanh-Linear on the first token as BERT's pooler and classifier).
//!
//! One call encodes a batch of whole inputs: no KV cache, no causal mask. The inputs' tokens
//! are laid end to end for every dense operation and padded only for attention, where
//! padded positions are masked out (and out of pooling). The maths follows
//! transformers' `BertModel` operation for operation (post-norm layers, exact GELU), which
//! is what lets float32 output match it to ~1e-6.

use tch::{Device, Kind, Tensor};

use super::LoadError;
use super::weights::WeightSource;

/// Which encoder family a checkpoint is: the maths is shared, the details above differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    /// RoBERTa and XLM-RoBERTa, with the padding id their positions are counted from.
    Roberta { padding_idx: usize },
}

#[derive(Debug, Clone)]
pub struct BertConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub torch_dtype: Option<String>,
}

impl BertConfig {
    pub fn from_hf(cfg: &serde_json::Value) -> Result<Self, String> {
        let usize_of = |k: &str| cfg.get(k).and_then(serde_json::Value::as_u64).map(|v| v as usize);
        let need = |k: &str| usize_of(k).ok_or_else(|| format!("config.json lacks {k}"));
        let act = cfg.get("hidden_act").and_then(serde_json::Value::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return Err(format!("BERT hidden_act {act:?} is not supported (gelu is)"));
        }
        let pos = cfg.get("position_embedding_type").and_then(serde_json::Value::as_str).unwrap_or("absolute");
        if pos != "absolute" {
            return Err(format!("BERT position_embedding_type {pos:?} is not supported (absolute is)"));
        }
        let family = match cfg.get("model_type").and_then(serde_json::Value::as_str) {
            Some("xlm-roberta" | "roberta") => Family::Roberta { padding_idx: usize_of("pad_token_id").unwrap_or(1) },
            _ => Family::Bert,
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        if hidden_size % num_heads != 0 {
            return Err(format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"));
        }
        let max_position_embeddings = usize_of("max_position_embeddings").unwrap_or(512);
        if let Family::Roberta { padding_idx } = family {
            if max_position_embeddings <= padding_idx + 1 {
                return Err(format!(
                    "max_position_embeddings {max_position_embeddings} leaves no position after pad_token_id {padding_idx}"
                ));
            }
        }
        Ok(BertConfig {
            family,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            max_position_embeddings,
            type_vocab_size: usize_of("type_vocab_size").unwrap_or(2),
            layer_norm_eps: cfg.get("layer_norm_eps").and_then(serde_json::Value::as_f64).unwrap_or(1e-12),
            torch_dtype: cfg
                .get("torch_dtype")
                .or_else(|| cfg.get("dtype"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        })
    }
}

impl BertConfig {
    /// The longest input the position table allows: all of it for BERT; for RoBERTa, what
    /// is left after the positions up to the padding id (514 → 512, bge-m3's 8194 → 8192).
    pub fn max_input_len(&self) -> usize {
        match self.family {
            Family::Bert => self.max_position_embeddings,
            Family::Roberta { padding_idx } => self.max_position_embeddings - padding_idx - 1,
        }
    }

    /// The family's name, for logs and messages.
    pub fn family_name(&self) -> &'static str {
        match self.family {
            Family::Bert => "BERT",
            Family::Roberta { .. } => "XLM-RoBERTa",
        }
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

struct Layer {
    /// Query, key and value projections stacked: `[3·hidden, hidden]`.
    qkv: Tensor,
    qkv_bias: Tensor,
    out: Tensor,
    out_bias: Tensor,
    attn_norm: Norm,
    up: Tensor,
    up_bias: Tensor,
    down: Tensor,
    down_bias: Tensor,
    mlp_norm: Norm,
}

/// The classification head: a Linear and tanh over the first token (`[CLS]`, `<s>`), then
/// a linear layer to the labels — BERT's `pooler` + `classifier`, RoBERTa's
/// `classifier.dense` + `classifier.out_proj`.
struct Head {
    pooler: Tensor,
    pooler_bias: Tensor,
    classifier: Tensor,
    classifier_bias: Tensor,
}

pub struct Bert {
    pub cfg: BertConfig,
    pub device: Device,
    pub dtype: Kind,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
    head: Option<Head>,
}

/// A batch's real tokens end to end, and where each sits in the padded grid.
struct Packed {
    /// Token ids, token types and positions: the real tokens, then filler rows up to
    /// `rows` (see `token_rows`).
    ids: Tensor,
    types: Tensor,
    positions: Tensor,
    /// Row in the flattened `[B·L]` grid of each real token.
    slots: Tensor,
    /// `slots`, then slot 0 for each filler row: gathers the grid back into `rows` rows.
    gather: Tensor,
    mask: Tensor,
    batch: i64,
    len: i64,
    /// Real tokens.
    tokens: i64,
    /// Rows every dense operation runs on: `tokens` rounded up by `token_rows`.
    rows: i64,
}

/// The row count the dense operations of a batch of `tokens` tokens run on: `tokens`
/// rounded up to a multiple of 16, or of a sixteenth of the power of two at or above it,
/// whichever is larger (under 12.5% filler above 128 tokens), so that the server meets few
/// matrix-product shapes (see `linear::round_rows` for why that bounds its memory).
pub fn token_rows(tokens: usize) -> usize {
    super::linear::round_rows(tokens, 16)
}

/// One input of a batch: token ids and their segment (token type) ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncoderInput {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// A vision model's images, in the order of their placeholders in `ids`.
    pub images: Vec<super::qwen2_vl::ImageInput>,
}

impl Bert {
    /// Loads the encoder; `with_head` also loads the sequence-classification head.
    /// Weight names may carry a `bert.` / `roberta.` prefix (task models) or none (`BertModel`,
    /// `XLMRobertaModel`).
    pub fn load(
        cfg: BertConfig,
        src: &dyn WeightSource,
        with_head: bool,
        device: Device,
        dtype: Kind,
    ) -> Result<Self, LoadError> {
        let _guard = tch::no_grad_guard();
        let mut prefix = "";
        for p in ["bert.", "roberta."] {
            if src.contains(&format!("{p}embeddings.word_embeddings.weight"))? {
                prefix = p;
            }
        }
        let get = |name: &str| -> Result<Tensor, LoadError> {
            src.get(name)?.ok_or_else(|| LoadError::MissingTensor(name.to_string()))
        };
        let place = |t: Tensor| t.to_device(device).to_kind(dtype).contiguous();
        let w = |name: &str| get(&format!("{prefix}{name}")).map(place);
        // Old checkpoints name LayerNorm parameters gamma/beta.
        let norm = |name: &str| -> Result<Norm, LoadError> {
            let weight = match src.get(&format!("{prefix}{name}.weight"))? {
                Some(t) => t,
                None => get(&format!("{prefix}{name}.gamma"))?,
            };
            let bias = match src.get(&format!("{prefix}{name}.bias"))? {
                Some(t) => t,
                None => get(&format!("{prefix}{name}.beta"))?,
            };
            Ok(Norm { weight: place(weight), bias: place(bias) })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.layer.{i}");
            let raw = |n: &str| get(&format!("{prefix}{p}.{n}"));
            let qkv = Tensor::cat(
                &[raw("attention.self.query.weight")?, raw("attention.self.key.weight")?, raw("attention.self.value.weight")?],
                0,
            );
            let qkv_bias = Tensor::cat(
                &[raw("attention.self.query.bias")?, raw("attention.self.key.bias")?, raw("attention.self.value.bias")?],
                0,
            );
            layers.push(Layer {
                qkv: place(qkv),
                qkv_bias: place(qkv_bias),
                out: w(&format!("{p}.attention.output.dense.weight"))?,
                out_bias: w(&format!("{p}.attention.output.dense.bias"))?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: w(&format!("{p}.intermediate.dense.weight"))?,
                up_bias: w(&format!("{p}.intermediate.dense.bias"))?,
                down: w(&format!("{p}.output.dense.weight"))?,
                down_bias: w(&format!("{p}.output.dense.bias"))?,
                mlp_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let head = match (with_head, cfg.family) {
            (false, _) => None,
            (true, Family::Bert) => Some(Head {
                pooler: w("pooler.dense.weight")?,
                pooler_bias: w("pooler.dense.bias")?,
                classifier: place(get("classifier.weight")?),
                classifier_bias: place(get("classifier.bias")?),
            }),
            (true, Family::Roberta { .. }) => Some(Head {
                pooler: place(get("classifier.dense.weight")?),
                pooler_bias: place(get("classifier.dense.bias")?),
                classifier: place(get("classifier.out_proj.weight")?),
                classifier_bias: place(get("classifier.out_proj.bias")?),
            }),
        };
        Ok(Bert {
            word: w("embeddings.word_embeddings.weight")?,
            position: w("embeddings.position_embeddings.weight")?,
            token_type: w("embeddings.token_type_embeddings.weight")?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            head,
            cfg,
            device,
            dtype,
        })
    }

    /// Labels of the classification head, when loaded.
    pub fn num_labels(&self) -> Option<usize> {
        self.head.as_ref().map(|h| h.classifier.size()[0] as usize)
    }

    fn layer_norm(&self, x: &Tensor, n: &Norm) -> Tensor {
        x.layer_norm([self.cfg.hidden_size as i64], Some(&n.weight), Some(&n.bias), self.cfg.layer_norm_eps, false)
    }

    /// Lays a batch out for `encode`: the real tokens end to end (ids, type ids,
    /// positions), where each sits in the padded `[B, L]` grid, and the grid's mask.
    fn pack(&self, inputs: &[&EncoderInput]) -> Packed {
        let len = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0).max(1);
        let b = inputs.len();
        let total: usize = inputs.iter().map(|i| i.ids.len()).sum();
        let (mut ids, mut types, mut positions, mut slots) =
            (Vec::with_capacity(total), Vec::with_capacity(total), Vec::with_capacity(total), Vec::with_capacity(total));
        let mut mask = vec![0f32; b * len];
        for (r, input) in inputs.iter().enumerate() {
            // RoBERTa: pad tokens sit at `padding_idx`, the others count on from it.
            let mut counted = 0i64;
            for (c, &t) in input.ids.iter().enumerate() {
                ids.push(t as i64);
                let (ty, pos) = match self.cfg.family {
                    Family::Bert => (input.type_ids.get(c).copied().unwrap_or(0) as i64, c as i64),
                    Family::Roberta { padding_idx } if t as usize == padding_idx => (0, padding_idx as i64),
                    Family::Roberta { padding_idx } => {
                        counted += 1;
                        (0, padding_idx as i64 + counted)
                    }
                };
                types.push(ty);
                positions.push(pos);
                slots.push((r * len + c) as i64);
                mask[r * len + c] = 1.0;
            }
        }
        // Filler rows (token 0, type 0, position 0) bring the row count to a few shapes;
        // their outputs are never read back.
        let rows = token_rows(total);
        let mut gather = slots.clone();
        for v in [&mut ids, &mut types, &mut positions, &mut gather] {
            v.resize(rows, 0);
        }
        let dev = self.device;
        let t = |v: &[i64]| Tensor::from_slice(v).to_device(dev);
        Packed {
            ids: t(&ids),
            types: t(&types),
            positions: t(&positions),
            slots: t(&slots),
            gather: t(&gather),
            mask: Tensor::from_slice(&mask).view([b as i64, len as i64]).to_device(dev),
            batch: b as i64,
            len: len as i64,
            tokens: total as i64,
            rows: rows as i64,
        }
    }

    /// The last hidden states `[B, L, hidden]` of a batch (zeros at padded positions),
    /// and its mask `[B, L]` (float32, 1 for real tokens).
    ///
    /// Only attention needs the padded grid: the projections, norms and MLP run on the
    /// real tokens end to end (and a few filler rows, see `token_rows`), so inputs of
    /// different lengths waste no work there.
    pub fn encode(&self, inputs: &[&EncoderInput]) -> (Tensor, Tensor) {
        let _guard = tch::no_grad_guard();
        let p = self.pack(inputs);
        let (b, l) = (p.batch, p.len);
        let hidden = self.cfg.hidden_size as i64;
        let heads = self.cfg.num_heads as i64;
        let d = hidden / heads;
        let x = self.word.index_select(0, &p.ids)
            + self.position.index_select(0, &p.positions)
            + self.token_type.index_select(0, &p.types);
        let mut x = self.layer_norm(&x, &self.embed_norm); // [rows, hidden]
        // Inputs of one length (a batch of one, say) need no mask, and when they also
        // fill the rows exactly, no scatter or gather.
        let padded = inputs.iter().any(|i| i.ids.len() as i64 != l);
        let scattered = padded || p.rows != b * l;
        // Padded keys are masked out; padded queries are dropped when gathering back.
        let attend = padded.then(|| p.mask.to_kind(Kind::Bool).view([b, 1, 1, l]));
        let grid = |t: &Tensor, width: i64| {
            if scattered {
                Tensor::zeros([b * l, width], (t.kind(), t.device())).index_copy(0, &p.slots, &t.narrow(0, 0, p.tokens))
            } else {
                t.shallow_clone()
            }
        };
        for layer in &self.layers {
            let qkv = grid(&x.linear(&layer.qkv, Some(&layer.qkv_bias)), 3 * hidden);
            let parts = qkv.split(hidden, -1);
            let split = |t: &Tensor| t.view([b, l, heads, d]).transpose(1, 2);
            let (q, k, v) = (split(&parts[0]), split(&parts[1]), split(&parts[2]));
            let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, attend.as_ref(), 0.0, false, None, false);
            let ctx = ctx.transpose(1, 2).reshape([b * l, hidden]);
            let ctx = if scattered { ctx.index_select(0, &p.gather) } else { ctx };
            let attn = self.layer_norm(&(ctx.linear(&layer.out, Some(&layer.out_bias)) + &x), &layer.attn_norm);
            let up = attn.linear(&layer.up, Some(&layer.up_bias)).gelu("none");
            x = self.layer_norm(&(up.linear(&layer.down, Some(&layer.down_bias)) + &attn), &layer.mlp_norm);
        }
        (grid(&x, hidden).view([b, l, hidden]), p.mask)
    }

    /// Classifier logits `[B, labels]` in float32 (the head must be loaded).
    pub fn classify(&self, inputs: &[&EncoderInput]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let head = self.head.as_ref().expect("classify needs the classification head");
        let (x, _) = self.encode(inputs);
        let cls = x.select(1, 0);
        let pooled = cls.linear(&head.pooler, Some(&head.pooler_bias)).tanh();
        pooled.linear(&head.classifier, Some(&head.classifier_bias)).to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::token_rows;

    #[test]
    fn token_rows_are_few_shapes_with_little_filler() {
        assert_eq!(token_rows(0), 16);
        assert_eq!(token_rows(1), 16);
        assert_eq!(token_rows(16), 16);
        assert_eq!(token_rows(17), 32);
        assert_eq!(token_rows(128), 128);
        assert_eq!(token_rows(129), 144);
        assert_eq!(token_rows(1000), 1024);
        assert_eq!(token_rows(1025), 1152);
        let mut shapes = std::collections::BTreeSet::new();
        for t in 1..=8192 {
            let r = token_rows(t);
            assert!(r >= t);
            if t > 128 {
                assert!((r - t) * 8 < t, "{t} -> {r}");
            }
            shapes.insert(r);
        }
        // 8 up to 128, then 8 per doubling.
        assert_eq!(shapes.len(), 8 + 8 * 6);
    }
}
