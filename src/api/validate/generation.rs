//! Completions and chat completions → a validated `Job` (what the engine acts on) and
//! `RequestMeta` (how the answer is shaped).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::chat::{ImageParts, chat_message, chat_prompt_flags, request_chat_template};
use super::structured::take_constraint;
use super::Fields;
use crate::api::context::ServingContext;
use crate::api::endpoint::Endpoint;
use crate::api::answer::AnswerOptions;
use crate::api::error::ApiError;
use crate::api::tools::ToolUse;
use crate::api::protocol::{OneOrMany, PromptInput, StreamOptions};
use crate::api::request::{ChatPrompt, Job, OutputOptions, Prompt, RequestMeta};
use crate::engine::beam::BeamParams;
use crate::guided::RequestedConstraint;
use crate::sampling::SamplingParams;

const MAX_N: i64 = 128;

/// The values `reasoning_effort` takes (OpenAI's names).
const REASONING_EFFORTS: [&str; 5] = ["none", "minimal", "low", "medium", "high"];

/// A generation request's body, validated against the served model.
pub fn generation_request(endpoint: Endpoint, body: &[u8], serving: &ServingContext) -> Result<(Job, RequestMeta), ApiError> {
    let g = Generation { serving };
    match endpoint {
        Endpoint::Completions => g.completion(body),
        Endpoint::ChatCompletions => g.chat(body),
        Endpoint::Responses => crate::api::responses::responses_request(body, serving),
        other => Err(ApiError::bad_request(format!("The {} API is not served by this pipeline.", other.api_name()))),
    }
}

/// A chat request already read into fields (what a Responses API request becomes).
pub fn chat_request(fields: Fields, serving: &ServingContext) -> Result<(Job, RequestMeta), ApiError> {
    Generation { serving }.chat_fields(fields)
}

struct Generation<'a> {
    serving: &'a ServingContext,
}

/// The fields both generation endpoints share, read from the body.
struct Common {
    sampling: SamplingParams,
    /// Choices sampled per prompt (`best_of`, else `n`).
    n: usize,
    /// With `best_of` above `n`: how many of them are returned.
    keep: Option<usize>,
    beam: Option<BeamParams>,
    output: OutputOptions,
    add_special_tokens: Option<bool>,
    tokens_as_ids: bool,
    priority: i64,
    cache_salt: Option<String>,
    truncate_prompt_tokens: Option<usize>,
    constraint: Option<RequestedConstraint>,
    /// The request's own image processor settings (`mm_processor_kwargs`).
    processor: Option<Arc<crate::vision::qwen2_vl::ProcessorConfig>>,
}

impl Generation<'_> {
    /// As vLLM: `model` may be left out (the served model answers); given, it must be one
    /// of the served names.
    fn check_model(&self, model: Option<String>) -> Result<String, ApiError> {
        let Some(model) = model else { return Ok(self.serving.model_name().to_string()) };
        if self.serving.served_names.contains(&model) {
            Ok(model)
        } else {
            Err(ApiError::model_not_found(&model, &self.serving.served_names))
        }
    }

    fn completion(&self, body: &[u8]) -> Result<(Job, RequestMeta), ApiError> {
        let mut f = Fields::parse(body)?;
        // Checked first: with it refused, "`prompt` is required" would mislead.
        if f.take::<Value>("prompt_embeds")?.is_some() {
            return Err(ApiError::invalid(
                "prompt_embeds",
                "`prompt_embeds` is not supported by this server (vLLM takes it only with --enable-prompt-embeds); send `prompt` as text or token ids.",
            ));
        }
        let model = self.check_model(f.take("model")?)?;
        let prompt: Option<PromptInput> = f.take("prompt")?;
        let echo = f.take::<bool>("echo")?.unwrap_or(false);
        let max_logprobs = self.serving.max_logprobs as i64;
        let logprobs = match f.take::<i64>("logprobs")? {
            None => None,
            Some(k) if (0..=max_logprobs).contains(&k) => Some(k as usize),
            Some(k) => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("`logprobs` must be between 0 and {max_logprobs} (--max-logprobs), got {k}."),
                ));
            }
        };
        // OpenAI's default for completions is 16 tokens.
        let max_tokens = positive("max_tokens", f.take("max_tokens")?)?;
        let max_tokens = Some(max_tokens.or(self.serving.defaults.max_tokens).unwrap_or(16));
        let mut c = common(&mut f, max_tokens, logprobs, self.serving)?;
        c.output.echo = echo;
        let add_special_tokens = c.add_special_tokens.unwrap_or(true);
        let prompt = match prompt {
            None => return Err(ApiError::invalid("prompt", "`prompt` is required.")),
            Some(PromptInput::Text(t)) => Prompt::Texts { texts: vec![t], add_special_tokens },
            Some(PromptInput::Texts(v)) if v.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list."));
            }
            Some(PromptInput::Texts(v)) => Prompt::Texts { texts: v, add_special_tokens },
            Some(PromptInput::Tokens(ids)) => Prompt::Tokens(vec![ids]),
            Some(PromptInput::TokenLists(v)) if v.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list."));
            }
            Some(PromptInput::TokenLists(v)) => Prompt::Tokens(v),
        };
        let meta = RequestMeta { model, output: c.output.clone(), logprobs, tokens_as_ids: c.tokens_as_ids, best_of_keep: c.keep, answer: Default::default(), responses: None };
        Ok((c.job(prompt), meta))
    }

    fn chat(&self, body: &[u8]) -> Result<(Job, RequestMeta), ApiError> {
        self.chat_fields(Fields::parse(body)?)
    }

    /// A chat request's fields (also what a Responses API request becomes).
    fn chat_fields(&self, mut f: Fields) -> Result<(Job, RequestMeta), ApiError> {
        let model = self.check_model(f.take("model")?)?;
        let messages: Vec<Value> = f.take("messages")?.ok_or_else(|| ApiError::invalid("messages", "`messages` is required."))?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` must contain at least one message."));
        }
        let template = request_chat_template(&mut f, self.serving)?;
        // A request's own template gets the content format it reads.
        let format = self.serving.content_format_for(template.as_deref());
        let mut media = Vec::new();
        let messages = {
            let mut parts = ImageParts::for_model(self.serving, &mut media);
            messages.into_iter().enumerate().map(|(i, m)| chat_message(i, m, format, &mut parts)).collect::<Result<Vec<_>, _>>()?
        };
        super::media::check_image_count(self.serving.vision.as_deref(), media.len())?;
        let logprobs = match (f.take::<bool>("logprobs")?.unwrap_or(false), f.take::<i64>("top_logprobs")?) {
            (false, Some(k)) if k > 0 => {
                return Err(ApiError::invalid("top_logprobs", "`top_logprobs` requires `logprobs` to be true."));
            }
            (false, _) => None,
            (true, None) => Some(0),
            (true, Some(k)) if (0..=self.serving.max_logprobs as i64).contains(&k) => Some(k as usize),
            (true, Some(k)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {} (--max-logprobs), got {k}.", self.serving.max_logprobs),
                ));
            }
        };
        // max_completion_tokens is the newer name; without either, the rest of the context.
        let newer = positive("max_completion_tokens", f.take("max_completion_tokens")?)?;
        let older = positive("max_tokens", f.take("max_tokens")?)?;
        let (add_generation_prompt, continue_final_message) = chat_prompt_flags(&mut f, true)?;
        let mut template_kwargs = f.take::<Map<String, Value>>("chat_template_kwargs")?.unwrap_or_default();
        // As vLLM: the effort reaches templates that read it (gpt-oss's, for one); a
        // `reasoning_effort` in `chat_template_kwargs` wins.
        if let Some(effort) = f.take::<String>("reasoning_effort")? {
            if !REASONING_EFFORTS.contains(&effort.as_str()) {
                return Err(ApiError::invalid(
                    "reasoning_effort",
                    format!("`reasoning_effort` must be one of {}, got {effort:?}.", REASONING_EFFORTS.join(", ")),
                ));
            }
            template_kwargs.entry("reasoning_effort").or_insert(Value::String(effort));
        }
        // As vLLM: false leaves the reasoning out of the answer, and a structured-output
        // constraint then holds from the first token.
        let include_reasoning = f.take::<bool>("include_reasoning")?.unwrap_or(true);
        let documents = f.take::<Vec<Value>>("documents")?;
        let (tools, tool_use) = crate::api::tools::tool_use(f.take("tools")?, f.take("tool_choice")?, self.serving.tool_parser)
            .map_err(|(param, msg)| ApiError::invalid(param, msg))?;
        f.take::<bool>("parallel_tool_calls")?; // several calls in one answer are read either way
        let echo = f.take::<bool>("echo")?.unwrap_or(false);
        let mut c = common(&mut f, newer.or(older).or(self.serving.defaults.max_tokens), logprobs, self.serving)?;
        // A forced tool call is a JSON constraint on the answer, as vLLM makes it.
        if let Some(schema) = tool_use.forced_schema() {
            if let Some(other) = &c.constraint {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("A forced tool call cannot be combined with `{}`; send one of them.", other.field),
                ));
            }
            if c.beam.is_some() {
                return Err(ApiError::invalid("tool_choice", "A forced tool call cannot be combined with `use_beam_search`."));
            }
            c.constraint = Some(RequestedConstraint {
                field: "tool_choice".into(),
                constraint: crate::guided::Constraint::Json { schema: schema.clone(), whitespace: Default::default() },
            });
        }
        if echo {
            let last = messages.last().expect("checked non-empty");
            if last.0.get("role").and_then(Value::as_str) == Some(c.output.response_role.as_str()) {
                c.output.chat_echo = Some(match last.0.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
                    _ => String::new(),
                });
            }
        }
        let prompt = Prompt::Chat(ChatPrompt {
            messages,
            add_generation_prompt,
            continue_final_message,
            add_special_tokens: c.add_special_tokens.unwrap_or(false),
            template,
            template_kwargs,
            documents,
            tools,
        });
        // Parsers whose markers are special tokens need them in the text (vLLM turns
        // `skip_special_tokens` off for them too).
        if let ToolUse::Auto(auto) = &tool_use {
            if auto.parser.needs_special_tokens() {
                c.output.skip_special_tokens = false;
            }
        }
        let reasoning = self.serving.reasoning_parser;
        let answer = AnswerOptions { reasoning, tool_use, omit_reasoning: !include_reasoning };
        let meta = RequestMeta { model, output: c.output.clone(), logprobs, tokens_as_ids: c.tokens_as_ids, best_of_keep: c.keep, answer, responses: None };
        let mut job = c.job(prompt);
        job.media = media;
        // Structured outputs constrain the answer after the reasoning, as vLLM does.
        if let (Some(parser), Some(_), true) = (reasoning, &job.constraint, include_reasoning) {
            job.guide_after = parser.end_markers();
        }
        Ok((job, meta))
    }
}

impl Common {
    fn job(self, prompt: Prompt) -> Job {
        Job {
            prompt,
            sampling: Arc::new(self.sampling),
            n: self.n,
            priority: self.priority,
            cache_salt: self.cache_salt,
            truncate_prompt_tokens: self.truncate_prompt_tokens,
            constraint: self.constraint.map(Arc::new),
            guide: None,
            guide_after: Vec::new(),
            beam: self.beam,
            media: Vec::new(),
            processor: self.processor,
            images: Vec::new(),
            mm: None,
        }
    }
}

fn positive(name: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(v) if v >= 1 => Ok(Some(v as usize)),
        Some(v) => Err(ApiError::invalid(name, format!("`{name}` must be at least 1, got {v}."))),
    }
}

fn common(
    f: &mut Fields,
    max_tokens: Option<usize>,
    logprobs: Option<usize>,
    serving: &ServingContext,
) -> Result<Common, ApiError> {
    let mut p = SamplingParams { max_tokens, logprobs, ..serving.defaults.params() };
    if let Some(t) = f.take::<f64>("temperature")? {
        if !(t >= 0.0 && t.is_finite()) {
            return Err(ApiError::invalid("temperature", format!("`temperature` must be at least 0, got {t}.")));
        }
        p.temperature = t as f32;
    }
    if let Some(t) = f.take::<f64>("top_p")? {
        if !(t > 0.0 && t <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {t}.")));
        }
        p.top_p = t as f32;
    }
    if let Some(k) = f.take::<i64>("top_k")? {
        p.top_k = match k {
            -1 | 0 => 0,
            k if k > 0 => k as usize,
            k => return Err(ApiError::invalid("top_k", format!("`top_k` must be -1 (off) or at least 1, got {k}."))),
        };
    }
    if let Some(m) = f.take::<f64>("min_p")? {
        if !(0.0..=1.0).contains(&m) {
            return Err(ApiError::invalid("min_p", format!("`min_p` must be in [0, 1], got {m}.")));
        }
        p.min_p = m as f32;
    }
    let n = match f.take::<i64>("n")? {
        None => 1,
        Some(n) if (1..=MAX_N).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid("n", format!("`n` must be between 1 and {MAX_N}, got {n}."))),
    };
    for (name, field) in [("presence_penalty", &mut p.presence_penalty), ("frequency_penalty", &mut p.frequency_penalty)] {
        if let Some(v) = f.take::<f64>(name)? {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(name, format!("`{name}` must be in [-2, 2], got {v}.")));
            }
            *field = v as f32;
        }
    }
    if let Some(v) = f.take::<f64>("repetition_penalty")? {
        if !(v > 0.0 && v.is_finite()) {
            return Err(ApiError::invalid("repetition_penalty", format!("`repetition_penalty` must be above 0, got {v}.")));
        }
        p.repetition_penalty = v as f32;
    }
    let vocab = serving.tokenizer.vocab_size();
    let in_vocab = |name: &str, id: i64| -> Result<u32, ApiError> {
        if (0..vocab as i64).contains(&id) {
            Ok(id as u32)
        } else {
            Err(ApiError::invalid(name, format!("Token id {id} in `{name}` is out of vocabulary (0..{vocab}).")))
        }
    };
    if let Some(bias) = f.take::<Map<String, Value>>("logit_bias")? {
        for (key, v) in bias {
            let id = key
                .trim()
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("logit_bias", format!("`logit_bias` keys must be token ids, got {key:?}.")))?;
            let b = v.as_f64().ok_or_else(|| {
                ApiError::invalid("logit_bias", format!("`logit_bias` values must be numbers, got {v} for token {key}."))
            })?;
            // OpenAI's range; vLLM clamps to it rather than refusing.
            p.logit_bias.push((in_vocab("logit_bias", id)?, b.clamp(-100.0, 100.0) as f32));
        }
    }
    if let Some(ids) = f.take::<Vec<i64>>("allowed_token_ids")? {
        if ids.is_empty() {
            return Err(ApiError::invalid("allowed_token_ids", "`allowed_token_ids` must not be empty."));
        }
        p.allowed_token_ids = Some(ids.into_iter().map(|t| in_vocab("allowed_token_ids", t)).collect::<Result<_, _>>()?);
    }
    p.bad_words = f.take("bad_words")?.unwrap_or_default();
    if p.bad_words.iter().any(|w| w.trim().is_empty()) {
        return Err(ApiError::invalid("bad_words", "`bad_words` must not contain empty words."));
    }
    if let Some(m) = f.take::<i64>("min_tokens")? {
        if m < 0 || max_tokens.is_some_and(|x| m as usize > x) {
            return Err(ApiError::invalid(
                "min_tokens",
                format!("`min_tokens` must be between 0 and max_tokens ({}), got {m}.", max_tokens.map_or("unbounded".into(), |x| x.to_string())),
            ));
        }
        p.min_tokens = m as usize;
    }
    for (i, entry) in f.take::<Vec<Value>>("logits_processors")?.unwrap_or_default().iter().enumerate() {
        let b = crate::sampling::processors::Builtin::parse(entry)
            .map_err(|e| ApiError::invalid(format!("logits_processors[{i}]"), format!("Invalid `logits_processors[{i}]`: {e}.")))?;
        p.builtin_processors.push(b);
    }
    p.seed = f.take::<i64>("seed")?.map(|s| s as u64);
    p.ignore_eos = f.take("ignore_eos")?.unwrap_or(false);
    p.stop_token_ids = f.take("stop_token_ids")?.unwrap_or_default();

    let stop = f.take::<OneOrMany>("stop")?.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "Stop strings must not be empty."));
    }
    let stream = f.take("stream")?.unwrap_or(false);
    p.prompt_logprobs = match f.take::<i64>("prompt_logprobs")? {
        None => None,
        Some(_) if stream => {
            return Err(ApiError::invalid("prompt_logprobs", "`prompt_logprobs` is not supported when streaming."));
        }
        Some(k) if (0..=serving.max_logprobs as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "prompt_logprobs",
                format!("`prompt_logprobs` must be between 0 and {} (--max-logprobs), got {k}.", serving.max_logprobs),
            ));
        }
    };
    // best_of: that many choices are sampled and the n with the highest cumulative
    // logprob are returned (vLLM's rule), so the sampled tokens' logprobs are needed.
    let best_of = match f.take::<i64>("best_of")? {
        None => n,
        Some(b) if b >= n as i64 && b <= MAX_N => b as usize,
        Some(b) => {
            return Err(ApiError::invalid("best_of", format!("`best_of` must be between n ({n}) and {MAX_N}, got {b}.")));
        }
    };
    if best_of > n && stream {
        return Err(ApiError::invalid("best_of", "`best_of` greater than `n` is not supported when streaming."));
    }
    if best_of > n {
        p.logprobs.get_or_insert(0);
    }
    let beam = beam_search(f, n, best_of, &p)?;
    let stream_options: Option<StreamOptions> = f.take("stream_options")?;
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed when `stream` is true."));
    }
    // Only slow (Python) tokenizers put spaces between special tokens; this server's
    // tokenizers are fast ones (tokenizer.json), which decode the same either way, as in
    // Hugging Face's and vLLM's fast path. The value is still checked.
    f.take::<bool>("spaces_between_special_tokens")?;
    // As vLLM: given stream options include usage unless they say not to, and
    // `continuous_usage_stats` puts it on every chunk.
    let include_usage = stream_options.as_ref().is_some_and(|o| o.include_usage.unwrap_or(true));
    let output = OutputOptions {
        stream,
        include_usage,
        continuous_usage: include_usage && stream_options.and_then(|o| o.continuous_usage_stats).unwrap_or(false),
        stop,
        include_stop_str_in_output: f.take("include_stop_str_in_output")?.unwrap_or(false),
        skip_special_tokens: f.take("skip_special_tokens")?.unwrap_or(true),
        min_tokens: p.min_tokens,
        echo: false,
        chat_echo: None,
        response_role: serving.response_role.clone(),
    };
    let add_special_tokens = f.take("add_special_tokens")?;
    let tokens_as_ids = f.take("return_tokens_as_token_ids")?.unwrap_or(serving.tokens_as_ids);
    let priority = f.take::<i64>("priority")?.unwrap_or(0);
    if priority != 0 && !serving.priority_scheduling {
        return Err(ApiError::invalid(
            "priority",
            "`priority` needs the server to run with --scheduling-policy priority; leave it out or at 0.",
        ));
    }
    // OpenAI's own fields that do not change the output; `request_id` named the response
    // at the HTTP edge already.
    for ignored in ["user", "store", "metadata", "service_tier", "request_id"] {
        f.map.remove(ignored);
    }
    let constraint = take_constraint(f)?;
    if let (Some(c), Some(_)) = (&constraint, &beam) {
        return Err(ApiError::invalid(
            "use_beam_search",
            format!("`use_beam_search` cannot be combined with a structured-output constraint (`{}`) yet.", c.field),
        ));
    }
    f.reject_unsupported()?;
    let processor = match &serving.vision {
        Some(v) => super::media::processor_kwargs(f, v)?,
        None => {
            f.refuse_processor_kwargs()?;
            None
        }
    };
    // vLLM passes these to a disaggregated-prefill connector; with none configured (as
    // here, always) it ignores them too.
    if f.take::<Value>("kv_transfer_params")?.is_some() {
        tracing::debug!("kv_transfer_params ignored: no KV transfer connector is configured");
    }
    let cache_salt = f.take::<String>("cache_salt")?;
    if cache_salt.as_deref() == Some("") {
        return Err(ApiError::invalid("cache_salt", "`cache_salt` must not be empty."));
    }
    let truncate_prompt_tokens = match f.take::<i64>("truncate_prompt_tokens")? {
        None => None,
        Some(-1) => Some(serving.max_model_len),
        Some(k) if k >= 1 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "truncate_prompt_tokens",
                format!("`truncate_prompt_tokens` must be -1 (the context length) or at least 1, got {k}."),
            ));
        }
    };
    Ok(Common {
        sampling: p,
        n: best_of,
        keep: (best_of > n).then_some(n),
        output,
        add_special_tokens,
        tokens_as_ids,
        priority,
        cache_salt,
        truncate_prompt_tokens,
        constraint,
        beam,
        processor,
    })
}

/// `use_beam_search` (with `n` as the width) and `length_penalty`. As in vLLM, the search
/// ranks beams by their raw logprobs; sampling fields do not steer it.
fn beam_search(f: &mut Fields, n: usize, best_of: usize, p: &SamplingParams) -> Result<Option<BeamParams>, ApiError> {
    let on = f.take::<bool>("use_beam_search")?.unwrap_or(false);
    let length_penalty = f.take::<f64>("length_penalty")?;
    if !on {
        return match length_penalty {
            Some(l) if l != 1.0 => Err(ApiError::invalid("length_penalty", "`length_penalty` only applies with `use_beam_search`.")),
            _ => Ok(None),
        };
    }
    if best_of > n {
        return Err(ApiError::invalid("best_of", "With `use_beam_search`, `n` is the beam width; leave `best_of` out."));
    }
    if p.logprobs.is_some() || p.prompt_logprobs.is_some() {
        return Err(ApiError::invalid("use_beam_search", "Logprobs are not returned with `use_beam_search`."));
    }
    let length_penalty = length_penalty.unwrap_or(1.0);
    if !length_penalty.is_finite() {
        return Err(ApiError::invalid("length_penalty", "`length_penalty` must be a finite number."));
    }
    Ok(Some(BeamParams { width: n, length_penalty }))
}
