//! Weights by their Hugging Face names, whatever file they come from.
//!
//! GGUF names (`blk.3.attn_q.weight`) are mapped to Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`), quantized tensors are dequantized to f32,
//! and llama.cpp's row permutation of Q and K is undone, so that the forward pass sees one
//! layout only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Kind, Tensor};

use super::LoadError;
use super::config::Arch;
use super::gguf::GgufFile;
use super::quant::{self, QuantTensor};

/// A store of named tensors in Hugging Face naming and layout, on the CPU.
pub trait WeightSource {
    /// The tensor, or None when the file has no such tensor.
    fn get(&self, name: &str) -> Result<Option<Tensor>, LoadError>;

    /// Whether the source has the tensor (without reading it, where the source can tell).
    fn contains(&self, name: &str) -> Result<bool, LoadError> {
        Ok(self.get(name)?.is_some())
    }

    /// The matrix in its ggml blocks, when this source keeps weights quantized and holds
    /// this one so (in a type the quantized kernels read); None otherwise, and `get` then
    /// gives it as floats.
    fn get_quantized(&self, _name: &str) -> Result<Option<QuantTensor>, LoadError> {
        Ok(None)
    }
}

pub struct GgufWeights<'a> {
    pub file: &'a GgufFile,
    pub path: &'a Path,
    pub arch: Arch,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Hand out quantized matrices in their blocks (`get_quantized`).
    pub keep_quantized: bool,
}

/// Hugging Face name → GGUF name, for a file of family `arch` (Gemma's norms after
/// attention and around the MLP have names of their own). `model.layers.N.experts_stacked.
/// {gate,up,down}` asks for the `[experts, rows, cols]` stack of every expert's projection.
fn gguf_name(hf: &str, arch: Arch) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if module == "experts_stacked" {
        return Some(format!("blk.{layer}.ffn_{suffix}_exps.weight"));
    }
    let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.gate" | "block_sparse_moe.gate" => "ffn_gate_inp",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

impl GgufWeights<'_> {
    /// Heads whose rows llama.cpp's converter interleaved in this tensor (Q and K of the
    /// Llama-style converters; not Qwen's, Gemma's or Phi-3's).
    fn permuted_heads(&self, gname: &str, shape: &[usize]) -> Result<Option<usize>, LoadError> {
        let heads = match gname.rsplit('.').nth(1) {
            Some("attn_q") => Some(self.num_heads),
            Some("attn_k") => Some(self.num_kv_heads),
            _ => None,
        };
        let rows = shape.first().copied().unwrap_or(0);
        match heads.filter(|_| matches!(self.arch, Arch::Llama | Arch::Mistral | Arch::Mixtral)) {
            Some(_) if shape.len() != 2 => Err(LoadError::Format {
                path: self.path.to_owned(),
                msg: format!("tensor {gname}: a projection must have 2 dimensions, not {}", shape.len()),
            }),
            Some(h) if h == 0 || rows % (2 * h) != 0 => Err(LoadError::Format {
                path: self.path.to_owned(),
                msg: format!("tensor {gname}: {rows} rows do not split into {h} heads of rotary pairs"),
            }),
            heads => Ok(heads),
        }
    }
}

impl WeightSource for GgufWeights<'_> {
    fn get_quantized(&self, name: &str) -> Result<Option<QuantTensor>, LoadError> {
        if !self.keep_quantized {
            return Ok(None);
        }
        let Some(gname) = gguf_name(name, self.arch) else { return Ok(None) };
        let Some(info) = self.file.tensor(&gname) else { return Ok(None) };
        let &[rows, cols] = info.shape.as_slice() else { return Ok(None) };
        let bytes = self.file.bytes(info);
        let Some(q) = QuantTensor::new(info.ggml_type, rows, cols, bytes) else { return Ok(None) };
        // The copy is what the model keeps: the file's pages may go.
        release(bytes);
        Ok(Some(match self.permuted_heads(&gname, &info.shape)? {
            Some(h) => q.reorder_rows(&unpermuted_order(rows, h)),
            None => q,
        }))
    }

    fn contains(&self, name: &str) -> Result<bool, LoadError> {
        Ok(gguf_name(name, self.arch).is_some_and(|g| self.file.tensor(&g).is_some()))
    }

    fn get(&self, name: &str) -> Result<Option<Tensor>, LoadError> {
        let Some(gname) = gguf_name(name, self.arch) else { return Ok(None) };
        let Some(info) = self.file.tensor(&gname) else { return Ok(None) };
        let mut data = vec![0f32; info.numel()];
        quant::dequantize(info.ggml_type, self.file.bytes(info), &mut data);
        let shape: Vec<i64> = info.shape.iter().map(|&d| i64::try_from(d)).collect::<Result<_, _>>().map_err(|_| {
            LoadError::Format { path: self.path.to_owned(), msg: format!("tensor {gname}: a dimension is larger than 2^63") }
        })?;
        let t = Tensor::from_slice(&data).reshape(&shape);
        // llama.cpp's converter interleaves the two rotary halves of each Q/K head.
        let t = match self.permuted_heads(&gname, &info.shape)? {
            Some(h) => unpermute_rows(&t, h),
            None => t,
        };
        // llama.cpp's Gemma converter stores every RMSNorm weight as 1 + w.
        let t = if matches!(self.arch, Arch::Gemma2 | Arch::Gemma3) && gname.ends_with("norm.weight") { t - 1.0 } else { t };
        Ok(Some(t))
    }
}

/// Inverse of llama.cpp's `permute`: rows `[h][d/2][2]` back to `[h][2][d/2]`.
fn unpermute_rows(t: &Tensor, heads: usize) -> Tensor {
    let size = t.size();
    let h = heads as i64;
    let rows = size[0];
    let rest: Vec<i64> = size[1..].to_vec();
    let mut s = vec![h, rows / h / 2, 2];
    s.extend(&rest);
    t.reshape(&s).transpose(1, 2).reshape(&size).contiguous()
}

/// `unpermute_rows` as a row order: row i of the result is row `order[i]` of the stored
/// matrix (for weights kept in blocks, whose rows move whole).
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for two in 0..2 {
            for i in 0..half {
                order.push(h * 2 * half + i * 2 + two);
            }
        }
    }
    order
}

/// A Hugging Face folder's safetensors, single file or sharded, memory-mapped.
///
/// Opened with a serving dtype (`open_as`), floating-point tensors come out already in it,
/// converted piece by piece straight from the mapping, and each piece's mapped pages are
/// handed back to the kernel once read: loading never holds a second full copy of the
/// weights (the file's pages and the converted tensors), only the converted ones.
pub struct SafetensorsWeights {
    /// Each file with the length of its JSON header.
    maps: Vec<(PathBuf, Mmap, usize)>,
    index: HashMap<String, (usize, safetensors::tensor::TensorInfo)>,
    /// The dtype floating-point tensors are converted to, when given.
    float_kind: Option<Kind>,
}

/// Bytes converted at a time: the most of the file a tensor's conversion keeps resident.
const CONVERT_CHUNK: usize = 16 << 20;

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
}

/// Drops the mapped pages of `bytes` (a read-only file mapping) from this process: they are
/// read again from the file if touched later, so nothing is lost, and resident memory falls.
fn release(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    let len = bytes.len() + (start - aligned);
    // SAFETY: the range lies within a live read-only shared file mapping; MADV_DONTNEED on
    // it only drops page-table entries, and later reads fault the same file data back in.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_DONTNEED);
    }
}

impl SafetensorsWeights {
    /// Tensors come out in the dtype they are stored in.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        Self::open_with(dir, None)
    }

    /// Floating-point tensors come out in `kind` (the serving dtype), converted from the
    /// mapping without a full copy in the stored dtype.
    pub fn open_as(dir: &Path, kind: Kind) -> Result<Self, LoadError> {
        Self::open_with(dir, Some(kind))
    }

    fn open_with(dir: &Path, float_kind: Option<Kind>) -> Result<Self, LoadError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| LoadError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LoadError::Format { path: dir.to_owned(), msg: "no *.safetensors files".into() });
        }
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let f = std::fs::File::open(&path).map_err(|e| LoadError::io(&path, e))?;
            // SAFETY: read-only mapping of a weights file that is not modified while served.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| LoadError::io(&path, e))?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| LoadError::Format { path: path.clone(), msg: e.to_string() })?;
            for (name, info) in meta.tensors() {
                index.insert(name, (i, info.clone()));
            }
            maps.push((path, map, header_len));
        }
        Ok(SafetensorsWeights { maps, index, float_kind })
    }
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, name: &str) -> Result<Option<Tensor>, LoadError> {
        let Some((i, info)) = self.index.get(name) else { return Ok(None) };
        let (path, map, n) = &self.maps[*i];
        let bad = |msg: String| LoadError::Format { path: path.clone(), msg };
        let (start, end) = info.data_offsets;
        let bytes = &map[8 + n + start..8 + n + end];
        use safetensors::Dtype;
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            other => return Err(bad(format!("tensor {name}: dtype {other:?} is not supported"))),
        };
        let shape: Vec<i64> = info.shape.iter().map(|&d| i64::try_from(d)).collect::<Result<_, _>>()
            .map_err(|_| bad(format!("tensor {name}: a dimension is larger than 2^63")))?;
        let target = match self.float_kind {
            Some(k) if is_float(kind) => k,
            _ => kind,
        };
        let numel: i64 = shape.iter().product();
        let elem = kind.elt_size_in_bytes();
        if bytes.len() != numel as usize * elem {
            return Err(bad(format!("tensor {name}: {} bytes for shape {shape:?} of {kind:?}", bytes.len())));
        }
        let out = Tensor::empty(&shape, (target, tch::Device::Cpu));
        let flat = out.view([numel]);
        let step = (CONVERT_CHUNK / elem).max(1);
        let aligned = bytes.as_ptr() as usize % elem == 0;
        for start in (0..numel as usize).step_by(step) {
            let n = step.min(numel as usize - start);
            let piece = &bytes[start * elem..(start + n) * elem];
            let src = if aligned {
                // SAFETY: `piece` holds n elements of `kind`, aligned for it, and stays mapped
                // while `src` lives (it is dropped below, before anything is unmapped); the
                // tensor is only read from.
                unsafe { Tensor::from_blob(piece.as_ptr(), &[n as i64], &[1], kind, tch::Device::Cpu) }
            } else {
                Tensor::from_data_size(piece, &[n as i64], kind)
            };
            flat.narrow(0, start as i64, n as i64).copy_(&src);
            drop(src);
            release(piece);
        }
        Ok(Some(out))
    }

    fn contains(&self, name: &str) -> Result<bool, LoadError> {
        Ok(self.index.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        let name = |n: &str| gguf_name(n, Arch::Llama);
        assert_eq!(name("model.layers.12.self_attn.k_proj.weight").unwrap(), "blk.12.attn_k.weight");
        assert_eq!(name("model.layers.0.mlp.down_proj.weight").unwrap(), "blk.0.ffn_down.weight");
        assert_eq!(name("model.layers.0.self_attn.q_proj.bias").unwrap(), "blk.0.attn_q.bias");
        assert_eq!(name("lm_head.weight").unwrap(), "output.weight");
        assert!(name("model.layers.0.unknown.weight").is_none());
        assert_eq!(name("model.layers.1.post_attention_layernorm.weight").unwrap(), "blk.1.ffn_norm.weight");
        let gemma = |n: &str| gguf_name(n, Arch::Gemma2).unwrap();
        assert_eq!(gemma("model.layers.1.post_attention_layernorm.weight"), "blk.1.post_attention_norm.weight");
        assert_eq!(gemma("model.layers.1.pre_feedforward_layernorm.weight"), "blk.1.ffn_norm.weight");
        assert_eq!(gemma("model.layers.1.post_feedforward_layernorm.weight"), "blk.1.post_ffw_norm.weight");
        assert_eq!(name("model.layers.2.experts_stacked.gate").unwrap(), "blk.2.ffn_gate_exps.weight");
        assert_eq!(name("model.layers.2.mlp.gate.weight").unwrap(), "blk.2.ffn_gate_inp.weight");
    }

    #[test]
    fn safetensors_convert_to_the_serving_dtype_piece_by_piece() {
        let dir = std::env::temp_dir().join(format!("sluice-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // More elements than one conversion piece holds, so the pieces must join up.
        let n = CONVERT_CHUNK / 4 + 3;
        let values: Vec<f32> = (0..n).map(|i| (i % 256) as f32 * 0.5).collect();
        let ints: Vec<i64> = vec![1, -2, 3];
        let bytes_f: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes_i: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            ("w", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n], &bytes_f).unwrap()),
            ("ids", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![3], &bytes_i).unwrap()),
        ];
        std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        let src = SafetensorsWeights::open_as(&dir, Kind::BFloat16).unwrap();
        let w = src.get("w").unwrap().unwrap();
        assert_eq!(w.kind(), Kind::BFloat16);
        let back: Vec<f32> = Vec::try_from(w.to_kind(Kind::Float)).unwrap();
        let wrong = back.iter().zip(&values).filter(|(a, b)| a != b).count();
        assert_eq!((back.len(), wrong), (n, 0), "these values are exact in bfloat16");
        let ids = src.get("ids").unwrap().unwrap();
        assert_eq!((ids.kind(), Vec::<i64>::try_from(ids).unwrap()), (Kind::Int64, ints));
        assert!(src.contains("w").unwrap() && !src.contains("nope").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn q_rows_that_do_not_split_into_heads_are_an_error() {
        // Found by fuzzing (fuzz/, target `gguf`): a Q projection of 3 rows for 2 heads
        // made the un-permuting reshape panic instead of failing the load.
        use crate::model::gguf::{GgufFile, tests::file};
        let mut b = file(&[], &[("blk.0.attn_q.weight", &[4, 3], 0, 0)]);
        b.extend(vec![0u8; (32 - b.len() % 32) % 32 + 12 * 4]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let src = GgufWeights { file: &g, path: &path, arch: Arch::Llama, num_heads: 2, num_kv_heads: 1, keep_quantized: false };
        // Presence is read off the header: the malformed tensor is there, unread.
        assert!(src.contains("model.layers.0.self_attn.q_proj.weight").unwrap());
        assert!(!src.contains("lm_head.weight").unwrap() && !src.contains("no.such.tensor").unwrap());
        let err = src.get("model.layers.0.self_attn.q_proj.weight").unwrap_err().to_string();
        assert!(err.contains("3 rows do not split into 2 heads"), "{err}");
        let ok = GgufWeights { num_heads: 3, ..src };
        assert!(ok.get("model.layers.0.self_attn.q_proj.weight").is_err(), "3 rows are not pairs either");
    }

    #[test]
    fn a_k_projection_without_two_dimensions_is_an_error() {
        // Found by fuzzing (fuzz/, target `gguf`): a K projection of 0 dimensions passed
        // the head check (0 rows split into any number of heads) and the un-permuting
        // read its first dimension and panicked.
        use crate::model::gguf::{GgufFile, tests::file};
        for dims in [&[][..], &[4][..], &[4, 2, 1][..]] {
            let mut b = file(&[], &[("blk.0.attn_k.weight", dims, 0, 0)]);
            b.extend(vec![0u8; (32 - b.len() % 32) % 32 + 8 * 4]);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.gguf");
            std::fs::write(&path, b).unwrap();
            let g = GgufFile::open(&path).unwrap();
            let src = GgufWeights { file: &g, path: &path, arch: Arch::Llama, num_heads: 2, num_kv_heads: 1, keep_quantized: false };
            let err = src.get("model.layers.0.self_attn.k_proj.weight").unwrap_err().to_string();
            assert!(err.contains("must have 2 dimensions"), "{dims:?}: {err}");
        }
    }

    #[test]
    fn a_dimension_past_i64_is_an_error() {
        // Found by fuzzing (fuzz/, target `gguf`): an empty tensor of shape [2^64 - 248, 0]
        // became [-248, 0] for libtorch, whose reshape error was a panic.
        use crate::model::gguf::{GgufFile, tests::file};
        let mut b = file(&[], &[("output_norm.weight", &[0, u64::MAX - 247], 0, 0)]);
        b.extend(vec![0u8; (32 - b.len() % 32) % 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let src = GgufWeights { file: &g, path: &path, arch: Arch::Llama, num_heads: 2, num_kv_heads: 1, keep_quantized: false };
        let err = src.get("model.norm.weight").unwrap_err().to_string();
        assert!(err.contains("larger than 2^63"), "{err}");
    }

    #[test]
    fn unpermute_restores_half_rotary_order() {
        // One head of dim 4: HF rows [a0, a1, b0, b1] are stored by llama.cpp as [a0, b0, a1, b1].
        let stored = Tensor::from_slice(&[0f32, 2.0, 1.0, 3.0]).reshape([4, 1]);
        let hf = unpermute_rows(&stored, 1);
        let v: Vec<f32> = Vec::try_from(hf.reshape([4])).unwrap();
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn the_row_order_undoes_the_permutation_as_unpermute_rows_does() {
        // Three heads of dim 8, each row its own index.
        let rows = 24;
        let stored = Tensor::arange(rows as i64, (Kind::Float, tch::Device::Cpu)).reshape([rows as i64, 1]);
        let want: Vec<f32> = Vec::try_from(unpermute_rows(&stored, 3).reshape([-1])).unwrap();
        let got: Vec<f32> = unpermuted_order(rows, 3).into_iter().map(|r| r as f32).collect();
        assert_eq!(got, want);
    }
}
