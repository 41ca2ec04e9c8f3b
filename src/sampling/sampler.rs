//! The batched sampler. Greedy rows take the argmax; random rows are filtered (top-k,
//! top-p, min-p) and drawn by inverse CDF with one uniform number that the caller draws
//! from the sequence's own generator, so a seeded request draws the same tokens alone or
//! in any batch.
//! Logprobs are those of the raw model output (vLLM's default `raw_logprobs`).

use tch::{Kind, Tensor};

use super::processors::{self, RowContext};
use super::{SamplingParams, TokenLogprobs};

/// One row of the logits and what it needs.
pub struct SampleRow<'a> {
    pub params: &'a SamplingParams,
    /// Uniform in [0, 1): which point of the distribution a random row takes.
    pub uniform: f32,
    /// What the logits processors need (history, banned tokens).
    pub ctx: RowContext<'a>,
}

#[derive(Debug, Clone)]
pub struct Sampled {
    pub token: u32,
    pub logprobs: Option<TokenLogprobs>,
}

/// Samples one token per row of `logits: [rows, vocab]` (f32).
pub fn sample(logits: &Tensor, rows: &[SampleRow]) -> Vec<Sampled> {
    sample_adjusted(logits, None, rows)
}

/// As `sample`, with the rows' processors applied to `adjusted` (the logits after a
/// model's own rules, e.g. Whisper's suppression) when given; logprobs are still those
/// of the raw `logits`.
pub fn sample_adjusted(logits: &Tensor, adjusted: Option<&Tensor>, rows: &[SampleRow]) -> Vec<Sampled> {
    let _guard = tch::no_grad_guard();
    let n = rows.len();
    assert_eq!(logits.size()[0] as usize, n, "one row of logits per sample row");
    let dev = logits.device();
    let mut tokens = vec![0i64; n];
    let raw = logits;
    let start = adjusted.unwrap_or(raw);
    let params: Vec<&SamplingParams> = rows.iter().map(|r| r.params).collect();
    let ctxs: Vec<&RowContext> = rows.iter().map(|r| &r.ctx).collect();
    let processed = processors::apply(start, &params, &ctxs);
    let logits = processed.as_ref().unwrap_or(start);

    let greedy: Vec<i64> = (0..n).filter(|&i| rows[i].params.is_greedy()).map(|i| i as i64).collect();
    if !greedy.is_empty() {
        let idx = Tensor::from_slice(&greedy).to_device(dev);
        let best: Vec<i64> = Vec::try_from(logits.index_select(0, &idx).argmax(-1, false)).expect("argmax ids");
        for (&i, t) in greedy.iter().zip(best) {
            tokens[i as usize] = t;
        }
    }

    // A row without filters draws over the vocabulary in id order, a filtered row over its
    // tokens by descending probability; the two groups are drawn apart, so that which way a
    // row goes (and so what a seeded row draws) never depends on the rest of the batch.
    for filtered in [false, true] {
        let random: Vec<usize> =
            (0..n).filter(|&i| !rows[i].params.is_greedy() && rows[i].params.filters() == filtered).collect();
        if random.is_empty() {
            continue;
        }
        let idx = Tensor::from_slice(&random.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(dev);
        let sub: Vec<&SamplingParams> = random.iter().map(|&i| rows[i].params).collect();
        let uniforms: Vec<f32> = random.iter().map(|&i| rows[i].uniform).collect();
        let drawn = draw(&logits.index_select(0, &idx), &sub, &uniforms);
        for (&i, t) in random.iter().zip(drawn) {
            tokens[i] = t;
        }
    }

    let want: Vec<usize> = (0..n).filter(|&i| rows[i].params.logprobs.is_some()).collect();
    let mut lps: Vec<Option<TokenLogprobs>> = vec![None; n];
    if !want.is_empty() {
        let idx = Tensor::from_slice(&want.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(dev);
        let chosen: Vec<i64> = want.iter().map(|&i| tokens[i]).collect();
        let ks: Vec<usize> = want.iter().map(|&i| rows[i].params.logprobs.unwrap_or(0)).collect();
        for (&i, lp) in want.iter().zip(logprobs_of(&raw.index_select(0, &idx), &chosen, &ks)) {
            lps[i] = Some(lp);
        }
    }

    tokens.into_iter().zip(lps).map(|(t, logprobs)| Sampled { token: t as u32, logprobs }).collect()
}

/// The logprob and rank of `tokens[r]` in row `r` of `logits: [rows, vocab]`, with the
/// `ks[r]` most likely tokens of the row.
pub fn logprobs_of(logits: &Tensor, tokens: &[i64], ks: &[usize]) -> Vec<TokenLogprobs> {
    let dev = logits.device();
    let lp = logits.log_softmax(-1, Kind::Float);
    let chosen = Tensor::from_slice(tokens).to_device(dev);
    let chosen_lp = lp.gather(1, &chosen.unsqueeze(1), false); // [rows, 1]
    let ranks: Vec<i64> = Vec::try_from(lp.gt_tensor(&chosen_lp).sum_dim_intlist(-1, false, Kind::Int64)).expect("ranks");
    let chosen_lp: Vec<f32> = Vec::try_from(chosen_lp.squeeze_dim(1)).expect("logprobs");
    let k = ks.iter().copied().max().unwrap_or(0);
    let (top_v, top_i): (Vec<f32>, Vec<i64>) = if k > 0 {
        let (v, i) = lp.topk(k as i64, -1, true, true);
        (Vec::try_from(v.flatten(0, -1)).expect("top"), Vec::try_from(i.flatten(0, -1)).expect("top ids"))
    } else {
        (vec![], vec![])
    };
    (0..tokens.len())
        .map(|j| TokenLogprobs {
            token: tokens[j] as u32,
            logprob: chosen_lp[j],
            rank: ranks[j] as usize + 1,
            top: (0..ks[j]).map(|t| (top_i[j * k + t] as u32, top_v[j * k + t])).collect(),
        })
        .collect()
}

/// Filters and draws one token per row of `logits: [r, vocab]`, `u` uniform in [0, 1).
fn draw(logits: &Tensor, params: &[&SamplingParams], u: &[f32]) -> Vec<i64> {
    let dev = logits.device();
    let r = params.len() as i64;
    let col = |f: &dyn Fn(&SamplingParams) -> f32| {
        Tensor::from_slice(&params.iter().map(|p| f(p)).collect::<Vec<f32>>()).to_device(dev).unsqueeze(1)
    };
    let scaled = logits / col(&|p| p.temperature);
    let filtering = params.iter().any(|p| p.filters());
    let u = Tensor::from_slice(u).to_device(dev).unsqueeze(1);
    if !filtering {
        let probs = scaled.softmax(-1, Kind::Float);
        return pick(&probs, &u, None, r);
    }
    // Work in descending order so each filter is a prefix of the row. The sort is stable:
    // equal logits stay in id order, so a tie at the top-p boundary keeps the lowest ids,
    // as greedy's argmax does.
    let (sorted, order) = scaled.sort_stable(true, -1, true);
    let vocab = sorted.size()[1];
    // top-k keeps every token at least as likely as the k-th, so tokens tied with it stay
    // too (vLLM and transformers compare with the k-th value, not the rank).
    let k = Tensor::from_slice(
        &params.iter().map(|p| if p.top_k == 0 { vocab } else { (p.top_k as i64).min(vocab) }).collect::<Vec<_>>(),
    )
    .to_device(dev)
    .unsqueeze(1);
    let kth = sorted.gather(1, &(k - 1), false);
    let mut masked = sorted.masked_fill(&sorted.lt_tensor(&kth), f64::NEG_INFINITY);
    let probs = masked.softmax(-1, Kind::Float);
    // top-p: drop a token when the mass before it already reaches p (the first always stays).
    let before = probs.cumsum(-1, Kind::Float) - &probs;
    // (top_p = 1 keeps everything, even where rounding takes the running sum to 1 early.)
    let top_p = col(&|p| if p.top_p < 1.0 { p.top_p } else { f32::INFINITY });
    masked = masked.masked_fill(&before.ge_tensor(&top_p), f64::NEG_INFINITY);
    // min-p, relative to the most likely token.
    let min_p = col(&|p| p.min_p);
    let probs = masked.softmax(-1, Kind::Float);
    let max = probs.narrow(1, 0, 1);
    let masked = masked.masked_fill(&probs.lt_tensor(&(max * min_p)), f64::NEG_INFINITY);
    let probs = masked.softmax(-1, Kind::Float);
    pick(&probs, &u, Some(&order), r)
}

/// Inverse-CDF draw: the first index whose cumulative probability exceeds `u`.
fn pick(probs: &Tensor, u: &Tensor, order: Option<&Tensor>, r: i64) -> Vec<i64> {
    let cdf = probs.cumsum(-1, Kind::Float);
    let vocab = probs.size()[1];
    // Guard against rounding leaving the total just under u: never step past the last
    // token with mass.
    let last = probs.gt(0.0).to_kind(Kind::Int64).cumsum(-1, Kind::Int64).argmax(-1, true);
    let pos = cdf.le_tensor(u).sum_dim_intlist(-1, true, Kind::Int64).minimum(&last).clamp(0, vocab - 1);
    let ids = match order {
        Some(o) => o.gather(1, &pos, false),
        None => pos,
    };
    let v: Vec<i64> = Vec::try_from(ids.view([r])).expect("sampled ids");
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, ..Default::default() }
    }

    fn one(logits: &Tensor, p: &SamplingParams, rng: &mut ChaCha8Rng) -> Sampled {
        sample(logits, &[row(p, rng.random())]).remove(0)
    }

    fn row(params: &SamplingParams, uniform: f32) -> SampleRow<'_> {
        SampleRow { params, uniform, ctx: RowContext { prompt: &[], output: &[], banned: vec![], mask: None } }
    }

    /// Five tokens whose ids are not in the order of their probabilities: by rank the ids
    /// are 2 (0.40), 3 (0.25), 4 (0.20), 0 (0.10), 1 (0.05). Every cut below lies at least
    /// 0.05 away from a boundary, far beyond float rounding.
    const P: [f64; 5] = [0.10, 0.05, 0.40, 0.25, 0.20];
    /// Ties: 1 (0.3), then 0, 3 and 4 (0.2 each), then 2 (0.1).
    const TIES: [f64; 5] = [0.2, 0.3, 0.1, 0.2, 0.2];
    const ALL: [usize; 5] = [0, 1, 2, 3, 4];

    /// Logits whose softmax is `probs`.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    /// Rows of the uniform sweep in `measured`.
    const SWEEP: usize = 5_000;

    /// The distribution `sample` draws from for one row of `logits` under `p`, measured
    /// without randomness: SWEEP rows whose uniforms are evenly spaced over [0, 1). The
    /// draw is an inverse CDF, so the share of rows that land on a token is its
    /// probability to within 1/SWEEP.
    fn measured(logits: &[f32], p: &SamplingParams) -> Vec<f64> {
        let v = logits.len() as i64;
        let t = Tensor::from_slice(logits).view([1, v]).expand([SWEEP as i64, v], false).contiguous();
        let rows: Vec<SampleRow> = (0..SWEEP).map(|i| row(p, (i as f32 + 0.5) / SWEEP as f32)).collect();
        let mut counts = vec![0usize; logits.len()];
        for s in sample(&t, &rows) {
            counts[s.token as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / SWEEP as f64).collect()
    }

    /// The closed form: softmax(logits / t) over the tokens in `kept`, zero elsewhere.
    fn closed_form(logits: &[f32], t: f64, kept: &[usize]) -> Vec<f64> {
        let z: f64 = kept.iter().map(|&i| (logits[i] as f64 / t).exp()).sum();
        (0..logits.len()).map(|i| if kept.contains(&i) { (logits[i] as f64 / t).exp() / z } else { 0.0 }).collect()
    }

    /// The sampler draws exactly the tokens in `kept`, with the closed form's
    /// probabilities at temperature `p.temperature`.
    fn assert_draws(what: &str, probs: &[f64], p: &SamplingParams, kept: &[usize]) {
        let logits = logits_of(probs);
        let got = measured(&logits, p);
        let drawn: Vec<usize> = (0..got.len()).filter(|&i| got[i] > 0.0).collect();
        let mut want_set = kept.to_vec();
        want_set.sort();
        assert_eq!(drawn, want_set, "{what}: the kept set (measured {got:?})");
        let want = closed_form(&logits, p.temperature as f64, kept);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 2.0 / SWEEP as f64 + 1e-6, "{what}: token {i}: {g} vs {w} (all: {got:?} vs {want:?})");
        }
    }

    #[test]
    fn greedy_takes_argmax_and_reports_logprobs() {
        let logits = Tensor::from_slice(&[0.0f32, 3.0, 1.0, 2.0]).view([1, 4]);
        let p = SamplingParams { logprobs: Some(2), ..params(0.0) };
        let out = one(&logits, &p, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(out.token, 1);
        let lp = out.logprobs.as_ref().unwrap();
        assert_eq!(lp.rank, 1);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        let expected = 3.0 - (0f32.exp() + 3f32.exp() + 1f32.exp() + 2f32.exp()).ln();
        assert!((lp.logprob - expected).abs() < 1e-5);
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        for (k, kept) in [(1, &[2][..]), (2, &[2, 3]), (3, &[2, 3, 4]), (4, &[2, 3, 4, 0]), (5, &ALL), (9, &ALL)] {
            assert_draws(&format!("top_k {k}"), &P, &SamplingParams { top_k: k, ..params(1.0) }, kept);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_head_that_reaches_p() {
        // The mass before each token by rank: 0, 0.40, 0.65, 0.85, 0.95.
        for (top_p, kept) in [(0.3, &[2][..]), (0.5, &[2, 3]), (0.7, &[2, 3, 4]), (0.9, &[2, 3, 4, 0]), (0.99, &ALL)] {
            assert_draws(&format!("top_p {top_p}"), &P, &SamplingParams { top_p, ..params(1.0) }, kept);
        }
    }

    #[test]
    fn min_p_drops_what_is_less_likely_than_a_share_of_the_best() {
        // The best is 0.40: min_p 0.55 cuts at 0.22, 0.3 at 0.12, 0.2 at 0.08, 0.1 at 0.04.
        for (min_p, kept) in [(1.0, &[2][..]), (0.55, &[2, 3]), (0.3, &[2, 3, 4]), (0.2, &[2, 3, 4, 0]), (0.1, &ALL)] {
            assert_draws(&format!("min_p {min_p}"), &P, &SamplingParams { min_p, ..params(1.0) }, kept);
        }
    }

    #[test]
    fn ties_at_a_boundary() {
        // top-k keeps every token tied with the k-th (vLLM and transformers compare with
        // the k-th value): k = 2 keeps all three 0.2s.
        for (k, kept) in [(1, &[1][..]), (2, &[1, 0, 3, 4]), (4, &[1, 0, 3, 4]), (5, &ALL)] {
            assert_draws(&format!("tied top_k {k}"), &TIES, &SamplingParams { top_k: k, ..params(1.0) }, kept);
        }
        // top-p keeps the smallest head that reaches p; among equals, the lowest ids first.
        // The mass before each token: 0, 0.3, 0.5, 0.7, 0.9.
        for (top_p, kept) in [(0.2, &[1][..]), (0.4, &[1, 0]), (0.6, &[1, 0, 3]), (0.8, &[1, 0, 3, 4])] {
            assert_draws(&format!("tied top_p {top_p}"), &TIES, &SamplingParams { top_p, ..params(1.0) }, kept);
        }
        // min-p keeps or drops equals together (the cut at 0.21 or 0.18).
        for (min_p, kept) in [(0.7, &[1][..]), (0.6, &[1, 0, 3, 4])] {
            assert_draws(&format!("tied min_p {min_p}"), &TIES, &SamplingParams { min_p, ..params(1.0) }, kept);
        }
        // A tie for the best: top_k 1 and min_p 1 keep both, top_p keeps the lower id.
        let best = [0.4, 0.4, 0.2];
        assert_draws("top_k 1, tied best", &best, &SamplingParams { top_k: 1, ..params(1.0) }, &[0, 1]);
        assert_draws("min_p 1, tied best", &best, &SamplingParams { min_p: 1.0, ..params(1.0) }, &[0, 1]);
        assert_draws("top_p 0.3, tied best", &best, &SamplingParams { top_p: 0.3, ..params(1.0) }, &[0]);
    }

    #[test]
    fn top_p_applies_to_what_top_k_kept() {
        // top_k 3 leaves 0.40, 0.25, 0.20, renormalised to 0.47, 0.29, 0.24: the mass
        // before the third is 0.76, so top_p 0.7 drops it (over the full row it would be
        // 0.65, and kept).
        assert_draws("top_k 3 + top_p 0.7", &P, &SamplingParams { top_k: 3, top_p: 0.7, ..params(1.0) }, &[2, 3]);
    }

    #[test]
    fn temperature_scales_the_logits_before_any_filter() {
        for t in [0.5, 1.0, 2.0] {
            assert_draws(&format!("T {t}"), &P, &params(t), &ALL);
            assert_draws(&format!("T {t}, top_k 3"), &P, &SamplingParams { top_k: 3, ..params(t) }, &[2, 3, 4]);
        }
        // top_p 0.55: at T 0.5 the best alone holds 0.58; at T 1, 0.40 + 0.25; at T 2 the
        // row is flatter (0.30, 0.24, 0.21, ...) and three tokens are needed.
        assert_draws("T 0.5, top_p 0.55", &P, &SamplingParams { top_p: 0.55, ..params(0.5) }, &[2]);
        assert_draws("T 1, top_p 0.55", &P, &SamplingParams { top_p: 0.55, ..params(1.0) }, &[2, 3]);
        assert_draws("T 2, top_p 0.55", &P, &SamplingParams { top_p: 0.55, ..params(2.0) }, &[2, 3, 4]);
        // min_p is relative to the best after temperature: at T 2 the 0.10 token holds
        // 0.149 against the best's 0.298, so min_p 0.45 (a cut at 0.134) keeps it; at T 1
        // the cut is 0.18 and it goes.
        assert_draws("T 2, min_p 0.45", &P, &SamplingParams { min_p: 0.45, ..params(2.0) }, &[2, 3, 4, 0]);
        assert_draws("T 1, min_p 0.45", &P, &SamplingParams { min_p: 0.45, ..params(1.0) }, &[2, 3, 4]);
    }

    /// `n` seeded draws as the engine makes them (each row its own uniform, from one
    /// ChaCha8 stream), counted per token.
    fn seeded_counts(probs: &[f64], p: &SamplingParams, seed: u64, n: usize) -> Vec<usize> {
        let logits = logits_of(probs);
        let v = logits.len() as i64;
        let t = Tensor::from_slice(&logits).view([1, v]).expand([n as i64, v], false).contiguous();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<SampleRow> = (0..n).map(|_| row(p, rng.random())).collect();
        let mut counts = vec![0usize; logits.len()];
        for s in sample(&t, &rows) {
            counts[s.token as usize] += 1;
        }
        counts
    }

    /// Seeded draws: tokens outside `kept` never come, and the counts of the kept ones fit
    /// the closed form. The chi-square bound of 40 (at most 4 degrees of freedom) is passed
    /// by a correct sampler with probability above 1 - 1e-7 for any seed; a sampler that
    /// ignored a filter here would draw the removed tokens (at least 15% of the mass)
    /// about 1,500 times, and one that cut a kept token (at least 5%) would miss about 500
    /// expected draws.
    #[test]
    fn seeded_draws_follow_the_filtered_distribution() {
        const N: usize = 10_000;
        let cases: [(&str, SamplingParams, &[usize]); 7] = [
            ("T 1", params(1.0), &ALL),
            ("top_k 2", SamplingParams { top_k: 2, ..params(1.0) }, &[2, 3]),
            ("top_p 0.5", SamplingParams { top_p: 0.5, ..params(1.0) }, &[2, 3]),
            ("min_p 0.3", SamplingParams { min_p: 0.3, ..params(1.0) }, &[2, 3, 4]),
            ("T 2", params(2.0), &ALL),
            ("T 0.5", params(0.5), &ALL),
            ("T 2, top_p 0.55", SamplingParams { top_p: 0.55, ..params(2.0) }, &[2, 3, 4]),
        ];
        for (seed, (what, p, kept)) in cases.iter().enumerate() {
            let counts = seeded_counts(&P, p, 100 + seed as u64, N);
            let want = closed_form(&logits_of(&P), p.temperature as f64, kept);
            let mut chi2 = 0.0;
            for (i, &c) in counts.iter().enumerate() {
                if kept.contains(&i) {
                    let e = want[i] * N as f64;
                    chi2 += (c as f64 - e).powi(2) / e;
                } else {
                    assert_eq!(c, 0, "{what}: token {i} was filtered out but drawn: {counts:?}");
                }
            }
            assert!(chi2 < 40.0, "{what}: counts {counts:?} do not fit {want:?} (chi-square {chi2:.1})");
        }
    }

    #[test]
    fn a_row_draws_the_same_alone_or_in_a_batch() {
        let logits = Tensor::randn([3, 50], (Kind::Float, tch::Device::Cpu));
        let (p, g) = (SamplingParams { top_p: 0.9, ..params(0.8) }, params(0.0));
        for u in [0.0f32, 0.3, 0.77, 0.999] {
            let alone = sample(&logits.narrow(0, 1, 1), &[row(&p, u)])[0].token;
            let hot = params(1.0);
            let rows = [row(&g, 0.5), row(&p, u), row(&hot, u)];
            let batched = sample(&logits, &rows);
            assert_eq!(batched[1].token, alone);
            // A row without filters draws the same beside a filtered one as alone.
            assert_eq!(batched[2].token, sample(&logits.narrow(0, 2, 1), &[row(&hot, u)])[0].token);
        }
    }
}
