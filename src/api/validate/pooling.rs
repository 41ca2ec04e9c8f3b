//! Pooling requests (embeddings, pooling, classify, score, rerank) → a validated
//! `PoolJob`. Every bad field is a 400 that names it; a field this server does not act on
//! is refused by name rather than ignored. Embeddings, pooling and classification take
//! `input`, or chat `messages` (vLLM's chat form of these requests) to be rendered with
//! the chat template.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::chat::{ImageParts, chat_message, chat_prompt_flags, request_chat_template};
use super::Fields;
use crate::api::context::ServingContext;
use crate::api::endpoint::Endpoint;
use crate::api::error::ApiError;
use crate::api::pooling::{PoolingInput, TextOrTexts};
use crate::api::request::{ChatPrompt, PoolInput, PoolJob, PoolShape};
use crate::model::encoder::PoolingInfo;

/// A pooling request's body, validated against the served model.
pub fn pooling_request(
    endpoint: Endpoint,
    body: &[u8],
    serving: &ServingContext,
    model: &PoolingInfo,
) -> Result<PoolJob, ApiError> {
    Pooling { serving, model }.request(endpoint, body)
}

struct Pooling<'a> {
    serving: &'a ServingContext,
    model: &'a PoolingInfo,
}

impl Pooling<'_> {
    fn request(&self, endpoint: Endpoint, body: &[u8]) -> Result<PoolJob, ApiError> {
        let mut f = Fields::parse(body)?;
        // vLLM: `model` may be left out of pooling requests; given, it must be served.
        let model = match f.take::<String>("model")? {
            None => self.serving.model_name().to_string(),
            Some(m) if self.serving.served_names.contains(&m) => m,
            Some(m) => return Err(ApiError::model_not_found(&m, &self.serving.served_names)),
        };
        let truncate = self.truncate(&mut f)?;
        // A chat's template writes its own special tokens: none are added unless asked.
        let add_special_tokens = f.take::<bool>("add_special_tokens")?;
        let add_special_tokens = add_special_tokens.unwrap_or(!f.has("messages"));
        let mut media = Vec::new();
        let (inputs, shape) = match endpoint {
            Endpoint::Embeddings => {
                let inputs = self.input_or_messages(&mut f, add_special_tokens, &mut media)?;
                let base64 = encoding_format(&mut f)?;
                let dimensions = self.dimensions(&mut f, &model)?;
                let normalize = f.take::<bool>("normalize")?;
                (inputs, PoolShape::Embeddings { base64, dimensions, normalize })
            }
            Endpoint::Pooling => {
                let inputs = self.input_or_messages(&mut f, add_special_tokens, &mut media)?;
                let base64 = encoding_format(&mut f)?;
                // vLLM's pooling request is its embedding request: on an embedding model
                // the two fields act as they do on embeddings.
                let (dimensions, normalize) = if self.model.embedding && !self.model.per_token {
                    (self.dimensions(&mut f, &model)?, f.take::<bool>("normalize")?)
                } else {
                    for name in ["dimensions", "normalize"] {
                        if f.take::<Value>(name)?.is_some() {
                            return Err(ApiError::invalid(
                                name,
                                format!("`{name}` applies to embedding models; this model's pooling output has no such option."),
                            ));
                        }
                    }
                    (None, None)
                };
                (inputs, PoolShape::Pooling { base64, dimensions, normalize })
            }
            Endpoint::Classify => {
                let inputs = self.input_or_messages(&mut f, add_special_tokens, &mut media)?;
                (inputs, PoolShape::Classify { activation: self.activation(&mut f)? })
            }
            Endpoint::Score => {
                let left = texts(&mut f, "text_1")?;
                let right = texts(&mut f, "text_2")?;
                let pairs = pair_up(&left, &right)?;
                self.check_scorer(endpoint)?;
                let activation = self.activation(&mut f)?;
                let (inputs, pairs) = self.score_inputs(&left, &right, &pairs);
                (inputs, PoolShape::Score { pairs, activation })
            }
            Endpoint::Rerank => {
                let query: String = f.take("query")?.ok_or_else(|| ApiError::invalid("query", "`query` is required."))?;
                let documents: Vec<String> =
                    f.take("documents")?.ok_or_else(|| ApiError::invalid("documents", "`documents` is required."))?;
                if documents.is_empty() {
                    return Err(ApiError::invalid("documents", "`documents` must not be empty."));
                }
                let top_n = match f.take::<i64>("top_n")? {
                    None => 0,
                    Some(n) if n >= 0 => n as usize,
                    Some(n) => return Err(ApiError::invalid("top_n", format!("`top_n` must be at least 0, got {n}."))),
                };
                let return_documents = f.take::<bool>("return_documents")?.unwrap_or(true);
                self.check_scorer(endpoint)?;
                let activation = self.activation(&mut f)?;
                let left = vec![query];
                let pairs: Vec<(usize, usize)> = (0..documents.len()).map(|j| (0, j)).collect();
                let (inputs, pairs) = self.score_inputs(&left, &documents, &pairs);
                (inputs, PoolShape::Rerank { pairs, documents, top_n, return_documents, activation })
            }
            Endpoint::Completions | Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Transcriptions | Endpoint::Translations => {
                unreachable!("the HTTP edge sends generation and audio requests elsewhere")
            }
        };
        // OpenAI's own field that does not change the output; priority 0 is the default.
        f.ignore("user");
        // vLLM's `request_id` named the response at the HTTP edge already.
        f.ignore("request_id");
        // Options for a multimodal processor: only a vision model's take them.
        let processor = match &self.serving.vision {
            Some(v) => super::media::processor_kwargs(&mut f, v)?,
            None => {
                f.refuse_processor_kwargs()?;
                None
            }
        };
        super::media::check_image_count(self.serving.vision.as_deref(), media.len())?;
        // vLLM's pooling parameter for custom poolers (plugins); no built-in pooler reads
        // it, in vLLM either.
        f.ignore("additional_data");
        // vLLM's page sends `encoding_format` with scores; its score and rerank requests
        // accept and ignore it (a score is a number either way), and so does this server.
        if matches!(endpoint, Endpoint::Score | Endpoint::Rerank) {
            if let Some(format) = f.take::<String>("encoding_format")? {
                if format != "float" && format != "base64" {
                    return Err(ApiError::invalid(
                        "encoding_format",
                        format!("`encoding_format` must be \"float\" or \"base64\", got {format:?}."),
                    ));
                }
            }
        }
        if f.take::<i64>("priority")?.is_some_and(|p| p != 0) {
            return Err(ApiError::invalid("priority", "`priority` is not supported by this server; leave it out or 0."));
        }
        if let Some(name) = f.remaining().next() {
            return Err(ApiError::invalid(
                name,
                format!("`{name}` is not supported by this server's {} API; leave it out.", endpoint.api_name()),
            ));
        }
        Ok(PoolJob { model, inputs, truncate, add_special_tokens, shape, encoded: Vec::new(), outputs: Vec::new(), media, processor })
    }

    /// `input`, or a chat in `messages` with its template options (vLLM's
    /// `EmbeddingChatRequest`): one input either way for a chat.
    fn input_or_messages(
        &self,
        f: &mut Fields,
        add_special_tokens: bool,
        media: &mut Vec<super::media::ImageSource>,
    ) -> Result<Vec<PoolInput>, ApiError> {
        if !f.has("messages") {
            return input(f);
        }
        if f.has("input") {
            return Err(ApiError::invalid("messages", "Give either `input` or `messages`, not both."));
        }
        let messages: Vec<Value> = f.take("messages")?.unwrap_or_default();
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` must contain at least one message."));
        }
        let template = request_chat_template(f, self.serving)?;
        if template.is_none() && self.serving.chat_template.is_none() {
            return Err(ApiError::invalid(
                "messages",
                "This model has no chat template, so `messages` cannot be rendered. Send `input` instead, or start \
                 the server with `--chat-template` (a file or an inline Jinja template).",
            ));
        }
        let format = self.serving.content_format_for(template.as_deref());
        let messages =
            messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| chat_message(i, m, format, &mut ImageParts::for_model(self.serving, media)))
                .collect::<Result<Vec<_>, _>>()?;
        // vLLM's defaults for a chat that is embedded rather than answered.
        let (add_generation_prompt, continue_final_message) = chat_prompt_flags(f, false)?;
        let template_kwargs = f.take::<Map<String, Value>>("chat_template_kwargs")?.unwrap_or_default();
        Ok(vec![PoolInput::Chat(Arc::new(ChatPrompt {
            messages,
            add_generation_prompt,
            continue_final_message,
            add_special_tokens,
            template,
            template_kwargs,
            documents: None,
            tools: None,
        }))])
    }

    /// vLLM's `activation` for classifiers and cross-encoders: false gives the raw logits
    /// instead of their softmax (or sigmoid, for one output). Scores by cosine similarity
    /// of embeddings have no activation to turn off.
    fn activation(&self, f: &mut Fields) -> Result<bool, ApiError> {
        match f.take::<bool>("activation")? {
            Some(false) if self.model.embedding => Err(ApiError::invalid(
                "activation",
                "`activation` applies to classifiers and cross-encoders; an embedding model's scores are cosine similarities. Leave it out.",
            )),
            a => Ok(a.unwrap_or(true)),
        }
    }

    /// `truncate_prompt_tokens`: -1 means the model's context length.
    fn truncate(&self, f: &mut Fields) -> Result<Option<usize>, ApiError> {
        let max = self.serving.max_model_len;
        match f.take::<i64>("truncate_prompt_tokens")? {
            None => Ok(None),
            Some(-1) => Ok(Some(max)),
            Some(n) if n >= 1 && n as usize <= max => Ok(Some(n as usize)),
            Some(n) if n >= 1 => Err(ApiError::invalid(
                "truncate_prompt_tokens",
                format!(
                    "`truncate_prompt_tokens` ({n}) is greater than the model's maximum context length ({max}); \
                     choose a smaller truncation size."
                ),
            )),
            Some(n) => Err(ApiError::invalid(
                "truncate_prompt_tokens",
                format!("`truncate_prompt_tokens` must be -1 (the context length) or at least 1, got {n}."),
            )),
        }
    }

    fn dimensions(&self, f: &mut Fields, model: &str) -> Result<Option<usize>, ApiError> {
        let Some(d) = f.take::<i64>("dimensions")? else { return Ok(None) };
        let Some(m) = &self.model.matryoshka else {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "Model \"{model}\" does not support matryoshka representation, \
                     changing output dimensions will lead to poor results."
                ),
            ));
        };
        let width = self.model.width;
        if d < 1 || d as usize > width {
            return Err(ApiError::invalid("dimensions", format!("`dimensions` must be between 1 and {width}, got {d}.")));
        }
        if !m.dimensions.is_empty() && !m.dimensions.contains(&(d as usize)) {
            return Err(ApiError::invalid(
                "dimensions",
                format!("Model \"{model}\" only supports {:?} matryoshka dimensions, got {d}.", m.dimensions),
            ));
        }
        Ok(Some(d as usize))
    }

    /// Scores need an embedding model or a classifier with one output (a cross-encoder).
    fn check_scorer(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        if !self.model.embedding && self.model.width != 1 {
            return Err(ApiError::bad_request(format!(
                "The {} API needs an embedding model or a cross-encoder with one output; this classifier has {} labels.",
                endpoint.api_name(),
                self.model.width
            )));
        }
        Ok(())
    }

    /// Encoder inputs for scoring pairs: one (a, b) input per pair on a cross-encoder (the
    /// texts joined, for an LLM converted into a reranker, as vLLM does); on an embedding
    /// model, each text once, and the pairs as input indexes.
    fn score_inputs(
        &self,
        left: &[String],
        right: &[String],
        pairs: &[(usize, usize)],
    ) -> (Vec<PoolInput>, Option<Vec<(usize, usize)>>) {
        if self.model.embedding {
            let inputs = left.iter().chain(right).map(|t| PoolInput::Text(t.clone())).collect();
            let pairs = pairs.iter().map(|&(a, b)| (a, left.len() + b)).collect();
            (inputs, Some(pairs))
        } else if self.model.join_pairs {
            let inputs = pairs.iter().map(|&(a, b)| PoolInput::Text(format!("{}{}", left[a], right[b]))).collect();
            (inputs, None)
        } else {
            let inputs = pairs.iter().map(|&(a, b)| PoolInput::Pair(left[a].clone(), right[b].clone())).collect();
            (inputs, None)
        }
    }
}

fn input(f: &mut Fields) -> Result<Vec<PoolInput>, ApiError> {
    let empty = || ApiError::invalid("input", "`input` must not be an empty list.");
    Ok(match f.take::<PoolingInput>("input")? {
        None => return Err(ApiError::invalid("input", "`input` is required.")),
        Some(PoolingInput::Text(t)) => vec![PoolInput::Text(t)],
        Some(PoolingInput::Texts(v)) if v.is_empty() => return Err(empty()),
        Some(PoolingInput::Texts(v)) => v.into_iter().map(PoolInput::Text).collect(),
        Some(PoolingInput::Tokens(ids)) => vec![PoolInput::Tokens(ids)],
        Some(PoolingInput::TokenLists(v)) if v.is_empty() => return Err(empty()),
        Some(PoolingInput::TokenLists(v)) => v.into_iter().map(PoolInput::Tokens).collect(),
    })
}

/// `encoding_format`: true for base64.
fn encoding_format(f: &mut Fields) -> Result<bool, ApiError> {
    match f.take::<String>("encoding_format")?.as_deref() {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            "encoding_format",
            format!("`encoding_format` must be \"float\" or \"base64\", got {other:?}."),
        )),
    }
}

fn texts(f: &mut Fields, name: &str) -> Result<Vec<String>, ApiError> {
    match f.take::<TextOrTexts>(name)? {
        None => Err(ApiError::invalid(name, format!("`{name}` is required."))),
        Some(TextOrTexts::One(t)) => Ok(vec![t]),
        Some(TextOrTexts::Many(v)) if v.is_empty() => Err(ApiError::invalid(name, format!("`{name}` must not be empty."))),
        Some(TextOrTexts::Many(v)) => Ok(v),
    }
}

/// vLLM's pairing: one text against many, or two lists of the same length item by item.
fn pair_up(left: &[String], right: &[String]) -> Result<Vec<(usize, usize)>, ApiError> {
    match (left.len(), right.len()) {
        (1, n) => Ok((0..n).map(|j| (0, j)).collect()),
        (m, n) if m == n => Ok((0..n).map(|i| (i, i)).collect()),
        (m, n) => Err(ApiError::invalid(
            "text_2",
            format!("`text_1` has {m} texts and `text_2` {n}: give one `text_1`, or lists of the same length."),
        )),
    }
}
