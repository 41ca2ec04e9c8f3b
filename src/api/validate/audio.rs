//! Transcriptions and translations → a validated `AudioJob`, its `AudioMeta` (how the
//! answer is shaped) and the `RequestMeta` the detokenizer reads.
//!
//! The request is a `multipart/form-data` form over HTTP (OpenAI's wire format: every
//! field a string, the audio a file part named `file`), or a JSON body in a batch file,
//! where the audio comes as `file_url`, a `data:` URL with the file in base64 (vLLM's
//! batch runner). Both are read as the same list of text fields.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use crate::api::audio::{AudioFormat, AudioJob, AudioMeta};
use crate::api::context::ServingContext;
use crate::api::endpoint::Endpoint;
use crate::api::error::ApiError;
use crate::api::form::{Form, Upload};
use crate::api::request::{OutputOptions, RequestMeta};
use crate::model::whisper::tokens::{Task, WhisperTokens};
use crate::sampling::SamplingParams;

/// The fields the audio APIs take.
const FIELDS: &[&str] = &[
    "file",
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "stream",
    "stream_include_usage",
    "stream_continuous_usage_stats",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "max_completion_tokens",
    "n",
    "use_beam_search",
];

/// A transcription or translation request (a form, or a batch line's JSON body),
/// validated against the served Whisper model.
pub fn audio_request(
    endpoint: Endpoint,
    form: Form,
    serving: &ServingContext,
) -> Result<(AudioJob, AudioMeta, RequestMeta), ApiError> {
    let tokens = serving
        .whisper
        .as_deref()
        .ok_or_else(|| ApiError::bad_request(format!("The {} API needs a Whisper model.", endpoint.api_name())))?;
    let task = match endpoint {
        Endpoint::Transcriptions => Task::Transcribe,
        Endpoint::Translations => Task::Translate,
        other => return Err(ApiError::bad_request(format!("The {} API is not served by this pipeline.", other.api_name()))),
    };
    let mut f = FormFields::new(form);
    let upload = f.file()?;
    let model = match f.take("model")? {
        None => serving.model_name().to_string(),
        Some(m) if serving.served_names.contains(&m) => m,
        Some(m) => return Err(ApiError::model_not_found(&m, &serving.served_names)),
    };
    if task == Task::Translate && !tokens.multilingual {
        return Err(ApiError::invalid(
            "model",
            format!(
                "The model `{model}` is English-only: it transcribes English (/v1/audio/transcriptions) but cannot translate; \
                 serve a multilingual Whisper model for /v1/audio/translations."
            ),
        ));
    }
    let (language, language_code) = language(&mut f, tokens)?;
    let prompt = f.take("prompt")?.unwrap_or_default();
    let format = match f.take("response_format")? {
        None => AudioFormat::Json,
        Some(s) => AudioFormat::parse(&s).ok_or_else(|| {
            ApiError::invalid(
                "response_format",
                format!("`response_format` {s:?} is not supported; use one of: {}.", AudioFormat::NAMES),
            )
        })?,
    };
    for g in f.take_all("timestamp_granularities[]") {
        match g.as_str() {
            "segment" if format == AudioFormat::VerboseJson => {}
            "segment" | "word" if format != AudioFormat::VerboseJson => {
                return Err(ApiError::invalid(
                    "timestamp_granularities[]",
                    "`timestamp_granularities[]` needs `response_format` verbose_json.",
                ));
            }
            "word" => {
                return Err(ApiError::invalid(
                    "timestamp_granularities[]",
                    "Word timestamps are not supported; `timestamp_granularities[]` may be `segment`.",
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    "timestamp_granularities[]",
                    format!("`timestamp_granularities[]` {other:?} is not one of: segment, word."),
                ));
            }
        }
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = f.bool("stream_include_usage")?.unwrap_or(false);
    let continuous_usage = f.bool("stream_continuous_usage_stats")?.unwrap_or(false);
    if !stream {
        for (name, on) in [("stream_include_usage", include_usage), ("stream_continuous_usage_stats", continuous_usage)] {
            if on {
                return Err(ApiError::invalid(name, format!("`{name}` is only allowed when `stream` is true.")));
            }
        }
    }
    if stream && format.timestamps() {
        return Err(ApiError::invalid(
            "stream",
            "Streaming answers are text deltas: `stream` takes `response_format` json or text, not srt, vtt or verbose_json.",
        ));
    }
    let mut sampling = sampling(&mut f, serving)?;
    if format == AudioFormat::VerboseJson {
        // Each segment's avg_logprob.
        sampling.logprobs = Some(0);
    }
    f.refuse_unknown()?;
    let temperature = sampling.temperature;
    let job = AudioJob {
        upload,
        task,
        language,
        prompt,
        timestamps: format.timestamps(),
        sampling: Arc::new(sampling),
        prompts: Vec::new(),
        encoder: None,
    };
    let audio = AudioMeta {
        model: model.clone(),
        task,
        format,
        stream,
        // Usage on every chunk needs usage in the first place, as vLLM reads them.
        include_usage,
        continuous_usage: continuous_usage && include_usage,
        temperature,
        language: language_code,
        facts: Default::default(),
    };
    let meta = RequestMeta {
        model,
        output: OutputOptions { stream, include_usage, skip_special_tokens: true, ..OutputOptions::default() },
        logprobs: None,
        tokens_as_ids: false,
        best_of_keep: None,
        answer: Default::default(),
        responses: Default::default(),
    };
    Ok((job, audio, meta))
}

/// `language`: the token of the language given (None on English-only models, which take
/// English and no token), and its code; absent, the model detects it.
fn language(f: &mut FormFields, tokens: &WhisperTokens) -> Result<(Option<u32>, Option<String>), ApiError> {
    let Some(given) = f.take("language")? else { return Ok((None, None)) };
    let token = tokens.language(&given).map_err(|m| ApiError::invalid("language", format!("{m}.")))?;
    let code = match token.and_then(|t| tokens.language_code(t)) {
        Some(c) => c.to_string(),
        None => "en".to_string(),
    };
    Ok((token, Some(code)))
}

/// The sampling fields (vLLM's extra ones too); greedy unless `temperature` says otherwise.
fn sampling(f: &mut FormFields, serving: &ServingContext) -> Result<SamplingParams, ApiError> {
    // vLLM's transcriptions default to temperature 0; the other fields to the model's
    // generation config, else OpenAI's.
    let mut p = SamplingParams { temperature: 0.0, ..serving.defaults.params() };
    if let Some(t) = f.number("temperature")? {
        if !(t >= 0.0 && t.is_finite()) {
            return Err(ApiError::invalid("temperature", format!("`temperature` must be at least 0, got {t}.")));
        }
        p.temperature = t as f32;
    }
    if let Some(t) = f.number("top_p")? {
        if !(t > 0.0 && t <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {t}.")));
        }
        p.top_p = t as f32;
    }
    if let Some(k) = f.integer("top_k")? {
        p.top_k = match k {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            k => return Err(ApiError::invalid("top_k", format!("`top_k` must be -1 (off) or at least 1, got {k}."))),
        };
    }
    if let Some(m) = f.number("min_p")? {
        if !(0.0..=1.0).contains(&m) {
            return Err(ApiError::invalid("min_p", format!("`min_p` must be in [0, 1], got {m}.")));
        }
        p.min_p = m as f32;
    }
    for (name, field) in [("presence_penalty", &mut p.presence_penalty), ("frequency_penalty", &mut p.frequency_penalty)] {
        if let Some(v) = f.number(name)? {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(name, format!("`{name}` must be in [-2, 2], got {v}.")));
            }
            *field = v as f32;
        }
    }
    if let Some(v) = f.number("repetition_penalty")? {
        if !(v > 0.0 && v.is_finite()) {
            return Err(ApiError::invalid("repetition_penalty", format!("`repetition_penalty` must be above 0, got {v}.")));
        }
        p.repetition_penalty = v as f32;
    }
    p.seed = f.integer("seed")?.map(|s| s as u64);
    p.max_tokens = match f.integer("max_completion_tokens")? {
        None => None,
        Some(m) if m >= 1 => Some(m as usize),
        Some(m) => {
            return Err(ApiError::invalid("max_completion_tokens", format!("`max_completion_tokens` must be at least 1, got {m}.")));
        }
    };
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(ApiError::invalid("n", format!("`n` must be 1 for the audio APIs (one transcript), got {n}.")));
        }
    }
    if f.bool("use_beam_search")? == Some(true) {
        return Err(ApiError::invalid("use_beam_search", "Beam search is not supported for the audio APIs; leave it out."));
    }
    Ok(p)
}

/// A form's fields, taken one by one so that every error names its field.
struct FormFields {
    fields: Vec<(String, String)>,
    files: Vec<Upload>,
}

impl FormFields {
    fn new(form: Form) -> Self {
        FormFields { fields: form.fields, files: form.files }
    }

    /// The audio file: exactly one file part, named `file`, with some bytes.
    fn file(&mut self) -> Result<Upload, ApiError> {
        if let Some(i) = self.fields.iter().position(|(k, _)| k == "file") {
            let _ = self.fields.remove(i);
            return Err(ApiError::invalid("file", "`file` must be a file part (an upload with a filename), not a text field."));
        }
        if let Some(other) = self.files.iter().find(|u| u.field != "file") {
            return Err(ApiError::invalid(
                other.field.clone(),
                format!("Unexpected file part `{}`; the audio goes in the part named `file`.", other.field),
            ));
        }
        match self.files.len() {
            0 => Err(ApiError::invalid("file", "`file` is required: the audio to transcribe, as a file part.")),
            1 => {
                let u = self.files.remove(0);
                if u.bytes.is_empty() {
                    return Err(ApiError::invalid("file", "`file` is empty; send an audio file (wav, mp3, flac, ogg, m4a)."));
                }
                Ok(u)
            }
            n => Err(ApiError::invalid("file", format!("`file` was given {n} times; send one audio file."))),
        }
    }

    /// Removes one field; given twice is an error.
    fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut all = self.take_all(name);
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.pop()),
            n => Err(ApiError::invalid(name, format!("`{name}` was given {n} times; give it once."))),
        }
    }

    /// Removes every value of a field that may repeat (`name` and `name[]` alike, without
    /// its brackets too).
    fn take_all(&mut self, name: &str) -> Vec<String> {
        let base = name.trim_end_matches("[]");
        let mut out = Vec::new();
        self.fields.retain(|(k, v)| {
            let hit = k == name || k.trim_end_matches("[]") == base;
            if hit {
                out.push(v.clone());
            }
            !hit
        });
        out
    }

    fn number(&mut self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.take(name)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be a number, got {s:?}."))),
        }
    }

    fn integer(&mut self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.take(name)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| ApiError::invalid(name, format!("`{name}` must be an integer, got {s:?}."))),
        }
    }

    /// A boolean as forms spell it (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
    fn bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take(name)? {
            None => Ok(None),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(ApiError::invalid(name, format!("`{name}` must be true or false, got {s:?}."))),
            },
        }
    }

    /// Any field left is one these APIs do not take.
    fn refuse_unknown(&self) -> Result<(), ApiError> {
        match self.fields.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::invalid(
                k.clone(),
                format!("Unknown field `{k}`; the audio APIs take: {}.", FIELDS.join(", ")),
            )),
        }
    }
}

/// A batch line's JSON body as a form: values become text fields (a list, one field per
/// element) and `file_url`, a `data:` URL, becomes the `file` part.
pub fn form_of_json(body: &[u8]) -> Result<Form, ApiError> {
    let map = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::bad_request("The request body must be a JSON object.")),
        Err(e) => return Err(ApiError::bad_request(format!("The request body is not valid JSON: {e}"))),
    };
    let mut form = Form::default();
    for (k, v) in map {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("file", _) => {
                return Err(ApiError::invalid(
                    "file",
                    "A JSON body cannot carry a file: give the audio as `file_url`, a data URL \
                     (`data:audio/wav;base64,...`).",
                ));
            }
            ("file_url", Value::String(url)) => form.files.push(data_url(&url)?),
            ("file_url", _) => return Err(ApiError::invalid("file_url", "`file_url` must be a string (a data URL).")),
            (_, Value::Array(items)) => {
                for item in items {
                    form.fields.push((k.clone(), scalar(&k, item)?));
                }
            }
            (_, v) => {
                let s = scalar(&k, v)?;
                form.fields.push((k, s));
            }
        }
    }
    Ok(form)
}

fn scalar(name: &str, v: Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ApiError::invalid(name, format!("`{name}` must be a string, a number or a boolean."))),
    }
}

/// The file a `data:[<media type>];base64,<data>` URL holds.
fn data_url(url: &str) -> Result<Upload, ApiError> {
    let bad = |m: String| ApiError::invalid("file_url", m);
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split(':').next().unwrap_or(url);
        return Err(bad(format!(
            "`file_url` must be a data URL with the audio in base64 (`data:audio/wav;base64,...`); {scheme:?} URLs are not fetched."
        )));
    };
    let (header, data) = rest.split_once(',').ok_or_else(|| bad("`file_url` is a data URL without a `,` before its data.".into()))?;
    let mut parts = header.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !parts.any(|p| p.trim() == "base64") {
        return Err(bad("`file_url` must be base64-encoded (`data:<type>;base64,<data>`).".into()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| bad(format!("`file_url`'s data is not valid base64: {e}.")))?;
    let ext = match media.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" => Some("wav"),
        "audio/mpeg" | "audio/mp3" => Some("mp3"),
        "audio/flac" | "audio/x-flac" => Some("flac"),
        "audio/ogg" => Some("ogg"),
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" => Some("m4a"),
        _ => None,
    };
    Ok(Upload { field: "file".into(), filename: ext.map(|e| format!("audio.{e}")), bytes: bytes.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_become_forms() {
        let body = br#"{"model": "m", "temperature": 0.5, "stream": false, "timestamp_granularities": ["segment"],
                        "file_url": "data:audio/wav;base64,UklGRg==", "language": null}"#;
        let form = form_of_json(body).unwrap();
        assert_eq!(form.files.len(), 1);
        assert_eq!((&form.files[0].bytes[..], form.files[0].extension().as_deref()), (&b"RIFF"[..], Some("wav")));
        let fields: Vec<(&str, &str)> = form.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(fields, [("model", "m"), ("temperature", "0.5"), ("stream", "false"), ("timestamp_granularities", "segment")]);
        let e = form_of_json(br#"{"file_url": "https://example.com/a.wav"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("file_url"));
        assert!(e.message.contains("not fetched"), "{}", e.message);
        assert_eq!(form_of_json(br#"{"file": "abc"}"#).unwrap_err().param.as_deref(), Some("file"));
        assert!(form_of_json(br#"{"file_url": "data:audio/wav;base64,@@@"}"#).unwrap_err().message.contains("base64"));
    }

    #[test]
    fn form_fields_are_typed_and_named_in_errors() {
        let form = Form {
            fields: vec![
                ("stream".into(), "True".into()),
                ("top_k".into(), "x".into()),
                ("timestamp_granularities[]".into(), "segment".into()),
                ("timestamp_granularities[]".into(), "word".into()),
                ("prompt".into(), "a".into()),
                ("prompt".into(), "b".into()),
            ],
            files: vec![],
        };
        let mut f = FormFields::new(form);
        assert_eq!(f.bool("stream").unwrap(), Some(true));
        assert_eq!(f.integer("top_k").unwrap_err().param.as_deref(), Some("top_k"));
        assert_eq!(f.take_all("timestamp_granularities[]"), ["segment", "word"]);
        assert!(f.take("prompt").unwrap_err().message.contains("given 2 times"));
        assert_eq!(f.file().unwrap_err().param.as_deref(), Some("file"));
        assert!(f.refuse_unknown().is_ok());
    }
}
