//! What a served model is for (vLLM's task names).

/// What the served model does, from `--task` and its architecture (vLLM's task names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Completions and chat.
    Generate,
    /// An embedding model: embeddings, pooling, and scores by cosine similarity.
    Embed,
    /// A classifier or cross-encoder: classification, pooling, and scores.
    Classify,
    /// Per-token outputs (a reward model's rewards, or a causal LM's hidden states):
    /// pooling only.
    Reward,
    /// Speech to text (Whisper): transcriptions and translations.
    Transcription,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Generate => "generate",
            Task::Embed => "embed",
            Task::Classify => "classify",
            Task::Reward => "reward",
            Task::Transcription => "transcription",
        }
    }
}
