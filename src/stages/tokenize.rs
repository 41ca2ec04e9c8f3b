//! tokenize: prompt texts → token ids, and the length checks that need them: a prompt
//! that does not fit the context, or leaves no room for the tokens asked for, is a 400.

use std::sync::Arc;

use crate::api::error::ApiError;
use crate::api::request::{Job, Prompt};
use crate::stages::item::{Item, Payload};
use crate::model::tokenizer::Tokenizer;
use crate::pipeline::{Outlet, Stage};
use crate::api::context::ServingContext;

pub struct Tokenize {
    pub serving: Arc<ServingContext>,
}

impl Stage<Item> for Tokenize {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Job(mut job) = item.payload else { unreachable!("tokenize takes jobs") };
        match self.tokenize(&mut job) {
            Ok(()) => {
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Job(job) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}

impl Tokenize {
    fn tokenize(&self, job: &mut Job) -> Result<(), ApiError> {
        if !job.media.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "Images need the `media` stage between render and tokenize in the pipeline file.",
            ));
        }
        let tok = &self.serving.tokenizer;
        let mut ids = match &job.prompt {
            Prompt::Texts { texts, add_special_tokens } => texts
                .iter()
                .map(|t| tok.encode(t, *add_special_tokens).map_err(|e| ApiError::internal(format!("tokenizer: {e}"))))
                .collect::<Result<Vec<_>, _>>()?,
            Prompt::Tokens(ids) => {
                let vocab = tok.vocab_size() as u32;
                if let Some(bad) = ids.iter().flatten().find(|&&t| t >= vocab) {
                    return Err(ApiError::invalid("prompt", format!("Token id {bad} is out of vocabulary (0..{vocab}).")));
                }
                ids.clone()
            }
            Prompt::Chat(_) => unreachable!("render runs before tokenize"),
        };
        if let Some(keep) = job.truncate_prompt_tokens {
            for p in &mut ids {
                p.drain(..p.len().saturating_sub(keep));
            }
        }
        let limit = self.serving.max_model_len;
        for p in &ids {
            if p.is_empty() {
                return Err(ApiError::invalid("prompt", "The prompt is empty; it must have at least one token."));
            }
            let asked = job.sampling.max_tokens.unwrap_or(0);
            if p.len() >= limit || p.len() + asked > limit {
                let what = if job.sampling.max_tokens.is_some() {
                    format!("{} tokens ({} in the prompt, {asked} in the completion)", p.len() + asked, p.len())
                } else {
                    format!("{} tokens in the prompt, leaving no room for the completion", p.len())
                };
                let param = if p.len() >= limit { "prompt" } else { "max_tokens" };
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "This model's maximum context length is {limit} tokens. However, you requested {what}. \
                         Please reduce the length of the prompt or completion."
                    ),
                ));
            }
        }
        job.prompt = Prompt::Tokens(ids);
        if !job.sampling.bad_words.is_empty() {
            let words = bad_words_ids(tok, &job.sampling.bad_words)?;
            Arc::make_mut(&mut job.sampling).bad_words_ids = words;
        }
        Ok(())
    }
}

/// Each bad word as token ids, as vLLM does: as written (without leading spaces) and with
/// one leading space, since BPE vocabularies spell a word differently after a space.
fn bad_words_ids(tok: &Tokenizer, words: &[String]) -> Result<Vec<Vec<u32>>, ApiError> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for word in words {
        let word = word.trim_start();
        for text in [word.to_string(), format!(" {word}")] {
            let ids = tok.encode(&text, false).map_err(|e| ApiError::internal(format!("tokenizer: {e}")))?;
            if !ids.is_empty() && !out.contains(&ids) {
                out.push(ids);
            }
        }
    }
    Ok(out)
}
