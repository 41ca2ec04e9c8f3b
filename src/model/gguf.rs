//! GGUF files (versions 2 and 3): the header, the metadata table and the tensor index.
//!
//! The file is memory-mapped; tensors are handed out as byte slices with their ggml type,
//! and `quant` turns them into floats. Dimensions are reported in torch order (slowest
//! first), the reverse of how GGUF stores them.

use std::collections::BTreeMap;
use std::path::Path;

use memmap2::Mmap;

use super::quant::GgmlType;
use super::LoadError;

const MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor's bytes are and what they hold.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Torch order: `[rows, cols]` for a matrix.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the file is opened read-only and is not expected to change while served.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        let Header { version, metadata, tensors } =
            Header::parse(&mmap).map_err(|msg| LoadError::Format { path: path.to_owned(), msg })?;
        Ok(GgufFile { version, metadata, tensors, mmap })
    }

    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.offset..t.offset + t.n_bytes]
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `{arch}.{key}`, e.g. `llama.block_count`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{key}"))
    }

    pub fn arch_f64(&self, key: &str) -> Option<f64> {
        let arch = self.architecture()?;
        self.get_f64(&format!("{arch}.{key}"))
    }
}

/// What a GGUF file's header says: its version, metadata and tensor index, every
/// tensor's bytes checked to lie inside the file. The file is untrusted: every count,
/// length and offset is checked against what the file can hold, and a bad file is an
/// error, never a panic or an allocation the file's size does not justify.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

/// The fewest bytes a metadata entry takes (an empty key, its type, a one-byte value),
/// and a tensor's index entry (an empty name, no dimensions, its type and offset).
const MIN_KV_BYTES: usize = 8 + 4 + 1;
const MIN_TENSOR_BYTES: usize = 8 + 4 + 4 + 8;
/// Arrays of arrays nest at most this deep (real files do not nest at all).
const MAX_ARRAY_DEPTH: usize = 4;

impl Header {
    /// Reads the header of a whole GGUF file, `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header, String> {
        let mut r = Reader { buf, pos: 0 };
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err("not a GGUF file (bad magic)".into());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        let left = (buf.len() - r.pos) as u64;
        if n_kv > left / MIN_KV_BYTES as u64 {
            return Err(format!("the header claims {n_kv} metadata entries, more than the file can hold"));
        }
        if n_tensors > left / MIN_TENSOR_BYTES as u64 {
            return Err(format!("the header claims {n_tensors} tensors, more than the file can hold"));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0).map_err(|e| format!("metadata {key}: {e}"))?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                return Err(format!("tensor {name}: {n_dims} dimensions"));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ty = r.u32()?;
            let offset = r.u64()?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(format!("general.alignment is {v:?}, not a power of two")),
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let ggml_type =
                GgmlType::from_id(ty).ok_or_else(|| format!("tensor {name}: ggml type {ty} is not supported"))?;
            let numel = dims
                .iter()
                .try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
                .ok_or_else(|| format!("tensor {name}: dimensions {dims:?} have more elements than can be addressed"))?;
            let n_bytes = ggml_type
                .bytes_for(numel)
                .ok_or_else(|| format!("tensor {name}: {numel} elements do not fill whole {ggml_type:?} blocks"))?;
            let start = data_start.checked_add(offset).and_then(|s| usize::try_from(s).ok());
            let end = start.and_then(|s| s.checked_add(n_bytes));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(format!("tensor {name} runs past the end of the file"));
            };
            if end > buf.len() {
                return Err(format!("tensor {name} runs past the end of the file"));
            }
            let shape = dims.into_iter().rev().map(|d| d as usize).collect();
            tensors.push(TensorInfo { name, shape, ggml_type, offset: start, n_bytes });
        }
        Ok(Header { version, metadata, tensors })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| "unexpected end of file in the header".to_string())?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        let bytes = self.take(n)?;
        // Some converters wrote invalid UTF-8 into token strings; keep them readable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least a byte (an array, 12).
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(format!("array of {n} elements is larger than the file"));
                }
                if elem == 9 && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nest more than {MAX_ARRAY_DEPTH} deep"));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GGUF v3 file: `kvs` (already encoded) and tensor index entries, no data.
    pub(crate) fn file(kvs: &[Vec<u8>], tensors: &[(&str, &[u64], u32, u64)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for kv in kvs {
            b.extend(kv);
        }
        for (name, dims, ty, offset) in tensors {
            b.extend(string(name));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        b
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    pub(crate) fn kv_u32(key: &str, v: u32) -> Vec<u8> {
        let mut b = string(key);
        b.extend(4u32.to_le_bytes());
        b.extend(v.to_le_bytes());
        b
    }

    pub(crate) fn kv_str(key: &str, v: &str) -> Vec<u8> {
        let mut b = string(key);
        b.extend(8u32.to_le_bytes());
        b.extend(string(v));
        b
    }

    #[test]
    fn a_well_formed_header_reads() {
        let mut b = file(&[kv_str("general.architecture", "llama")], &[("w", &[2, 2], 0, 0)]);
        let pad = (32 - b.len() % 32) % 32;
        b.extend(vec![0; pad + 16]);
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.metadata.get("general.architecture").and_then(Value::as_str), Some("llama"));
        assert_eq!((h.tensors[0].shape.clone(), h.tensors[0].n_bytes), (vec![2, 2], 16));
    }

    // Each case below once panicked or aborted the process instead of answering an error.
    // The first was found by fuzzing (fuzz/, target `gguf`); the others by reading the
    // same code while fixing it.

    #[test]
    fn counts_larger_than_the_file_are_an_error() {
        // 2^57 tensors: reserving room for their index entries overflowed capacity.
        let mut b = file(&[], &[]);
        b[8..16].copy_from_slice(&(1u64 << 57).to_le_bytes());
        assert!(Header::parse(&b).unwrap_err().contains("more than the file can hold"));
        let mut b = file(&[], &[]);
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Header::parse(&b).unwrap_err().contains("more than the file can hold"));
    }

    #[test]
    fn a_zero_or_odd_alignment_is_an_error() {
        for a in [0, 3, 48] {
            let b = file(&[kv_u32("general.alignment", a)], &[]);
            assert!(Header::parse(&b).unwrap_err().contains("power of two"), "alignment {a}");
        }
    }

    #[test]
    fn offsets_and_sizes_that_overflow_are_an_error() {
        let b = file(&[], &[("w", &[4], 0, u64::MAX - 8)]);
        assert!(Header::parse(&b).unwrap_err().contains("runs past the end"));
        let b = file(&[], &[("w", &[u64::MAX, 2], 0, 0)]);
        assert!(Header::parse(&b).unwrap_err().contains("more elements than can be addressed"));
        let b = file(&[], &[("w", &[1 << 62], 0, 0)]);
        assert!(Header::parse(&b).is_err());
    }

    #[test]
    fn deeply_nested_arrays_are_an_error() {
        // An array of arrays of ... each level 12 bytes: a small file recursed deep enough
        // to overflow the stack.
        let mut kv = string("k");
        kv.extend(9u32.to_le_bytes());
        for _ in 0..10_000 {
            kv.extend(9u32.to_le_bytes());
            kv.extend(1u64.to_le_bytes());
        }
        let b = file(&[kv], &[]);
        assert!(Header::parse(&b).unwrap_err().contains("nest"));
    }

    fn llama_config(kvs: &[Vec<u8>]) -> Result<crate::model::config::DecoderConfig, String> {
        let mut all = vec![kv_str("general.architecture", "llama")];
        all.extend(kvs.iter().cloned());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, file(&all, &[])).unwrap();
        crate::model::config::DecoderConfig::from_gguf(&GgufFile::open(&path).unwrap())
    }

    #[test]
    fn a_config_with_no_heads_or_too_many_layers_is_an_error() {
        let base = |heads: u32, layers: u32| {
            vec![
                kv_u32("llama.embedding_length", 8),
                kv_u32("llama.attention.head_count", heads),
                kv_u32("llama.block_count", layers),
                kv_u32("llama.context_length", 16),
                kv_u32("llama.feed_forward_length", 16),
                kv_u32("llama.vocab_size", 4),
            ]
        };
        assert!(llama_config(&base(2, 1)).is_ok());
        // Dividing the width by zero heads panicked.
        assert!(llama_config(&base(0, 1)).unwrap_err().contains("head_count is 0"));
        // A layer list of 4 billion entries aborted on allocation.
        assert!(llama_config(&base(2, u32::MAX)).unwrap_err().contains("block_count"));
    }
}
