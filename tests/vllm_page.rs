//! vLLM's "OpenAI-Compatible Server" page, as a new user copies it: each example request
//! of the page (chat, completions, embeddings, pooling, classify, score, rerank, tokenize,
//! detokenize) with the default model or a test fixture in place of the page's model, and
//! for each endpoint one request that sets every field vLLM's API reference documents and
//! this server accepts, checking the answer's shape and, where a field shows, its effect.
//! Fields that cannot go together (streaming and `prompt_logprobs`, beam search and
//! logprobs) are spread over as few requests as possible.
// One request sets every field: more than json!'s default recursion allows.
#![recursion_limit = "256"]

mod common;

use common::{MODEL, Server, base64_f32s, fixture, floats};
use serde_json::{Value, json};

/// The default model; request templates are trusted so that one can show what reaches
/// the template.
fn generator() -> &'static Server {
    Server::shared(&["--trust-request-chat-template"])
}

/// The default model with a reasoning parser, for `include_reasoning`.
fn reasoner() -> &'static Server {
    Server::shared(&["--reasoning-parser", "qwen3"])
}

/// The folder first, then `args`; Server::shared finds a running server by equal arguments.
fn start(dir: &str, args: &[&'static str]) -> &'static Server {
    let mut v: Vec<&'static str> = vec![Box::leak(fixture(dir).into_boxed_str())];
    v.extend_from_slice(args);
    Server::shared(Box::leak(v.into_boxed_slice()))
}

/// A tiny Llama embedding model (it has a chat template), declared Matryoshka so that
/// `dimensions` applies.
fn embedder() -> &'static Server {
    start(
        "tiny-llama",
        &["--task", "embed", "--dtype", "float32", "--served-model-name", "tiny-embed", "--trust-request-chat-template",
          "--hf-overrides", r#"{"is_matryoshka": true}"#],
    )
}

fn classifier() -> &'static Server {
    start("tiny-bert-cls", &["--dtype", "float32", "--served-model-name", "tiny-cls"])
}

fn reranker() -> &'static Server {
    start("tiny-bert-rerank", &["--dtype", "float32", "--served-model-name", "tiny-rerank", "--task", "score"])
}

fn ok(s: &Server, path: &str, body: Value) -> Value {
    let (status, v) = s.post(path, &body);
    assert_eq!(status, 200, "{path} {body}: {v}");
    v
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// A chat template that shows what reaches it: the messages, the first document's title,
/// `reasoning_effort` and a template kwarg.
const SHOWING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if documents %}doc={{ documents[0].title }}\n{% endif %}effort={{ reasoning_effort }} greeting={{ greeting }}\n\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The prompt's text, read back from vLLM's `prompt_logprobs: 0` (keyed by token id; the
/// first token has none).
fn prompt_text(s: &Server, prompt_logprobs: &Value) -> String {
    let ids: Vec<u64> = prompt_logprobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p.is_null())
        .map(|p| {
            let entries = p.as_object().unwrap();
            assert_eq!(entries.len(), 1, "prompt_logprobs 0: the prompt's own token only");
            entries.keys().next().unwrap().parse().unwrap()
        })
        .collect();
    ok(s, "/detokenize", json!({"tokens": ids}))["prompt"].as_str().unwrap().to_string()
}

fn token_ids(s: &Server, text: &str) -> Vec<u64> {
    let v = ok(s, "/tokenize", json!({"model": MODEL, "prompt": text, "add_special_tokens": false}));
    v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

#[test]
fn page_chat_and_completion_examples() {
    let s = generator();
    // The page's first example, as the openai client sends it.
    let v = ok(s, "/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    // Extra parameters in `extra_body`: top_k, and guided_choice.
    ok(s, "/v1/chat/completions", json!({"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "top_k": 50}));
    let v = ok(
        s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
               "guided_choice": ["positive", "negative"]}),
    );
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer == "positive" || answer == "negative", "{v}");
    // vLLM's completions example.
    let v = ok(
        s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "A robot may not injure a human being", "echo": false, "n": 2, "stream": false,
               "logprobs": 3, "max_tokens": 4}),
    );
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    for c in v["choices"].as_array().unwrap() {
        assert_eq!(c["logprobs"]["tokens"].as_array().unwrap().len(), 4, "{c}");
        assert_eq!(c["logprobs"]["top_logprobs"][0].as_object().unwrap().len(), 3, "{c}");
    }
    // vLLM leaves `model` optional: the served model answers.
    let v = ok(s, "/v1/chat/completions", json!({"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 2}));
    assert_eq!(v["model"], MODEL);
    let v = ok(s, "/v1/completions", json!({"prompt": "Hello", "max_tokens": 2}));
    assert_eq!(v["model"], MODEL);
}

#[test]
fn chat_with_every_field() {
    let s = generator();
    let allowed = token_ids(s, " the a of and to in is");
    let banned = allowed[0];
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}],
        "frequency_penalty": 0.2, "presence_penalty": 0.1, "repetition_penalty": 1.05,
        "logit_bias": {banned.to_string(): -100},
        "logprobs": true, "top_logprobs": 2,
        "max_tokens": 12, "max_completion_tokens": 6,
        "n": 2, "best_of": 3, "seed": 7,
        "stop": ["\n\n\n"], "stream": false,
        "temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.01,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "none", "parallel_tool_calls": true,
        "reasoning_effort": "low", "include_reasoning": true,
        "user": "page-test", "service_tier": "auto", "store": false, "metadata": {},
        "use_beam_search": false, "length_penalty": 1.0,
        "stop_token_ids": [], "include_stop_str_in_output": false, "ignore_eos": true, "min_tokens": 2,
        "skip_special_tokens": true, "spaces_between_special_tokens": true,
        "truncate_prompt_tokens": 20, "prompt_logprobs": 0,
        "allowed_token_ids": allowed, "bad_words": ["zebra"],
        "echo": false, "add_generation_prompt": true, "continue_final_message": false, "add_special_tokens": false,
        "documents": [{"title": "Atlas", "text": "A book of maps."}],
        "chat_template": SHOWING_TEMPLATE, "chat_template_kwargs": {"greeting": "hi"},
        "mm_processor_kwargs": {},
        "response_format": {"type": "text"}, "guided_decoding_backend": "auto",
        "priority": 0, "request_id": "page-chat-every-field",
        "logits_processors": [{"qualname": "transformers.NoRepeatNGramLogitsProcessor", "kwargs": {"ngram_size": 4}}],
        "return_tokens_as_token_ids": true,
        "cache_salt": "a-salt-for-this-test", "kv_transfer_params": {}, "vllm_xargs": {},
    });
    let v = ok(s, "/v1/chat/completions", body);
    assert!(v["id"].as_str().unwrap().ends_with("page-chat-every-field"), "{v}");
    // The prompt is the request's template, with the documents, the effort and the kwarg,
    // cut to its last 20 tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 20);
    let prompt = prompt_text(s, &v["prompt_logprobs"]);
    assert!(prompt.contains("effort=low greeting=hi\n<|im_start|>assistant\n"), "{prompt:?}");
    assert_eq!(v["prompt_logprobs"].as_array().unwrap().len(), 20);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "best_of 3 samples, n 2 answer");
    for c in choices {
        // max_completion_tokens wins over max_tokens; ignore_eos keeps it going.
        let content = c["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 6, "{c}");
        assert_eq!(c["finish_reason"], "length");
        for t in content {
            let id: u64 = t["token"].as_str().unwrap().strip_prefix("token_id:").unwrap().parse().unwrap();
            assert!(allowed.contains(&id) && id != banned, "token {id} outside allowed_token_ids or banned by logit_bias");
            assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2);
        }
    }

    // Streaming, with usage on every chunk.
    let chunks = s.post_sse(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
    );
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = chunks[..chunks.len() - 1].iter().map(|c| serde_json::from_str(c).unwrap()).collect();
    assert!(chunks.len() >= 4, "{chunks:?}");
    assert!(chunks.iter().all(|c| c["usage"]["prompt_tokens"].as_u64().unwrap() > 0), "{chunks:?}");

    // Beam search, which takes neither logprobs nor sampling.
    let v = ok(
        s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "n": 2,
               "use_beam_search": true, "length_penalty": 0.8}),
    );
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);

    // A named tool forces the call.
    let v = ok(
        s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 60,
               "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}],
               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    );
    assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather", "{v}");
}

#[test]
fn reasoning_left_out_when_asked() {
    let s = reasoner();
    // The constraint holds from the first token when the reasoning is left out (as vLLM),
    // so it writes the reasoning markers itself.
    let v = ok(
        s,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 20,
               "include_reasoning": false, "guided_regex": "<think>\nhmm\n</think>\n\nParis"}),
    );
    let message = &v["choices"][0]["message"];
    assert_eq!(message["content"], "\n\nParis", "{v}");
    assert!(message.get("reasoning_content").is_none_or(Value::is_null), "{v}");
    // Streamed, no reasoning delta is sent either.
    let chunks = s.post_sse(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 20,
                "include_reasoning": false, "guided_regex": "<think>\nhmm\n</think>\n\nParis", "stream": true}),
    );
    let text: String = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str::<Value>(c).unwrap())
        .inspect(|c| assert!(c["choices"][0]["delta"].get("reasoning_content").is_none_or(Value::is_null), "{c}"))
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "\n\nParis");
}

#[test]
fn completion_with_every_field() {
    let s = generator();
    let prompt = "The capital of France is";
    let body = json!({
        "model": MODEL, "prompt": prompt, "best_of": 2, "echo": true,
        "frequency_penalty": 0.1, "presence_penalty": 0.1, "repetition_penalty": 1.0, "logit_bias": {},
        "logprobs": 2, "max_tokens": 4, "n": 1, "seed": 3, "stop": ["\n\n\n"], "stream": false,
        "suffix": "", "temperature": 0.7, "top_p": 0.9, "top_k": 10, "min_p": 0.0, "user": "page-test",
        "use_beam_search": false, "length_penalty": 1.0, "stop_token_ids": [], "include_stop_str_in_output": false,
        "ignore_eos": false, "min_tokens": 0, "skip_special_tokens": true, "spaces_between_special_tokens": true,
        "truncate_prompt_tokens": 3, "allowed_token_ids": null, "prompt_logprobs": 1,
        "add_special_tokens": true, "guided_choice": [" Paris", " Lyon"], "guided_decoding_backend": "xgrammar",
        "priority": 0, "request_id": "page-completion-every-field", "logits_processors": [],
        "return_tokens_as_token_ids": false, "cache_salt": "another-salt", "kv_transfer_params": {}, "vllm_xargs": {},
    });
    let v = ok(s, "/v1/completions", body);
    assert!(v["id"].as_str().unwrap().ends_with("page-completion-every-field"), "{v}");
    let c = &v["choices"][0];
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    // The prompt, cut to its last 3 tokens, is echoed; the answer is one of the choices.
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let text = c["text"].as_str().unwrap();
    assert!(text.ends_with(" Paris") || text.ends_with(" Lyon"), "{text:?}");
    assert!(prompt.ends_with(text.trim_end_matches(" Paris").trim_end_matches(" Lyon")), "{text:?}");
    assert_eq!(c["prompt_logprobs"].as_array().unwrap().len(), 3, "{c}");
}

#[test]
fn page_embedding_and_pooling_examples_and_every_field() {
    let s = embedder();
    // The openai client's example, and the chat form.
    let v = ok(s, "/v1/embeddings", json!({"model": "tiny-embed", "input": ["Hello my name is", "The best thing about vLLM is that it supports many different models"], "encoding_format": "float"}));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!((norm(&floats(&v["data"][0]["embedding"])) - 1.0).abs() < 1e-4);
    let v = ok(s, "/v1/embeddings", json!({"model": "tiny-embed", "messages": [{"role": "user", "content": [{"type": "text", "text": "Represent the given text."}]}], "encoding_format": "float"}));
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let v = ok(s, "/pooling", json!({"model": "tiny-embed", "input": "vLLM is great"}));
    assert_eq!(v["data"][0]["object"], "pooling");

    for path in ["/v1/embeddings", "/pooling"] {
        let v = ok(
            s,
            path,
            json!({"model": "tiny-embed", "input": ["one two three four five", "six seven eight nine ten"], "encoding_format": "base64",
                   "dimensions": 8, "user": "page-test", "truncate_prompt_tokens": 4, "add_special_tokens": true, "priority": 0,
                   "request_id": "page-embed-every-field", "normalize": false}),
        );
        assert!(v["id"].as_str().unwrap().ends_with("page-embed-every-field"), "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], 8, "{path}: truncated to 4 tokens each");
        let key = if path == "/pooling" { "data" } else { "embedding" };
        let vector = base64_f32s(v["data"][0][key].as_str().unwrap());
        assert_eq!(vector.len(), 8, "{path}");
        assert!((norm(&vector) - 1.0).abs() > 1e-3, "{path}: not normalised");
        // The chat form's own fields.
        let v = ok(
            s,
            path,
            json!({"model": "tiny-embed", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                   "encoding_format": "float", "dimensions": 8, "user": "page-test", "truncate_prompt_tokens": -1,
                   "add_special_tokens": false, "chat_template": SHOWING_TEMPLATE, "chat_template_kwargs": {"greeting": "hey"},
                   "mm_processor_kwargs": {}, "priority": 0, "request_id": "page-embed-chat", "normalize": true,
                   "add_generation_prompt": false, "continue_final_message": false}),
        );
        let vector = floats(&v["data"][0][key]);
        assert_eq!(vector.len(), 8, "{path}");
        assert!((norm(&vector) - 1.0).abs() < 1e-4, "{path}: normalised");
    }
}

#[test]
fn page_classify_example_and_every_field() {
    let s = classifier();
    let texts = ["Loved the new café—coffee was great.", "This update broke everything. Frustrating."];
    let v = ok(s, "/classify", json!({"model": "tiny-cls", "input": texts}));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let probs = floats(&v["data"][0]["probs"]);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    ok(s, "/classify", json!({"model": "tiny-cls", "input": texts[0]}));
    // `activation: false` gives the logits, whose softmax are the probabilities.
    let raw = ok(
        s,
        "/classify",
        json!({"model": "tiny-cls", "input": texts, "truncate_prompt_tokens": -1, "user": "page-test", "priority": 0,
               "activation": false, "request_id": "page-classify"}),
    );
    let logits = floats(&raw["data"][0]["probs"]);
    let z: f64 = logits.iter().map(|l| l.exp()).sum();
    for (l, p) in logits.iter().zip(&probs) {
        assert!((l.exp() / z - p).abs() < 1e-5, "{logits:?} vs {probs:?}");
    }
    assert_eq!(raw["data"][0]["label"], v["data"][0]["label"]);
}

#[test]
fn page_score_and_rerank_examples_and_every_field() {
    let s = reranker();
    // The page's three score examples, `encoding_format` included.
    let v = ok(s, "/score", json!({"model": "tiny-rerank", "encoding_format": "float", "text_1": "What is the capital of France?", "text_2": "The capital of France is Paris."}));
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let v = ok(s, "/score", json!({"model": "tiny-rerank", "text_1": "What is the capital of France?", "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let scores = floats(&Value::Array(v["data"].as_array().unwrap().iter().map(|d| d["score"].clone()).collect()));
    let v = ok(s, "/score", json!({"model": "tiny-rerank", "encoding_format": "float", "text_1": ["What is the capital of Brazil?", "What is the capital of France?"], "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}));
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    // Every field; `activation: false` gives the logit, whose sigmoid is the score.
    let raw = ok(
        s,
        "/v1/score",
        json!({"model": "tiny-rerank", "text_1": "What is the capital of France?", "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."],
               "truncate_prompt_tokens": -1, "mm_processor_kwargs": {}, "priority": 0, "activation": false,
               "encoding_format": "float", "user": "page-test", "request_id": "page-score"}),
    );
    for (d, want) in raw["data"].as_array().unwrap().iter().zip(&scores) {
        assert!((sigmoid(d["score"].as_f64().unwrap()) - want).abs() < 1e-5, "{raw}");
    }

    let documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Horses and cows are both animals"];
    let v = ok(s, "/rerank", json!({"model": "tiny-rerank", "query": "What is the capital of France?", "documents": documents}));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["document"]["text"].is_string());
    let v = ok(
        s,
        "/v2/rerank",
        json!({"model": "tiny-rerank", "query": "What is the capital of France?", "documents": documents, "top_n": 2,
               "truncate_prompt_tokens": -1, "mm_processor_kwargs": {}, "priority": 0, "activation": false,
               "return_documents": false, "user": "page-test", "request_id": "page-rerank"}),
    );
    let raw = v["results"].as_array().unwrap();
    assert_eq!(raw.len(), 2, "top_n");
    assert!(raw[0]["document"].is_null(), "return_documents: false");
    assert_eq!(raw[0]["index"], results[0]["index"], "the same ranking");
    let want = results[0]["relevance_score"].as_f64().unwrap();
    assert!((sigmoid(raw[0]["relevance_score"].as_f64().unwrap()) - want).abs() < 1e-5, "{v}");
}

#[test]
fn tokenizer_examples_and_every_field() {
    let s = generator();
    let v = ok(s, "/tokenize", json!({"model": MODEL, "prompt": "Hello, my name is"}));
    let tokens = v["tokens"].clone();
    assert_eq!(v["count"], tokens.as_array().unwrap().len());
    assert!(v["max_model_len"].as_u64().unwrap() > 0);
    let v = ok(s, "/detokenize", json!({"model": MODEL, "tokens": tokens}));
    assert_eq!(v["prompt"], "Hello, my name is");

    let v = ok(s, "/tokenize", json!({"model": MODEL, "prompt": "Hello", "add_special_tokens": true, "return_token_strs": true}));
    assert_eq!(v["token_strs"].as_array().unwrap().len(), v["count"].as_u64().unwrap() as usize);
    // The chat form renders the request's own template with its kwargs and tools.
    let v = ok(
        s,
        "/tokenize",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}],
               "add_generation_prompt": false, "continue_final_message": true, "return_token_strs": true,
               "add_special_tokens": false, "chat_template": SHOWING_TEMPLATE, "chat_template_kwargs": {"greeting": "yo"},
               "mm_processor_kwargs": {}, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
    );
    let text = ok(s, "/detokenize", json!({"tokens": v["tokens"]}));
    assert_eq!(text["prompt"], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHel", "{v}");
    let v = ok(
        s,
        "/tokenize",
        json!({"messages": [{"role": "user", "content": "Hi"}], "chat_template": SHOWING_TEMPLATE, "chat_template_kwargs": {"greeting": "yo"}}),
    );
    let text = ok(s, "/detokenize", json!({"tokens": v["tokens"]}));
    assert!(text["prompt"].as_str().unwrap().ends_with("effort= greeting=yo\n<|im_start|>assistant\n"), "{text}");
}
