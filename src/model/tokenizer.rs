//! The model's tokenizer: Hugging Face `tokenizers`, loaded from a `tokenizer.json` or
//! rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! A GGUF carries the vocabulary, merges and token types but names its pre-tokenizer only
//! by a tag (`tokenizer.ggml.pre`); `pre_tokenizer_for` maps the tags we know to the same
//! pipeline Hugging Face uses, since a wrong one silently changes ids (digits, whitespace).

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::LoadError;
use super::gguf::{GgufFile, Value};

/// Special tokens and how to add them, as far as the engine needs to know.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    pub pad: Option<u32>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    special_ids: HashSet<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size).finish()
    }
}

impl Tokenizer {
    fn new(mut inner: tokenizers::Tokenizer, special: SpecialTokens) -> Self {
        // Engines pad and truncate themselves; a tokenizer.json that switches either on
        // (all-MiniLM ships padding to 128) must not change what `encode` returns.
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let vocab_size = inner.get_vocab_size(true);
        Tokenizer { inner, special, special_ids, vocab_size }
    }

    /// Loads `tokenizer.json`, taking BOS/EOS names from `tokenizer_config.json` when given.
    pub fn from_hf_file(path: &Path, config: Option<&Json>) -> Result<Self, LoadError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| LoadError::Format { path: path.to_owned(), msg: e.to_string() })?;
        let named = |key: &str| -> Option<(u32, String)> {
            let v = config?.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(Json::as_str))?;
            Some((inner.token_to_id(s)?, s.to_string()))
        };
        let special = SpecialTokens {
            bos: named("bos_token"),
            eos: named("eos_token"),
            pad: named("pad_token").map(|(id, _)| id),
        };
        Ok(Self::new(inner, special))
    }

    /// Rebuilds the tokenizer a GGUF file describes.
    pub fn from_gguf(gguf: &GgufFile, path: &Path) -> Result<Self, LoadError> {
        let bad = |msg: String| LoadError::Format { path: path.to_owned(), msg };
        let model = gguf.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(bad(format!(
                "GGUF tokenizer model {model:?} is not supported yet (byte-level BPE, \"gpt2\", is)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, LoadError> {
            let arr = gguf.get(key).and_then(Value::as_array).ok_or_else(|| bad(format!("missing {key}")))?;
            arr.iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{key}: not strings"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let (normalizer, pre_tokenizer) = pre_tokenizer_for(pre).ok_or_else(|| {
            bad(format!("GGUF pre-tokenizer {pre:?} is not supported yet"))
        })?;

        let id = |key: &str| gguf.get_u64(key).map(|v| v as u32);
        let named = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize).map(|s| (i, s.clone())));
        let special = SpecialTokens {
            bos: named(id("tokenizer.ggml.bos_token_id")),
            eos: named(id("tokenizer.ggml.eos_token_id")),
            pad: id("tokenizer.ggml.padding_token_id"),
        };
        let add_bos = gguf.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false);

        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (i, tok) in tokens.iter().enumerate() {
            vocab.insert(tok.clone(), json!(i));
            // 3 = control, 4 = user-defined: matched whole in text, like HF's added tokens.
            let ty = types.get(i).copied().unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(json!({
                    "id": i, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": ty == 4, "special": ty == 3,
                }));
            }
        }
        let post_processor = match (&special.bos, add_bos) {
            (Some((bos_id, bos)), true) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.as_str(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            }),
            _ => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
        };
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| bad(format!("rebuilding the tokenizer: {e}")))?;
        Ok(Self::new(inner, special))
    }

    /// Token ids of `text`; `add_special_tokens` adds BOS/EOS as the tokenizer's own
    /// post-processor says (for SmolLM2: nothing).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Token ids and segment ids of a text or a (text, pair) input, as an encoder takes
    /// them. With `max_len`, content is cut from the right (the longer side first for
    /// pairs) so that the result, special tokens included, has at most `max_len` tokens.
    pub fn encode_for_encoder(
        &self,
        text: &str,
        pair: Option<&str>,
        add_special_tokens: bool,
        max_len: Option<usize>,
    ) -> Result<(Vec<u32>, Vec<u32>), String> {
        use tokenizers::PostProcessor;
        use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy, truncate_encodings};
        let err = |e: tokenizers::Error| e.to_string();
        let enc = match (pair, max_len) {
            (None, None) => self.inner.encode_fast(text, add_special_tokens).map_err(err)?,
            (Some(p), None) => self.inner.encode_fast((text, p), add_special_tokens).map_err(err)?,
            (_, Some(max)) => {
                let first = self.inner.encode_fast(text, false).map_err(err)?;
                let second = pair.map(|p| self.inner.encode_fast(p, false)).transpose().map_err(err)?;
                let added = match (add_special_tokens, self.inner.get_post_processor()) {
                    (true, Some(pp)) => pp.added_tokens(second.is_some()),
                    _ => 0,
                };
                if max < added + 1 {
                    return Err(format!("{max} tokens leave no room for the text besides {added} special tokens"));
                }
                let params = TruncationParams {
                    direction: TruncationDirection::Right,
                    max_length: max - added,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                };
                let (first, second) = truncate_encodings(first, second, &params).map_err(err)?;
                self.inner.post_process(first, second, add_special_tokens).map_err(err)?
            }
        };
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        self.inner.decode(ids, skip_special_tokens).unwrap_or_default()
    }

    /// The vocabulary string of one id (byte-level form, e.g. `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The tokenizer in `tokenizer.json` form.
    pub fn to_json(&self) -> Result<String, String> {
        self.inner.to_string(false).map_err(|e| e.to_string())
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// (normalizer, pre_tokenizer) in tokenizer.json form for a GGUF `tokenizer.ggml.pre` tag.
fn pre_tokenizer_for(pre: &str) -> Option<(Json, Json)> {
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    };
    let split = |pattern: &str| {
        json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
    };
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => (Json::Null, byte_level(true)),
        // GPT-2's regex after splitting every digit off on its own.
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "command-r" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "llama3" | "llama-v3" | "llama-bpe" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
        ),
        _ => return None,
    })
}
