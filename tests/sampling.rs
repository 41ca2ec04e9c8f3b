//! The sampler's request fields have their effect, over HTTP against the real model:
//! penalties, logit_bias, allowed_token_ids, bad_words, min_tokens; and out-of-range
//! values are 400s that name the field.

mod common;

use common::{MODEL, Server};
use serde_json::{Value, json};

const ARGS: &[&str] = &["--dtype", "float32"];

fn server() -> &'static Server {
    Server::shared(ARGS)
}

/// A greedy completion with `extra` fields merged in; returns (text, token ids, body).
fn complete(prompt: &str, max_tokens: usize, extra: Value) -> (String, Vec<u32>, Value) {
    let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                          "logprobs": 0, "return_tokens_as_token_ids": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, r) = server().post("/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    let ids = choice["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().strip_prefix("token_id:").unwrap().parse().unwrap())
        .collect();
    (choice["text"].as_str().unwrap().to_string(), ids, r)
}

fn most_repeated(ids: &[u32]) -> usize {
    let mut counts = std::collections::HashMap::new();
    for id in ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

#[test]
fn bad_words_keep_a_word_out() {
    let (text, _, _) = complete("The capital of France is", 8, json!({}));
    assert!(text.contains("Paris"), "{text:?}");
    let (text, _, _) = complete("The capital of France is", 8, json!({"bad_words": ["Paris"]}));
    assert!(!text.contains("Paris"), "{text:?}");
}

#[test]
fn allowed_token_ids_limit_the_output() {
    let (_, ids, _) = complete("The capital of France is", 6, json!({"allowed_token_ids": [28, 29]}));
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|t| [28, 29].contains(t)), "{ids:?}");
}

#[test]
fn logit_bias_forces_and_forbids() {
    let (_, ids, _) = complete("The capital of France is", 3, json!({"logit_bias": {"28": 100}}));
    assert_eq!(ids, vec![28, 28, 28]);
    let (_, plain, _) = complete("The capital of France is", 1, json!({}));
    let key = plain[0].to_string();
    let (_, ids, _) = complete("The capital of France is", 1, json!({"logit_bias": {key: -100}}));
    assert_ne!(ids[0], plain[0], "a -100 bias takes the greedy token out");
}

#[test]
fn penalties_break_a_repetitive_continuation() {
    let prompt = "I like apples. I like apples. I like";
    let (_, plain, _) = complete(prompt, 24, json!({}));
    let baseline = most_repeated(&plain);
    assert!(baseline >= 3, "the plain continuation repeats itself: {plain:?}");
    for extra in [
        json!({"frequency_penalty": 1.5}),
        json!({"presence_penalty": 2.0}),
        json!({"repetition_penalty": 1.5}),
    ] {
        let (_, ids, _) = complete(prompt, 24, extra.clone());
        assert!(most_repeated(&ids) < baseline, "{extra}: {ids:?} against {plain:?}");
    }
}

#[test]
fn min_tokens_hold_off_eos_and_stop_strings() {
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": "Reply with one word: yes or no. Is water wet?"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, r) = server().post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{r}");
        r
    };
    let short = chat(json!({}));
    assert_eq!(short["choices"][0]["finish_reason"], "stop");
    assert!(short["usage"]["completion_tokens"].as_u64().unwrap() < 10, "{short}");
    let long = chat(json!({"min_tokens": 20}));
    assert!(long["usage"]["completion_tokens"].as_u64().unwrap() >= 20, "{long}");

    // A stop string inside the first min_tokens tokens does not end the choice.
    let (text, _, r) = complete("The capital of France is", 30, json!({"stop": ["."]}));
    assert!(!text.contains('.'), "{text:?}");
    let early = r["usage"]["completion_tokens"].as_u64().unwrap();
    let (text, _, r) = complete("The capital of France is", 30, json!({"stop": ["."], "min_tokens": early + 3}));
    assert!(text.contains('.'), "{text:?}");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() >= early + 3, "{r}");
}

#[test]
fn out_of_range_values_name_their_field() {
    let cases = [
        ("presence_penalty", json!(2.5)),
        ("frequency_penalty", json!(-3)),
        ("repetition_penalty", json!(0)),
        ("logit_bias", json!({"not-a-token": 1})),
        ("logit_bias", json!({"99999999": 1})),
        ("logit_bias", json!({"5": "high"})),
        ("allowed_token_ids", json!([])),
        ("allowed_token_ids", json!([99999999])),
        ("bad_words", json!([""])),
        ("min_tokens", json!(-1)),
        ("min_tokens", json!(17)),
        ("truncate_prompt_tokens", json!(0)),
        ("prompt_logprobs", json!(21)),
    ];
    for (field, value) in cases {
        let mut body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 16});
        body[field] = value.clone();
        let (status, r) = server().post("/v1/completions", &body);
        assert_eq!(status, 400, "{field}={value}: {r}");
        assert_eq!(r["error"]["param"], field, "{r}");
    }
    let (status, r) = server().post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hi", "prompt_logprobs": 1, "stream": true}),
    );
    assert_eq!((status, &r["error"]["param"]), (400, &json!("prompt_logprobs")), "{r}");
    // The server goes on serving.
    let (_, ids, _) = complete("Hi", 2, json!({}));
    assert_eq!(ids.len(), 2);
}

/// A copy of the tiny Llama folder whose generation_config.json recommends sampling
/// settings; returns the folder.
fn tiny_with_generation_config() -> &'static str {
    let dir = std::env::temp_dir().join(format!("sluice-genconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(common::fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let config = json!({"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 5, "repetition_penalty": 1.8, "temperature": 0.0});
    std::fs::write(dir.join("generation_config.json"), config.to_string()).unwrap();
    Box::leak(dir.to_str().unwrap().to_string().into_boxed_str())
}

#[test]
fn generation_config_gives_defaults_that_requests_override() {
    let folder = tiny_with_generation_config();
    let with: &'static [&'static str] = Box::leak(vec![folder, "--served-model-name", "tiny", "--dtype", "float32"].into_boxed_slice());
    let without: &'static [&'static str] =
        Box::leak(vec![folder, "--served-model-name", "tiny", "--dtype", "float32", "--generation-config", "vllm"].into_boxed_slice());
    let ask = |args: &'static [&'static str], extra: Value| {
        let mut body = json!({"model": "tiny", "prompt": "Once upon a time", "ignore_eos": true,
                              "logprobs": 0, "return_tokens_as_token_ids": true});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, r) = Server::shared(args).post("/v1/completions", &body);
        assert_eq!(status, 200, "{r}");
        r["choices"][0]["logprobs"]["tokens"].clone()
    };
    let defaulted = ask(with, json!({}));
    assert_eq!(defaulted.as_array().unwrap().len(), 5, "max_new_tokens is the default max_tokens");
    let explicit = ask(without, json!({"max_tokens": 5, "temperature": 0, "repetition_penalty": 1.8}));
    assert_eq!(defaulted, explicit, "the recommended settings are the ones applied");
    assert_eq!(ask(without, json!({})).as_array().unwrap().len(), 16, "--generation-config vllm keeps OpenAI's defaults");
    assert_eq!(ask(with, json!({"max_tokens": 7})).as_array().unwrap().len(), 7, "a request's own value wins");
    assert!(Server::shared(with).log.lock().unwrap().contains("sampling defaults from the model's generation_config.json"));
}

#[test]
fn truncate_prompt_tokens_keeps_the_end_of_the_prompt() {
    let long: Vec<u32> = vec![504, 3575, 282, 4649, 314, 1345, 28, 216, 2283, 3218];
    let (_, cut, r) = complete("", 6, json!({"prompt": long, "truncate_prompt_tokens": 4}));
    assert_eq!(r["usage"]["prompt_tokens"], 4, "{r}");
    let (_, tail, _) = complete("", 6, json!({"prompt": long[6..].to_vec()}));
    assert_eq!(cut, tail, "the same as sending the last four tokens");
    let (_, _, r) = complete("one two three four five six seven", 2, json!({"truncate_prompt_tokens": -1}));
    assert_eq!(r["usage"]["prompt_tokens"], 7, "-1 keeps the whole prompt");
}

/// best_of samples that many choices and returns the n with the highest cumulative
/// logprob: with a seed, the same choices as asking for all of them with n, ranked.
#[test]
fn best_of_returns_the_most_likely_choices() {
    let body = |n: usize, best_of: usize, logprobs: Option<usize>| {
        let mut b = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0,
                           "seed": 7, "n": n, "best_of": best_of});
        if let Some(k) = logprobs {
            b["logprobs"] = json!(k);
        }
        b
    };
    let (status, all) = server().post("/v1/completions", &body(5, 5, Some(0)));
    assert_eq!(status, 200, "{all}");
    let mut ranked: Vec<(f64, String)> = all["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let lps = c["logprobs"]["token_logprobs"].as_array().unwrap();
            (lps.iter().map(|l| l.as_f64().unwrap()).sum(), c["text"].as_str().unwrap().to_string())
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let distinct: std::collections::HashSet<&String> = ranked.iter().map(|(_, t)| t).collect();
    assert!(distinct.len() >= 3, "temperature 1 should give different choices: {ranked:?}");

    let (status, best) = server().post("/v1/completions", &body(2, 5, None));
    assert_eq!(status, 200, "{best}");
    let choices = best["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], ranked[i].1.as_str(), "choice {i} should be the {i}-th most likely of the five");
        assert!(c["logprobs"].is_null(), "logprobs were not asked for");
    }

    let (status, e) = server().post("/v1/completions", &body(3, 2, None));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("best_of")));
    let mut streaming = body(1, 3, None);
    streaming["stream"] = json!(true);
    let (status, e) = server().post("/v1/completions", &streaming);
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("best_of")));
}

/// `logits_processors` by name: no_repeat_ngram keeps every n-gram of prompt and output
/// unique, where the plain greedy continuation repeats one; unknown names are a 400.
#[test]
fn no_repeat_ngram_processor_keeps_ngrams_unique() {
    let prompt = "I like apples. I like apples. I like";
    let (status, r) = server().post("/tokenize", &json!({"model": MODEL, "prompt": prompt}));
    assert_eq!(status, 200);
    let prompt_ids: Vec<u32> = r["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let trigrams = |ids: &[u32]| {
        let all: Vec<u32> = prompt_ids.iter().chain(ids).copied().collect();
        let grams: Vec<&[u32]> = all.windows(3).collect();
        let distinct: std::collections::HashSet<&[u32]> = grams.iter().copied().collect();
        grams.len() - distinct.len()
    };
    let (_, plain, _) = complete(prompt, 24, json!({}));
    assert!(trigrams(&plain) > 0, "the plain continuation repeats a trigram of the prompt: {plain:?}");
    for spec in [json!({"qualname": "no_repeat_ngram", "args": [3]}), json!({"qualname": "transformers.NoRepeatNGramLogitsProcessor", "kwargs": {"ngram_size": 3}})] {
        let (_, ids, _) = complete(prompt, 24, json!({"logits_processors": [spec]}));
        assert_eq!(trigrams(&ids), trigrams(&[]), "{spec}: only the prompt's own repeats remain: {ids:?}");
    }
    let (status, e) = server().post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "logits_processors": ["my.module.Processor"]}));
    assert_eq!(status, 400);
    assert_eq!(e["error"]["param"], "logits_processors[0]");
    assert!(e["error"]["message"].as_str().unwrap().contains("no_repeat_ngram"), "{e}");
}

/// Beam search against the same algorithm run from outside, one token at a time through
/// the public API (vLLM's: each live beam offers its 2·width most likely tokens, EOS ends
/// a beam, the `width` best others go on; finally cumulative logprob / length^penalty
/// ranks all): the engine's beams must be the reference's, best first.
#[test]
fn beam_search_matches_the_algorithm_run_through_the_api() {
    let (width, max_tokens) = (2usize, 6usize);
    let (status, t) = server().post(
        "/tokenize",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Answer with one word: is water wet?"}]}),
    );
    assert_eq!(status, 200, "{t}");
    let prompt: Vec<u64> = t["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let eos = 2u64;
    for length_penalty in [1.0f64, 0.0] {
        let mut live: Vec<(Vec<u64>, f64)> = vec![(vec![], 0.0)];
        let mut done: Vec<(Vec<u64>, f64, bool)> = Vec::new();
        for step in 0..max_tokens {
            let mut next: Vec<(Vec<u64>, f64)> = Vec::new();
            for (toks, cum) in &live {
                let ids: Vec<u64> = prompt.iter().chain(toks).copied().collect();
                let (status, r) = server().post(
                    "/v1/completions",
                    &json!({"model": MODEL, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 2 * width,
                            "return_tokens_as_token_ids": true}),
                );
                assert_eq!(status, 200, "{r}");
                let mut cands: Vec<(u64, f64)> = r["choices"][0]["logprobs"]["top_logprobs"][0]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.strip_prefix("token_id:").unwrap().parse().unwrap(), v.as_f64().unwrap()))
                    .collect();
                cands.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (tok, lp) in cands.into_iter().take(2 * width) {
                    let mut t = toks.clone();
                    t.push(tok);
                    if tok == eos {
                        done.push((t, cum + lp, true));
                    } else {
                        next.push((t, cum + lp));
                    }
                }
            }
            next.sort_by(|a, b| b.1.total_cmp(&a.1));
            next.truncate(width);
            if step + 1 == max_tokens {
                done.extend(next.drain(..).map(|(t, c)| (t, c, false)));
            }
            live = next;
            if live.is_empty() {
                break;
            }
        }
        let score = |(t, c, e): &(Vec<u64>, f64, bool)| c / ((prompt.len() + t.len() - usize::from(*e)) as f64).powf(length_penalty);
        done.sort_by(|a, b| score(b).total_cmp(&score(a)));
        let expected: Vec<String> = done[..width]
            .iter()
            .map(|(t, _, _)| {
                let (_, d) = server().post("/detokenize", &json!({"model": MODEL, "tokens": t}));
                d["prompt"].as_str().unwrap().replace("<|im_end|>", "")
            })
            .collect();

        let (status, r) = server().post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "n": width, "use_beam_search": true,
                    "length_penalty": length_penalty}),
        );
        assert_eq!(status, 200, "{r}");
        let got: Vec<&str> = r["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(got, expected, "length_penalty {length_penalty}: {done:?}");
    }
    let (status, e) = server().post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "length_penalty": 0.5}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("length_penalty")));
    let (status, e) =
        server().post("/v1/completions", &json!({"model": MODEL, "prompt": "Hi", "use_beam_search": true, "logprobs": 1}));
    assert_eq!((status, e["error"]["param"].as_str()), (400, Some("use_beam_search")));
}
