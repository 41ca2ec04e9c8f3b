//! The writer's half of a batch: output lines in vLLM's shape, written in input order as
//! soon as every earlier line is done (a reorder buffer holds the ones that finish early),
//! and what an earlier, interrupted run already wrote (for `--resume`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::api::error::ApiError;
use crate::ids::random_hex;
use crate::pipeline::FaultPoint;

/// One answer, ready to become an output line.
pub struct Answer<'a> {
    pub custom_id: Option<&'a str>,
    /// The HTTP status the server would have answered.
    pub status: u16,
    pub request_id: &'a str,
    /// The JSON body the server would have answered (an error's is `{"error": …}`).
    pub body: Option<&'a str>,
    /// Set when the status is not 200.
    pub error: Option<&'a ApiError>,
}

/// `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}` on one
/// line. The body is put in as the server wrote it, byte for byte.
pub fn format_line(a: &Answer, seq: u64) -> String {
    let s = |v: &str| serde_json::to_string(v).expect("strings serialize");
    format!(
        "{{\"id\":{},\"custom_id\":{},\"response\":{{\"status_code\":{},\"request_id\":{},\"body\":{}}},\"error\":{}}}\n",
        s(&format!("batch-{}", random_hex(seq))),
        a.custom_id.map_or_else(|| "null".to_string(), s),
        a.status,
        s(a.request_id),
        a.body.unwrap_or("null"),
        a.error.map_or_else(|| "null".to_string(), ApiError::object_json),
    )
}

/// Writes lines in sequence order, each as soon as all before it are written.
pub struct Writer {
    file: BufWriter<Box<dyn Write + Send>>,
    next: usize,
    early: BTreeMap<usize, String>,
    /// A fault injected into the writes (tests only): the disk fills.
    fault: Option<Arc<FaultPoint>>,
}

impl Writer {
    pub fn new(out: impl Write + Send + 'static) -> Self {
        Self::with_fault(out, None)
    }

    /// A writer whose writes fail as a full disk's do when `fault` fires: part of the
    /// line is written, then the error.
    pub fn with_fault(out: impl Write + Send + 'static, fault: Option<Arc<FaultPoint>>) -> Self {
        Writer { file: BufWriter::new(Box::new(out)), next: 0, early: BTreeMap::new(), fault }
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        if let Some(f) = &self.fault {
            if f.hit() {
                self.file.write_all(&line.as_bytes()[..line.len() / 2])?;
                self.file.flush()?;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        self.file.write_all(line.as_bytes())
    }

    /// Line `seq` is done; writes it and any that waited for it, then flushes so that an
    /// interrupted run keeps them.
    pub fn complete(&mut self, seq: usize, line: String) -> io::Result<()> {
        self.early.insert(seq, line);
        let mut wrote = false;
        while let Some(line) = self.early.remove(&self.next) {
            if let Err(e) = self.write_line(&line) {
                // What was written whole stays; the cut line is dropped by --resume.
                let _ = self.file.flush();
                return Err(e);
            }
            self.next += 1;
            wrote = true;
        }
        if wrote {
            self.file.flush()?;
        }
        Ok(())
    }

    /// Lines written so far, and lines done but waiting for an earlier one.
    pub fn counts(&self) -> (usize, usize) {
        (self.next, self.early.len())
    }
}

/// What an earlier run left in the output file.
#[derive(Debug, Default)]
pub struct Previous {
    pub custom_ids: HashSet<String>,
    /// Error lines for input lines that had no readable custom_id (they come first among
    /// such lines, since output keeps input order).
    pub without_id: usize,
    /// A cut-off last line that was dropped.
    pub dropped_partial: bool,
}

/// Opens the output file for a resumed run: reads the complete lines, drops a cut-off last
/// line, and leaves the file positioned for appending.
pub fn open_for_resume(path: &Path) -> Result<(File, Previous)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("--output-file {}: cannot open it", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut prev = Previous { dropped_partial: complete < bytes.len(), ..Previous::default() };
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(line).ok().filter(|v: &serde_json::Value| v.get("response").is_some()).with_context(|| {
            format!("--resume: line {} of {} is not a batch output line; give another --output-file", i + 1, path.display())
        })?;
        match v.get("custom_id") {
            Some(serde_json::Value::String(id)) => {
                prev.custom_ids.insert(id.clone());
            }
            Some(serde_json::Value::Null) | None => prev.without_id += 1,
            Some(other) => bail!("--resume: line {} of {} has a custom_id that is not a string: {other}", i + 1, path.display()),
        }
    }
    file.set_len(complete as u64)?;
    file.seek(SeekFrom::End(0))?;
    Ok((file, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_in_order_as_the_prefix_completes() {
        let dir = std::env::temp_dir().join(format!("sluice-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let mut w = Writer::new(File::create(&path).unwrap());
        w.complete(1, "b\n".into()).unwrap();
        w.complete(2, "c\n".into()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert_eq!(w.counts(), (0, 2));
        w.complete(0, "a\n".into()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        assert_eq!(w.counts(), (3, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_keeps_complete_lines_and_drops_a_cut_one() {
        let dir = std::env::temp_dir().join(format!("sluice-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let err = ApiError::bad_request("nope");
        let a = format_line(&Answer { custom_id: Some("a"), status: 200, request_id: "r", body: Some("{}"), error: None }, 1);
        let b = format_line(&Answer { custom_id: None, status: 400, request_id: "r", body: None, error: Some(&err) }, 2);
        std::fs::write(&path, format!("{a}{b}{{\"id\":\"batch-x\",\"cus")).unwrap();
        let (mut f, prev) = open_for_resume(&path).unwrap();
        assert!(prev.dropped_partial);
        assert_eq!(prev.without_id, 1);
        assert_eq!(prev.custom_ids, HashSet::from(["a".to_string()]));
        f.write_all(b"next\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{a}{b}next\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_is_one_json_object_with_the_body_verbatim() {
        let line = format_line(
            &Answer { custom_id: Some("q\"1"), status: 200, request_id: "chatcmpl-1", body: Some("{\"x\":1.50}"), error: None },
            7,
        );
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert!(line.contains("\"body\":{\"x\":1.50}"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["custom_id"], "q\"1");
        assert_eq!(v["response"]["status_code"], 200);
        assert!(v["error"].is_null());
    }
}
