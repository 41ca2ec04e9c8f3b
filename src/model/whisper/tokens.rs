//! Whisper's special tokens and languages, and the token lists its decoding suppresses.
//!
//! A Hugging Face folder names them in `generation_config.json` (`decoder_start_token_id`,
//! `lang_to_id`, `task_to_id`, `no_timestamps_token_id`, `suppress_tokens`, …). A
//! CTranslate2 folder's `config.json` lists only ids (`lang_ids`, `suppress_ids`,
//! `suppress_ids_begin`); the rest is found by name in the tokenizer, and a model is
//! multilingual when its vocabulary has room for the language tokens (51865 or more), as
//! faster-whisper decides.

use serde_json::Value as Json;

use crate::model::tokenizer::Tokenizer;

/// The languages Whisper knows: code and English name, in its token order.
pub const LANGUAGES: &[(&str, &str)] = &[
    ("en", "english"), ("zh", "chinese"), ("de", "german"), ("es", "spanish"), ("ru", "russian"),
    ("ko", "korean"), ("fr", "french"), ("ja", "japanese"), ("pt", "portuguese"), ("tr", "turkish"),
    ("pl", "polish"), ("ca", "catalan"), ("nl", "dutch"), ("ar", "arabic"), ("sv", "swedish"),
    ("it", "italian"), ("id", "indonesian"), ("hi", "hindi"), ("fi", "finnish"), ("vi", "vietnamese"),
    ("he", "hebrew"), ("uk", "ukrainian"), ("el", "greek"), ("ms", "malay"), ("cs", "czech"),
    ("ro", "romanian"), ("da", "danish"), ("hu", "hungarian"), ("ta", "tamil"), ("no", "norwegian"),
    ("th", "thai"), ("ur", "urdu"), ("hr", "croatian"), ("bg", "bulgarian"), ("lt", "lithuanian"),
    ("la", "latin"), ("mi", "maori"), ("ml", "malayalam"), ("cy", "welsh"), ("sk", "slovak"),
    ("te", "telugu"), ("fa", "persian"), ("lv", "latvian"), ("bn", "bengali"), ("sr", "serbian"),
    ("az", "azerbaijani"), ("sl", "slovenian"), ("kn", "kannada"), ("et", "estonian"), ("mk", "macedonian"),
    ("br", "breton"), ("eu", "basque"), ("is", "icelandic"), ("hy", "armenian"), ("ne", "nepali"),
    ("mn", "mongolian"), ("bs", "bosnian"), ("kk", "kazakh"), ("sq", "albanian"), ("sw", "swahili"),
    ("gl", "galician"), ("mr", "marathi"), ("pa", "punjabi"), ("si", "sinhala"), ("km", "khmer"),
    ("sn", "shona"), ("yo", "yoruba"), ("so", "somali"), ("af", "afrikaans"), ("oc", "occitan"),
    ("ka", "georgian"), ("be", "belarusian"), ("tg", "tajik"), ("sd", "sindhi"), ("gu", "gujarati"),
    ("am", "amharic"), ("yi", "yiddish"), ("lo", "lao"), ("uz", "uzbek"), ("fo", "faroese"),
    ("ht", "haitian creole"), ("ps", "pashto"), ("tk", "turkmen"), ("nn", "nynorsk"), ("mt", "maltese"),
    ("sa", "sanskrit"), ("lb", "luxembourgish"), ("my", "myanmar"), ("bo", "tibetan"), ("tl", "tagalog"),
    ("mg", "malagasy"), ("as", "assamese"), ("tt", "tatar"), ("haw", "hawaiian"), ("ln", "lingala"),
    ("ha", "hausa"), ("ba", "bashkir"), ("jw", "javanese"), ("su", "sundanese"), ("yue", "cantonese"),
];

/// The English name of a language code (`en` → `english`), as verbose responses name it.
pub fn language_name(code: &str) -> Option<&'static str> {
    LANGUAGES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WhisperTokens {
    pub eot: u32,
    /// `<|startoftranscript|>`, the decoder's start token.
    pub sot: u32,
    /// `<|startofprev|>`, before a previous-text prompt.
    pub sot_prev: Option<u32>,
    pub sot_lm: Option<u32>,
    /// `<|nospeech|>` (`<|nocaptions|>` in English-only vocabularies).
    pub no_speech: Option<u32>,
    pub no_timestamps: u32,
    pub transcribe: Option<u32>,
    pub translate: Option<u32>,
    /// Language codes and their tokens, in the model's order (empty for English-only models).
    pub languages: Vec<(String, u32)>,
    pub multilingual: bool,
    /// Never generated.
    pub suppress: Vec<u32>,
    /// Not generated as the first token (a blank, or the end of text).
    pub begin_suppress: Vec<u32>,
    /// The latest timestamp the first one may be (in 0.02 s steps); None leaves it free.
    pub max_initial_timestamp_index: Option<u32>,
    /// The model's vocabulary size (its logits' width); timestamps run up to it.
    pub vocab_size: u32,
}

impl WhisperTokens {
    /// The first timestamp token, `<|0.00|>`; every id from here up is a timestamp.
    pub fn timestamp_begin(&self) -> u32 {
        self.no_timestamps + 1
    }

    pub fn is_timestamp(&self, id: u32) -> bool {
        id >= self.timestamp_begin()
    }

    /// Seconds a timestamp token stands for.
    pub fn timestamp_seconds(&self, id: u32) -> Option<f64> {
        self.is_timestamp(id).then(|| (id - self.timestamp_begin()) as f64 * 0.02)
    }

    pub fn task_token(&self, task: Task) -> Option<u32> {
        match task {
            Task::Transcribe => self.transcribe,
            Task::Translate => self.translate,
        }
    }

    pub fn language_ids(&self) -> Vec<u32> {
        self.languages.iter().map(|(_, id)| *id).collect()
    }

    /// The code of a language token.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages.iter().find(|(_, t)| *t == id).map(|(c, _)| c.as_str())
    }

    /// The token of a language given as a code (`de`) or an English name (`german`), for a
    /// multilingual model; `Ok(None)` for English on an English-only model (which takes no
    /// language token). The error says what is accepted.
    pub fn language(&self, given: &str) -> Result<Option<u32>, String> {
        let lower = given.trim().to_ascii_lowercase();
        let code = LANGUAGES.iter().find(|(c, n)| *c == lower || *n == lower).map(|(c, _)| *c).unwrap_or(&lower);
        if !self.multilingual {
            return match code {
                "en" => Ok(None),
                _ => Err(format!("language {given:?} is not supported: this model is English-only (en)")),
            };
        }
        match self.languages.iter().find(|(c, _)| c == code) {
            Some((_, id)) => Ok(Some(*id)),
            None => {
                let codes: Vec<&str> = self.languages.iter().map(|(c, _)| c.as_str()).collect();
                Err(format!("language {given:?} is not supported; give an ISO 639-1 code, one of: {}", codes.join(", ")))
            }
        }
    }

    /// From a Hugging Face folder's `generation_config.json` (and `config.json` for the
    /// suppress lists when the former lacks them).
    pub fn from_hf(generation: &Json, config: &Json, tokenizer: Option<&Tokenizer>, vocab_size: usize) -> Result<Self, String> {
        let id = |c: &Json, k: &str| c.get(k).and_then(Json::as_u64).map(|v| v as u32);
        let ids = |k: &str| -> Vec<u32> {
            let list = generation.get(k).filter(|v| !v.is_null()).or_else(|| config.get(k));
            list.and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_u64).map(|v| v as u32).collect()
        };
        let named = |name: &str| tokenizer.and_then(|t| t.token_to_id(name));
        let need = |k: &str| {
            id(generation, k).or_else(|| id(config, k)).ok_or_else(|| format!("generation_config.json lacks {k}"))
        };
        let eot = match generation.get("eos_token_id") {
            Some(Json::Array(a)) => a.first().and_then(Json::as_u64).map(|v| v as u32),
            _ => id(generation, "eos_token_id"),
        }
        .or_else(|| id(config, "eos_token_id"))
        .ok_or("generation_config.json lacks eos_token_id")?;
        let mut languages: Vec<(String, u32)> = generation
            .get("lang_to_id")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.trim_start_matches("<|").trim_end_matches("|>").to_owned(), v.as_u64()? as u32)))
            .collect();
        languages.sort_by_key(|(_, id)| *id);
        let task = |k: &str| generation.get("task_to_id").and_then(|t| t.get(k)).and_then(Json::as_u64).map(|v| v as u32);
        let multilingual = generation.get("is_multilingual").and_then(Json::as_bool).unwrap_or(!languages.is_empty());
        let no_timestamps = need("no_timestamps_token_id")?;
        let t = WhisperTokens {
            eot,
            sot: need("decoder_start_token_id")?,
            sot_prev: id(generation, "prev_sot_token_id").or_else(|| named("<|startofprev|>")),
            sot_lm: named("<|startoflm|>"),
            no_speech: named("<|nospeech|>").or_else(|| named("<|nocaptions|>")).or_else(|| no_timestamps.checked_sub(1)),
            no_timestamps,
            transcribe: task("transcribe").or_else(|| named("<|transcribe|>")),
            translate: task("translate").or_else(|| named("<|translate|>")),
            languages: if multilingual { languages } else { Vec::new() },
            multilingual,
            suppress: ids("suppress_tokens"),
            begin_suppress: ids("begin_suppress_tokens"),
            max_initial_timestamp_index: id(generation, "max_initial_timestamp_index"),
            vocab_size: vocab_size as u32,
        };
        t.check()?;
        Ok(t)
    }

    /// From a CTranslate2 folder's `config.json` and its tokenizer.
    pub fn from_ct2(config: &Json, tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self, String> {
        let need = |name: &str| tokenizer.token_to_id(name).ok_or_else(|| format!("the tokenizer lacks {name}"));
        let ids = |k: &str| -> Vec<u32> {
            config.get(k).and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_u64).map(|v| v as u32).collect()
        };
        let multilingual = vocab_size >= 51865;
        let languages = if multilingual {
            ids("lang_ids")
                .into_iter()
                .map(|id| {
                    let tok = tokenizer.id_to_token(id).ok_or_else(|| format!("lang_ids names {id}, which the tokenizer lacks"))?;
                    match tok.strip_prefix("<|").and_then(|t| t.strip_suffix("|>")) {
                        Some(code) => Ok((code.to_owned(), id)),
                        None => Err(format!("lang_ids names {id} ({tok:?}), which is not a <|xx|> language token")),
                    }
                })
                .collect::<Result<Vec<_>, String>>()?
        } else {
            Vec::new()
        };
        let named = |name: &str| tokenizer.token_to_id(name);
        let t = WhisperTokens {
            eot: need("<|endoftext|>")?,
            sot: need("<|startoftranscript|>")?,
            sot_prev: named("<|startofprev|>"),
            sot_lm: named("<|startoflm|>"),
            no_speech: named("<|nospeech|>").or_else(|| named("<|nocaptions|>")),
            no_timestamps: need("<|notimestamps|>")?,
            transcribe: named("<|transcribe|>"),
            translate: named("<|translate|>"),
            languages,
            multilingual,
            suppress: ids("suppress_ids"),
            begin_suppress: ids("suppress_ids_begin"),
            // faster-whisper's `max_initial_timestamp` default, 1 s.
            max_initial_timestamp_index: Some(50),
            vocab_size: vocab_size as u32,
        };
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> Result<(), String> {
        let v = self.vocab_size;
        let mut named = vec![("eot", self.eot), ("sot", self.sot), ("no_timestamps", self.no_timestamps)];
        named.extend(self.languages.iter().map(|(_, id)| ("a language", *id)));
        named.extend(self.suppress.iter().map(|id| ("a suppressed token", *id)));
        named.extend(self.begin_suppress.iter().map(|id| ("a begin-suppressed token", *id)));
        if let Some((what, id)) = named.iter().find(|(_, id)| *id >= v) {
            return Err(format!("{what} has id {id}, outside the model's {v} logits"));
        }
        if self.timestamp_begin() >= v {
            return Err(format!("no timestamp tokens fit after <|notimestamps|> ({}) in {v} logits", self.no_timestamps));
        }
        if self.multilingual && self.languages.is_empty() {
            return Err("a multilingual model needs its language tokens (lang_to_id / lang_ids)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> WhisperTokens {
        let generation = json!({"decoder_start_token_id": 301, "eos_token_id": 300, "no_timestamps_token_id": 310,
            "lang_to_id": {"<|de|>": 303, "<|en|>": 302, "<|fr|>": 304}, "task_to_id": {"transcribe": 306, "translate": 305},
            "is_multilingual": true, "prev_sot_token_id": 308, "suppress_tokens": [1, 2], "begin_suppress_tokens": [220, 300],
            "max_initial_timestamp_index": 50});
        WhisperTokens::from_hf(&generation, &json!({}), None, 411).unwrap()
    }

    #[test]
    fn reads_generation_config() {
        let t = tiny();
        assert_eq!(t.languages, vec![("en".into(), 302), ("de".into(), 303), ("fr".into(), 304)]);
        assert_eq!((t.timestamp_begin(), t.task_token(Task::Translate), t.sot_prev), (311, Some(305), Some(308)));
        assert_eq!(t.timestamp_seconds(336), Some(0.5));
        assert_eq!(t.no_speech, Some(309));
    }

    #[test]
    fn languages_by_code_or_name() {
        let t = tiny();
        assert_eq!(t.language("de"), Ok(Some(303)));
        assert_eq!(t.language("German"), Ok(Some(303)));
        let err = t.language("xx").unwrap_err();
        assert!(err.contains("\"xx\" is not supported") && err.contains("en, de, fr"), "{err}");
        assert!(t.language("japanese").unwrap_err().contains("not supported"));
        let english_only = WhisperTokens { multilingual: false, languages: vec![], ..t };
        assert_eq!(english_only.language("en"), Ok(None));
        assert!(english_only.language("de").unwrap_err().contains("English-only"));
        assert_eq!(language_name("haw"), Some("hawaiian"));
    }

    #[test]
    fn ids_outside_the_vocabulary_are_refused() {
        let generation = json!({"decoder_start_token_id": 301, "eos_token_id": 300, "no_timestamps_token_id": 410,
            "lang_to_id": {"<|en|>": 302}});
        let err = WhisperTokens::from_hf(&generation, &json!({}), None, 411).unwrap_err();
        assert!(err.contains("no timestamp tokens fit"), "{err}");
    }
}
