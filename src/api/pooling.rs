//! Wire types of the pooling APIs as vLLM answers them: `/v1/embeddings`, `/pooling`,
//! `/classify`, `/score` and `/rerank`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `input` of embeddings, pooling and classification: text, texts, token ids, or lists
/// of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PoolingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `text_1` / `text_2` of a score request.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TextOrTexts {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_tokens_details: Option<Value>,
}

impl PoolingUsage {
    pub fn new(prompt_tokens: usize) -> Self {
        PoolingUsage { prompt_tokens, total_tokens: prompt_tokens, completion_tokens: 0, prompt_tokens_details: None }
    }
}

/// A list of floats, one list of floats per token, or their little-endian float32 bytes
/// (row after row) in base64.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Rows(Vec<Vec<f32>>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingData {
    pub index: usize,
    pub object: &'static str,
    pub embedding: Vector,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolingData {
    pub index: usize,
    pub object: &'static str,
    pub data: Vector,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifyData {
    pub index: usize,
    pub label: String,
    pub probs: Vec<f32>,
    pub num_classes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreData {
    pub index: usize,
    pub object: &'static str,
    pub score: f32,
}

/// The `{"id", "object": "list", "created", "model", "data", "usage"}` answer shared by
/// embeddings, pooling, classification and score.
#[derive(Debug, Clone, Serialize)]
pub struct ListResponse<T> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub data: Vec<T>,
    pub usage: PoolingUsage,
}

#[derive(Debug, Clone, Serialize)]
pub struct RerankDocument {
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RerankResult {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocument>,
    pub relevance_score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RerankUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    pub usage: RerankUsage,
    pub results: Vec<RerankResult>,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A float32 vector as base64 of its little-endian bytes (what `encoding_format:
/// "base64"` returns, and what the openai client decodes).
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }
}
