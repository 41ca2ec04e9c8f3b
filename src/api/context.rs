//! What validating and answering a request needs to know about the served model: names,
//! tokenizer, chat template, limits and defaults. Built once at start-up from the loaded
//! model and the resolved flags; read-only afterwards.

use std::sync::Arc;

use crate::model::ModelInfo;
use crate::model::chat_template::ChatTemplate;
use crate::model::tokenizer::Tokenizer;
use crate::sampling::SamplingDefaults;

/// How message content is handed to the chat template (vLLM's
/// `--chat-template-content-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// Text parts joined into one string.
    String,
    /// The list of `{"type": "text", "text": …}` parts as sent.
    OpenAi,
}

impl ContentFormat {
    /// The format a template reads: the list of parts when it iterates over a message's
    /// content, else one string (vLLM's detection).
    pub fn read_by(template: &ChatTemplate) -> ContentFormat {
        if template.iterates_content_parts() { ContentFormat::OpenAi } else { ContentFormat::String }
    }
}

/// What a vision model's image parts are read and prepared with.
#[derive(Debug, Clone)]
pub struct VisionServing {
    /// The model's image processor settings (`preprocessor_config.json`).
    pub processor: crate::vision::qwen2_vl::ProcessorConfig,
    /// The text that stands for one image in a rendered prompt (`<|image_pad|>`), before
    /// it is repeated once per merged patch.
    pub placeholder: String,
    /// `--limit-mm-per-prompt`: images a request may carry at most.
    pub max_images: usize,
    /// `--allowed-local-media-path`: the folder `file://` URLs may read from (canonical).
    pub local_root: Option<std::path::PathBuf>,
    /// How long fetching one http(s) image may take.
    pub fetch_timeout: std::time::Duration,
    /// The most bytes one image may have (fetched, read or inline).
    pub max_bytes: usize,
    /// The most pixels one decoded image may have.
    pub max_pixels: u64,
}

pub struct ServingContext {
    /// Names clients may use in `model`; the first is reported in responses.
    pub served_names: Vec<String>,
    /// What the model was loaded from (`/v1/models`'s `root`).
    pub root: String,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    pub content_format: ContentFormat,
    pub max_model_len: usize,
    pub response_role: String,
    /// `--return-tokens-as-token-ids`: the default of the request field.
    pub tokens_as_ids: bool,
    /// `--scheduling-policy priority`: requests may carry a `priority`.
    pub priority_scheduling: bool,
    /// `--enable-log-requests`: log each request, its prompt cut to this many characters.
    pub log_requests: Option<usize>,
    /// `--trust-request-chat-template`: requests may bring their own `chat_template`.
    pub trust_request_chat_template: bool,
    /// What a request that leaves sampling fields out gets (generation_config.json).
    pub defaults: SamplingDefaults,
    /// `--enable-auto-tool-choice --tool-call-parser`: how tool calls are read.
    pub tool_parser: Option<crate::api::tools::ToolParser>,
    /// `--reasoning-parser`: how chat answers' reasoning is split off.
    pub reasoning_parser: Option<crate::api::reasoning::ReasoningParser>,
    /// Stored Responses API answers (`store`, `previous_response_id`).
    pub responses: Arc<crate::api::responses::store::ResponseStore>,
    /// `--max-logprobs`: the most top logprobs a request may ask for.
    pub max_logprobs: usize,
    /// Unix seconds when the server started (`created` of `/v1/models`).
    pub started: u64,
    /// A Whisper model's special tokens and languages (the audio APIs).
    pub whisper: Option<Arc<crate::model::whisper::tokens::WhisperTokens>>,
    /// A vision model's image settings; None: the model takes no images.
    pub vision: Option<Arc<VisionServing>>,
}

impl ServingContext {
    pub fn new(
        info: &ModelInfo,
        served_names: Vec<String>,
        chat_template: Option<ChatTemplate>,
        content_format: Option<ContentFormat>,
    ) -> Self {
        let content_format =
            content_format.or_else(|| chat_template.as_ref().map(ContentFormat::read_by)).unwrap_or(ContentFormat::String);
        ServingContext {
            served_names,
            root: info.location.path().display().to_string(),
            tokenizer: info.tokenizer.clone(),
            chat_template,
            content_format,
            max_model_len: info.max_model_len,
            response_role: "assistant".into(),
            tokens_as_ids: false,
            priority_scheduling: false,
            trust_request_chat_template: false,
            log_requests: None,
            defaults: SamplingDefaults::default(),
            max_logprobs: 20,
            tool_parser: None,
            reasoning_parser: None,
            responses: Arc::new(crate::api::responses::store::ResponseStore::new(1000, std::time::Duration::from_secs(3600))),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            whisper: None,
            vision: None,
        }
    }

    /// The content format for a request: the one its own template reads, else the
    /// server's (`--chat-template-content-format`, or what the server's template reads).
    pub fn content_format_for(&self, request_template: Option<&ChatTemplate>) -> ContentFormat {
        request_template.map_or(self.content_format, ContentFormat::read_by)
    }

    /// The name responses report.
    pub fn model_name(&self) -> &str {
        &self.served_names[0]
    }
}
