//! Which API a request came in on, and which of them a served model answers.

use crate::model::task::Task;

/// Which API a request came in on; it decides how the body is read and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
    /// `/v1/responses`: a chat answered as a response object.
    Responses,
    /// `/v1/embeddings`
    Embeddings,
    /// `/pooling`: the pooler's raw output.
    Pooling,
    /// `/classify`
    Classify,
    /// `/score`, `/v1/score`
    Score,
    /// `/rerank`, `/v1/rerank`, `/v2/rerank`
    Rerank,
    /// `/v1/audio/transcriptions`
    Transcriptions,
    /// `/v1/audio/translations`
    Translations,
}

impl Endpoint {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Completions => "cmpl",
            Endpoint::ChatCompletions => "chatcmpl",
            Endpoint::Responses => "resp",
            Endpoint::Embeddings => "embd",
            Endpoint::Pooling => "pool",
            Endpoint::Classify => "classify",
            Endpoint::Score => "score",
            Endpoint::Rerank => "rerank",
            // vLLM names these responses after the task.
            Endpoint::Transcriptions => "transcribe",
            Endpoint::Translations => "translate",
        }
    }

    /// What joins the prefix and the rest of an id: OpenAI's response ids read
    /// `resp_…`, the others `chatcmpl-…`.
    pub fn id_separator(self) -> char {
        if self == Endpoint::Responses { '_' } else { '-' }
    }

    /// The API's name in messages ("the Embeddings API").
    pub fn api_name(self) -> &'static str {
        match self {
            Endpoint::Completions => "Completions",
            Endpoint::ChatCompletions => "Chat Completions",
            Endpoint::Responses => "Responses",
            Endpoint::Embeddings => "Embeddings",
            Endpoint::Pooling => "Pooling",
            Endpoint::Classify => "Classification",
            Endpoint::Score => "Score",
            Endpoint::Rerank => "Rerank",
            Endpoint::Transcriptions => "Transcriptions",
            Endpoint::Translations => "Translations",
        }
    }

    /// The endpoint a request path names (the POST routes the server answers, which are
    /// also the `url`s a batch file may use).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/v1/completions" => Endpoint::Completions,
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/pooling" => Endpoint::Pooling,
            "/classify" => Endpoint::Classify,
            "/score" | "/v1/score" => Endpoint::Score,
            "/rerank" | "/v1/rerank" | "/v2/rerank" => Endpoint::Rerank,
            "/v1/audio/transcriptions" => Endpoint::Transcriptions,
            "/v1/audio/translations" => Endpoint::Translations,
            _ => return None,
        })
    }

    /// Whether the endpoint generates text (as opposed to pooling an encoder's states).
    pub fn generates(self) -> bool {
        matches!(self, Endpoint::Completions | Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Transcriptions | Endpoint::Translations)
    }
}

/// Whether a model served for `task` answers requests to `endpoint` (vLLM's task names).
pub fn serves(task: Task, endpoint: Endpoint) -> bool {
    use Endpoint::*;
    match task {
        Task::Generate => matches!(endpoint, Completions | ChatCompletions | Responses),
        Task::Embed => matches!(endpoint, Embeddings | Pooling | Score | Rerank),
        Task::Classify => matches!(endpoint, Classify | Pooling | Score | Rerank),
        Task::Reward => matches!(endpoint, Pooling),
        Task::Transcription => matches!(endpoint, Transcriptions | Translations),
    }
}

/// The routes a model served for `task` answers, for messages.
pub fn routes(task: Task) -> &'static str {
    match task {
        Task::Generate => "/v1/completions, /v1/chat/completions and /v1/responses",
        Task::Embed => "/v1/embeddings, /pooling, /score and /rerank",
        Task::Classify => "/classify, /pooling, /score and /rerank",
        Task::Reward => "/pooling",
        Task::Transcription => "/v1/audio/transcriptions and /v1/audio/translations",
    }
}
