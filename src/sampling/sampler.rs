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
    let _guard = tch::no_grad_guard();
    let n = rows.len();
    assert_eq!(logits.size()[0] as usize, n, "one row of logits per sample row");
    let dev = logits.device();
    let mut tokens = vec![0i64; n];
    let raw = logits;
    let params: Vec<&SamplingParams> = rows.iter().map(|r| r.params).collect();
    let ctxs: Vec<&RowContext> = rows.iter().map(|r| &r.ctx).collect();
    let processed = processors::apply(raw, &params, &ctxs);
    let logits = processed.as_ref().unwrap_or(raw);

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
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let logits = Tensor::from_slice(&[0.0f32, 5.0, 4.9, -1.0]).view([1, 4]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(one(&logits, &SamplingParams { top_k: 1, ..params(1.0) }, &mut rng).token, 1);
            let t = one(&logits, &SamplingParams { top_p: 0.6, ..params(1.0) }, &mut rng).token;
            assert!(t == 1 || t == 2, "{t}");
            let t = one(&logits, &SamplingParams { min_p: 0.5, ..params(1.0) }, &mut rng).token;
            assert!(t == 1 || t == 2, "{t}");
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

    #[test]
    fn draws_follow_the_distribution() {
        let logits = Tensor::from_slice(&[0.0f32, (3.0f32).ln()]).view([1, 2]); // p = 0.25, 0.75
        let p = params(1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ones = (0..4000).filter(|_| one(&logits, &p, &mut rng).token == 1).count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }
}
