//! Whisper's decoding rules as a per-row logits processor, in the order transformers'
//! `generate` (and openai-whisper) applies them:
//!
//! 1. `begin_suppress_tokens` at the first generated position (no leading blank, no empty
//!    transcript);
//! 2. `suppress_tokens` always;
//! 3. with timestamps, the timestamp rules: `<|notimestamps|>` never; timestamps come in
//!    pairs (after a lone timestamp the next token is a timestamp or the end, after a pair
//!    it is text); timestamps never go back; the first token is a timestamp no later than
//!    `max_initial_timestamp_index`; and when the timestamps together are more likely than
//!    the best text token, a timestamp it is.
//!
//! Each rule looks only at the tokens generated so far, so the engine's sampler can run it
//! on any row of a batch (`apply` on a float32 row, before sampling).

use std::ops::Range;

use super::tokens::WhisperTokens;

#[derive(Debug, Clone)]
pub struct DecodeRules {
    vocab: u32,
    eot: u32,
    suppress: Vec<u32>,
    begin_suppress: Vec<u32>,
    timestamps: Option<TimestampRules>,
}

#[derive(Debug, Clone)]
struct TimestampRules {
    begin: u32,
    no_timestamps: u32,
    max_initial: Option<u32>,
}

impl DecodeRules {
    pub fn new(t: &WhisperTokens, timestamps: bool) -> Self {
        DecodeRules {
            vocab: t.vocab_size,
            eot: t.eot,
            suppress: t.suppress.clone(),
            begin_suppress: t.begin_suppress.clone(),
            timestamps: timestamps.then(|| TimestampRules {
                begin: t.timestamp_begin(),
                no_timestamps: t.no_timestamps,
                max_initial: t.max_initial_timestamp_index,
            }),
        }
    }

    /// The rules' token bans at a step, given the tokens generated so far (after the
    /// prompt): single ids and ranges. The likelihood rule (timestamps over text) is not
    /// here: it needs the row (`apply`).
    pub fn banned(&self, generated: &[u32]) -> (Vec<u32>, Vec<Range<u32>>) {
        let mut ids = self.suppress.clone();
        let mut ranges = Vec::new();
        if generated.is_empty() {
            ids.extend(&self.begin_suppress);
        }
        if let Some(ts) = &self.timestamps {
            ids.push(ts.no_timestamps);
            let is_ts = |t: u32| t >= ts.begin;
            let last = generated.last().is_some_and(|&t| is_ts(t));
            let penultimate = generated.len() < 2 || is_ts(generated[generated.len() - 2]);
            if last {
                if penultimate {
                    ranges.push(ts.begin..self.vocab);
                } else {
                    ranges.push(0..self.eot);
                }
            }
            if let Some(&latest) = generated.iter().rev().find(|&&t| is_ts(t)) {
                // Timestamps do not go back; after a pair, not even to the same time.
                let floor = if last && !penultimate { latest } else { latest + 1 };
                ranges.push(ts.begin..floor.min(self.vocab));
            }
            if generated.is_empty() {
                ranges.push(0..ts.begin);
                if let Some(m) = ts.max_initial {
                    ranges.push((ts.begin + m + 1).min(self.vocab)..self.vocab);
                }
            }
        }
        (ids, ranges)
    }

    /// Applies every rule to one float32 row of logits (`vocab` wide) in place.
    pub fn apply(&self, generated: &[u32], row: &mut [f32]) {
        let (ids, ranges) = self.banned(generated);
        for id in ids {
            if let Some(x) = row.get_mut(id as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        for r in ranges {
            let (a, b) = ((r.start as usize).min(row.len()), (r.end as usize).min(row.len()));
            if a < b {
                row[a..b].fill(f32::NEG_INFINITY);
            }
        }
        if let Some(ts) = &self.timestamps {
            let begin = (ts.begin as usize).min(row.len());
            // log-sum-exp over the timestamps against the best text token, both as
            // log-probabilities (the shared normaliser cancels).
            let (text, stamps) = row.split_at(begin);
            let best_text = text.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let top = stamps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if top > f32::NEG_INFINITY {
                let sum: f64 = stamps.iter().map(|&x| ((x - top) as f64).exp()).sum();
                let stamp_mass = top as f64 + sum.ln();
                if stamp_mass > best_text as f64 {
                    row[..begin].fill(f32::NEG_INFINITY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> WhisperTokens {
        WhisperTokens {
            eot: 300,
            sot: 301,
            sot_prev: Some(308),
            sot_lm: Some(307),
            no_speech: Some(309),
            no_timestamps: 310,
            transcribe: Some(306),
            translate: Some(305),
            languages: vec![("en".into(), 302)],
            multilingual: true,
            suppress: vec![1, 2],
            begin_suppress: vec![220, 300],
            max_initial_timestamp_index: Some(50),
            vocab_size: 411,
        }
    }

    /// Which tokens survive the rules, on a row where text outweighs the timestamps (so
    /// that the likelihood rule stays out of the way).
    fn allowed(rules: &DecodeRules, generated: &[u32]) -> Vec<bool> {
        let mut row = vec![0.0f32; 411];
        row[311..].fill(-50.0);
        rules.apply(generated, &mut row);
        row.iter().map(|x| x.is_finite()).collect()
    }

    #[test]
    fn suppression_without_timestamps() {
        let r = DecodeRules::new(&tokens(), false);
        let first = allowed(&r, &[]);
        assert!(!first[1] && !first[220] && !first[300] && first[3] && first[336] && first[310]);
        let later = allowed(&r, &[5]);
        assert!(!later[1] && later[220] && later[300]);
    }

    #[test]
    fn timestamp_rules() {
        let r = DecodeRules::new(&tokens(), true);
        // First token: a timestamp from 0.00 to 1.00 s (index 50).
        let a = allowed(&r, &[]);
        assert!(!a[5] && !a[300] && a[311] && a[361] && !a[362] && !a[310]);
        // After a lone timestamp at the start: text, not another timestamp.
        let a = allowed(&r, &[320]);
        assert!(a[5] && !a[321] && !a[320]);
        // After text then a timestamp: a timestamp (closing at it or later) or the end.
        let a = allowed(&r, &[320, 5, 330]);
        assert!(!a[5] && a[300] && a[330] && a[340] && !a[329]);
        // After a closed pair: text, or a timestamp strictly later.
        let a = allowed(&r, &[320, 5, 330, 330]);
        assert!(!a[330] && !a[331]);
        let a = allowed(&r, &[320, 5, 330, 330, 7]);
        assert!(a[5] && !a[330] && a[331]);
    }

    #[test]
    fn likely_timestamps_win_over_text() {
        let r = DecodeRules::new(&tokens(), true);
        let mut row = vec![-10.0f32; 411];
        row[5] = 1.0;
        // 100 timestamps at 0.0 each: log-sum ≈ 4.6 > 1.0.
        row[311..].fill(0.0);
        r.apply(&[320, 5], &mut row);
        assert!(row[5] == f32::NEG_INFINITY && row[330].is_finite());
        let mut row = vec![-10.0f32; 411];
        row[5] = 6.0;
        row[311..].fill(0.0);
        r.apply(&[320, 5], &mut row);
        assert!(row[5].is_finite());
    }
}
