//! The Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2) in libtorch.
//!
//! One call runs one step for a whole batch: the new tokens of every sequence are laid end
//! to end (`StepBatch`), projected together, written into the paged KV cache, and attend
//! to their own sequence's context read back from the cache. The maths follows
//! transformers' `LlamaForCausalLM` operation for operation (norms in f32, rotary tables in
//! f32, half-rotation), which is what lets float32 greedy output match it token for token.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::LoadError;
use super::batch::StepBatch;
use super::config::LlamaConfig;
use super::kernels;
use super::kv_cache::KvCache;
use super::weights::WeightSource;

struct Layer {
    attn_norm: Tensor,
    /// Q, K and V projections stacked: `[(H + 2·KVH)·D, hidden]`.
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    o: Tensor,
    mlp_norm: Tensor,
    /// Gate and up projections stacked: `[2·I, hidden]`.
    gate_up: Tensor,
    down: Tensor,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    pub device: Device,
    pub dtype: Kind,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// `[max_positions, head_dim]` cos and sin tables in the compute dtype.
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    pub fn load(
        cfg: LlamaConfig,
        src: &dyn WeightSource,
        device: Device,
        dtype: Kind,
    ) -> Result<Self, LoadError> {
        let _guard = tch::no_grad_guard();
        let get = |name: &str| -> Result<Tensor, LoadError> {
            src.get(name)?.ok_or_else(|| LoadError::MissingTensor(name.to_string()))
        };
        let place = |t: Tensor| t.to_device(device).to_kind(dtype).contiguous();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let w = |n: &str| get(&format!("{p}.{n}"));
            let qkv = Tensor::cat(
                &[w("self_attn.q_proj.weight")?, w("self_attn.k_proj.weight")?, w("self_attn.v_proj.weight")?],
                0,
            );
            let qkv_bias = if cfg.qkv_bias {
                Some(place(Tensor::cat(
                    &[w("self_attn.q_proj.bias")?, w("self_attn.k_proj.bias")?, w("self_attn.v_proj.bias")?],
                    0,
                )))
            } else {
                None
            };
            let gate_up = Tensor::cat(&[w("mlp.gate_proj.weight")?, w("mlp.up_proj.weight")?], 0);
            layers.push(Layer {
                attn_norm: place(w("input_layernorm.weight")?),
                qkv: place(qkv),
                qkv_bias,
                o: place(w("self_attn.o_proj.weight")?),
                mlp_norm: place(w("post_attention_layernorm.weight")?),
                gate_up: place(gate_up),
                down: place(w("mlp.down_proj.weight")?),
            });
        }
        let embed = place(get("model.embed_tokens.weight")?);
        let lm_head = match src.get("lm_head.weight")? {
            Some(t) if !cfg.tie_word_embeddings => place(t),
            _ => embed.shallow_clone(),
        };
        let (cos, sin) = rope_tables(&cfg, device, dtype);
        Ok(Llama { norm: place(get("model.norm.weight")?), cfg, device, dtype, embed, layers, lm_head, cos, sin })
    }

    /// The LM head `[vocab, hidden]` (the embedding table when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// Runs one step and returns f32 logits `[batch.logits_rows.len(), vocab]`.
    pub fn forward(&self, batch: &StepBatch, cache: &mut KvCache) -> Tensor {
        self.forward_timed(batch, cache, &mut None)
    }

    /// `forward`, adding the time each kind of operation took to `times` when given.
    /// (CPU operations are synchronous, so wall time per section is what it cost; on CUDA
    /// the figures only say where work was queued.)
    pub fn forward_timed(&self, batch: &StepBatch, cache: &mut KvCache, times: &mut Option<&mut OpTimes>) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut clock = Clock::new(times);
        let last = self.trunk(batch, cache, &mut clock);
        let logits = last.linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float);
        clock.lap(|t| &mut t.lm_head);
        logits
    }

    /// The final hidden states (after the last norm, in the model's dtype) of the rows
    /// `batch.logits_rows`: what pooling models read instead of logits.
    pub fn hidden_states(&self, batch: &StepBatch, cache: &mut KvCache) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.trunk(batch, cache, &mut Clock::new(&mut None))
    }

    /// Every layer, then the final norm of the rows `batch.logits_rows`.
    fn trunk(&self, batch: &StepBatch, cache: &mut KvCache, clock: &mut Clock<'_, '_>) -> Tensor {
        let dev = self.device;
        let c = &self.cfg;
        let (h, kvh, d) = (c.num_heads as i64, c.num_kv_heads as i64, c.head_dim as i64);
        let n = batch.tokens.len() as i64;

        let tokens = Tensor::from_slice(&batch.tokens).to_device(dev);
        let positions = Tensor::from_slice(&batch.positions).to_device(dev);
        let slots = Tensor::from_slice(&batch.slots).to_device(dev);
        let cos_rows = self.cos.index_select(0, &positions); // [n, d]
        let sin_rows = self.sin.index_select(0, &positions);
        let (cos, sin) = (cos_rows.unsqueeze(1), sin_rows.unsqueeze(1)); // [n, 1, d]
        let plan = AttnPlan::new(batch, dev);

        let mut x = self.embed.index_select(0, &tokens); // [n, hidden]
        clock.lap(|t| &mut t.setup);
        for (li, layer) in self.layers.iter().enumerate() {
            let hs = self.rms_norm(&x, &layer.attn_norm);
            clock.lap(|t| &mut t.norm);
            let qkv = hs.linear(&layer.qkv, layer.qkv_bias.as_ref());
            clock.lap(|t| &mut t.qkv);
            let q = if dev == Device::Cpu {
                let (kc, vc) = cache.layer_mut(li);
                kernels::rope_and_cache(&qkv, &cos_rows, &sin_rows, &slots, kc, vc, h)
            } else {
                let parts = qkv.split_with_sizes([h * d, kvh * d, kvh * d], -1);
                let q = apply_rope(&parts[0].view([n, h, d]), &cos, &sin);
                let k = apply_rope(&parts[1].view([n, kvh, d]), &cos, &sin);
                cache.write(li, &slots, &k, &parts[2].view([n, kvh, d]));
                q
            };
            clock.lap(|t| &mut t.rope_cache);
            let attn = plan.attend(&q, cache.keys(li), cache.values(li), h, kvh, d);
            clock.lap(|t| &mut t.attention);
            let x1 = x + attn.reshape([n, h * d]).linear::<Tensor>(&layer.o, None);
            clock.lap(|t| &mut t.o_proj);
            let hs = self.rms_norm(&x1, &layer.mlp_norm);
            clock.lap(|t| &mut t.norm);
            let gu = hs.linear::<Tensor>(&layer.gate_up, None).chunk(2, -1);
            clock.lap(|t| &mut t.gate_up);
            let act = gu[0].silu() * &gu[1];
            clock.lap(|t| &mut t.activation);
            let mlp = act.linear::<Tensor>(&layer.down, None);
            x = x1 + mlp;
            clock.lap(|t| &mut t.down);
        }
        let rows = Tensor::from_slice(&batch.logits_rows).to_device(dev);
        let last = self.rms_norm(&x.index_select(0, &rows), &self.norm);
        clock.lap(|t| &mut t.norm);
        last
    }

    /// RMSNorm as transformers computes it: in f32, scaled by the weight after the cast back
    /// (on the CPU in one pass by our kernel).
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        if self.device == Device::Cpu {
            return kernels::rms_norm(&x.contiguous(), w, self.cfg.rms_norm_eps);
        }
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (var + self.cfg.rms_norm_eps).rsqrt();
        w * normed.to_kind(self.dtype)
    }
}

/// Time spent per kind of operation in forward passes.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpTimes {
    pub setup: Duration,
    pub norm: Duration,
    pub qkv: Duration,
    pub rope_cache: Duration,
    pub attention: Duration,
    pub o_proj: Duration,
    pub gate_up: Duration,
    pub activation: Duration,
    pub down: Duration,
    pub lm_head: Duration,
}

impl OpTimes {
    pub fn rows(&self) -> [(&'static str, Duration); 10] {
        [
            ("setup", self.setup),
            ("rms_norm", self.norm),
            ("qkv_proj", self.qkv),
            ("rope+cache_write", self.rope_cache),
            ("attention", self.attention),
            ("o_proj+residual", self.o_proj),
            ("gate_up_proj", self.gate_up),
            ("silu*up", self.activation),
            ("down_proj+residual", self.down),
            ("lm_head", self.lm_head),
        ]
    }
}

/// Adds elapsed time to one field of `OpTimes` per lap; free when not timing.
struct Clock<'a, 'b> {
    times: &'a mut Option<&'b mut OpTimes>,
    last: Instant,
}

impl<'a, 'b> Clock<'a, 'b> {
    fn new(times: &'a mut Option<&'b mut OpTimes>) -> Self {
        Clock { times, last: Instant::now() }
    }

    fn lap(&mut self, field: impl FnOnce(&mut OpTimes) -> &mut Duration) {
        if let Some(t) = self.times.as_deref_mut() {
            let now = Instant::now();
            *field(t) += now - self.last;
            self.last = now;
        }
    }
}

fn rope_tables(cfg: &LlamaConfig, device: Device, dtype: Kind) -> (Tensor, Tensor) {
    let d = cfg.head_dim as i64;
    let exps = Tensor::arange_start_step(0, d, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / d as f64;
    let inv_freq = Tensor::from(cfg.rope_theta).to_kind(Kind::Float).pow(&exps).reciprocal();
    let pos = Tensor::arange(cfg.max_position_embeddings as i64, (Kind::Float, Device::Cpu));
    let freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0); // [P, d/2]
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos().to_kind(dtype).to_device(device), emb.sin().to_kind(dtype).to_device(device))
}

/// `x * cos + rotate_half(x) * sin` for `x: [n, heads, d]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let halves = x.chunk(2, -1);
    let rotated = Tensor::cat(&[&halves[1].neg(), &halves[0]], -1);
    x * cos + rotated * sin
}

/// How each sequence of a step reads its context back from the cache, built once per step
/// and shared by every layer (Whisper's decoder uses it too).
pub(crate) struct AttnPlan {
    /// Sequences decoding one token: attended together, padded to the longest context.
    decode: Option<DecodeGroup>,
    /// Sequences with several new tokens (prompt chunks): attended one at a time.
    prefill: Vec<PrefillSeq>,
}

struct DecodeGroup {
    rows: Tensor,  // [b] rows of the flat batch
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
    gather: Tensor, // [ctx] cache slots
    ctx: i64,
    /// None when the chunk is the whole context (plain causal attention).
    mask: Option<Tensor>,
}

impl AttnPlan {
    pub(crate) fn new(batch: &StepBatch, dev: Device) -> Self {
        let decoding: Vec<_> = batch.seqs.iter().filter(|s| s.len == 1).collect();
        let decode = (!decoding.is_empty()).then(|| {
            let b = decoding.len();
            let lmax = decoding.iter().map(|s| s.context_len).max().unwrap_or(1);
            let mut gather = vec![KvCache::PAD_SLOT; b * lmax];
            for (i, s) in decoding.iter().enumerate() {
                gather[i * lmax..i * lmax + s.context_len].copy_from_slice(&s.context_slots);
            }
            let rows: Vec<i64> = decoding.iter().map(|s| s.row as i64).collect();
            let (b, lmax) = (b as i64, lmax as i64);
            let lens: Vec<i64> = decoding.iter().map(|s| s.context_len as i64).collect();
            let lens = Tensor::from_slice(&lens);
            let path = if dev == Device::Cpu { DecodePath::Kernel { lens } } else { DecodePath::gathered(&lens, lmax, dev) };
            DecodeGroup {
                rows: Tensor::from_slice(&rows).to_device(dev),
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
                let (len, ctx) = (s.len as i64, s.context_len as i64);
                let mask = (len != ctx).then(|| {
                    // Row i is at position ctx-len+i and sees keys 0..=that position.
                    let qpos = Tensor::arange_start(ctx - len, ctx, (Kind::Int64, dev)).unsqueeze(1);
                    let kpos = Tensor::arange(ctx, (Kind::Int64, dev)).unsqueeze(0);
                    kpos.le_tensor(&qpos).view([1, 1, len, ctx])
                });
                PrefillSeq {
                    row: s.row as i64,
                    len,
                    gather: Tensor::from_slice(&s.context_slots).to_device(dev),
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
        scale: f64,
    ) -> Tensor {
        let qd = q.index_select(0, &g.rows).view([g.b, kvh, h / kvh, d]);
        let gather = g.slots.view([g.b * g.lmax]);
        let kd = kc.index_select(0, &gather).view([g.b, g.lmax, kvh, d]).permute([0, 2, 3, 1]); // [b, kvh, d, l]
        let vd = vc.index_select(0, &gather).view([g.b, g.lmax, kvh, d]).transpose(1, 2); // [b, kvh, l, d]
        let scores = (qd.matmul(&kd).to_kind(Kind::Float) * scale).masked_fill(masked_out, f64::NEG_INFINITY);
        let o = scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&vd); // [b, kvh, h/kvh, d]
        o.view([g.b, h, d])
    }

    /// Attention output `[n, h, d]` for queries `q: [n, h, d]`.
    fn attend(&self, q: &Tensor, kc: &Tensor, vc: &Tensor, h: i64, kvh: i64, d: i64) -> Tensor {
        self.attend_scaled(q, kc, vc, h, kvh, d, 1.0 / (d as f64).sqrt())
    }

    /// `attend` with the scores scaled by `scale` (1 for queries scaled beforehand).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend_scaled(&self, q: &Tensor, kc: &Tensor, vc: &Tensor, h: i64, kvh: i64, d: i64, scale: f64) -> Tensor {
        let mut out = q.zeros_like();
        if let Some(g) = &self.decode {
            let o = match &g.path {
                DecodePath::Kernel { lens } => {
                    let qd = q.index_select(0, &g.rows);
                    kernels::paged_decode_attention(&qd, kc, vc, &g.slots, lens, scale)
                }
                DecodePath::Gathered { masked_out } => Self::gathered_decode(g, masked_out, q, kc, vc, h, kvh, d, scale),
            };
            let _ = out.index_copy_(0, &g.rows, &o);
        }
        for p in &self.prefill {
            let qp = q.narrow(0, p.row, p.len).transpose(0, 1).unsqueeze(0); // [1, h, len, d]
            let kp = kc.index_select(0, &p.gather).view([p.ctx, kvh, d]).transpose(0, 1).unsqueeze(0);
            let vp = vc.index_select(0, &p.gather).view([p.ctx, kvh, d]).transpose(0, 1).unsqueeze(0);
            let o = Tensor::scaled_dot_product_attention(
                &qp,
                &kp,
                &vp,
                p.mask.as_ref(),
                0.0,
                p.mask.is_none(),
                scale,
                true,
            );
            out.narrow(0, p.row, p.len).copy_(&o.squeeze_dim(0).transpose(0, 1));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUDA path's tensor operations, run on the CPU, agree with the CPU kernel on
    /// padded contexts of different lengths.
    #[test]
    fn gathered_decode_matches_the_kernel() {
        let (h, kvh, d, nslots) = (4i64, 2i64, 16i64, 12i64);
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, h, d], opts);
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
            slots: slots.shallow_clone(),
            path: DecodePath::gathered(&lens, lmax, Device::Cpu),
            b: 2,
            lmax,
        };
        let DecodePath::Gathered { masked_out } = &g.path else { unreachable!() };
        let scale = 1.0 / (d as f64).sqrt();
        let gathered = AttnPlan::gathered_decode(&g, masked_out, &q, &kc, &vc, h, kvh, d, scale);
        let kernel = kernels::paged_decode_attention(&q, &kc, &vc, &slots, &lens, scale);
        let diff = (gathered - kernel).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "largest difference {diff}");
    }
}
