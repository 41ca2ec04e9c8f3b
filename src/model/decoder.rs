//! The decoder skeleton every causal LM family here runs (Llama, Mistral, Qwen2/3,
//! Qwen3-MoE, Mixtral, Gemma 2/3, Phi-3), in libtorch.
//!
//! One call runs one step for a whole batch: the new tokens of every sequence are laid end
//! to end (`StepBatch`), projected together, written into the paged KV cache, and attend
//! to their own sequence's context read back from the cache. What differs between the
//! families is a handful of `DecoderConfig` fields: norms around attention and the MLP,
//! per-head q/k norms, sliding windows and rotary variants per layer, soft-capping, a dense
//! MLP or a mixture of experts. The maths follows transformers operation for operation
//! (norms in f32, rotary angles in f32, half-rotation), which is what lets float32 greedy
//! output match it token for token.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::LoadError;
use super::attention::{AttnPlan, ScoreRule};
use super::batch::StepBatch;
use super::config::{DecoderConfig, LayerSpec, MoeConfig};
use super::kernels;
use super::kv_cache::KvCache;
use super::linear::{self, Linear};
use super::moe::{Mlp, SparseMoe};
use super::qwen2_vl::VisionTower;
use super::quant::QuantTensor;
use super::rope::RopeTables;
use super::tp::{Shard, Split};
use super::weights::WeightSource;

struct Attention {
    /// Q, K and V projections stacked: `[(H + 2·KVH)·D, hidden]`.
    qkv: Linear,
    o: Linear,
    /// Per-head RMSNorm weights `[D]` of queries and keys (Qwen3, Gemma 3).
    qk_norm: Option<(Tensor, Tensor)>,
}

enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

/// The token embedding table: a tensor, or GGUF blocks whose rows are dequantized as
/// they are looked up.
enum Embedding {
    Dense(Tensor),
    Quantized(QuantTensor),
}

impl Embedding {
    /// Rows `tokens` in `dtype`.
    fn lookup(&self, tokens: &Tensor, dtype: Kind) -> Tensor {
        match self {
            Embedding::Dense(t) => t.index_select(0, tokens),
            Embedding::Quantized(q) => kernels::quant_rows(q, tokens, dtype),
        }
    }
}

struct Layer {
    spec: LayerSpec,
    attn_norm: Tensor,
    attn: Attention,
    /// Gemma's norm of the attention output before the residual add.
    attn_post_norm: Option<Tensor>,
    mlp_norm: Tensor,
    ffn: FeedForward,
    /// Gemma's norm of the MLP output before the residual add.
    mlp_post_norm: Option<Tensor>,
}

pub struct Decoder {
    pub cfg: DecoderConfig,
    pub device: Device,
    pub dtype: Kind,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    ropes: Vec<RopeTables>,
    /// Qwen2-VL's vision tower, whose embeddings stand in for image placeholder tokens.
    /// A server takes it out for its encode_images stage; the decoder pooler runs it.
    pub vision: Option<VisionTower>,
    /// This rank's part of a model split over ranks (`model::tp`), when it is.
    shard: Option<(Shard, Split)>,
}

impl Decoder {
    pub fn load(cfg: DecoderConfig, src: &dyn WeightSource, device: Device, dtype: Kind) -> Result<Self, LoadError> {
        Self::load_shard(cfg, src, device, dtype, None)
    }

    /// `load`, keeping only `shard`'s part of each split weight when given (tensor
    /// parallelism: see `model::tp`).
    pub fn load_shard(
        cfg: DecoderConfig,
        src: &dyn WeightSource,
        device: Device,
        dtype: Kind,
        shard: Option<Shard>,
    ) -> Result<Self, LoadError> {
        let _guard = tch::no_grad_guard();
        let part = match shard {
            Some(s) => {
                let p = super::tp::split(&cfg, s.rank, s.world).map_err(LoadError::Unsupported)?;
                Some((s, p))
            }
            None => None,
        };
        let split = part.as_ref().map(|(_, p)| *p);
        let get = |name: &str| -> Result<Tensor, LoadError> {
            src.get(name)?.ok_or_else(|| LoadError::MissingTensor(name.to_string()))
        };
        let place = |t: Tensor| t.to_device(device).to_kind(dtype).contiguous();
        let linear = |w: Tensor, b: Option<Tensor>| Linear::new(w, b, device, dtype);
        // The matrices `names` stacked by rows: in their blocks when the source keeps every
        // one of them quantized, else as floats.
        let stacked = |names: &[String], bias: Option<Tensor>| -> Result<Linear, LoadError> {
            let mut parts = Vec::with_capacity(names.len());
            for n in names.iter().filter(|_| split.is_none()) {
                match src.get_quantized(n)? {
                    Some(q) => parts.push(q),
                    None => break,
                }
            }
            if split.is_none() && parts.len() == names.len() {
                return Ok(Linear::quantized(parts, bias, dtype));
            }
            let ws = names.iter().map(|n| get(n)).collect::<Result<Vec<_>, _>>()?;
            let w = if ws.len() == 1 { ws.into_iter().next().expect("one") } else { Tensor::cat(&ws, 0) };
            Ok(linear(w, bias))
        };
        // A Gemma 3 image-text checkpoint keeps its text model under another prefix.
        let mut found = None;
        for p in [cfg.prefix.as_str(), "model.language_model.", "language_model.model."] {
            let name = format!("{p}embed_tokens.weight");
            if let Some(s) = &split {
                if let Some(t) = src.get(&name)? {
                    // A copy: the narrowed view would keep the whole table alive.
                    let rows = place(t.narrow(0, s.vocab_first as i64, s.vocab_rows as i64)).copy();
                    found = Some((p.to_string(), Embedding::Dense(rows)));
                    break;
                }
                continue;
            }
            if let Some(q) = src.get_quantized(&name)? {
                found = Some((p.to_string(), Embedding::Quantized(q)));
                break;
            }
            if let Some(t) = src.get(&name)? {
                found = Some((p.to_string(), Embedding::Dense(place(t))));
                break;
            }
        }
        let (prefix, embed) = found.ok_or_else(|| LoadError::MissingTensor(format!("{}embed_tokens.weight", cfg.prefix)))?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (i, spec) in cfg.layers.iter().enumerate() {
            let p = format!("{prefix}layers.{i}");
            let w = |n: &str| get(&format!("{p}.{n}"));
            let opt = |n: &str| src.get(&format!("{p}.{n}"));
            let names = |ns: &[&str]| ns.iter().map(|n| format!("{p}.{n}.weight")).collect::<Vec<_>>();
            let d = cfg.head_dim as i64;
            // This rank's rows (column-parallel) or columns (row-parallel) of a matrix.
            let rows = |n: &str, first: usize, len: usize, unit: i64| -> Result<Tensor, LoadError> {
                Ok(w(n)?.narrow(0, first as i64 * unit, len as i64 * unit))
            };
            let cols = |n: &str, first: usize, len: usize, unit: i64| -> Result<Tensor, LoadError> {
                Ok(w(n)?.narrow(1, first as i64 * unit, len as i64 * unit))
            };
            let qkv = if let Some(s) = &split {
                let q = |x: &str| rows(&format!("self_attn.q_proj.{x}"), s.q_first, s.q_heads, d);
                let kv = |m: &str, x: &str| rows(&format!("self_attn.{m}_proj.{x}"), s.kv_first, s.kv_heads, d);
                let bias =
                    if cfg.qkv_bias { Some(Tensor::cat(&[q("bias")?, kv("k", "bias")?, kv("v", "bias")?], 0)) } else { None };
                linear(Tensor::cat(&[q("weight")?, kv("k", "weight")?, kv("v", "weight")?], 0), bias)
            } else if cfg.fused_projections {
                stacked(&names(&["self_attn.qkv_proj"]), None)?
            } else {
                let bias = if cfg.qkv_bias {
                    Some(Tensor::cat(&[w("self_attn.q_proj.bias")?, w("self_attn.k_proj.bias")?, w("self_attn.v_proj.bias")?], 0))
                } else {
                    None
                };
                stacked(&names(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]), bias)?
            };
            let qk_norm = if cfg.qk_norm {
                Some((place(w("self_attn.q_norm.weight")?), place(w("self_attn.k_norm.weight")?)))
            } else {
                None
            };
            let o = match &part {
                // The bias once, on rank 0: the all-reduce adds the ranks' partial sums.
                Some((sh, s)) => linear(
                    cols("self_attn.o_proj.weight", s.q_first, s.q_heads, d)?,
                    if sh.rank == 0 { opt("self_attn.o_proj.bias")? } else { None },
                ),
                None => stacked(&names(&["self_attn.o_proj"]), opt("self_attn.o_proj.bias")?)?,
            };
            let attn = Attention { qkv, o, qk_norm };
            let (attn_post_norm, mlp_norm, mlp_post_norm) = if cfg.sandwich_norms {
                (
                    Some(place(w("post_attention_layernorm.weight")?)),
                    place(w("pre_feedforward_layernorm.weight")?),
                    Some(place(w("post_feedforward_layernorm.weight")?)),
                )
            } else {
                (None, place(w("post_attention_layernorm.weight")?), None)
            };
            let ffn = match (&cfg.moe, spec.moe) {
                (Some(moe), true) => FeedForward::Sparse(load_moe(src, &p, moe, &cfg, device, dtype)?),
                _ if split.is_some() => {
                    let s = split.as_ref().expect("split");
                    let gate = rows("mlp.gate_proj.weight", s.mlp_first, s.mlp_rows, 1)?;
                    let up = rows("mlp.up_proj.weight", s.mlp_first, s.mlp_rows, 1)?;
                    let down = cols("mlp.down_proj.weight", s.mlp_first, s.mlp_rows, 1)?;
                    FeedForward::Dense(Mlp { gate_up: linear(Tensor::cat(&[gate, up], 0), None), down: linear(down, None), act: cfg.activation })
                }
                _ => {
                    let gate_up = if cfg.fused_projections {
                        stacked(&names(&["mlp.gate_up_proj"]), None)?
                    } else {
                        stacked(&names(&["mlp.gate_proj", "mlp.up_proj"]), None)?
                    };
                    let down = stacked(&names(&["mlp.down_proj"]), None)?;
                    FeedForward::Dense(Mlp { gate_up, down, act: cfg.activation })
                }
            };
            layers.push(Layer {
                spec: spec.clone(),
                attn_norm: place(w("input_layernorm.weight")?),
                attn,
                attn_post_norm,
                mlp_norm,
                ffn,
                mlp_post_norm,
            });
        }
        let untied = !cfg.tie_word_embeddings && src.contains("lm_head.weight")?;
        let lm_head = match (&embed, &split) {
            // The vocabulary shard, padded with zero rows to the length every rank's has.
            (e, Some(s)) => {
                let mine = match e {
                    // Tied: the embedding's own shard.
                    Embedding::Dense(t) if !untied => t.shallow_clone(),
                    _ => place(get("lm_head.weight")?.narrow(0, s.vocab_first as i64, s.vocab_rows as i64)).copy(),
                };
                if s.vocab_rows < s.vocab_shard {
                    let pad = Tensor::zeros([(s.vocab_shard - s.vocab_rows) as i64, mine.size()[1]], (mine.kind(), mine.device()));
                    linear(Tensor::cat(&[mine, pad], 0), None)
                } else {
                    linear(mine, None)
                }
            }
            _ if untied => stacked(&["lm_head.weight".to_string()], None)?,
            (Embedding::Quantized(q), None) => Linear::quantized(vec![q.shallow_clone()], None, dtype),
            (Embedding::Dense(t), None) => Linear::new(t.shallow_clone(), None, device, dtype),
        };
        let ropes = cfg.ropes.iter().map(|r| RopeTables::new(r, device)).collect();
        let norm = place(get(&format!("{prefix}norm.weight"))?);
        let vision = match &cfg.vision {
            Some(v) => Some(VisionTower::load(v.clone(), src, device, dtype)?),
            None => None,
        };
        Ok(Decoder { norm, cfg, device, dtype, embed, layers, lm_head, ropes, vision, shard: part })
    }

    /// What the prefix cache keys a sequence's blocks with besides its tokens (0 for most
    /// models): a LongRoPE model computes the keys of a prompt longer than its original
    /// context with other frequencies than a shorter one's, so the two must not share blocks.
    pub fn prefix_salt(&self, prompt_len: usize) -> u64 {
        let long = self.cfg.ropes.iter().any(|r| match &r.scaling {
            super::rope::Scaling::LongRope { original_max, .. } => prompt_len > *original_max,
            _ => false,
        });
        if long { 0x6c6f_6e67_726f_7065 } else { 0 }
    }

    /// Whether the linear layers run on GGUF blocks (`--quantization gguf`).
    pub fn is_quantized(&self) -> bool {
        self.lm_head.is_quantized() || self.layers.iter().any(|l| l.attn.qkv.is_quantized())
    }

    /// The LM head `[vocab, hidden]` (the embedding table when tied), in the model's dtype.
    pub fn lm_head(&self) -> Tensor {
        self.lm_head.weight()
    }

    /// This rank's place, when the model is split over ranks.
    pub fn shard(&self) -> Option<&Shard> {
        self.shard.as_ref().map(|(s, _)| s)
    }

    /// Query and KV heads this process holds (all of them unless split).
    pub fn heads(&self) -> (usize, usize) {
        match &self.shard {
            Some((_, p)) => (p.q_heads, p.kv_heads),
            None => (self.cfg.num_heads, self.cfg.num_kv_heads),
        }
    }

    /// A paged KV cache for the heads this process holds.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        let c = &self.cfg;
        KvCache::new(c.num_layers, num_blocks, block_size, self.heads().1, c.head_dim, self.dtype, self.device)
    }

    /// Runs one step and returns f32 logits `[batch.logits_rows.len(), vocab]`.
    pub fn forward(&self, batch: &StepBatch, cache: &mut KvCache) -> Tensor {
        self.forward_timed(batch, cache, &mut None)
    }

    /// `forward`, adding the time each kind of operation took to `times` when given.
    /// (CPU operations are synchronous, so wall time per section is what it cost; on CUDA
    /// the figures only say where work was queued.)
    pub fn forward_timed(&self, batch: &StepBatch, cache: &mut KvCache, times: &mut Option<&mut OpTimes>) -> Tensor {
        // Rank 0 of a split model sends the step to the others first, and holds the group
        // (against its heartbeat) until every collective of the step is done.
        if let Some((s, _)) = self.shard.as_ref().filter(|(s, _)| s.rank == 0) {
            let _turn = s.group.turn();
            let t0 = Instant::now();
            let msg = super::tp::step_message(batch);
            s.group.send_message(&msg, None).unwrap_or_else(|e| panic!("tensor parallelism: sending the step: {e}"));
            let sent = t0.elapsed();
            let mut own = OpTimes::default();
            let logits = self.forward_shard(batch, cache, &mut Some(&mut own));
            s.stats.record(t0.elapsed(), sent + own.collectives);
            if let Some(t) = times.as_deref_mut() {
                t.add(&own);
            }
            return logits;
        }
        self.forward_shard(batch, cache, times)
    }

    /// This process's part of a step (the whole step unless the model is split); ranks
    /// other than 0 run it on the steps rank 0 sends them.
    pub fn forward_shard(&self, batch: &StepBatch, cache: &mut KvCache, times: &mut Option<&mut OpTimes>) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut clock = Clock::new(times);
        let last = self.trunk(batch, cache, &mut clock);
        let mut logits = self.lm_head.forward(&last);
        if let Some(cap) = self.cfg.final_softcap {
            logits = (logits / cap).tanh() * cap;
        }
        if let Some((s, _)) = &self.shard {
            clock.lap(|t| &mut t.lm_head);
            let all = s.group.all_gather(&logits, 1).unwrap_or_else(|e| panic!("tensor parallelism: {e}"));
            logits = all.narrow(1, 0, self.cfg.vocab_size as i64);
            clock.lap(|t| &mut t.collectives);
        }
        let logits = logits.to_kind(Kind::Float);
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
        let (h, kvh) = self.heads();
        let (h, kvh, d) = (h as i64, kvh as i64, c.head_dim as i64);
        let n = batch.tokens.len() as i64;

        let tokens = Tensor::from_slice(&batch.tokens).to_device(dev);
        let positions = Tensor::from_slice(&batch.positions).to_device(dev).to_kind(Kind::Float);
        let slots = Tensor::from_slice(&batch.slots).to_device(dev);
        // The length each token's sequence is judged by (LongRoPE picks its frequencies by it).
        let mut lens = Vec::with_capacity(n as usize);
        for s in &batch.seqs {
            lens.extend(std::iter::repeat_n(s.rope_len as i64, s.len));
        }
        let rotary: Vec<(Tensor, Tensor)> = match c.mrope_section {
            Some(section) => self.ropes.iter().map(|r| self.mrope_cos_sin(r, batch, section, &lens)).collect(),
            None => self.ropes.iter().map(|r| r.cos_sin(&positions, &lens, self.dtype)).collect(),
        };
        let mut plans: Vec<(Option<usize>, AttnPlan)> = Vec::new();
        for l in &self.layers {
            if !plans.iter().any(|(w, _)| *w == l.spec.window) {
                plans.push((l.spec.window, AttnPlan::new(batch, dev, l.spec.window)));
            }
        }
        let rule = ScoreRule { scale: c.attn_scale, softcap: c.attn_softcap };

        let mut x = match &self.shard {
            // This rank's vocabulary rows; zeros for the others' tokens, which the sum fills.
            Some((_, p)) => {
                let local = &tokens - p.vocab_first as i64;
                let inside = local.ge(0).logical_and(&local.lt(p.vocab_rows as i64));
                let rows = self.embed.lookup(&local.clamp(0, p.vocab_rows as i64 - 1), self.dtype);
                let mut x = rows * inside.unsqueeze(1).to_kind(self.dtype);
                self.reduce(&mut x, clock, |t| &mut t.setup);
                x
            }
            None => self.embed.lookup(&tokens, self.dtype), // [n, hidden]
        };
        if c.scale_embeddings {
            // transformers rounds √hidden to the model's dtype before the product.
            x = x * Tensor::from((c.hidden_size as f64).sqrt()).to_kind(Kind::Float).to_kind(self.dtype).to_device(dev);
        }
        if !batch.image_rows.is_empty() {
            let rows = Tensor::from_slice(&batch.image_rows).to_device(dev);
            x = x.index_copy(0, &rows, &Tensor::cat(&batch.image_embeds, 0).to_kind(self.dtype));
        }
        // The residual stream runs on `rows` rows (the step's tokens, then zero filler rows
        // up to a rounded count, see `linear::round_rows`), so that the projections meet few
        // shapes without a copy each; attention reads and writes the real rows only.
        let rows = linear::product_rows(n, dev, self.dtype);
        x = linear::pad_rows(&x, rows);
        clock.lap(|t| &mut t.setup);
        for (li, layer) in self.layers.iter().enumerate() {
            let hs = self.rms_norm(&x, &layer.attn_norm);
            clock.lap(|t| &mut t.norm);
            let mut qkv = layer.attn.qkv.forward(&hs);
            if let Some((qn, kn)) = &layer.attn.qk_norm {
                qkv = self.norm_heads(&qkv, qn, kn);
            }
            clock.lap(|t| &mut t.qkv);
            let (cos, sin) = &rotary[layer.spec.rope];
            let q = if dev == Device::Cpu {
                let (kc, vc) = cache.layer_mut(li);
                kernels::rope_and_cache(&qkv.narrow(0, 0, n), cos, sin, &slots, kc, vc, h)
            } else {
                let parts = qkv.narrow(0, 0, n).split_with_sizes([h * d, kvh * d, kvh * d], -1);
                let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
                let q = apply_rope(&parts[0].view([n, h, d]), &cos, &sin);
                let k = apply_rope(&parts[1].view([n, kvh, d]), &cos, &sin);
                cache.write(li, &slots, &k, &parts[2].view([n, kvh, d]));
                q
            };
            clock.lap(|t| &mut t.rope_cache);
            let plan = &plans.iter().find(|(w, _)| *w == layer.spec.window).expect("a plan per window").1;
            let attn = plan.attend(&q, cache.keys(li), cache.values(li), kvh, rule);
            clock.lap(|t| &mut t.attention);
            let mut o = layer.attn.o.forward(&linear::pad_rows(&attn.reshape([n, h * d]), rows));
            self.reduce(&mut o, clock, |t| &mut t.o_proj);
            if let Some(w) = &layer.attn_post_norm {
                o = self.rms_norm(&o, w);
            }
            let x1 = x + o;
            clock.lap(|t| &mut t.o_proj);
            let hs = self.rms_norm(&x1, &layer.mlp_norm);
            clock.lap(|t| &mut t.norm);
            let mut mlp = match &layer.ffn {
                FeedForward::Dense(mlp) => {
                    let gu = mlp.gate_up.forward(&hs);
                    clock.lap(|t| &mut t.gate_up);
                    let act = mlp.activate(&gu);
                    clock.lap(|t| &mut t.activation);
                    let mut y = mlp.down.forward(&act);
                    self.reduce(&mut y, clock, |t| &mut t.down);
                    y
                }
                FeedForward::Sparse(moe) => {
                    // The router sends each row to experts: the real rows only.
                    let y = linear::pad_rows(&moe.forward(&hs.narrow(0, 0, n)), rows);
                    clock.lap(|t| &mut t.experts);
                    y
                }
            };
            if let Some(w) = &layer.mlp_post_norm {
                mlp = self.rms_norm(&mlp, w);
            }
            x = x1 + mlp;
            clock.lap(|t| &mut t.down);
        }
        let rows = Tensor::from_slice(&batch.logits_rows).to_device(dev);
        let last = self.rms_norm(&x.index_select(0, &rows), &self.norm);
        clock.lap(|t| &mut t.norm);
        last
    }

    /// Sums a row-parallel layer's partial output over the ranks (nothing unless split);
    /// the time before it goes to `before`, the sum's to `collectives`.
    fn reduce(&self, t: &mut Tensor, clock: &mut Clock<'_, '_>, before: impl FnOnce(&mut OpTimes) -> &mut Duration) {
        if let Some((s, _)) = &self.shard {
            clock.lap(before);
            s.group.all_reduce_sum(t).unwrap_or_else(|e| panic!("tensor parallelism: {e}"));
            clock.lap(|t| &mut t.collectives);
        }
    }

    /// M-RoPE's cos and sin `[n, dim]`: each axis's (time, height, width) computed as one
    /// rope's, then the frequencies taken from the axes in turn by `section` (twice: the
    /// two halves of a head), as transformers' `apply_multimodal_rotary_pos_emb` does.
    fn mrope_cos_sin(&self, rope: &RopeTables, batch: &StepBatch, section: [usize; 3], lens: &[i64]) -> (Tensor, Tensor) {
        let axes: Vec<(Tensor, Tensor)> = (0..3)
            .map(|a| {
                let p = batch.mrope.as_ref().map_or(&batch.positions, |m| &m[a]);
                let p = Tensor::from_slice(p).to_device(self.device).to_kind(Kind::Float);
                rope.cos_sin(&p, lens, self.dtype)
            })
            .collect();
        let (mut cos, mut sin) = (Vec::with_capacity(6), Vec::with_capacity(6));
        let mut start = 0i64;
        for (i, &len) in section.iter().chain(section.iter()).enumerate() {
            let (c, s) = &axes[i % 3];
            cos.push(c.narrow(1, start, len as i64));
            sin.push(s.narrow(1, start, len as i64));
            start += len as i64;
        }
        (Tensor::cat(&cos, 1), Tensor::cat(&sin, 1))
    }

    /// RMSNorm as transformers computes it: in f32, scaled by the weight after the cast back
    /// — or, for Gemma, by (1 + weight) before it (on the CPU in one pass by our kernel).
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let offset = self.cfg.unit_offset_norms;
        if self.device == Device::Cpu {
            return kernels::rms_norm(&x.contiguous(), w, self.cfg.rms_norm_eps, offset);
        }
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (var + self.cfg.rms_norm_eps).rsqrt();
        if offset { (normed * (w.to_kind(Kind::Float) + 1.0)).to_kind(self.dtype) } else { w * normed.to_kind(self.dtype) }
    }

    /// `qkv: [n, (H + 2·KVH)·D]` with every query and key head RMS-normalised.
    fn norm_heads(&self, qkv: &Tensor, qn: &Tensor, kn: &Tensor) -> Tensor {
        let c = &self.cfg;
        let (h, kvh) = self.heads();
        let (n, h, kvh, d) = (qkv.size()[0], h as i64, kvh as i64, c.head_dim as i64);
        let parts = qkv.split_with_sizes([h * d, kvh * d, kvh * d], -1);
        let q = self.rms_norm(&parts[0].reshape([n * h, d]), qn).view([n, h * d]);
        let k = self.rms_norm(&parts[1].reshape([n * kvh, d]), kn).view([n, kvh * d]);
        Tensor::cat(&[&q, &k, &parts[2]], -1)
    }
}

fn load_moe(
    src: &dyn WeightSource,
    layer: &str,
    moe: &MoeConfig,
    cfg: &DecoderConfig,
    device: Device,
    dtype: Kind,
) -> Result<SparseMoe, LoadError> {
    let get = |name: String| -> Result<Tensor, LoadError> { src.get(&name)?.ok_or(LoadError::MissingTensor(name)) };
    let names = &moe.names;
    let router = Linear::new(get(format!("{layer}.{}.weight", names.router))?, None, device, dtype);
    // GGUF files stack each projection of every expert in one `[E, rows, cols]` tensor.
    let stacked = |which: &str| src.get(&format!("{layer}.experts_stacked.{which}"));
    let mut experts = Vec::with_capacity(moe.num_experts);
    match (stacked("gate")?, stacked("up")?, stacked("down")?) {
        (Some(g), Some(u), Some(dn)) => {
            for e in 0..moe.num_experts as i64 {
                let gate_up = Tensor::cat(&[g.get(e), u.get(e)], 0);
                experts.push(Mlp {
                    gate_up: Linear::new(gate_up, None, device, dtype),
                    down: Linear::new(dn.get(e), None, device, dtype),
                    act: cfg.activation,
                });
            }
        }
        _ => {
            for e in 0..moe.num_experts {
                let w = |n: &str| get(format!("{layer}.{}.{e}.{n}.weight", names.experts));
                let gate_up = Tensor::cat(&[w(names.gate)?, w(names.up)?], 0);
                experts.push(Mlp {
                    gate_up: Linear::new(gate_up, None, device, dtype),
                    down: Linear::new(w(names.down)?, None, device, dtype),
                    act: cfg.activation,
                });
            }
        }
    }
    Ok(SparseMoe::new(router, experts, moe))
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
    pub experts: Duration,
    pub down: Duration,
    pub lm_head: Duration,
    /// Tensor parallelism's all-reduces and the logits' all-gather.
    pub collectives: Duration,
}

impl OpTimes {
    pub fn add(&mut self, o: &OpTimes) {
        let OpTimes { setup, norm, qkv, rope_cache, attention, o_proj, gate_up, activation, experts, down, lm_head, collectives } = o;
        self.setup += *setup;
        self.norm += *norm;
        self.qkv += *qkv;
        self.rope_cache += *rope_cache;
        self.attention += *attention;
        self.o_proj += *o_proj;
        self.gate_up += *gate_up;
        self.activation += *activation;
        self.experts += *experts;
        self.down += *down;
        self.lm_head += *lm_head;
        self.collectives += *collectives;
    }

    pub fn rows(&self) -> [(&'static str, Duration); 12] {
        [
            ("setup", self.setup),
            ("rms_norm", self.norm),
            ("qkv_proj", self.qkv),
            ("rope+cache_write", self.rope_cache),
            ("attention", self.attention),
            ("o_proj+residual", self.o_proj),
            ("gate_up_proj", self.gate_up),
            ("silu*up", self.activation),
            ("experts (MoE)", self.experts),
            ("down_proj+residual", self.down),
            ("lm_head", self.lm_head),
            ("all-reduce/gather (TP)", self.collectives),
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

/// `x · cos + rotate_half(x) · sin` over the first `cos.size(-1)` dimensions of each head of
/// `x: [n, heads, d]`; the rest pass through.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (d, rd) = (x.size()[2], cos.size()[2]);
    let rot = x.narrow(2, 0, rd);
    let halves = rot.chunk(2, -1);
    let rotated = Tensor::cat(&[&halves[1].neg(), &halves[0]], -1);
    let turned = &rot * cos + rotated * sin;
    if rd == d { turned } else { Tensor::cat(&[turned, x.narrow(2, rd, d - rd)], -1) }
}
