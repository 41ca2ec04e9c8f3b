//! The decoder prompt Whisper is trained on:
//!
//! ```text
//! [<|startofprev|> previous text…] <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]
//! ```
//!
//! English-only models take no language or task token. The previous text (a request's
//! `prompt`) keeps its last `max_target_positions / 2 - 1` tokens, as openai-whisper,
//! faster-whisper and transformers cut it.

use super::tokens::{Task, WhisperTokens};

#[derive(Debug, Clone, PartialEq)]
pub struct PromptSpec<'a> {
    /// The language token (None: English-only models, or before detection).
    pub language: Option<u32>,
    pub task: Task,
    /// Timestamps on: no `<|notimestamps|>`, and the timestamp rules apply.
    pub timestamps: bool,
    /// Text tokens of earlier text to condition on.
    pub previous: &'a [u32],
}

/// The prompt's tokens; the error says what the model lacks for the request.
pub fn decoder_prompt(t: &WhisperTokens, spec: &PromptSpec, max_target_positions: usize) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    if !spec.previous.is_empty() {
        let sot_prev = t.sot_prev.ok_or("this model has no <|startofprev|> token for a prompt")?;
        let keep = (max_target_positions / 2).saturating_sub(1);
        out.push(sot_prev);
        out.extend(&spec.previous[spec.previous.len().saturating_sub(keep)..]);
    }
    out.push(t.sot);
    if t.multilingual {
        let language = spec.language.ok_or("a multilingual model needs a language token (given or detected)")?;
        out.push(language);
        let task = t.task_token(spec.task).ok_or_else(|| format!("this model has no {:?} token", spec.task))?;
        out.push(task);
    } else if spec.task == Task::Translate {
        return Err("this model is English-only and cannot translate".into());
    }
    if !spec.timestamps {
        out.push(t.no_timestamps);
    }
    Ok(out)
}

/// The one-token prompt whose next-token distribution over the language tokens is
/// Whisper's language detection (`<|startoftranscript|>`).
pub fn language_detection_prompt(t: &WhisperTokens) -> Vec<u32> {
    vec![t.sot]
}

/// The language token a first-step logits row picks: the best-scoring language token (ties
/// go to the earlier one, as an argmax does).
pub fn detect_language(t: &WhisperTokens, logits: &[f32]) -> Option<u32> {
    let mut best: Option<(u32, f32)> = None;
    for &id in &t.language_ids() {
        let score = *logits.get(id as usize)?;
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((id, score));
        }
    }
    best.map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(multilingual: bool) -> WhisperTokens {
        WhisperTokens {
            eot: 300,
            sot: 301,
            sot_prev: Some(308),
            sot_lm: Some(307),
            no_speech: Some(309),
            no_timestamps: 310,
            transcribe: Some(306),
            translate: Some(305),
            languages: if multilingual { vec![("en".into(), 302), ("de".into(), 303)] } else { vec![] },
            multilingual,
            suppress: vec![],
            begin_suppress: vec![],
            max_initial_timestamp_index: Some(50),
            vocab_size: 411,
        }
    }

    #[test]
    fn builds_whisper_prompts() {
        let t = tokens(true);
        let spec = PromptSpec { language: Some(303), task: Task::Translate, timestamps: true, previous: &[] };
        assert_eq!(decoder_prompt(&t, &spec, 448).unwrap(), [301, 303, 305]);
        let prev: Vec<u32> = (0..300).collect();
        let spec = PromptSpec { language: Some(302), task: Task::Transcribe, timestamps: false, previous: &prev };
        let p = decoder_prompt(&t, &spec, 448).unwrap();
        assert_eq!(p.len(), 1 + 223 + 4);
        assert_eq!((p[0], p[1], &p[224..]), (308, 77, &[301, 302, 306, 310][..]));
        let missing = PromptSpec { language: None, task: Task::Transcribe, timestamps: false, previous: &[] };
        assert!(decoder_prompt(&t, &missing, 448).is_err());
    }

    #[test]
    fn english_only_models_take_no_language_or_task() {
        let t = tokens(false);
        let spec = PromptSpec { language: None, task: Task::Transcribe, timestamps: false, previous: &[] };
        assert_eq!(decoder_prompt(&t, &spec, 448).unwrap(), [301, 310]);
        let spec = PromptSpec { task: Task::Translate, ..spec };
        assert!(decoder_prompt(&t, &spec, 448).unwrap_err().contains("cannot translate"));
    }

    #[test]
    fn detection_takes_the_best_language() {
        let t = tokens(true);
        let mut logits = vec![0.0f32; 411];
        logits[303] = 2.0;
        logits[302] = 1.0;
        logits[5] = 9.0;
        assert_eq!(detect_language(&t, &logits), Some(303));
    }
}
