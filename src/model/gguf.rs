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
        let bad = |msg: String| LoadError::Format { path: path.to_owned(), msg };
        let mut r = Reader { buf: &mmap, pos: 0 };
        let magic = r.u32().map_err(&bad)?;
        if magic != MAGIC {
            return Err(bad("not a GGUF file (bad magic)".into()));
        }
        let version = r.u32().map_err(&bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let n_tensors = r.u64().map_err(&bad)? as usize;
        let n_kv = r.u64().map_err(&bad)? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string().map_err(&bad)?;
            let ty = r.u32().map_err(&bad)?;
            let value = r.value(ty).map_err(|e| bad(format!("metadata {key}: {e}")))?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string().map_err(&bad)?;
            let n_dims = r.u32().map_err(&bad)? as usize;
            if n_dims > 4 {
                return Err(bad(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64().map_err(&bad)? as usize);
            }
            let ty = r.u32().map_err(&bad)?;
            let offset = r.u64().map_err(&bad)?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, dims, ty, offset) in raw {
            let ggml_type = GgmlType::from_id(ty)
                .ok_or_else(|| bad(format!("tensor {name}: ggml type {ty} is not supported")))?;
            let numel: usize = dims.iter().product();
            let n_bytes = ggml_type
                .bytes_for(numel)
                .ok_or_else(|| bad(format!("tensor {name}: {numel} elements do not fill whole {ggml_type:?} blocks")))?;
            let start = (data_start + offset) as usize;
            if start + n_bytes > mmap.len() {
                return Err(bad(format!("tensor {name} runs past the end of the file")));
            }
            let shape = dims.into_iter().rev().collect();
            tensors.push(TensorInfo { name, shape, ggml_type, offset: start, n_bytes });
        }
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

    fn value(&mut self, ty: u32) -> Result<Value, String> {
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
                let n = self.u64()? as usize;
                if n > self.buf.len() {
                    return Err(format!("array of {n} elements is larger than the file"));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem)?);
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
