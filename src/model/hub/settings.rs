//! The Hub settings, read from the environment variables huggingface_hub and vLLM read.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the Hub is, who is asking, where the cache is, and whether to use the network.
#[derive(Clone)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, else https://huggingface.co.
    pub endpoint: String,
    /// `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, the file `HF_TOKEN_PATH` names, or `$HF_HOME/token`.
    pub token: Option<String>,
    /// `--download-dir`, `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
    /// `$XDG_CACHE_HOME/huggingface/hub`, or `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: the cache only.
    pub offline: bool,
    /// `HF_HUB_ETAG_TIMEOUT` (10 s): connecting, and each metadata request.
    pub etag_timeout: Duration,
    /// `HF_HUB_DOWNLOAD_TIMEOUT` (10 s): the longest wait for the next bytes of a download.
    pub download_timeout: Duration,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .finish()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// huggingface_hub's reading of a boolean variable.
fn truthy(name: &str) -> bool {
    var(name).is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

fn seconds(name: &str, default: f64) -> Duration {
    let s = var(name).and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| *s > 0.0).unwrap_or(default);
    Duration::from_secs_f64(s)
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(p) = var("HF_HOME") {
        return PathBuf::from(p);
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("huggingface");
    }
    PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache/huggingface")
}

/// The hub cache folder when `--download-dir` is not given.
pub fn default_cache_dir() -> PathBuf {
    var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(PathBuf::from).unwrap_or_else(|| hf_home().join("hub"))
}

fn token() -> Option<String> {
    if let Some(t) = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_string());
    }
    let file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

impl HubSettings {
    pub fn from_env(download_dir: Option<&Path>) -> HubSettings {
        HubSettings {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string(),
            token: token(),
            cache_dir: download_dir.map(Path::to_path_buf).unwrap_or_else(default_cache_dir),
            offline: truthy("HF_HUB_OFFLINE"),
            etag_timeout: seconds("HF_HUB_ETAG_TIMEOUT", 10.0),
            download_timeout: seconds("HF_HUB_DOWNLOAD_TIMEOUT", 10.0),
        }
    }
}
