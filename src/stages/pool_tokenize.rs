//! pool_tokenize: a pooling request's texts (or text pairs, or chats rendered with the
//! chat template as the render stage renders them) → token and segment ids, cut
//! to `truncate_prompt_tokens` when asked (texts keep their special tokens; token-id
//! inputs keep their last tokens, as vLLM does). An input longer than the model's context
//! is a 400, as is a token id outside the vocabulary. A vision model's chat brings its
//! images: read and preprocessed here (the media stage's `Fetcher`), each placeholder
//! repeated once per merged patch before the text is tokenized.

use std::sync::Arc;

use crate::api::error::ApiError;
use crate::api::endpoint::Endpoint;
use crate::api::request::{PoolInput, PoolJob};
use crate::stages::item::{Item, Payload};
use crate::model::bert::EncoderInput;
use crate::pipeline::{Outlet, Stage};
use crate::api::context::ServingContext;
use crate::stages::render::render_chat;

pub struct PoolTokenize {
    pub serving: Arc<ServingContext>,
    /// Reads a chat's images (vision models).
    fetcher: Option<crate::stages::media::Fetcher>,
}

impl PoolTokenize {
    pub fn new(serving: Arc<ServingContext>) -> Result<Self, String> {
        let fetcher = if serving.vision.is_some() { Some(crate::stages::media::Fetcher::new()?) } else { None };
        Ok(PoolTokenize { serving, fetcher })
    }
}

impl Stage<Item> for PoolTokenize {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Pool(mut job) = item.payload else { unreachable!("pool_tokenize takes pooling jobs") };
        if item.ctx.is_cancelled() {
            return;
        }
        match self.tokenize(&mut job, item.ctx.endpoint) {
            Ok(()) => {
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Pool(job) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}

impl PoolTokenize {
    fn tokenize(&self, job: &mut PoolJob, endpoint: Endpoint) -> Result<(), ApiError> {
        let tok = &self.serving.tokenizer;
        let limit = self.serving.max_model_len;
        let param = match endpoint {
            Endpoint::Score => "text_1",
            Endpoint::Rerank => "documents",
            _ => "input",
        };
        let mut encoded = Vec::with_capacity(job.inputs.len());
        for (i, input) in job.inputs.iter().enumerate() {
            let mut images = Vec::new();
            let (ids, type_ids) = match input {
                PoolInput::Text(t) => tok.encode_for_encoder(t, None, job.add_special_tokens, job.truncate),
                PoolInput::Pair(a, b) => tok.encode_for_encoder(a, Some(b), job.add_special_tokens, job.truncate),
                PoolInput::Chat(chat) => {
                    let mut text = render_chat(&self.serving, chat)?;
                    if !job.media.is_empty() {
                        // A chat is a pooling request's one input: the images are its.
                        let (Some(vision), Some(fetcher)) = (self.serving.vision.as_deref(), &self.fetcher) else {
                            return Err(ApiError::bad_request("The served model takes no images."));
                        };
                        let processor = job.processor.as_deref().unwrap_or(&vision.processor);
                        images = fetcher.images(&job.media, processor, vision)?;
                        text = crate::stages::media::expand_placeholders(&text, &vision.placeholder, &images)?;
                        if job.truncate.is_some() {
                            return Err(ApiError::invalid(
                                "truncate_prompt_tokens",
                                "A chat with images cannot be truncated (its image tokens would be cut).",
                            ));
                        }
                    }
                    tok.encode_for_encoder(&text, None, job.add_special_tokens, job.truncate)
                }
                PoolInput::Tokens(ids) => {
                    let vocab = tok.vocab_size() as u32;
                    if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                        return Err(ApiError::invalid(param, format!("Token id {bad} is out of vocabulary (0..{vocab}).")));
                    }
                    let keep = job.truncate.map_or(0, |k| ids.len().saturating_sub(k));
                    Ok((ids[keep..].to_vec(), vec![0; ids.len() - keep]))
                }
            }
            .map_err(|e| match job.truncate {
                Some(_) => ApiError::invalid("truncate_prompt_tokens", format!("Cannot truncate input {i}: {e}.")),
                None => ApiError::internal(format!("tokenizer: {e}")),
            })?;
            if ids.is_empty() {
                return Err(ApiError::invalid(param, format!("Input {i} is empty; it must have at least one token.")));
            }
            if ids.len() > limit {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "This model's maximum context length is {limit} tokens. However, you requested {} tokens \
                         in input {i}. Please reduce the length of the input, or set `truncate_prompt_tokens`.",
                        ids.len()
                    ),
                ));
            }
            encoded.push(EncoderInput { ids, type_ids, images });
        }
        job.encoded = encoded;
        Ok(())
    }
}
