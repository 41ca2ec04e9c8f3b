//! Models by Hugging Face id, as vLLM finds them: a complete snapshot in the local hub
//! cache first, else a download from the Hub into that same cache (see `cache` for the
//! layout huggingface_hub shares). `HF_HUB_OFFLINE=1` keeps to the cache.
//!
//! Why not the `hf-hub` crate: its 1.0 downloads restart a cut file from zero instead of
//! resuming it, check no hash, and bring a second HTTP stack (reqwest 0.13) and the Xet
//! storage client along; the Hub's file API that serving needs is four requests, written
//! here on the reqwest this crate already uses.

pub mod cache;
mod client;
mod download;
mod error;
pub mod files;
mod progress;
mod settings;

use std::path::{Path, PathBuf};

pub use error::HubError;
pub use files::Want;
pub use settings::{HubSettings, default_cache_dir};

use cache::RepoCache;

pub const DEFAULT_REVISION: &str = "main";

/// Whether a model argument reads as a Hub id: `NAME` or `ORG/NAME`, optionally with a
/// GGUF quantization (`ORG/NAME:Q4_K_M`). Returns the repository and the quantization.
pub fn parse_id(arg: &str) -> Option<(&str, Option<&str>)> {
    let (repo, quant) = match arg.split_once(':') {
        Some((r, q)) => (r, Some(q)),
        None => (arg, None),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let mut parts = repo.split('/');
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, None) => part_ok(a),
        (Some(a), Some(b), None) => part_ok(a) && part_ok(b),
        _ => false,
    };
    let quant_ok = quant.is_none_or(|q| !q.is_empty() && q.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')));
    (ok && quant_ok).then_some((repo, quant))
}

/// What the cache holds of a repository at a revision.
#[derive(Debug)]
pub enum Cached {
    /// Everything needed: the snapshot folder, or for a GGUF the file.
    Complete(PathBuf),
    /// A snapshot is there but lacks something (a cut download, another tool's partial fetch).
    Incomplete { snapshot: PathBuf, missing: String },
    Absent,
}

/// Every file under a snapshot folder whose link resolves, as repository paths.
fn local_listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.exists() {
                if let Ok(rel) = p.strip_prefix(dir) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    out.sort();
    out
}

/// Looks `repo` up in the cache, with no network. A snapshot counts as complete when every
/// file the commit's listing (huggingface_hub's tree cache) says serving needs is there;
/// without a listing, when the files present make a servable folder (the index's shards all
/// there, a tokenizer, ...).
pub fn lookup(settings: &HubSettings, repo: &str, revision: &str, want: &Want) -> Cached {
    let cache = RepoCache::new(&settings.cache_dir, repo);
    let snapshot = match cache.commit_of(revision) {
        Some(commit) => cache.snapshot(&commit),
        None if revision == DEFAULT_REVISION && !cache.root.join("refs").exists() => match cache.newest_snapshot() {
            Some(s) => s,
            None => return Cached::Absent,
        },
        None => return Cached::Absent,
    };
    if !snapshot.is_dir() {
        return Cached::Absent;
    }
    let commit = snapshot.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let present = local_listing(&snapshot);
    let listing: Vec<String> = match cache.read_tree(&commit) {
        Some(tree) => tree.into_keys().collect(),
        None => present.clone(),
    };
    let index = files::needs_index(&listing, want)
        .then(|| std::fs::read(snapshot.join(files::INDEX)).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let chosen = match files::select(repo, &listing, want, index.as_ref()) {
        Ok(c) => c,
        Err(why) => return Cached::Incomplete { snapshot, missing: why },
    };
    let mut missing: Vec<&String> = chosen.iter().filter(|f| !present.contains(f)).collect();
    if files::needs_index(&listing, want) && index.is_none() && !missing.iter().any(|f| *f == files::INDEX) {
        // The index is there but unreadable: its shards cannot be known.
        missing.push(&chosen[0]);
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(4).map(|s| s.as_str()).collect();
        let more = if missing.len() > 4 { format!(" and {} more", missing.len() - 4) } else { String::new() };
        return Cached::Incomplete { snapshot, missing: format!("it lacks {}{more}", names.join(", ")) };
    }
    match want {
        Want::Gguf { .. } => Cached::Complete(snapshot.join(&chosen[0])),
        _ => Cached::Complete(snapshot),
    }
}

/// The error for a repository that the cache cannot serve while offline.
pub fn offline_error(settings: &HubSettings, repo: &str, revision: &str, cached: &Cached) -> HubError {
    let state = match cached {
        Cached::Incomplete { missing, .. } => format!("has an incomplete snapshot of it at revision {revision} ({missing})"),
        _ => format!("has no snapshot of it at revision {revision}"),
    };
    HubError::Offline { repo: repo.to_string(), cache: settings.cache_dir.clone(), state }
}

/// Downloads what `want` needs of `repo` at `revision` and returns it as `lookup` would.
/// Runs its own small async runtime on a passing thread, so it may be called from anywhere.
pub fn download(settings: &HubSettings, repo: &str, revision: &str, want: &Want) -> Result<PathBuf, HubError> {
    let client = client::Client::new(settings)?;
    let cache = RepoCache::new(&settings.cache_dir, repo);
    let commit = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| HubError::Files(format!("cannot start the download runtime: {e}")))?;
            rt.block_on(download::snapshot(&client, &cache, repo, revision, want))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;
    match lookup(settings, repo, &commit, want) {
        Cached::Complete(p) => Ok(p),
        Cached::Incomplete { missing, .. } => Err(HubError::Files(format!("{repo}: after the download, {missing}"))),
        Cached::Absent => Err(HubError::Files(format!("{repo}: the download left no snapshot in {}", settings.cache_dir.display()))),
    }
}

/// The cache, then the Hub: the path to serve (snapshot folder, or GGUF file) of `repo`.
/// `fallback` is tried between the two (the project's packaged default models).
pub fn locate(
    settings: &HubSettings,
    repo: &str,
    revision: &str,
    want: &Want,
    fallback: impl FnOnce() -> Option<PathBuf>,
) -> Result<PathBuf, HubError> {
    let cached = lookup(settings, repo, revision, want);
    if let Cached::Complete(p) = cached {
        tracing::debug!("{repo}: using the cached snapshot {}", p.display());
        return Ok(p);
    }
    if let Some(p) = fallback() {
        return Ok(p);
    }
    if settings.offline {
        return Err(offline_error(settings, repo, revision, &cached));
    }
    if let Cached::Incomplete { missing, .. } = &cached {
        tracing::info!("{repo}: the cached snapshot is incomplete ({missing}); completing it from {}", settings.endpoint);
    }
    download(settings, repo, revision, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("BAAI/bge-m3"), Some(("BAAI/bge-m3", None)));
        assert_eq!(parse_id("gpt2"), Some(("gpt2", None)));
        assert_eq!(parse_id("unsloth/Qwen3-0.6B-GGUF:Q4_K_M"), Some(("unsloth/Qwen3-0.6B-GGUF", Some("Q4_K_M"))));
        assert_eq!(parse_id("./model"), None);
        assert_eq!(parse_id("/abs/path"), None);
        assert_eq!(parse_id("a/b/c"), None);
        assert_eq!(parse_id("a--b/c"), None);
        assert_eq!(parse_id("org/name:"), None);
    }
}
