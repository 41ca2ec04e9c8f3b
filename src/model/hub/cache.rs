//! The Hugging Face hub cache on disk, laid out as huggingface_hub lays it out so that
//! Python tools and sluice share one copy of each model:
//!
//! ```text
//! models--ORG--NAME/
//!   refs/main                       the commit a branch or tag pointed to when last fetched
//!   blobs/<etag>                    file contents, named by the Hub's ETag (sha256 for LFS files)
//!   blobs/<etag>.incomplete         a download in progress or cut short (resumed from its length)
//!   snapshots/<commit>/<file>       relative symlinks into blobs/
//!   trees/<commit>.json             the commit's file listing (huggingface_hub's tree cache)
//! .locks/models--ORG--NAME/<etag>.lock
//! ```
//!
//! A blob appears under its final name only once its hash has been checked, and a snapshot
//! entry only once its blob is there, so a cut download never looks complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::HubError;

/// The folders of one repository in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub root: PathBuf,
    pub locks: PathBuf,
}

/// A file of a commit's listing, as huggingface_hub's tree cache records it.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEntry {
    pub size: u64,
    /// The git blob id (sha1 of the git object).
    pub blob_id: String,
    /// sha256 and size of the content for files stored with LFS.
    pub lfs_sha256: Option<String>,
    pub lfs_size: Option<u64>,
}

pub fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder = format!("models--{}", repo.replace('/', "--"));
        RepoCache { root: cache_dir.join(&folder), locks: cache_dir.join(".locks").join(folder) }
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn lock(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    fn tree_path(&self, commit: &str) -> PathBuf {
        self.root.join("trees").join(format!("{commit}.json"))
    }

    /// The commit a revision names: itself when it is a commit hash, else what refs/ says.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// Records that `revision` (a branch or tag) points at `commit`, atomically.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        write_atomic(&path, commit.as_bytes())
    }

    /// The newest snapshot folder, for a cache without refs/ (copied by hand).
    pub fn newest_snapshot(&self) -> Option<PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(self.root.join("snapshots"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .collect();
        entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        entries.last().map(|e| e.path())
    }

    /// huggingface_hub's listing of a commit, when some tool has saved it.
    pub fn read_tree(&self, commit: &str) -> Option<BTreeMap<String, TreeEntry>> {
        let text = std::fs::read_to_string(self.tree_path(commit)).ok()?;
        let v: Json = serde_json::from_str(&text).ok()?;
        if v.get("format_version").and_then(Json::as_u64) != Some(1) {
            return None;
        }
        let files = v.get("files")?.as_object()?;
        let mut out = BTreeMap::new();
        for (path, info) in files {
            out.insert(
                path.clone(),
                TreeEntry {
                    size: info.get("size")?.as_u64()?,
                    blob_id: info.get("blob_id")?.as_str()?.to_string(),
                    lfs_sha256: info.get("lfs_sha256").and_then(Json::as_str).map(str::to_owned),
                    lfs_size: info.get("lfs_size").and_then(Json::as_u64),
                },
            );
        }
        Some(out)
    }

    /// Saves a commit's listing in huggingface_hub's tree-cache format (format_version 1).
    pub fn write_tree(&self, commit: &str, entries: &BTreeMap<String, TreeEntry>) -> Result<(), HubError> {
        let files: serde_json::Map<String, Json> = entries
            .iter()
            .map(|(path, e)| {
                let mut info = json!({"size": e.size, "blob_id": e.blob_id});
                if let Some(s) = &e.lfs_sha256 {
                    info["lfs_sha256"] = json!(s);
                }
                if let Some(s) = e.lfs_size {
                    info["lfs_size"] = json!(s);
                }
                (path.clone(), info)
            })
            .collect();
        let text = serde_json::to_string_pretty(&json!({"format_version": 1, "files": files})).unwrap_or_default();
        write_atomic(&self.tree_path(commit), text.as_bytes())
    }

    /// Makes `snapshots/<commit>/<file>` a relative link to `blobs/<etag>`.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf, HubError> {
        let pointer = self.snapshot(commit).join(file);
        let parent = pointer.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        // snapshots/<commit>/ is two levels under the repo folder, plus one per folder in the file's path.
        let depth = 2 + file.matches('/').count();
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        match std::fs::symlink_metadata(&pointer) {
            Ok(_) => std::fs::remove_file(&pointer).map_err(|e| HubError::io(&pointer, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HubError::io(&pointer, e)),
        }
        std::os::unix::fs::symlink(&target, &pointer).map_err(|e| HubError::io(&pointer, e))?;
        Ok(pointer)
    }
}

/// Writes through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| HubError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| HubError::io(path, e))
}

/// An exclusive advisory lock on a file (flock), held until dropped: two processes never
/// write the same blob at once.
pub struct FileLock(std::fs::File);

impl FileLock {
    /// Takes the lock if it is free now.
    pub fn try_lock(path: &Path) -> Result<Option<FileLock>, HubError> {
        use std::os::fd::AsRawFd;
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HubError::io(path, e))?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(FileLock(file)));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(HubError::io(path, err)),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking the descriptor this lock owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let c = RepoCache::new(Path::new("/c"), "BAAI/bge-m3");
        assert_eq!(c.root, PathBuf::from("/c/models--BAAI--bge-m3"));
        assert_eq!(c.lock("abc"), PathBuf::from("/c/.locks/models--BAAI--bge-m3/abc.lock"));
        assert_eq!(c.incomplete("abc"), PathBuf::from("/c/models--BAAI--bge-m3/blobs/abc.incomplete"));
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
    }

    #[test]
    fn links_resolve_and_trees_round_trip() {
        let dir = std::env::temp_dir().join(format!("sluice-cache-test-{}", std::process::id()));
        let c = RepoCache::new(&dir, "org/m");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(c.root.join("blobs")).unwrap();
        std::fs::write(c.blob("e1"), b"hi").unwrap();
        let p = c.link(commit, "1_Pooling/config.json", "e1").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hi");
        c.write_ref("main", commit).unwrap();
        assert_eq!(c.commit_of("main").as_deref(), Some(commit));
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), TreeEntry { size: 2, blob_id: "x".into(), lfs_sha256: Some("y".into()), lfs_size: Some(2) });
        c.write_tree(commit, &t).unwrap();
        assert_eq!(c.read_tree(commit).unwrap(), t);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
