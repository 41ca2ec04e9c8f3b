//! Qwen2-VL (`Qwen2VLForConditionalGeneration`): a Qwen2 language model with multimodal
//! rotary positions (M-RoPE), and a vision transformer whose merged patch embeddings take
//! the places of the prompt's image placeholder tokens.
//!
//! - The config: the text model is read as Qwen2's (from `text_config`, or from the top
//!   level in older configs), with `mrope_section`; the vision tower from `vision_config`.
//! - The vision tower, as transformers computes it in float32: the patch embedding (a 3-D
//!   convolution whose kernel equals its stride, so one matrix product over the flattened
//!   patches), 2-D rotary embeddings (height and width positions of each patch in merge
//!   order), pre-norm blocks whose attention stays within each image, and the patch merger
//!   (LayerNorm, `merge²` neighbours concatenated, a GELU MLP to the text width).
//! - `MmPrompt`: what a prompt with images carries into the engine: its M-RoPE positions,
//!   its images' embeddings, the embedding row of each placeholder token, and the images'
//!   hashes (the prefix cache keys blocks holding image tokens by them).

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Value as Json, json};
use tch::{Device, Kind, Tensor};

use super::LoadError;
use super::config::{Arch, DecoderConfig, Hf};
use super::linear::Linear;
use super::mrope::{GridThw, MropeError, mrope_positions};
use super::weights::WeightSource;
use crate::vision::qwen2_vl::ImagePatches;

/// The vision tower's shape (`vision_config`) and the tokens that stand for images.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    /// The merger's output width: the language model's hidden size.
    pub out_dim: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub in_channels: usize,
    pub merge: usize,
    pub act: VisionAct,
    /// The placeholder token id of one merged patch (`<|image_pad|>`).
    pub image_token_id: u32,
}

/// The activation of the vision blocks' MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionAct {
    /// `x · σ(1.702 x)`.
    QuickGelu,
    /// The exact (erf) GELU.
    Gelu,
}

/// The decoder config of a Qwen2-VL checkpoint: Qwen2's, with M-RoPE and the vision tower.
pub fn config_from_hf(cfg: &Json) -> Result<DecoderConfig, String> {
    let text = cfg.get("text_config").filter(|t| t.is_object());
    let mut full = match text {
        Some(t) => t.clone(),
        None => cfg.clone(),
    };
    // What the top level says wins for these (transformers reads them there).
    for k in ["tie_word_embeddings", "dtype", "torch_dtype"] {
        if let Some(v) = cfg.get(k).filter(|v| !v.is_null()) {
            full[k] = v.clone();
        }
    }
    // Older configs call M-RoPE a rope type of its own; its frequencies are the default ones.
    let mut section = None;
    for key in ["rope_parameters", "rope_scaling"] {
        if let Some(p) = full.get_mut(key).and_then(Json::as_object_mut) {
            if let Some(s) = p.get("mrope_section").and_then(Json::as_array) {
                section = Some(s.iter().map(|v| v.as_u64().map(|v| v as usize)).collect::<Option<Vec<_>>>().ok_or("mrope_section must list integers")?);
            }
            for t in ["rope_type", "type"] {
                if p.get(t).and_then(Json::as_str) == Some("mrope") {
                    p.insert(t.into(), json!("default"));
                }
            }
        }
    }
    let mut c = super::llama::config_from_hf(&full, Arch::Qwen2)?;
    c.arch = Arch::Qwen2Vl;
    let section = section.ok_or("a Qwen2-VL config needs rope_parameters.mrope_section")?;
    let rotary_half = c.ropes[0].dim / 2;
    if section.len() != 3 || section.iter().sum::<usize>() != rotary_half {
        return Err(format!("mrope_section {section:?} must be three numbers summing to {rotary_half} (half the head's rotary dimensions)"));
    }
    c.mrope_section = Some([section[0], section[1], section[2]]);
    c.vision = Some(vision_config(cfg)?);
    Ok(c)
}

fn vision_config(cfg: &Json) -> Result<VisionConfig, String> {
    let v = cfg.get("vision_config").filter(|v| v.is_object()).ok_or("a Qwen2-VL config needs vision_config")?;
    let h = Hf(v);
    let embed_dim = h.usize("embed_dim").unwrap_or(1280);
    let num_heads = h.usize("num_heads").unwrap_or(16);
    if num_heads == 0 || embed_dim % num_heads != 0 || (embed_dim / num_heads) % 4 != 0 {
        return Err(format!("vision_config: embed_dim {embed_dim} must split into num_heads {num_heads} heads of a multiple of 4"));
    }
    let mlp_ratio = h.f64("mlp_ratio").unwrap_or(4.0);
    let act = match h.str("hidden_act").unwrap_or("quick_gelu") {
        "quick_gelu" => VisionAct::QuickGelu,
        "gelu" => VisionAct::Gelu,
        other => return Err(format!("vision_config.hidden_act {other:?} is not supported (quick_gelu, gelu are)")),
    };
    let top = Hf(cfg);
    let text_hidden = cfg.get("text_config").and_then(|t| Hf(t).usize("hidden_size")).or(top.usize("hidden_size"));
    Ok(VisionConfig {
        depth: h.usize("depth").unwrap_or(32),
        embed_dim,
        out_dim: h.usize("hidden_size").or(text_hidden).ok_or("vision_config lacks hidden_size")?,
        num_heads,
        mlp_dim: (embed_dim as f64 * mlp_ratio) as usize,
        patch_size: h.usize("patch_size").unwrap_or(14),
        temporal_patch_size: h.usize("temporal_patch_size").unwrap_or(2),
        in_channels: h.usize("in_channels").unwrap_or(3),
        merge: h.usize("spatial_merge_size").unwrap_or(2),
        act,
        image_token_id: top.usize("image_token_id").unwrap_or(151655) as u32,
    })
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), 1e-6, false)
    }
}

struct Block {
    norm1: Norm,
    norm2: Norm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

/// Qwen2-VL's vision transformer.
pub struct VisionTower {
    pub cfg: VisionConfig,
    /// The patch embedding's kernel as a matrix `[embed_dim, C·T·P·P]`.
    patch: Tensor,
    blocks: Vec<Block>,
    merger_norm: Norm,
    merger_fc1: Linear,
    merger_fc2: Linear,
    /// The 2-D rotary's inverse frequencies (float32, `head_dim / 4` of them).
    inv_freq: Tensor,
    device: Device,
    dtype: Kind,
}

impl VisionTower {
    pub fn load(cfg: VisionConfig, src: &dyn WeightSource, device: Device, dtype: Kind) -> Result<Self, LoadError> {
        let _guard = tch::no_grad_guard();
        let mut prefix = None;
        for p in ["visual.", "model.visual."] {
            if src.contains(&format!("{p}patch_embed.proj.weight"))? {
                prefix = Some(p);
                break;
            }
        }
        let prefix = prefix.ok_or_else(|| LoadError::MissingTensor("visual.patch_embed.proj.weight".into()))?;
        let get = |name: &str| -> Result<Tensor, LoadError> {
            let full = format!("{prefix}{name}");
            src.get(&full)?.ok_or(LoadError::MissingTensor(full))
        };
        let place = |t: Tensor| t.to_device(device).to_kind(dtype).contiguous();
        let linear = |n: &str| -> Result<Linear, LoadError> {
            Ok(Linear::new(get(&format!("{n}.weight"))?, Some(get(&format!("{n}.bias"))?), device, dtype))
        };
        let norm = |n: &str| -> Result<Norm, LoadError> {
            Ok(Norm { weight: place(get(&format!("{n}.weight"))?), bias: place(get(&format!("{n}.bias"))?) })
        };
        let patch = get("patch_embed.proj.weight")?;
        let width = (cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size) as i64;
        if patch.size() != [cfg.embed_dim as i64, cfg.in_channels as i64, cfg.temporal_patch_size as i64, cfg.patch_size as i64, cfg.patch_size as i64] {
            return Err(LoadError::Unsupported(format!("visual.patch_embed.proj.weight has shape {:?}, unlike vision_config", patch.size())));
        }
        let patch = place(patch.reshape([cfg.embed_dim as i64, width]));
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let b = format!("blocks.{i}");
            blocks.push(Block {
                norm1: norm(&format!("{b}.norm1"))?,
                norm2: norm(&format!("{b}.norm2"))?,
                qkv: linear(&format!("{b}.attn.qkv"))?,
                proj: linear(&format!("{b}.attn.proj"))?,
                fc1: linear(&format!("{b}.mlp.fc1"))?,
                fc2: linear(&format!("{b}.mlp.fc2"))?,
            });
        }
        // transformers: 1 / 10000 ** (arange(0, dim, 2) / dim), dim = head_dim / 2, in float32.
        let dim = (cfg.embed_dim / cfg.num_heads / 2) as i64;
        let cpu = (Kind::Int64, Device::Cpu);
        let exponents = Tensor::arange_start_step(0, dim, 2, cpu).to_kind(Kind::Float) / dim as f64;
        let inv_freq = Tensor::from(10000.0f64).to_kind(Kind::Float).pow(&exponents).reciprocal().to_device(device);
        Ok(VisionTower {
            patch,
            blocks,
            merger_norm: norm("merger.ln_q")?,
            merger_fc1: linear("merger.mlp.0")?,
            merger_fc2: linear("merger.mlp.2")?,
            inv_freq,
            device,
            dtype,
            cfg,
        })
    }

    /// The embeddings of `images`, `[Σ tokens, out_dim]` in the model's dtype, each image's
    /// `num_tokens` rows in turn.
    pub fn encode(&self, images: &[&ImagePatches]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let c = &self.cfg;
        let (heads, hd) = (c.num_heads as i64, (c.embed_dim / c.num_heads) as i64);
        let pixels: Vec<Tensor> = images
            .iter()
            .map(|im| Tensor::from_slice(&im.pixel_values).view([-1, im.patch_width as i64]))
            .collect();
        let pixels = Tensor::cat(&pixels, 0).to_device(self.device).to_kind(self.dtype);
        let mut x = pixels.matmul(&self.patch.transpose(0, 1)); // [patches, embed_dim]
        let n = x.size()[0];
        let (cos, sin) = self.rotary(images);
        let scale = (hd as f64).powf(-0.5);
        for b in &self.blocks {
            let h = b.norm1.forward(&x);
            let qkv = b.qkv.forward(&h).view([n, 3, heads, hd]);
            let (q, k, v) = (qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2));
            let q = rotate(&q, &cos, &sin).to_kind(self.dtype);
            let k = rotate(&k, &cos, &sin).to_kind(self.dtype);
            // Attention within each image: no patch sees another image's.
            let mut outs = Vec::with_capacity(images.len());
            let mut start = 0i64;
            for im in images {
                let len = (im.grid_thw[1] * im.grid_thw[2]) as i64;
                for _ in 0..im.grid_thw[0] {
                    let part = |t: &Tensor| t.narrow(0, start, len).transpose(0, 1); // [heads, len, hd]
                    let scores = part(&q).matmul(&part(&k).transpose(1, 2)) * scale;
                    let probs = scores.softmax(-1, Kind::Float).to_kind(self.dtype);
                    outs.push(probs.matmul(&part(&v)).transpose(0, 1).reshape([len, heads * hd]));
                    start += len;
                }
            }
            let attn = b.proj.forward(&Tensor::cat(&outs, 0));
            x = x + attn;
            let h = b.norm2.forward(&x);
            let h = b.fc1.forward(&h);
            let h = match c.act {
                VisionAct::QuickGelu => &h * (&h * 1.702).sigmoid(),
                VisionAct::Gelu => h.gelu("none"),
            };
            x = x + b.fc2.forward(&h);
        }
        let merged = self.merger_norm.forward(&x).view([-1, (c.embed_dim * c.merge * c.merge) as i64]);
        self.merger_fc2.forward(&self.merger_fc1.forward(&merged).gelu("none"))
    }

    /// cos and sin `[patches, head_dim]` (float32) of each patch's height and width
    /// positions, patches in the merge order the processor lists them in.
    fn rotary(&self, images: &[&ImagePatches]) -> (Tensor, Tensor) {
        let m = self.cfg.merge;
        let (mut hpos, mut wpos) = (Vec::new(), Vec::new());
        for im in images {
            let [t, h, w] = im.grid_thw;
            for _ in 0..t {
                for by in 0..h / m {
                    for bx in 0..w / m {
                        for iy in 0..m {
                            for ix in 0..m {
                                hpos.push((by * m + iy) as f32);
                                wpos.push((bx * m + ix) as f32);
                            }
                        }
                    }
                }
            }
        }
        let freqs = |p: &[f32]| Tensor::from_slice(p).to_device(self.device).unsqueeze(1) * self.inv_freq.unsqueeze(0);
        let half = Tensor::cat(&[freqs(&hpos), freqs(&wpos)], 1);
        let emb = Tensor::cat(&[&half, &half], 1);
        (emb.cos(), emb.sin())
    }
}

/// `x · cos + rotate_half(x) · sin` in float32, for `x: [n, heads, d]`, `cos: [n, d]`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let halves = x.chunk(2, -1);
    let rotated = Tensor::cat(&[&halves[1].neg(), &halves[0]], -1);
    &x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)
}

/// One image as the engine takes it: its patches, and a hash of them (equal pixels and
/// grid, equal hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    pub patches: ImagePatches,
    pub hash: u64,
}

impl ImageInput {
    pub fn new(patches: ImagePatches) -> Self {
        let mut h = DefaultHasher::new();
        patches.grid_thw.hash(&mut h);
        for v in &patches.pixel_values {
            v.to_bits().hash(&mut h);
        }
        ImageInput { hash: h.finish(), patches }
    }
}

/// The vision tower's outputs of recent images, by image hash, so that an image sent again
/// (the same pixels and grid) is not encoded again. Bounded by the rows (merged patches) it
/// holds; the image stored longest ago leaves first.
pub struct EncoderCache {
    map: std::collections::HashMap<u64, Tensor>,
    order: std::collections::VecDeque<u64>,
    rows: usize,
    max_rows: usize,
    /// Images served from the cache, and images encoded, so far.
    pub hits: u64,
    pub misses: u64,
}

impl EncoderCache {
    pub fn new(max_rows: usize) -> Self {
        EncoderCache { map: Default::default(), order: Default::default(), rows: 0, max_rows, hits: 0, misses: 0 }
    }

    /// The embeddings of `images` in order, `[Σ tokens, out_dim]`: the cached ones taken,
    /// the others encoded in one batch and kept.
    pub fn encode(&mut self, tower: &VisionTower, images: &[ImageInput]) -> Tensor {
        let missing: Vec<&ImageInput> = images.iter().filter(|i| !self.map.contains_key(&i.hash)).collect();
        let mut fresh = std::collections::HashMap::new();
        if !missing.is_empty() {
            let encoded = tower.encode(&missing.iter().map(|i| &i.patches).collect::<Vec<_>>());
            let mut start = 0i64;
            for image in &missing {
                let n = image.patches.num_tokens as i64;
                fresh.insert(image.hash, encoded.narrow(0, start, n));
                start += n;
            }
        }
        let parts: Vec<Tensor> = images
            .iter()
            .map(|i| match self.map.get(&i.hash) {
                Some(t) => {
                    self.hits += 1;
                    t.shallow_clone()
                }
                None => {
                    self.misses += 1;
                    fresh[&i.hash].shallow_clone()
                }
            })
            .collect();
        for (hash, t) in fresh {
            self.put(hash, t);
        }
        Tensor::cat(&parts, 0)
    }

    fn put(&mut self, hash: u64, t: Tensor) {
        let n = t.size()[0] as usize;
        if n > self.max_rows || self.map.contains_key(&hash) {
            return;
        }
        while self.rows + n > self.max_rows {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(gone) = self.map.remove(&old) {
                self.rows -= gone.size()[0] as usize;
            }
        }
        self.rows += n;
        self.order.push_back(hash);
        self.map.insert(hash, t.copy());
    }
}

/// What a prompt with images carries: M-RoPE positions, image embeddings, where they go.
#[derive(Debug)]
pub struct MmPrompt {
    /// `[3][prompt tokens]`: time, height and width positions.
    pub positions: [Vec<i64>; 3],
    /// Position of token `i` past the prompt: `i + delta` on every axis.
    pub delta: i64,
    /// `[image tokens, hidden]`, in the model's dtype.
    pub embeds: Tensor,
    /// Per prompt token: its row of `embeds`, or -1 for a text token.
    pub embed_row: Vec<i64>,
    /// Each image's placeholder tokens (`start..end` in the prompt) and hash.
    pub images: Vec<(std::ops::Range<usize>, u64)>,
}

impl Clone for MmPrompt {
    /// The copy shares the embeddings' storage (every choice of a request reads them).
    fn clone(&self) -> Self {
        MmPrompt {
            positions: self.positions.clone(),
            delta: self.delta,
            embeds: self.embeds.shallow_clone(),
            embed_row: self.embed_row.clone(),
            images: self.images.clone(),
        }
    }
}

impl MmPrompt {
    /// The positions and embeddings of `prompt`, whose placeholder runs stand for `images`
    /// in order.
    pub fn new(tower: &VisionTower, prompt: &[u32], images: &[ImageInput], cache: Option<&mut EncoderCache>) -> Result<Self, MropeError> {
        let cfg = &tower.cfg;
        let grids: Vec<GridThw> = images.iter().map(|i| i.patches.grid_thw).collect();
        let mrope = mrope_positions(prompt, cfg.image_token_id, &grids, cfg.merge)?;
        let mut embed_row = vec![-1i64; prompt.len()];
        let mut ranges = Vec::with_capacity(images.len());
        let mut next = 0i64;
        let mut i = 0;
        let mut it = images.iter();
        while i < prompt.len() {
            if prompt[i] != cfg.image_token_id {
                i += 1;
                continue;
            }
            let image = it.next().expect("placeholder count checked against the grids");
            let n = image.patches.num_tokens;
            // Each image's placeholders must be one unbroken run.
            if prompt.get(i..i + n).is_none_or(|run| run.iter().any(|&t| t != cfg.image_token_id)) {
                let found = prompt[i..].iter().take_while(|&&t| t == cfg.image_token_id).count();
                return Err(MropeError::PlaceholderCount { found, expected: n });
            }
            for r in &mut embed_row[i..i + n] {
                *r = next;
                next += 1;
            }
            ranges.push((i..i + n, image.hash));
            i += n;
        }
        let embeds = match cache {
            None => tower.encode(&images.iter().map(|i| &i.patches).collect::<Vec<_>>()),
            Some(cache) => cache.encode(tower, images),
        };
        Ok(MmPrompt { positions: mrope.positions, delta: mrope.delta, embeds, embed_row, images: ranges })
    }

    pub fn prompt_len(&self) -> usize {
        self.embed_row.len()
    }

    /// The hashes of the images whose placeholders overlap prompt positions `range`, mixed
    /// (0 when none do): what a prefix-cache key adds for a block of these positions.
    pub fn key_of(&self, range: std::ops::Range<usize>) -> u64 {
        let mut h = DefaultHasher::new();
        let mut any = false;
        for (r, hash) in &self.images {
            if r.start < range.end && range.start < r.end {
                (r.start, hash).hash(&mut h);
                any = true;
            }
        }
        if any { h.finish() } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_config() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen2-vl/config.json")).unwrap();
        let c = config_from_hf(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(c.arch, Arch::Qwen2Vl);
        assert_eq!(c.mrope_section, Some([2, 3, 3]));
        assert!(c.qkv_bias && c.tie_word_embeddings);
        let v = c.vision.unwrap();
        assert_eq!((v.depth, v.embed_dim, v.out_dim, v.num_heads, v.mlp_dim, v.image_token_id), (2, 32, 64, 2, 64, 2050));
        // An older config: M-RoPE as a rope type, everything at the top level.
        let old = json!({"architectures": ["Qwen2VLForConditionalGeneration"], "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 10, "rope_theta": 1e6,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "vision_config": {"embed_dim": 32, "num_heads": 2}});
        assert_eq!(config_from_hf(&old).unwrap().mrope_section, Some([2, 3, 3]));
        let bad = json!({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 8,
            "vocab_size": 10, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3]}, "vision_config": {}});
        assert!(config_from_hf(&bad).unwrap_err().contains("mrope_section"));
    }
}
