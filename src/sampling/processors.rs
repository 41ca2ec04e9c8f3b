//! Logits processors: what changes a row of logits before a token is chosen, in vLLM's
//! order — the structured-output mask, the allowed-token mask, banned tokens (bad words, and EOS/stop tokens before
//! `min_tokens`), `logit_bias`, then the repetition, frequency and presence penalties.
//! Logprobs are still reported from the raw logits (vLLM's default `raw_logprobs`).

use tch::{Kind, Tensor};

use super::SamplingParams;
use crate::guided::TokenMask;

/// What one row needs besides its parameters: the tokens it has seen and the tokens that
/// are banned at this step.
pub struct RowContext<'a> {
    pub prompt: &'a [u32],
    pub output: &'a [u32],
    pub banned: Vec<u32>,
    /// The tokens a structured-output constraint allows at this step.
    pub mask: Option<&'a TokenMask>,
}

impl RowContext<'_> {
    fn is_plain(&self, p: &SamplingParams) -> bool {
        self.mask.is_none() && self.banned.is_empty() && p.allowed_token_ids.is_none() && p.logit_bias.is_empty() && !p.has_penalties()
    }
}

/// Processors a request can name in `logits_processors`, vLLM's field: a name, or
/// `{"qualname": name, "args": [...], "kwargs": {...}}` as vLLM's constructor objects.
#[derive(Debug, Clone, PartialEq)]
pub enum Builtin {
    /// `no_repeat_ngram` (or transformers' `NoRepeatNGramLogitsProcessor`): no n-gram of
    /// this size occurs twice in the prompt and output together, as transformers' rule.
    NoRepeatNGram(usize),
}

/// The names `Builtin::parse` knows, for error messages.
pub const BUILTIN_NAMES: &str = "no_repeat_ngram (ngram_size)";

impl Builtin {
    /// One entry of `logits_processors`; the error says what is wrong with it.
    pub fn parse(v: &serde_json::Value) -> Result<Builtin, String> {
        use serde_json::Value;
        let (name, args, kwargs) = match v {
            Value::String(s) => (s.as_str(), &[][..], None),
            Value::Object(o) => {
                let name = o.get("qualname").and_then(Value::as_str).ok_or("an object entry needs a string `qualname`")?;
                let args = match o.get("args") {
                    None | Some(Value::Null) => &[][..],
                    Some(Value::Array(a)) => a.as_slice(),
                    Some(_) => return Err("`args` must be a list".into()),
                };
                let kwargs = match o.get("kwargs") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(k)) => Some(k),
                    Some(_) => return Err("`kwargs` must be an object".into()),
                };
                (name, args, kwargs)
            }
            _ => return Err("each entry must be a name or a {qualname, args, kwargs} object".into()),
        };
        match name.rsplit('.').next().unwrap_or(name) {
            "no_repeat_ngram" | "NoRepeatNGramLogitsProcessor" => {
                let size = args.first().or_else(|| kwargs.and_then(|k| k.get("ngram_size")));
                match size.and_then(Value::as_u64) {
                    Some(n) if n >= 1 => Ok(Builtin::NoRepeatNGram(n as usize)),
                    _ => Err(format!("`{name}` needs a positive integer `ngram_size` (first of `args`, or in `kwargs`)")),
                }
            }
            _ => Err(format!("unknown logits processor `{name}`; the built-in ones are: {BUILTIN_NAMES}")),
        }
    }

    /// Tokens this processor bans after `history` (prompt then output).
    fn banned(&self, prompt: &[u32], output: &[u32], into: &mut Vec<u32>) {
        match *self {
            Builtin::NoRepeatNGram(n) => {
                let len = prompt.len() + output.len();
                if n == 0 || len + 1 < n {
                    return;
                }
                let at = |i: usize| if i < prompt.len() { prompt[i] } else { output[i - prompt.len()] };
                // The n-1 tokens that would start the next n-gram, against every earlier
                // n-gram's first n-1 tokens.
                let tail = len + 1 - n;
                for start in 0..tail {
                    if (0..n - 1).all(|k| at(start + k) == at(tail + k)) {
                        into.push(at(start + n - 1));
                    }
                }
            }
        }
    }
}

/// The tokens a sequence may not produce next: EOS and stop tokens while fewer than
/// `min_tokens` have been generated, the last token of every bad word whose other
/// tokens end the output, and what the request's built-in processors ban.
pub fn banned_tokens(p: &SamplingParams, prompt: &[u32], output: &[u32], eos_ids: &[u32]) -> Vec<u32> {
    let mut banned = Vec::new();
    if output.len() < p.min_tokens {
        if !p.ignore_eos {
            banned.extend_from_slice(eos_ids);
        }
        banned.extend_from_slice(&p.stop_token_ids);
    }
    for word in &p.bad_words_ids {
        if let Some((&last, prefix)) = word.split_last() {
            if output.ends_with(prefix) {
                banned.push(last);
            }
        }
    }
    for b in &p.builtin_processors {
        b.banned(prompt, output, &mut banned);
    }
    banned
}

/// `logits: [rows, vocab]` (f32) with every row's processors applied; None when no row
/// has any, so that the common case costs nothing.
pub fn apply(logits: &Tensor, params: &[&SamplingParams], rows: &[&RowContext]) -> Option<Tensor> {
    if params.iter().zip(rows).all(|(p, r)| r.is_plain(p)) {
        return None;
    }
    let dev = logits.device();
    let vocab = logits.size()[1];
    let ids = |v: &[u32]| {
        let in_vocab: Vec<i64> = v.iter().map(|&t| t as i64).filter(|&t| t < vocab).collect();
        Tensor::from_slice(&in_vocab).to_device(dev)
    };
    let out = logits.copy();
    for (i, (p, r)) in params.iter().zip(rows).enumerate() {
        if r.is_plain(p) {
            continue;
        }
        let mut row = out.get(i as i64); // a view: changes land in `out`
        if let Some(mask) = r.mask {
            if !mask_in_place(&out, i, mask) {
                let _ = row.masked_fill_(&mask_tensor(mask, vocab, dev).logical_not(), f64::NEG_INFINITY);
            }
        }
        if let Some(allowed) = &p.allowed_token_ids {
            let keep = Tensor::zeros([vocab], (Kind::Bool, dev)).index_fill(0, &ids(allowed), 1);
            let _ = row.masked_fill_(&keep.logical_not(), f64::NEG_INFINITY);
        }
        if !r.banned.is_empty() {
            let _ = row.index_fill_(0, &ids(&r.banned), f64::NEG_INFINITY);
        }
        if !p.logit_bias.is_empty() {
            let (toks, bias): (Vec<u32>, Vec<f32>) =
                p.logit_bias.iter().filter(|(t, _)| (*t as i64) < vocab).copied().unzip();
            let _ = row.index_add_(0, &ids(&toks), &Tensor::from_slice(&bias).to_device(dev));
        }
        if p.repetition_penalty != 1.0 {
            let seen = Tensor::zeros([vocab], (Kind::Bool, dev))
                .index_fill(0, &ids(r.prompt), 1)
                .index_fill(0, &ids(r.output), 1);
            let rp = p.repetition_penalty as f64;
            // (tch's `a.where_self(cond, b)` is `torch.where(cond, a, b)`.)
            let penalised = (&row / rp).where_self(&row.gt(0.0), &(&row * rp));
            let _ = row.copy_(&penalised.where_self(&seen, &row));
        }
        if (p.frequency_penalty != 0.0 || p.presence_penalty != 0.0) && !r.output.is_empty() {
            let out_ids = ids(r.output);
            let counts = Tensor::zeros([vocab], (Kind::Float, dev)).index_add(
                0,
                &out_ids,
                &Tensor::ones([out_ids.size()[0]], (Kind::Float, dev)),
            );
            let present = counts.gt(0.0).to_kind(Kind::Float);
            let _ = row.g_sub_(&(counts * p.frequency_penalty as f64 + present * p.presence_penalty as f64));
        }
    }
    Some(out)
}

/// Sets row `row` of `logits: [rows, vocab]` to -inf wherever `mask` disallows the token,
/// writing the tensor's memory directly: a mask changes every step, and building a
/// vocabulary-sized tensor for it costs more than the whole walk of the constraint.
/// Only for contiguous float32 tensors on the CPU; false (and nothing done) otherwise.
pub fn mask_in_place(logits: &Tensor, row: usize, mask: &TokenMask) -> bool {
    if logits.device() != tch::Device::Cpu || logits.kind() != Kind::Float || !logits.is_contiguous() {
        return false;
    }
    let (rows, vocab) = (logits.size()[0] as usize, logits.size()[1] as usize);
    assert!(row < rows, "row {row} of {rows}");
    // SAFETY: the tensor is a contiguous CPU float32 [rows, vocab] block, so `row * vocab ..
    // (row + 1) * vocab` is in bounds; `apply` made it (a fresh copy) and nothing else reads
    // or writes it while this runs.
    let data = unsafe { std::slice::from_raw_parts_mut((logits.data_ptr() as *mut f32).add(row * vocab), vocab) };
    let words = mask.words();
    for (w, chunk) in data.chunks_mut(32).enumerate() {
        let word = words.get(w).copied().unwrap_or(0);
        if word == u32::MAX {
            continue;
        }
        if word == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (b, x) in chunk.iter_mut().enumerate() {
            if word >> b & 1 == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    true
}

/// `[vocab]` booleans, true where `mask` allows the token (ids past the mask's end are not
/// allowed). Unpacked here, a word at a time, then copied to the device once: cheaper than
/// any chain of small tensor operations.
pub fn mask_tensor(mask: &TokenMask, vocab: i64, dev: tch::Device) -> Tensor {
    let vocab = vocab as usize;
    let mut bits = vec![false; vocab];
    for (w, &word) in mask.words().iter().enumerate() {
        if word == 0 {
            continue;
        }
        let base = w * 32;
        for b in 0..32 {
            if word >> b & 1 == 1 && base + b < vocab {
                bits[base + b] = true;
            }
        }
    }
    Tensor::from_slice(&bits).to_device(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).view([1, v.len() as i64])
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1)).unwrap()
    }

    fn ctx<'a>(prompt: &'a [u32], output: &'a [u32]) -> RowContext<'a> {
        RowContext { prompt, output, banned: vec![], mask: None }
    }

    #[test]
    fn plain_rows_cost_nothing() {
        let p = SamplingParams::default();
        assert!(apply(&row(&[1.0, 2.0]), &[&p], &[&ctx(&[0], &[1])]).is_none());
    }

    #[test]
    fn penalties_follow_their_definitions() {
        let logits = row(&[2.0, -2.0, 1.0, 0.5]);
        let p = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        // Token 0 in the prompt, 1 in the output: positive logits halve, negative double.
        let out = apply(&logits, &[&p], &[&ctx(&[0], &[1])]).unwrap();
        assert_eq!(values(&out), vec![1.0, -4.0, 1.0, 0.5]);

        let p = SamplingParams { frequency_penalty: 0.5, presence_penalty: 0.25, ..Default::default() };
        // Only the output counts: token 2 twice, token 3 once; the prompt's token 0 is free.
        let out = apply(&logits, &[&p], &[&ctx(&[0], &[2, 3, 2])]).unwrap();
        assert_eq!(values(&out), vec![2.0, -2.0, 1.0 - 1.0 - 0.25, 0.5 - 0.5 - 0.25]);
    }

    #[test]
    fn a_constraint_mask_leaves_only_its_tokens() {
        // 70 tokens: the mask spans three words, the last one partly.
        let logits = Tensor::arange(140, (Kind::Float, tch::Device::Cpu)).view([2, 70]);
        let mask = TokenMask::from_allowed(70, &[0, 31, 32, 69]);
        let rows = [ctx(&[], &[]), RowContext { prompt: &[], output: &[], banned: vec![], mask: Some(&mask) }];
        let p = SamplingParams::default();
        let out = apply(&logits, &[&p, &p], &[&rows[0], &rows[1]]).unwrap();
        let second = values(&out.get(1));
        let kept: Vec<usize> = (0..70).filter(|&i| second[i].is_finite()).collect();
        assert_eq!(kept, vec![0, 31, 32, 69]);
        assert_eq!(second[31], 101.0);
        assert_eq!(values(&out.get(0)), values(&logits.get(0)), "the other row is untouched");
        // The tensor form (for other devices) says the same.
        let t: Vec<bool> = Vec::try_from(mask_tensor(&mask, 70, tch::Device::Cpu)).unwrap();
        assert_eq!((0..70).filter(|&i| t[i]).collect::<Vec<_>>(), kept);
    }

    #[test]
    fn masks_and_bias() {
        let logits = row(&[2.0, -2.0, 1.0, 0.5]);
        let p = SamplingParams { allowed_token_ids: Some(vec![1, 3]), logit_bias: vec![(1, 10.0)], ..Default::default() };
        let out = values(&apply(&logits, &[&p], &[&RowContext { prompt: &[], output: &[], banned: vec![3], mask: None }]).unwrap());
        assert_eq!(out[0], f32::NEG_INFINITY);
        assert_eq!(out[1], 8.0);
        assert_eq!(out[2], f32::NEG_INFINITY);
        assert_eq!(out[3], f32::NEG_INFINITY);
    }

    #[test]
    fn only_rows_that_ask_are_changed() {
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let plain = SamplingParams::default();
        let biased = SamplingParams { logit_bias: vec![(0, -1.0)], ..Default::default() };
        let out = apply(&logits, &[&plain, &biased], &[&ctx(&[], &[]), &ctx(&[], &[])]).unwrap();
        assert_eq!(values(&out), vec![1.0, 2.0, 2.0, 4.0]);
        assert_eq!(values(&logits), vec![1.0, 2.0, 3.0, 4.0], "the raw logits stay as they were");
    }

    #[test]
    fn bans_eos_before_min_tokens_and_bad_words_when_they_would_complete() {
        let p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![7],
            bad_words_ids: vec![vec![5], vec![3, 4]],
            ..Default::default()
        };
        assert_eq!(banned_tokens(&p, &[], &[1], &[2]), vec![2, 7, 5]);
        assert_eq!(banned_tokens(&p, &[], &[1, 3], &[2]), vec![5, 4]);
        let p = SamplingParams { ignore_eos: true, ..p };
        assert_eq!(banned_tokens(&p, &[], &[], &[2]), vec![7, 5]);
    }

    #[test]
    fn no_repeat_ngram_bans_what_would_repeat_an_ngram() {
        let p = SamplingParams { builtin_processors: vec![Builtin::NoRepeatNGram(2)], ..Default::default() };
        // History 5 6 5: the bigram (5, 6) exists, so 6 may not follow 5 again.
        assert_eq!(banned_tokens(&p, &[5, 6], &[5], &[]), vec![6]);
        let p3 = SamplingParams { builtin_processors: vec![Builtin::NoRepeatNGram(3)], ..Default::default() };
        assert_eq!(banned_tokens(&p3, &[1, 2, 3, 1], &[2], &[]), vec![3]);
        assert!(banned_tokens(&p3, &[1, 2, 3], &[2], &[]).is_empty());
        let p1 = SamplingParams { builtin_processors: vec![Builtin::NoRepeatNGram(1)], ..Default::default() };
        assert_eq!(banned_tokens(&p1, &[4], &[9], &[]), vec![4, 9], "size 1: no token twice");
    }

    #[test]
    fn builtin_processors_parse_from_vllm_shapes() {
        use serde_json::json;
        assert_eq!(Builtin::parse(&json!({"qualname": "no_repeat_ngram", "args": [3]})), Ok(Builtin::NoRepeatNGram(3)));
        assert_eq!(
            Builtin::parse(&json!({"qualname": "transformers.NoRepeatNGramLogitsProcessor", "kwargs": {"ngram_size": 2}})),
            Ok(Builtin::NoRepeatNGram(2))
        );
        assert!(Builtin::parse(&json!("no_repeat_ngram")).unwrap_err().contains("ngram_size"));
        assert!(Builtin::parse(&json!("my.module.Processor")).unwrap_err().contains("unknown logits processor"));
        assert!(Builtin::parse(&json!(3)).is_err());
    }
}
