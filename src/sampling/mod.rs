//! Turning logits into tokens: per-request parameters, and a sampler that works on the
//! whole batch's logits at once on the model's device.

pub mod processors;
mod sampler;

pub use sampler::{SampleRow, Sampled, logprobs_of, sample, sample_adjusted};

/// How one request's tokens are chosen. Built and validated by the decode stage.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    pub top_p: f32,
    /// Keep only the k most likely tokens (and any tied with the k-th); 0 keeps all.
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one.
    pub min_p: f32,
    pub seed: Option<u64>,
    /// New tokens at most; None runs to the end of the context.
    pub max_tokens: Option<usize>,
    pub ignore_eos: bool,
    /// Extra ids that end a choice, besides the model's EOS.
    pub stop_token_ids: Vec<u32>,
    /// Return the chosen token's logprob and this many alternatives.
    pub logprobs: Option<usize>,
    /// Subtracted once from the logit of every token already generated (OpenAI's).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (OpenAI's).
    pub frequency_penalty: f32,
    /// Divides positive (multiplies negative) logits of tokens in the prompt or output;
    /// 1 is off (vLLM's, after the CTRL paper).
    pub repetition_penalty: f32,
    /// Added to the logits of these tokens (OpenAI's `logit_bias`, clamped to ±100).
    pub logit_bias: Vec<(u32, f32)>,
    /// Only these tokens may be generated (vLLM's `allowed_token_ids`).
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Words that must not be generated, as sent (vLLM's `bad_words`).
    pub bad_words: Vec<String>,
    /// `bad_words` as token sequences; filled in by the tokenize stage.
    pub bad_words_ids: Vec<Vec<u32>>,
    /// EOS and stop tokens (and stop strings) cannot end a choice before this many tokens.
    pub min_tokens: usize,
    /// Score every prompt token, with this many alternatives (vLLM's `prompt_logprobs`).
    pub prompt_logprobs: Option<usize>,
    /// Built-in processors named in the request's `logits_processors`.
    pub builtin_processors: Vec<processors::Builtin>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            max_tokens: None,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            logprobs: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            allowed_token_ids: None,
            bad_words: Vec::new(),
            bad_words_ids: Vec::new(),
            min_tokens: 0,
            prompt_logprobs: None,
            builtin_processors: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// vLLM treats temperatures below 1e-5 as greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    /// Whether top-k, top-p or min-p cut the distribution.
    pub fn filters(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0
    }

    /// Whether any penalty is on (they need the sequence's history).
    pub fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 || self.repetition_penalty != 1.0
    }
}

/// Sampling defaults a model recommends in its generation_config.json, used where a
/// request leaves the field out (vLLM's behaviour unless `--generation-config vllm`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// The default for `max_tokens`.
    pub max_tokens: Option<usize>,
}

impl SamplingDefaults {
    /// The fields vLLM takes from a generation_config.json; others are ignored.
    pub fn from_generation_config(config: &serde_json::Value) -> Self {
        let f = |k: &str| config.get(k).and_then(serde_json::Value::as_f64);
        let u = |k: &str| config.get(k).and_then(serde_json::Value::as_u64).map(|v| v as usize);
        SamplingDefaults {
            temperature: f("temperature").map(|v| v as f32),
            top_p: f("top_p").map(|v| v as f32),
            top_k: u("top_k"),
            min_p: f("min_p").map(|v| v as f32),
            repetition_penalty: f("repetition_penalty").map(|v| v as f32),
            max_tokens: u("max_new_tokens").filter(|&m| m > 0),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == SamplingDefaults::default()
    }

    /// Parameters for a request that sets nothing: these defaults over OpenAI's.
    pub fn params(&self) -> SamplingParams {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            ..d
        }
    }
}

/// The log-probability of a generated token and of the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// 1 for the most likely token.
    pub rank: usize,
    /// The most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}
