//! Which files of a repository serving needs, so that a download skips the rest: the
//! configs, the tokenizer and chat template, sentence-transformers module configs, and the
//! safetensors weights — only the shards the index names, and none of the `.bin`, `.pth`,
//! `.onnx`, `.h5` or `.msgpack` copies that many repositories carry beside them. A GGUF
//! repository serves one file, picked by its quantization (`ORG/NAME:Q4_K_M`, as vLLM).

use serde_json::Value as Json;

/// The weights' index of a sharded checkpoint.
pub const INDEX: &str = "model.safetensors.index.json";

/// What a snapshot must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A model folder; `tokenizer` when its own tokenizer is needed (no `--tokenizer`).
    Model { tokenizer: bool },
    /// The tokenizer files alone (`--tokenizer ORG/NAME`).
    Tokenizer,
    /// The one GGUF file of a quantization.
    Gguf { quant: String },
}

const CONFIGS: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    // sentence-transformers: which modules, and their settings.
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

const TOKENIZER: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Weight formats that serving does not read; listed in an error when they are all a repo has.
const OTHER_WEIGHTS: &[&str] = &[".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ckpt"];

fn top_level(f: &str) -> bool {
    !f.contains('/')
}

/// A sentence-transformers module folder's file (`1_Pooling/config.json`, `2_Dense/model.safetensors`).
fn module_file(f: &str) -> bool {
    let Some((dir, name)) = f.split_once('/') else { return false };
    let numbered = dir.split_once('_').is_some_and(|(n, rest)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty());
    numbered && !name.contains('/') && (name == "config.json" || name.ends_with(".safetensors"))
}

/// Whether the index must be read (fetched first) before the full list is known.
pub fn needs_index(listing: &[String], want: &Want) -> bool {
    matches!(want, Want::Model { .. }) && listing.iter().any(|f| f == INDEX)
}

/// The files to fetch from `listing` (every file of the commit). For a sharded checkpoint,
/// `index` is the parsed index (see `needs_index`); without it the shards are left out.
pub fn select(repo: &str, listing: &[String], want: &Want, index: Option<&Json>) -> Result<Vec<String>, String> {
    let has = |name: &str| listing.iter().any(|f| f == name);
    let mut out: Vec<String> = Vec::new();
    match want {
        Want::Tokenizer => {
            if !has("tokenizer.json") {
                return Err(format!(
                    "{repo} has no tokenizer.json (the tokenizer file sluice reads): give --tokenizer a folder or \
                     id that has one"
                ));
            }
            out.extend(listing.iter().filter(|f| TOKENIZER.contains(&f.as_str()) || *f == "config.json").cloned());
        }
        Want::Gguf { quant } => out.push(pick_gguf(repo, listing, quant)?),
        Want::Model { tokenizer } => {
            if !has("config.json") {
                let ggufs = gguf_names(listing);
                return Err(if ggufs.is_empty() {
                    format!("{repo} has no config.json: it is not a Hugging Face model folder")
                } else {
                    gguf_hint(repo, &ggufs)
                });
            }
            if *tokenizer && !has("tokenizer.json") {
                return Err(format!(
                    "{repo} has no tokenizer.json (the tokenizer file sluice reads): give --tokenizer a folder or \
                     Hugging Face id that has one"
                ));
            }
            out.extend(listing.iter().filter(|f| CONFIGS.contains(&f.as_str()) || module_file(f)).cloned());
            if *tokenizer {
                out.extend(listing.iter().filter(|f| TOKENIZER.contains(&f.as_str())).cloned());
                out.extend(listing.iter().filter(|f| f.starts_with("additional_chat_templates/")).cloned());
            }
            out.extend(weights(repo, listing, index)?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn weights(repo: &str, listing: &[String], index: Option<&Json>) -> Result<Vec<String>, String> {
    if listing.iter().any(|f| f == INDEX) {
        let mut out = vec![INDEX.to_string()];
        let Some(index) = index else { return Ok(out) };
        let map = index
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| format!("{repo}: {INDEX} has no weight_map"))?;
        let mut shards: Vec<String> = map.values().filter_map(Json::as_str).map(str::to_owned).collect();
        shards.sort();
        shards.dedup();
        if let Some(missing) = shards.iter().find(|s| !listing.contains(s)) {
            return Err(format!("{repo}: {INDEX} names {missing}, which the repository does not have"));
        }
        out.extend(shards);
        return Ok(out);
    }
    let safetensors: Vec<&String> = listing.iter().filter(|f| top_level(f) && f.ends_with(".safetensors")).collect();
    if !safetensors.is_empty() {
        // Mistral's repositories carry a consolidated copy beside the Hugging Face weights.
        let hf: Vec<&String> = safetensors.iter().copied().filter(|f| !f.starts_with("consolidated")).collect();
        let chosen = if hf.is_empty() { safetensors } else { hf };
        return Ok(chosen.into_iter().cloned().collect());
    }
    let ggufs = gguf_names(listing);
    if !ggufs.is_empty() {
        return Err(gguf_hint(repo, &ggufs));
    }
    let others: Vec<&str> =
        listing.iter().filter(|f| OTHER_WEIGHTS.iter().any(|x| f.ends_with(x))).map(String::as_str).take(4).collect();
    if others.is_empty() {
        Err(format!("{repo} has no weights (no *.safetensors or *.gguf files)"))
    } else {
        Err(format!(
            "{repo} has no safetensors weights, only {}: sluice reads safetensors and GGUF files. A safetensors \
             conversion may sit on another revision (e.g. --revision refs/pr/1); or convert the weights and serve \
             the folder",
            others.join(", ")
        ))
    }
}

fn gguf_names(listing: &[String]) -> Vec<&str> {
    listing.iter().filter(|f| f.to_ascii_lowercase().ends_with(".gguf")).map(String::as_str).collect()
}

fn gguf_hint(repo: &str, ggufs: &[&str]) -> String {
    let shown: Vec<&str> = ggufs.iter().take(12).copied().collect();
    format!(
        "{repo} holds GGUF files, not a model folder: name one by its quantization, as {repo}:QUANT (e.g. \
         {repo}:Q4_K_M); files here: {}",
        shown.join(", ")
    )
}

/// Whether a GGUF file name carries the quantization tag `quant` (case-insensitive), as a
/// whole tag: `Q4_K` names `x-Q4_K.gguf`, not `x-Q4_K_M.gguf`.
fn names_quant(file: &str, quant: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_uppercase();
    let q = quant.to_ascii_uppercase();
    let dir_match = file.contains('/') && file.split('/').rev().nth(1).is_some_and(|d| d.eq_ignore_ascii_case(quant));
    let bytes = name.as_bytes();
    let mut from = 0;
    while let Some(at) = name[from..].find(&q) {
        let start = from + at;
        let end = start + q.len();
        let before_ok = start == 0 || matches!(bytes[start - 1], b'-' | b'.' | b'_');
        let after_ok = end == bytes.len() || matches!(bytes[end], b'.' | b'-');
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    dir_match
}

fn pick_gguf(repo: &str, listing: &[String], quant: &str) -> Result<String, String> {
    let ggufs = gguf_names(listing);
    if ggufs.is_empty() {
        return Err(format!("{repo} has no GGUF files, so {repo}:{quant} names nothing; serve {repo} itself"));
    }
    let matching: Vec<&str> = ggufs.iter().copied().filter(|f| names_quant(f, quant)).collect();
    match matching.as_slice() {
        [one] if is_split(one) => Err(format!(
            "{repo}:{quant} is split into several files ({one}, ...): sluice reads a single GGUF file; merge the \
             parts with llama.cpp's gguf-split --merge and serve the file"
        )),
        [one] => Ok(one.to_string()),
        [] => Err(format!("{repo} has no GGUF file for {quant}; files here: {}", ggufs.iter().take(12).copied().collect::<Vec<_>>().join(", "))),
        several if several.iter().all(|f| is_split(f)) => Err(format!(
            "{repo}:{quant} is split into {} files: sluice reads a single GGUF file; merge the parts with \
             llama.cpp's gguf-split --merge and serve the file",
            several.len()
        )),
        several => Err(format!("{repo}:{quant} matches several files ({}): name the quantization exactly", several.join(", "))),
    }
}

/// `name-00001-of-00003.gguf`: one part of a split GGUF.
fn is_split(file: &str) -> bool {
    let stem = file.trim_end_matches(".gguf");
    let mut parts = stem.rsplit('-');
    let (Some(total), Some(of), Some(index)) = (parts.next(), parts.next(), parts.next()) else { return false };
    of == "of" && total.bytes().all(|b| b.is_ascii_digit()) && index.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const MODEL: Want = Want::Model { tokenizer: true };

    #[test]
    fn a_model_folder_skips_duplicate_weights() {
        let l = list(&[
            ".gitattributes", "README.md", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "model.safetensors", "pytorch_model.bin",
            "onnx/model.onnx", "flax_model.msgpack", "tf_model.h5", "modules.json", "1_Pooling/config.json",
            "sentence_bert_config.json", "openvino/openvino_model.bin", "vocab.txt",
        ]);
        let got = select("o/m", &l, &MODEL, None).unwrap();
        assert_eq!(
            got,
            list(&[
                "1_Pooling/config.json", "config.json", "generation_config.json", "model.safetensors",
                "modules.json", "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                "tokenizer_config.json",
            ])
        );
    }

    #[test]
    fn shards_come_from_the_index() {
        let l = list(&[
            "config.json", "tokenizer.json", INDEX, "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "consolidated.safetensors", "pytorch_model-00001-of-00002.bin",
        ]);
        assert!(needs_index(&l, &MODEL));
        let first = select("o/m", &l, &MODEL, None).unwrap();
        assert_eq!(first, list(&["config.json", INDEX, "tokenizer.json"]));
        let index = json!({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}});
        let all = select("o/m", &l, &MODEL, Some(&index)).unwrap();
        assert!(all.contains(&"model-00002-of-00002.safetensors".to_string()));
        assert!(!all.iter().any(|f| f.starts_with("consolidated") || f.ends_with(".bin")));
        let bad = json!({"weight_map": {"a": "model-00009.safetensors"}});
        assert!(select("o/m", &l, &MODEL, Some(&bad)).unwrap_err().contains("model-00009.safetensors"));
    }

    #[test]
    fn repositories_without_what_serving_reads_say_what_to_do() {
        let bin = list(&["config.json", "tokenizer.json", "pytorch_model.bin"]);
        assert!(select("o/m", &bin, &MODEL, None).unwrap_err().contains("no safetensors weights, only pytorch_model.bin"));
        let gguf = list(&["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf"]);
        assert!(select("o/m", &gguf, &MODEL, None).unwrap_err().contains("o/m:Q4_K_M"));
        let no_tok = list(&["config.json", "model.safetensors", "tokenizer.model"]);
        assert!(select("o/m", &no_tok, &MODEL, None).unwrap_err().contains("--tokenizer"));
        assert!(select("o/m", &no_tok, &Want::Model { tokenizer: false }, None).is_ok());
    }

    #[test]
    fn gguf_files_are_picked_by_quantization() {
        let l = list(&["Qwen3-0.6B-Q4_K_M.gguf", "Qwen3-0.6B-Q4_K_S.gguf", "Qwen3-0.6B-Q8_0.gguf", "Qwen3-0.6B-BF16.gguf", "README.md"]);
        let q = |s: &str| select("o/m", &l, &Want::Gguf { quant: s.into() }, None);
        assert_eq!(q("Q4_K_M").unwrap(), list(&["Qwen3-0.6B-Q4_K_M.gguf"]));
        assert_eq!(q("q8_0").unwrap(), list(&["Qwen3-0.6B-Q8_0.gguf"]));
        assert!(q("Q4_K").unwrap_err().contains("no GGUF file for Q4_K"));
        assert!(q("Q2_K").is_err());
        let split = list(&["Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf"]);
        assert!(select("o/m", &split, &Want::Gguf { quant: "Q4_K_M".into() }, None).unwrap_err().contains("gguf-split"));
    }

    #[test]
    fn a_tokenizer_needs_little() {
        let l = list(&["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors", "vocab.txt"]);
        assert_eq!(select("o/t", &l, &Want::Tokenizer, None).unwrap(), list(&["config.json", "tokenizer.json", "tokenizer_config.json"]));
    }
}
