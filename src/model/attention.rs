//! Attention of a step's new tokens over their sequences' contexts in the paged KV cache.
//!
//! A plan is built once per step (per sliding-window size) and shared by every layer that
//! uses it. A sliding window of `w` lets the query at position `q` see the keys at positions
//! `q - w < k <= q`, as transformers' sliding-window mask does: decoding sequences simply
//! read the last `w` slots of their context, and prompt chunks gather only the keys any of
//! their queries can see, with a mask for the rest.
//!
//! On the CPU both kinds read the cache in place, on kernels of ours: decoding sequences
//! always, prompt chunks where the only cut is the causal one and scores are not
//! soft-capped (flash attention's tiles; the rest take libtorch's fused attention, or
//! transformers' eager attention for soft-capped scores).

use tch::{Device, Kind, Tensor};

use super::batch::StepBatch;
use super::kernels;
use super::kv_cache::KvCache;

/// How scores are formed: `q·k · scale`, then, with `softcap`, `cap · tanh(s / cap)`
/// (Gemma 2's attention logit soft-capping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreRule {
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// How each sequence of a step reads its context back from the cache.
pub struct AttnPlan {
    /// Sequences decoding one token: attended together, padded to the longest context.
    decode: Option<DecodeGroup>,
    /// Sequences with several new tokens (prompt chunks): attended one at a time.
    prefill: Vec<PrefillSeq>,
}

struct DecodeGroup {
    rows: Tensor,  // [b] rows of the flat batch
    /// The rows are the whole batch, in order: the group's output is the step's.
    whole: bool,
    slots: Tensor, // [b, lmax] cache slots (padding reads the zeroed pad slot)
    /// How the group is attended: on the CPU our kernel reads the cache in place.
    path: DecodePath,
    b: i64,
    lmax: i64,
}

enum DecodePath {
    /// `kernels::paged_decode_attention` with each context's length `[b]`.
    Kernel { lens: Tensor },
    /// Gathered K and V with padding, as tensor operations (CUDA); `masked_out: [b, 1, 1,
    /// lmax]` is true at the padding.
    Gathered { masked_out: Tensor },
}

impl DecodePath {
    /// The tensor-operations path for contexts of `lens: [b]` padded to `lmax`.
    fn gathered(lens: &Tensor, lmax: i64, dev: Device) -> Self {
        let positions = Tensor::arange(lmax, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let masked_out = positions.ge_tensor(&lens.unsqueeze(1)).view([lens.size()[0], 1, 1, lmax]);
        DecodePath::Gathered { masked_out: masked_out.to_device(dev) }
    }
}

struct PrefillSeq {
    row: i64,
    len: i64,
    gather: Tensor, // [ctx] cache slots of the keys the chunk's queries may see
    ctx: i64,
    /// True where a query may see a key; None for a whole prompt, and on the CPU wherever
    /// the only cut is the causal one (query `i` sees the keys up to position `ctx - len +
    /// i`).
    mask: Option<Tensor>,
}

impl PrefillSeq {
    /// The mask for tensor operations: `mask`, or the causal one where the chunk follows
    /// earlier context (libtorch's `is_causal` aligns the corners the other way); None for a
    /// whole prompt.
    fn visible(&self, dev: Device) -> Option<Tensor> {
        match &self.mask {
            Some(m) => Some(m.shallow_clone()),
            None => (self.len != self.ctx).then(|| causal_mask(self.len, self.ctx, dev)),
        }
    }
}

/// `[1, 1, len, ctx]`: true where query `i` (at position `ctx - len + i`) may see a key.
fn causal_mask(len: i64, ctx: i64, dev: Device) -> Tensor {
    let qpos = Tensor::arange_start(ctx - len, ctx, (Kind::Int64, dev)).unsqueeze(1);
    Tensor::arange(ctx, (Kind::Int64, dev)).unsqueeze(0).le_tensor(&qpos).view([1, 1, len, ctx])
}

impl AttnPlan {
    /// The plan for `window` (None: full attention).
    pub fn new(batch: &StepBatch, dev: Device, window: Option<usize>) -> Self {
        let first_visible = |query_pos: usize| window.map_or(0, |w| (query_pos + 1).saturating_sub(w));
        let decoding: Vec<_> = batch.seqs.iter().filter(|s| s.len == 1).collect();
        let decode = (!decoding.is_empty()).then(|| {
            let b = decoding.len();
            let visible: Vec<&[i64]> =
                decoding.iter().map(|s| &s.context_slots[first_visible(s.context_len - 1)..s.context_len]).collect();
            let lmax = visible.iter().map(|v| v.len()).max().unwrap_or(1);
            let mut gather = vec![KvCache::PAD_SLOT; b * lmax];
            for (i, v) in visible.iter().enumerate() {
                gather[i * lmax..i * lmax + v.len()].copy_from_slice(v);
            }
            let rows: Vec<i64> = decoding.iter().map(|s| s.row as i64).collect();
            let whole = b == batch.seqs.len() && rows.iter().enumerate().all(|(i, &r)| r == i as i64);
            let (b, lmax) = (b as i64, lmax as i64);
            let lens: Vec<i64> = visible.iter().map(|v| v.len() as i64).collect();
            let lens = Tensor::from_slice(&lens);
            let path = if dev == Device::Cpu { DecodePath::Kernel { lens } } else { DecodePath::gathered(&lens, lmax, dev) };
            DecodeGroup {
                rows: Tensor::from_slice(&rows).to_device(dev),
                whole,
                slots: Tensor::from_slice(&gather).view([b, lmax]).to_device(dev),
                path,
                b,
                lmax,
            }
        });
        let prefill = batch
            .seqs
            .iter()
            .filter(|s| s.len > 1)
            .map(|s| {
                let q0 = s.context_len - s.len; // position of the chunk's first query
                let start = first_visible(q0);
                let (len, ctx) = (s.len as i64, (s.context_len - start) as i64);
                let windowed = window.is_some_and(|w| w < s.context_len);
                // On the CPU the kernel needs none for the causal cut alone.
                let mask = (start > 0 || windowed || (len != ctx && dev != Device::Cpu)).then(|| {
                    // Query i is at position q0 + i; key j at start + j.
                    let qpos = Tensor::arange_start(q0 as i64, s.context_len as i64, (Kind::Int64, dev)).unsqueeze(1);
                    let kpos = Tensor::arange_start(start as i64, s.context_len as i64, (Kind::Int64, dev)).unsqueeze(0);
                    let mut visible = kpos.le_tensor(&qpos);
                    if let Some(w) = window {
                        visible = visible.logical_and(&kpos.gt_tensor(&(&qpos - w as i64)));
                    }
                    visible.view([1, 1, len, ctx])
                });
                PrefillSeq {
                    row: s.row as i64,
                    len,
                    gather: Tensor::from_slice(&s.context_slots[start..]).to_device(dev),
                    ctx,
                    mask,
                }
            })
            .collect();
        AttnPlan { decode, prefill }
    }

    /// Decode attention as tensor operations over K and V gathered with padding: the query
    /// heads that share a KV head form the rows of one small product, so K and V are never
    /// repeated per head. (libtorch's fused attention with a mask and grouped heads took 6x
    /// longer in bfloat16 on CPU.) Softmax in float32, then back to the model's dtype, as
    /// transformers' eager attention does. Returns `[b, h, d]`.
    #[allow(clippy::too_many_arguments)]
    fn gathered_decode(
        g: &DecodeGroup,
        masked_out: &Tensor,
        q: &Tensor,
        kc: &Tensor,
        vc: &Tensor,
        h: i64,
        kvh: i64,
        d: i64,
        rule: ScoreRule,
    ) -> Tensor {
        let qd = q.index_select(0, &g.rows).view([g.b, kvh, h / kvh, d]);
        let gather = g.slots.view([g.b * g.lmax]);
        let kd = kc.index_select(0, &gather).view([g.b, g.lmax, kvh, d]).permute([0, 2, 3, 1]); // [b, kvh, d, l]
        let vd = vc.index_select(0, &gather).view([g.b, g.lmax, kvh, d]).transpose(1, 2); // [b, kvh, l, d]
        let scores = softcap(qd.matmul(&kd) * rule.scale, rule.softcap).to_kind(Kind::Float);
        let scores = scores.masked_fill(masked_out, f64::NEG_INFINITY);
        let o = scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&vd); // [b, kvh, h/kvh, d]
        o.view([g.b, h, d])
    }

    /// Attention output `[n, h, d]` for queries `q: [n, h, d]`.
    pub fn attend(&self, q: &Tensor, kc: &Tensor, vc: &Tensor, kvh: i64, rule: ScoreRule) -> Tensor {
        let (h, d) = (q.size()[1], q.size()[2]);
        if let Some(DecodeGroup { whole: true, path: DecodePath::Kernel { lens }, slots, .. }) = &self.decode {
            // Every row decodes: no gather of the queries, no scatter of the output.
            return kernels::paged_decode_attention(&q.contiguous(), kc, vc, slots, lens, rule.scale, rule.softcap.unwrap_or(0.0));
        }
        let mut out = q.zeros_like();
        if let Some(g) = &self.decode {
            let o = match &g.path {
                DecodePath::Kernel { lens } => {
                    let qd = q.index_select(0, &g.rows);
                    kernels::paged_decode_attention(&qd, kc, vc, &g.slots, lens, rule.scale, rule.softcap.unwrap_or(0.0))
                }
                DecodePath::Gathered { masked_out } => Self::gathered_decode(g, masked_out, q, kc, vc, h, kvh, d, rule),
            };
            let _ = out.index_copy_(0, &g.rows, &o);
        }
        for p in &self.prefill {
            let qp = q.narrow(0, p.row, p.len);
            if q.device() == Device::Cpu && p.mask.is_none() && rule.softcap.is_none() {
                // Our tiled kernel reads the cache in place.
                out.narrow(0, p.row, p.len).copy_(&kernels::paged_prefill_attention(&qp.contiguous(), kc, vc, &p.gather, rule.scale));
                continue;
            }
            let qp = qp.transpose(0, 1).unsqueeze(0); // [1, h, len, d]
            let kp = kc.index_select(0, &p.gather).view([p.ctx, kvh, d]).transpose(0, 1).unsqueeze(0);
            let vp = vc.index_select(0, &p.gather).view([p.ctx, kvh, d]).transpose(0, 1).unsqueeze(0);
            let visible = p.visible(q.device());
            let o = match rule.softcap {
                None => Tensor::scaled_dot_product_attention(
                    &qp,
                    &kp,
                    &vp,
                    visible.as_ref(),
                    0.0,
                    visible.is_none(),
                    rule.scale,
                    true,
                ),
                Some(_) => eager_prefill(&qp, &kp, &vp, p, visible, h / kvh, rule),
            };
            out.narrow(0, p.row, p.len).copy_(&o.squeeze_dim(0).transpose(0, 1));
        }
        out
    }
}

/// transformers' eager attention (what it runs for soft-capped scores, which libtorch's
/// fused attention cannot do): `[1, h, len, d]` queries over `[1, kvh, ctx, d]` keys, with
/// the chunk's `visible` mask (None: a whole prompt, causal).
fn eager_prefill(q: &Tensor, k: &Tensor, v: &Tensor, p: &PrefillSeq, visible: Option<Tensor>, group: i64, rule: ScoreRule) -> Tensor {
    let k = k.repeat_interleave_self_int(group, 1, None);
    let v = v.repeat_interleave_self_int(group, 1, None);
    let scores = softcap(q.matmul(&k.transpose(2, 3)) * rule.scale, rule.softcap);
    let visible = visible.unwrap_or_else(|| causal_mask(p.len, p.ctx, q.device()));
    let scores = scores.to_kind(Kind::Float).masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
    scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
}

/// `cap · tanh(s / cap)` in the scores' dtype, as transformers computes it.
fn softcap(scores: Tensor, cap: Option<f64>) -> Tensor {
    match cap {
        Some(c) => (scores / c).tanh() * c,
        None => scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::SeqChunk;

    /// The CUDA path's tensor operations, run on the CPU, agree with the CPU kernel on
    /// padded contexts of different lengths, with and without soft-capping.
    #[test]
    fn gathered_decode_matches_the_kernel() {
        let (h, kvh, d, nslots) = (4i64, 2i64, 16i64, 12i64);
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, h, d], opts) * 3.0;
        let kc = Tensor::randn([nslots, kvh, d], opts);
        let vc = Tensor::randn([nslots, kvh, d], opts);
        let _ = kc.get(KvCache::PAD_SLOT).zero_();
        let _ = vc.get(KvCache::PAD_SLOT).zero_();
        let lmax = 5;
        let pad = KvCache::PAD_SLOT;
        let slots = Tensor::from_slice(&[3, 7, 1, 9, 4, 10, 2, pad, pad, pad]).view([2, lmax]);
        let lens = Tensor::from_slice(&[5i64, 2]);
        let g = DecodeGroup {
            rows: Tensor::from_slice(&[0i64, 1]),
            whole: true,
            slots: slots.shallow_clone(),
            path: DecodePath::gathered(&lens, lmax, Device::Cpu),
            b: 2,
            lmax,
        };
        let DecodePath::Gathered { masked_out } = &g.path else { unreachable!() };
        for cap in [None, Some(2.0)] {
            let rule = ScoreRule { scale: 1.0 / (d as f64).sqrt(), softcap: cap };
            let gathered = AttnPlan::gathered_decode(&g, masked_out, &q, &kc, &vc, h, kvh, d, rule);
            let kernel = kernels::paged_decode_attention(&q, &kc, &vc, &slots, &lens, rule.scale, cap.unwrap_or(0.0));
            let diff = (gathered - kernel).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "softcap {cap:?}: largest difference {diff}");
        }
    }

    /// Every query of a step, decoding or in a prompt chunk, windowed or not, soft-capped or
    /// not, equals attention computed from scratch over the keys its position may see.
    #[test]
    fn windows_and_softcaps_match_plain_attention() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(11);
        let (h, kvh, d, bs) = (4i64, 2i64, 8i64, 4usize);
        let opts = (Kind::Float, Device::Cpu);
        let kc = Tensor::randn([64, kvh, d], opts);
        let vc = Tensor::randn([64, kvh, d], opts);
        // A decoding sequence (context 9), a whole prompt (7) and a later chunk (5 of 11);
        // then a step where every sequence decodes (contexts 9 and 6).
        let decoding = |cached: usize, block_table: Vec<u32>| SeqChunk { tokens: vec![1], cached, block_table, logits_for: vec![0], prompt_len: 0 };
        let mixed = vec![
            decoding(8, vec![1, 2, 3]),
            SeqChunk { tokens: vec![1; 7], cached: 0, block_table: vec![5, 6], logits_for: vec![6], prompt_len: 0 },
            SeqChunk { tokens: vec![1; 5], cached: 6, block_table: vec![8, 9, 10], logits_for: vec![4], prompt_len: 0 },
        ];
        let all_decoding = vec![decoding(8, vec![1, 2, 3]), decoding(5, vec![12, 13])];
        for (chunks, window, cap) in [mixed, all_decoding]
            .iter()
            .flat_map(|c| [None, Some(3), Some(6), Some(100)].map(|w| (c, w)))
            .flat_map(|(c, w)| [None, Some(1.5)].map(|cap| (c, w, cap)))
        {
            let batch = StepBatch::new(chunks, bs);
            let n = batch.tokens.len() as i64;
            let q = Tensor::randn([n, h, d], opts) * 2.0;
            let rule = ScoreRule { scale: 0.3, softcap: cap };
            let got = AttnPlan::new(&batch, Device::Cpu, window).attend(&q, &kc, &vc, kvh, rule);
            for s in &batch.seqs {
                for i in 0..s.len {
                    let pos = s.context_len - s.len + i;
                    let from = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                    let idx = Tensor::from_slice(&s.context_slots[from..=pos]);
                    let k = kc.index_select(0, &idx).repeat_interleave_self_int(h / kvh, 1, None); // [l, h, d]
                    let v = vc.index_select(0, &idx).repeat_interleave_self_int(h / kvh, 1, None);
                    let qi = q.get((s.row + i) as i64); // [h, d]
                    let scores = softcap(qi.unsqueeze(1).matmul(&k.permute([1, 2, 0])).squeeze_dim(1) * 0.3, cap);
                    let want = scores.softmax(-1, Kind::Float).unsqueeze(1).matmul(&v.transpose(0, 1)).squeeze_dim(1);
                    let diff = (got.get((s.row + i) as i64) - want).abs().max().double_value(&[]);
                    assert!(diff < 1e-5, "window {window:?} cap {cap:?} pos {pos}: {diff}");
                }
            }
        }
    }
}
