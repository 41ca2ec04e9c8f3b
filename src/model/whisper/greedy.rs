//! A plain greedy loop over Whisper's batched step, for tests and references: every
//! request's prompt is prefilled in one step, then all unfinished requests decode one token
//! per step together, through the paged KV cache and per-request cross-attention, as the
//! engine will run them. The rules (`DecodeRules`) are applied per row before the argmax.

use tch::Kind;

use super::Whisper;
use super::decoder::{CrossKv, StepError};
use super::prompt;
use super::rules::DecodeRules;
use super::tokens::WhisperTokens;
use crate::model::batch::{SeqChunk, StepBatch};

pub struct GreedyRequest<'a> {
    /// This request's encoder output `[source_len, D]`'s keys and values.
    pub cross: &'a CrossKv,
    pub prompt: Vec<u32>,
    pub rules: DecodeRules,
    pub max_new_tokens: usize,
}

const BLOCK: usize = 16;

/// Greedy tokens of each request (the end-of-text token included when reached).
pub fn greedy(model: &Whisper, eot: u32, requests: &[GreedyRequest]) -> Result<Vec<Vec<u32>>, StepError> {
    let max_pos = model.cfg.max_target_positions;
    // Block 0 is the cache's padding block; each request gets its own run of blocks.
    let mut tables = Vec::with_capacity(requests.len());
    let mut next = 1u32;
    for r in requests {
        let len = (r.prompt.len() + r.max_new_tokens).min(max_pos);
        let n = len.div_ceil(BLOCK) as u32;
        tables.push((next..next + n).collect::<Vec<u32>>());
        next += n;
    }
    let mut cache = model.decoder.new_cache(next as usize, BLOCK);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
    let mut done: Vec<bool> = requests.iter().map(|r| r.max_new_tokens == 0 || r.prompt.len() >= max_pos).collect();
    let mut first = true;
    loop {
        let live: Vec<usize> = (0..requests.len()).filter(|&i| !done[i]).collect();
        if live.is_empty() {
            return Ok(out);
        }
        let chunks: Vec<SeqChunk> = live
            .iter()
            .map(|&i| {
                let r = &requests[i];
                let (tokens, cached) = if first {
                    (r.prompt.clone(), 0)
                } else {
                    (vec![*out[i].last().expect("a decoding request has output")], r.prompt.len() + out[i].len() - 1)
                };
                SeqChunk { logits_for: vec![tokens.len() - 1], tokens, cached, block_table: tables[i].clone(), prompt_len: r.prompt.len() }
            })
            .collect();
        first = false;
        let batch = StepBatch::new(&chunks, BLOCK);
        let cross: Vec<&CrossKv> = live.iter().map(|&i| requests[i].cross).collect();
        let logits = model.decoder.forward(&batch, &mut cache, &cross)?;
        let rows: Vec<Vec<f32>> = Vec::try_from(logits.to_kind(Kind::Float).to_device(tch::Device::Cpu)).expect("float32 logits");
        for (row, &i) in rows.into_iter().zip(&live) {
            let mut row = row;
            requests[i].rules.apply(&out[i], &mut row);
            let token = argmax(&row);
            out[i].push(token);
            let len = requests[i].prompt.len() + out[i].len();
            if token == eot || out[i].len() >= requests[i].max_new_tokens || len >= max_pos {
                done[i] = true;
            }
        }
    }
}

/// The detected language token of each encoder output, from the first step after
/// `<|startoftranscript|>` (a one-token greedy run restricted to the language tokens).
pub fn detect_languages(model: &Whisper, tokens: &WhisperTokens, cross: &[&CrossKv]) -> Result<Vec<Option<u32>>, StepError> {
    let p = prompt::language_detection_prompt(tokens);
    let blocks_each = p.len().div_ceil(BLOCK);
    let chunks: Vec<SeqChunk> = (0..cross.len())
        .map(|i| SeqChunk {
            tokens: p.clone(),
            cached: 0,
            block_table: (0..blocks_each).map(|b| (1 + i * blocks_each + b) as u32).collect(),
            logits_for: vec![p.len() - 1],
            prompt_len: p.len(),
        })
        .collect();
    let mut cache = model.decoder.new_cache(1 + cross.len() * blocks_each, BLOCK);
    let logits = model.decoder.forward(&StepBatch::new(&chunks, BLOCK), &mut cache, cross)?;
    let rows: Vec<Vec<f32>> = Vec::try_from(logits.to_device(tch::Device::Cpu)).expect("float32 logits");
    Ok(rows.iter().map(|r| prompt::detect_language(tokens, r)).collect())
}

/// The first index of the largest value (NaN never wins).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best as u32
}
