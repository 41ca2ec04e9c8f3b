//! Fetching a snapshot: the commit's listing, then the files serving needs, several at
//! once. Each file goes to `blobs/<etag>.incomplete`, resumed from its length with a range
//! request after a cut (in this process, a few times, or in the next one), and becomes
//! `blobs/<etag>` only once its sha256 (LFS files) or git blob id (other files) matches
//! what the Hub said; then the snapshot's link to it is made.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use sha2::Digest;

use super::HubError;
use super::cache::{FileLock, RepoCache, TreeEntry};
use super::client::{Client, FileMeta};
use super::files::{self, Want};
use super::progress::Progress;

/// Files fetched at once (huggingface_hub's default).
const WORKERS: usize = 8;
/// Tries per file when a download is cut.
const ATTEMPTS: usize = 5;

/// Downloads what `want` needs of `repo` at `revision` into the cache; returns the commit.
pub async fn snapshot(client: &Client, cache: &RepoCache, repo: &str, revision: &str, want: &Want) -> Result<String, HubError> {
    let info = client.repo_info(repo, revision).await?;
    let commit = info.sha.clone();
    cache.write_tree(&commit, &info.files)?;
    // As huggingface_hub: the ref first, so that a cut download is found, and reported incomplete, later.
    cache.write_ref(revision, &commit)?;
    let listing: Vec<String> = info.files.keys().cloned().collect();
    let files = Arc::new(info.files);
    let index = if files::needs_index(&listing, want) {
        let entry = files.get(files::INDEX).cloned().unwrap_or_else(empty_entry);
        let progress = Progress::new(repo, entry.size, 1);
        let path = fetch_file(client, cache, repo, &commit, files::INDEX, &entry, &progress).await?;
        let bytes = std::fs::read(&path).map_err(|e| HubError::io(&path, e))?;
        Some(serde_json::from_slice(&bytes).map_err(|e| HubError::Files(format!("{repo}: {}: {e}", files::INDEX)))?)
    } else {
        None
    };
    let chosen = files::select(repo, &listing, want, index.as_ref()).map_err(HubError::Files)?;
    let snapshot = cache.snapshot(&commit);
    let todo: Vec<String> = chosen.into_iter().filter(|f| !snapshot.join(f).exists()).collect();
    if todo.is_empty() {
        return Ok(commit);
    }
    let total = todo.iter().map(|f| files.get(f).map_or(0, content_size)).sum();
    let progress = Arc::new(Progress::new(repo, total, todo.len()));
    let gate = Arc::new(tokio::sync::Semaphore::new(WORKERS));
    let mut tasks = tokio::task::JoinSet::new();
    for file in todo {
        let (client, cache, repo, commit, files, progress, gate) =
            (client.clone(), cache.clone(), repo.to_string(), commit.clone(), files.clone(), progress.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("the semaphore is never closed");
            let entry = files.get(&file).cloned().unwrap_or_else(empty_entry);
            fetch_file(&client, &cache, &repo, &commit, &file, &entry, &progress).await
        });
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.unwrap_or_else(|e| Err(HubError::Files(format!("a download task failed: {e}"))));
        if let Err(e) = result {
            if first_error.is_none() {
                first_error = Some(e);
                // One failure fails the snapshot: stop the others (their partial files stay, to resume).
                tasks.abort_all();
            }
        }
    }
    match first_error {
        Some(e) => {
            progress.abandon();
            Err(e)
        }
        None => {
            progress.finish();
            Ok(commit)
        }
    }
}

fn empty_entry() -> TreeEntry {
    TreeEntry { size: 0, blob_id: String::new(), lfs_sha256: None, lfs_size: None }
}

fn content_size(e: &TreeEntry) -> u64 {
    e.lfs_size.unwrap_or(e.size)
}

/// How a blob's content is checked.
enum Check {
    Sha256(String),
    /// Git's object id: sha1 of `blob <len>\0` and the content.
    GitSha1(String),
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_for(meta: &FileMeta, entry: &TreeEntry) -> Option<Check> {
    let etag = meta.etag.to_ascii_lowercase();
    if is_hex(&etag, 64) {
        return Some(Check::Sha256(etag));
    }
    if is_hex(&etag, 40) {
        return Some(Check::GitSha1(etag));
    }
    match (&entry.lfs_sha256, entry.blob_id.as_str()) {
        (Some(s), _) => Some(Check::Sha256(s.to_ascii_lowercase())),
        (None, b) if is_hex(b, 40) => Some(Check::GitSha1(b.to_ascii_lowercase())),
        _ => None,
    }
}

/// Hashes a file as `check` says; returns (algorithm, hex digest).
fn digest(path: &std::path::Path, check: &Check) -> std::io::Result<(&'static str, String)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    match check {
        Check::Sha256(_) => {
            let mut h = sha2::Sha256::new();
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(("sha256", hex(&h.finalize())))
        }
        Check::GitSha1(_) => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(("git sha1", hex(&h.finalize())))
        }
    }
}

/// One file into the cache and the snapshot; returns its path in the snapshot.
async fn fetch_file(
    client: &Client,
    cache: &RepoCache,
    repo: &str,
    commit: &str,
    file: &str,
    entry: &TreeEntry,
    progress: &Progress,
) -> Result<PathBuf, HubError> {
    let pointer = cache.snapshot(commit).join(file);
    if pointer.exists() {
        progress.add(content_size(entry));
        progress.file_done(file);
        return Ok(pointer);
    }
    let meta = client.head(repo, commit, file).await?;
    let blob = cache.blob(&meta.etag);
    // Another process may be writing this blob: wait for its lock.
    let mut waited = false;
    let _lock = loop {
        if let Some(lock) = FileLock::try_lock(&cache.lock(&meta.etag))? {
            break lock;
        }
        if !waited {
            tracing::info!("waiting for another process downloading {file} of {repo}");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if !blob.exists() {
        download_blob(client, cache, repo, file, &meta, entry, progress).await?;
    } else {
        progress.add(meta.size.unwrap_or_else(|| content_size(entry)));
    }
    let pointer = cache.link(commit, file, &meta.etag)?;
    progress.file_done(file);
    Ok(pointer)
}

async fn download_blob(
    client: &Client,
    cache: &RepoCache,
    repo: &str,
    file: &str,
    meta: &FileMeta,
    entry: &TreeEntry,
    progress: &Progress,
) -> Result<(), HubError> {
    let partial = cache.incomplete(&meta.etag);
    let blobs = partial.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&blobs).map_err(|e| HubError::io(&blobs, e))?;
    let expected = meta.size.unwrap_or_else(|| content_size(entry));
    let mut counted = 0u64; // bytes this call has added to the progress
    let mut last_cut = String::new();
    let mut complete = false;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tracing::warn!("{file} of {repo}: download cut ({last_cut}); resuming (try {} of {ATTEMPTS})", attempt + 1);
            tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
        }
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > expected && expected > 0 {
            have = 0;
        }
        if attempt == 0 && have > 0 {
            tracing::info!("{file} of {repo}: resuming a partial download at {have} of {expected} bytes");
        }
        if have > counted {
            progress.add(have - counted);
            counted = have;
        }
        if expected > 0 && have == expected {
            complete = true;
            break;
        }
        let resp = match client.get(repo, &meta.url, have).await {
            Ok(r) => r,
            // A refusal or an unreachable host: trying again will not help.
            Err(e) => return Err(e),
        };
        let start = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let from = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if from != Some(have) {
                    // Not the range asked for: start over rather than splice wrong bytes.
                    progress.sub(counted);
                    counted = 0;
                    let _ = std::fs::remove_file(&partial);
                    last_cut = "the server sent another range than asked".into();
                    continue;
                }
                have
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                progress.sub(counted);
                counted = 0;
                let _ = std::fs::remove_file(&partial);
                last_cut = "the partial file was longer than the file".into();
                continue;
            }
            // The whole file (the server ignored the range, or none was asked).
            _ => {
                progress.sub(counted);
                counted = 0;
                0
            }
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(&partial)
            .map_err(|e| HubError::io(&partial, e))?;
        let mut resp = resp;
        let mut written = start;
        let cut = loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    out.write_all(&bytes).map_err(|e| HubError::io(&partial, e))?;
                    written += bytes.len() as u64;
                    counted += bytes.len() as u64;
                    progress.add(bytes.len() as u64);
                }
                Ok(None) => break None,
                Err(e) => break Some(client.network_error(repo, &e).to_string()),
            }
        };
        out.flush().map_err(|e| HubError::io(&partial, e))?;
        drop(out);
        match cut {
            None if expected == 0 || written == expected => {
                complete = true;
                break;
            }
            None => last_cut = format!("the connection closed after {written} of {expected} bytes"),
            Some(why) => last_cut = why,
        }
    }
    if !complete {
        let done = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        return Err(HubError::Cut {
            repo: repo.to_string(),
            file: file.to_string(),
            attempts: ATTEMPTS,
            detail: last_cut,
            done,
            partial,
        });
    }
    verify(repo, file, &partial, meta, entry, expected).await?;
    let blob = cache.blob(&meta.etag);
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644));
    }
    std::fs::rename(&partial, &blob).map_err(|e| HubError::io(&blob, e))
}

/// Checks the downloaded bytes against the Hub's size and hash; a mismatch removes them.
async fn verify(
    repo: &str,
    file: &str,
    partial: &std::path::Path,
    meta: &FileMeta,
    entry: &TreeEntry,
    expected: u64,
) -> Result<(), HubError> {
    let corrupt = |algo, expected: String, actual: String| {
        let _ = std::fs::remove_file(partial);
        HubError::Corrupt { repo: repo.to_string(), file: file.to_string(), algo, expected, actual }
    };
    let len = std::fs::metadata(partial).map_err(|e| HubError::io(partial, e))?.len();
    if expected > 0 && len != expected {
        return Err(corrupt("size", format!("{expected} bytes"), format!("{len} bytes")));
    }
    let Some(check) = check_for(meta, entry) else {
        tracing::warn!("{file} of {repo}: the Hub gave no hash to check it against");
        return Ok(());
    };
    let path = partial.to_path_buf();
    let (check, result) = tokio::task::spawn_blocking(move || {
        let r = digest(&path, &check);
        (check, r)
    })
    .await
    .map_err(|e| HubError::Files(format!("checking {file}: {e}")))?;
    let (algo, actual) = result.map_err(|e| HubError::io(partial, e))?;
    let want = match &check {
        Check::Sha256(s) | Check::GitSha1(s) => s.clone(),
    };
    if actual != want {
        return Err(corrupt(algo, want, actual));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_and_sha256() {
        let dir = std::env::temp_dir().join(format!("sluice-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        // `git hash-object` of "hello\n", and its sha256.
        let (_, g) = digest(&p, &Check::GitSha1(String::new())).unwrap();
        assert_eq!(g, "ce013625030ba8dba906f756967f9e9ca394464a");
        let (_, s) = digest(&p, &Check::Sha256(String::new())).unwrap();
        assert_eq!(s, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
