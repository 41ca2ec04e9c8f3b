//! CTranslate2's `model.bin`: the weights file of faster-whisper's model folders.
//!
//! The layout (little-endian): a u32 format version, the spec's name and a u32 revision,
//! a u32 count of variables, each one a name, a u8 rank, that many u32 dimensions, a u8
//! dtype id, a u32 byte count and the bytes; then a u32 count of aliases, each two names
//! (alias, target). A name is a u16 length that counts a closing NUL, then the bytes.
//!
//! The file is untrusted input: every length is checked against what is left of the file,
//! every variable's byte count against its shape and dtype, and a bad file is an error that
//! says where it went wrong, never a panic. The file is memory-mapped; a tensor is copied
//! out when asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Kind, Tensor};

/// The format versions this reader knows (CTranslate2 3.x and 4.x write 6; 4 and 5 share
/// its layout).
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;

#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a CTranslate2 model: the file ends inside {what} (at byte {at} of {len})")]
    Truncated { path: PathBuf, what: String, at: usize, len: usize },
    #[error("{path}: CTranslate2 format version {version} is not supported (versions {lo} to {hi} are)")]
    Version { path: PathBuf, version: u32, lo: u32, hi: u32 },
    #[error("{path}: {msg}")]
    Malformed { path: PathBuf, msg: String },
}

/// A variable's element type, by CTranslate2's type id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2Dtype {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Ct2Dtype::F32,
            1 => Ct2Dtype::I8,
            2 => Ct2Dtype::I16,
            3 => Ct2Dtype::I32,
            4 => Ct2Dtype::F16,
            5 => Ct2Dtype::BF16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Ct2Dtype::I8 => 1,
            Ct2Dtype::I16 | Ct2Dtype::F16 | Ct2Dtype::BF16 => 2,
            Ct2Dtype::F32 | Ct2Dtype::I32 => 4,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Ct2Dtype::F32 => Kind::Float,
            Ct2Dtype::I8 => Kind::Int8,
            Ct2Dtype::I16 => Kind::Int16,
            Ct2Dtype::I32 => Kind::Int,
            Ct2Dtype::F16 => Kind::Half,
            Ct2Dtype::BF16 => Kind::BFloat16,
        }
    }

    /// The name torch and Hugging Face configs use.
    pub fn torch_name(self) -> &'static str {
        match self {
            Ct2Dtype::F32 => "float32",
            Ct2Dtype::I8 => "int8",
            Ct2Dtype::I16 => "int16",
            Ct2Dtype::I32 => "int32",
            Ct2Dtype::F16 => "float16",
            Ct2Dtype::BF16 => "bfloat16",
        }
    }
}

/// One variable's header; its bytes stay in the mapping.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    offset: usize,
    len: usize,
}

impl Ct2Variable {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn num_bytes(&self) -> usize {
        self.len
    }
}

pub struct Ct2Model {
    pub path: PathBuf,
    map: Mmap,
    pub version: u32,
    /// The model spec's name, e.g. `WhisperSpec`.
    pub spec: String,
    pub revision: u32,
    variables: Vec<Ct2Variable>,
    index: HashMap<String, usize>,
    /// Alias → the variable it names (e.g. the output projection → the embeddings).
    aliases: HashMap<String, String>,
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], Ct2Error> {
        match self.at.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(Ct2Error::Truncated { path: self.path.to_owned(), what: what(), at: self.at, len: self.bytes.len() }),
        }
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, Ct2Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, Ct2Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Ct2Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u16 length (closing NUL included), the UTF-8 bytes, the NUL.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Ct2Error> {
        let n = self.u16(what)? as usize;
        let raw = self.take(n, what)?;
        let bad = |msg: String| Ct2Error::Malformed { path: self.path.to_owned(), msg };
        let Some((&0, text)) = raw.split_last() else {
            return Err(bad(format!("{} is not a NUL-terminated string", what())));
        };
        String::from_utf8(text.to_vec()).map_err(|_| bad(format!("{} is not UTF-8", what())))
    }
}

impl Ct2Model {
    pub fn open(path: &Path) -> Result<Self, Ct2Error> {
        let io = |source| Ct2Error::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(Ct2Error::Truncated { path: path.to_owned(), what: "the format version".into(), at: 0, len: 0 });
        }
        // SAFETY: a read-only mapping of a weights file that is not modified while in use.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Mmap) -> Result<Self, Ct2Error> {
        let malformed = |msg: String| Ct2Error::Malformed { path: path.to_owned(), msg };
        let mut c = Cursor { path, bytes: &map, at: 0 };
        let version = c.u32(&|| "the format version".into())?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Ct2Error::Version {
                path: path.to_owned(),
                version,
                lo: *SUPPORTED_VERSIONS.start(),
                hi: *SUPPORTED_VERSIONS.end(),
            });
        }
        let spec = c.string(&|| "the spec name".into())?;
        let revision = c.u32(&|| "the spec revision".into())?;
        let count = c.u32(&|| "the variable count".into())? as usize;
        // Every variable takes at least 9 bytes: a count past that is not a real file.
        if count > (map.len() - c.at) / 9 {
            return Err(malformed(format!("it claims {count} variables, more than the file can hold")));
        }
        let mut variables = Vec::with_capacity(count);
        let mut index = HashMap::with_capacity(count);
        for i in 0..count {
            let name = c.string(&|| format!("the name of variable {i}"))?;
            let what = |part: &str| {
                let name = name.clone();
                let part = part.to_owned();
                move || format!("the {part} of variable {name:?}")
            };
            let rank = c.u8(&what("rank"))? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(c.u32(&what("shape"))? as usize);
            }
            let type_id = c.u8(&what("dtype"))?;
            let dtype = Ct2Dtype::from_id(type_id)
                .ok_or_else(|| malformed(format!("variable {name:?} has dtype id {type_id}, which is not one of 0 to 5")))?;
            let len = c.u32(&what("byte count"))? as usize;
            let expected = shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
            if expected != Some(len) {
                return Err(malformed(format!(
                    "variable {name:?} of shape {shape:?} and dtype {dtype:?} has {len} bytes, not {}",
                    expected.map_or("a representable count".to_string(), |e| e.to_string())
                )));
            }
            let offset = c.at;
            c.take(len, &what("data"))?;
            if index.insert(name.clone(), variables.len()).is_some() {
                return Err(malformed(format!("variable {name:?} appears twice")));
            }
            variables.push(Ct2Variable { name, shape, dtype, offset, len });
        }
        let num_aliases = c.u32(&|| "the alias count".into())? as usize;
        if num_aliases > (map.len() - c.at) / 4 {
            return Err(malformed(format!("it claims {num_aliases} aliases, more than the file can hold")));
        }
        let mut aliases = HashMap::with_capacity(num_aliases);
        for i in 0..num_aliases {
            let alias = c.string(&|| format!("alias {i}"))?;
            let target = c.string(&|| format!("the target of alias {alias:?}"))?;
            if !index.contains_key(&target) {
                return Err(malformed(format!("alias {alias:?} names {target:?}, which is not a variable")));
            }
            aliases.insert(alias, target);
        }
        if c.at != map.len() {
            return Err(malformed(format!("{} bytes follow the last alias", map.len() - c.at)));
        }
        Ok(Ct2Model { path: path.to_owned(), map, version, spec, revision, variables, index, aliases })
    }

    pub fn variables(&self) -> &[Ct2Variable] {
        &self.variables
    }

    pub fn aliases(&self) -> &HashMap<String, String> {
        &self.aliases
    }

    /// The variable a name or alias stands for.
    pub fn variable(&self, name: &str) -> Option<&Ct2Variable> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.index.get(name).map(|&i| &self.variables[i])
    }

    pub fn bytes(&self, v: &Ct2Variable) -> &[u8] {
        &self.map[v.offset..v.offset + v.len]
    }

    /// The variable as a tensor on the CPU, in its stored dtype; int8 weights stored with a
    /// `<name>_scale` (CTranslate2's quantization: `q = round(w · scale)` per output row)
    /// come back dequantized to float32.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        let v = self.variable(name)?;
        let shape: Vec<i64> = v.shape.iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(self.bytes(v), &shape, v.dtype.kind());
        if v.dtype == Ct2Dtype::I8 {
            if let Some(scale) = self.tensor(&format!("{name}_scale")) {
                let scale = scale.to_kind(Kind::Float);
                let rows = if shape.is_empty() { 1 } else { shape[0] };
                let per_row = if scale.numel() == 1 { scale.reshape([1]) } else { scale.reshape([rows]) };
                let mut bshape = vec![per_row.size()[0]];
                bshape.extend(std::iter::repeat_n(1, shape.len().saturating_sub(1)));
                return Some(t.to_kind(Kind::Float) / per_row.reshape(&bshape));
            }
        }
        Some(t)
    }

    /// A scalar integer variable (e.g. `encoder/num_heads`).
    pub fn scalar_int(&self, name: &str) -> Option<i64> {
        let v = self.variable(name)?;
        if v.numel() != 1 {
            return None;
        }
        let b = self.bytes(v);
        Some(match v.dtype {
            Ct2Dtype::I8 => b[0] as i8 as i64,
            Ct2Dtype::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            Ct2Dtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => return None,
        })
    }
}

impl std::fmt::Debug for Ct2Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2Model")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("spec", &self.spec)
            .field("revision", &self.revision)
            .field("variables", &self.variables.len())
            .field("aliases", &self.aliases)
            .finish()
    }
}

/// Writes a model.bin, for tests: variables as (name, shape, dtype id, bytes), then aliases.
#[cfg(test)]
pub(crate) fn write_for_test(
    version: u32,
    spec: &str,
    vars: &[(&str, &[u32], u8, &[u8])],
    aliases: &[(&str, &str)],
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend(((s.len() + 1) as u16).to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }
    let mut out = Vec::new();
    out.extend(version.to_le_bytes());
    string(&mut out, spec);
    out.extend(1u32.to_le_bytes());
    out.extend((vars.len() as u32).to_le_bytes());
    for (name, shape, dtype, bytes) in vars {
        string(&mut out, name);
        out.push(shape.len() as u8);
        for d in *shape {
            out.extend(d.to_le_bytes());
        }
        out.push(*dtype);
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(*bytes);
    }
    out.extend((aliases.len() as u32).to_le_bytes());
    for (a, t) in aliases {
        string(&mut out, a);
        string(&mut out, t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_bytes(bytes: &[u8]) -> Result<Ct2Model, Ct2Error> {
        let dir = std::env::temp_dir().join(format!("sluice-ct2-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.bin");
        std::fs::write(&path, bytes).unwrap();
        let r = Ct2Model::open(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn sample() -> Vec<u8> {
        let w: Vec<u8> = [1.0f32, -2.0, 3.5, 0.25, 8.0, -1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let q: Vec<u8> = [10i8, -20, 127, -127].iter().map(|&x| x as u8).collect();
        let scale: Vec<u8> = [10.0f32, 127.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        write_for_test(
            6,
            "TestSpec",
            &[
                ("a/weight", &[2, 3], 0, &w),
                ("heads", &[], 2, &6i16.to_le_bytes()),
                ("q/weight", &[2, 2], 1, &q),
                ("q/weight_scale", &[2], 0, &scale),
            ],
            &[("b/weight", "a/weight")],
        )
    }

    #[test]
    fn reads_variables_aliases_and_scalars() {
        let m = open_bytes(&sample()).unwrap();
        assert_eq!((m.version, m.spec.as_str(), m.revision), (6, "TestSpec", 1));
        assert_eq!(m.variables().len(), 4);
        let a = m.tensor("a/weight").unwrap();
        assert_eq!(a.size(), [2, 3]);
        let alias: Vec<f32> = Vec::try_from(m.tensor("b/weight").unwrap().reshape([6])).unwrap();
        assert_eq!(alias, [1.0, -2.0, 3.5, 0.25, 8.0, -1.0]);
        assert_eq!(m.scalar_int("heads"), Some(6));
        let q: Vec<f32> = Vec::try_from(m.tensor("q/weight").unwrap().reshape([4])).unwrap();
        assert_eq!(q, [1.0, -2.0, 1.0, -1.0]);
        assert!(m.tensor("missing").is_none());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample();
        for cut in 0..full.len() {
            let err = open_bytes(&full[..cut]).err().unwrap_or_else(|| panic!("a file cut at {cut} bytes was read"));
            let msg = err.to_string();
            assert!(msg.contains("ends inside") || msg.contains("not supported") || msg.contains("more than the file"), "{cut}: {msg}");
        }
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let mut bad_version = sample();
        bad_version[0] = 9;
        assert!(open_bytes(&bad_version).unwrap_err().to_string().contains("version 9 is not supported"));

        // The first variable's dtype id (after version, spec, revision, count, name, rank, dims).
        let mut bad_dtype = sample();
        let at = 4 + 2 + 9 + 4 + 4 + 2 + 9 + 1 + 8;
        bad_dtype[at] = 77;
        assert!(open_bytes(&bad_dtype).unwrap_err().to_string().contains("dtype id 77"));

        let mut bad_len = sample();
        bad_len[at + 1] = 25;
        assert!(open_bytes(&bad_len).unwrap_err().to_string().contains("has 25 bytes, not 24"));

        let mut trailing = sample();
        trailing.push(0);
        assert!(open_bytes(&trailing).unwrap_err().to_string().contains("follow the last alias"));

        let dangling = write_for_test(6, "S", &[("x", &[1], 0, &1f32.to_le_bytes())], &[("y", "z")]);
        assert!(open_bytes(&dangling).unwrap_err().to_string().contains("not a variable"));

        let huge = write_for_test(6, "S", &[("x", &[u32::MAX, u32::MAX, u32::MAX], 0, &[])], &[]);
        assert!(open_bytes(&huge).unwrap_err().to_string().contains("representable"));
    }
}
