//! Reward models and causal LMs converted into classifiers, over HTTP against transformers:
//! `--task reward` on the tiny Llama (every token's final hidden state on /pooling), the
//! tiny Qwen2ForRewardModel (a reward per token) and Qwen2ForProcessRewardModel (STEP
//! pooling), and `--hf-overrides` with
//! `classifier_from_token` turning the tiny Llama (tied LM head, `from_2_way_softmax`) and
//! the tiny Mistral (its own LM head, `no_post_processing`) into classifiers on /classify,
//! /score and /rerank. References: tests/fixtures/reference/reward_and_from_token.py.

#[macro_use]
mod common;

use common::{Server, reference_items, floats, fixture};
use serde_json::{Value, json};

fn start(dir: &str, args: &[&'static str]) -> &'static Server {
    let mut v: Vec<&'static str> = vec![Box::leak(fixture(dir).into_boxed_str())];
    v.extend_from_slice(args);
    Server::shared(Box::leak(v.into_boxed_slice()))
}

const TWO_WAY: &str = r#"{"classifier_from_token": ["Ġno", "Ġgood"], "method": "from_2_way_softmax"}"#;
const NO_POST: &str = r#"{"architectures": ["MistralForSequenceClassification"], "classifier_from_token": ["Ġno", "Ġgood", "Ġthe"], "method": "no_post_processing", "id2label": {"0": "no", "1": "good", "2": "the"}}"#;

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

fn ok(s: &Server, path: &str, body: Value) -> Value {
    let (status, v) = s.post(path, &body);
    assert_eq!(status, 200, "{path} {body}: {v}");
    v
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < tol, "{what}[{k}]: {g} vs {w}");
    }
}

/// Per-token rows from /pooling against the reference, all inputs in one request.
fn check_rows(s: &Server, refs: &[Value], width: usize) {
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(s, "/pooling", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len());
    for (d, r) in data.iter().zip(refs) {
        assert_eq!(d["object"], "pooling");
        let (got, want) = (rows(&d["data"]), rows(&r["rows"]));
        assert_eq!(got.len(), r["token_ids"].as_array().unwrap().len(), "{}: one row per token", r["id"]);
        assert_eq!(got.len(), want.len(), "{}: as many rows as the reference", r["id"]);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), width);
            assert_close(&format!("{} token {k}", r["id"]), g, w, 1e-4);
        }
    }
    let tokens: usize = refs.iter().map(|r| r["token_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
}

#[test]
fn task_reward_on_a_causal_lm_returns_every_tokens_hidden_state() {
    let s = start("tiny-llama", &["--task", "reward", "--dtype", "float32"]);
    let refs = reference_items("tiny_llama_token_states.json");
    check_rows(s, &refs, 64);
    // One input alone (no neighbours in the batch), as token ids, and in base64: the same.
    let r = &refs[1];
    let alone = ok(s, "/pooling", json!({"input": [r["token_ids"]]}));
    assert_close("alone", &rows(&alone["data"][0]["data"]).concat(), &rows(&r["rows"]).concat(), 1e-4);
    let b64 = ok(s, "/pooling", json!({"input": r["text"], "encoding_format": "base64"}));
    let packed = b64["data"][0]["data"].as_str().unwrap_or_else(|| panic!("base64 is a string: {b64}"));
    assert_close("base64", &common::base64_f32s(packed), &rows(&r["rows"]).concat(), 1e-4);

    // Only /pooling: the other pooling APIs and generation are 400s naming the task.
    for (path, body) in [
        ("/v1/embeddings", json!({"input": "x"})),
        ("/classify", json!({"input": "x"})),
        ("/score", json!({"text_1": "a", "text_2": "b"})),
        ("/rerank", json!({"query": "a", "documents": ["b"]})),
        ("/v1/completions", json!({"prompt": "x"})),
    ] {
        let (status, v) = s.post(path, &body);
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("--task reward"), "{path}: {v}");
    }
}

#[test]
fn a_qwen2_reward_model_gives_one_reward_per_token() {
    // auto picks reward for Qwen2ForRewardModel
    let s = start("tiny-qwen2-reward", &["--dtype", "float32"]);
    check_rows(s, &reference_items("tiny_qwen2_rewards.json"), 1);
    let err = common::start_fails(&[&fixture("tiny-qwen2-reward"), "--task", "embed"]);
    assert!(err.contains("--task embed: Qwen2ForRewardModel is a reward model; serve it with --task reward"), "{err}");
}

/// A process reward model (vLLM's STEP pooling): only the rows of the step token, softmaxed
/// over the two labels; `returned_token_ids` picks (and orders) the labels kept.
#[test]
fn a_qwen2_process_reward_model_scores_the_step_tokens() {
    let refs = reference_items("tiny_qwen2_prm_steps.json");
    let s = start("tiny-qwen2-prm", &["--dtype", "float32", "--override-pooler-config", r#"{"step_tag_id": 30}"#]);
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(s, "/pooling", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len(), "one answer per input: {v}");
    let mut steps = 0;
    for (d, r) in data.iter().zip(&refs) {
        let (got, want) = (rows(&d["data"]), rows(&r["rows"]));
        assert_eq!(got.len(), want.len(), "{}: one row per step token", r["id"]);
        for (g, w) in got.iter().zip(&want) {
            assert_close(&format!("{}", r["id"]), g, w, 1e-4);
        }
        steps += got.len();
    }
    assert!(steps >= 3, "the texts have step tokens");

    // The labels kept, in the order asked for: both, swapped, are the reference's columns
    // swapped; one alone is softmaxed by itself (vLLM selects, then applies the softmax),
    // one row of [1.0] per step token.
    let s = start("tiny-qwen2-prm", &["--dtype", "float32", "--pooler-config", r#"{"step_tag_id": 30, "returned_token_ids": [1, 0]}"#]);
    let v = ok(s, "/pooling", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len(), "one answer per input: {v}");
    for (d, r) in data.iter().zip(&refs) {
        let (got, want) = (rows(&d["data"]), rows(&r["rows"]));
        assert_eq!(got.len(), want.len(), "{}: one row per step token", r["id"]);
        for (g, w) in got.iter().zip(&want) {
            assert_close(&format!("{} swapped", r["id"]), g, &[w[1], w[0]], 1e-4);
        }
    }
    let s = start("tiny-qwen2-prm", &["--dtype", "float32", "--pooler-config", r#"{"step_tag_id": 30, "returned_token_ids": [1]}"#]);
    let v = ok(s, "/pooling", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len(), "one answer per input: {v}");
    for (d, r) in data.iter().zip(&refs) {
        let steps = rows(&r["rows"]).len();
        assert_eq!(rows(&d["data"]), vec![vec![1.0]; steps], "{}: softmax over the one label kept", r["id"]);
    }

    let prm = fixture("tiny-qwen2-prm");
    for (arg, want) in [
        (r#"{"returned_token_ids": [2]}"#, "returned_token_ids: 2 is not below the model's 2 labels"),
        (r#"{"pooling_type": "MEAN"}"#, "\"pooling_type\" is not supported"),
    ] {
        let err = common::start_fails(&[&prm, "--override-pooler-config", arg]);
        assert!(err.contains(want), "{arg}: {err}");
    }
    let err = common::start_fails(&[&fixture("tiny-qwen2-reward"), "--override-pooler-config", r#"{"step_tag_id": 30}"#]);
    assert!(err.contains("apply to process reward models (STEP pooling) only"), "{err}");
}

/// Probabilities within 1e-4, and the two-way logit recovered from its sigmoid where the
/// probability is not saturated.
fn check_probs(what: &str, got: &[f64], r: &Value) {
    let want = floats(&r["probs"]);
    assert_close(what, got, &want, 1e-4);
    if got.len() == 1 && got[0] > 1e-3 && got[0] < 1.0 - 1e-3 {
        let logit = (got[0] / (1.0 - got[0])).ln();
        let want = r["logits"][0].as_f64().unwrap();
        assert!((logit - want).abs() < 1e-3 * want.abs().max(1.0), "{what}: logit {logit} vs {want}");
    }
}

#[test]
fn classifier_from_token_two_way_softmax_scores_like_the_lm_head() {
    // A causal LM, its architecture kept: --task classify converts it with the overrides.
    let s = start("tiny-llama", &["--task", "classify", "--dtype", "float32", "--hf-overrides", TWO_WAY]);
    let refs = reference_items("tiny_llama_from_2_way.json");
    let (singles, pairs): (Vec<&Value>, Vec<&Value>) = refs.iter().partition(|r| r["text_pair"].is_null());
    let texts: Vec<&str> = singles.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(s, "/classify", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), singles.len(), "one answer per input: {v}");
    for (d, r) in data.iter().zip(&singles) {
        assert_eq!(d["num_classes"], 1);
        check_probs(&format!("classify {}", r["id"]), &floats(&d["probs"]), r);
    }
    let tokens: usize = singles.iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);

    // /score and /rerank: each pair is the two texts joined (vLLM: no separator for an LLM
    // converted into a reranker).
    let query = pairs[0]["text"].as_str().unwrap();
    let same: Vec<&&Value> = pairs.iter().filter(|p| p["text"] == query).collect();
    let docs: Vec<&str> = same.iter().map(|p| p["text_pair"].as_str().unwrap()).collect();
    assert!(docs.len() >= 2, "the reference scores one query against several documents");
    let v = ok(s, "/score", json!({"text_1": query, "text_2": docs}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), same.len(), "one score per pair: {v}");
    for (k, (d, r)) in data.iter().zip(&same).enumerate() {
        assert_eq!(d["index"], k, "{v}");
        check_probs(&format!("score {}", r["id"]), &[d["score"].as_f64().unwrap()], r);
    }
    let tokens: usize = same.iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    let v = ok(s, "/rerank", json!({"query": query, "documents": docs}));
    let results = v["results"].as_array().unwrap();
    let mut indices: Vec<u64> = results.iter().map(|res| res["index"].as_u64().unwrap()).collect();
    let scores: Vec<f64> = results.iter().map(|res| res["relevance_score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "results best first: {v}");
    for res in results {
        let r = same[res["index"].as_u64().unwrap() as usize];
        check_probs(&format!("rerank {}", r["id"]), &[res["relevance_score"].as_f64().unwrap()], r);
    }
    indices.sort();
    assert_eq!(indices, (0..docs.len() as u64).collect::<Vec<_>>(), "every document ranked once: {v}");
}

#[test]
fn classifier_from_token_without_post_processing_keeps_each_tokens_logit() {
    // The architecture overridden to a classifier: auto picks classify. Mistral's LM head is
    // its own tensor, not the embeddings.
    // `--hf_overrides`: vLLM's recipes spell it with an underscore.
    let s = start("tiny-mistral", &["--dtype", "float32", "--hf_overrides", NO_POST]);
    let refs = reference_items("tiny_mistral_no_post.json");
    let singles: Vec<&Value> = refs.iter().filter(|r| r["text_pair"].is_null()).collect();
    let texts: Vec<&str> = singles.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(s, "/classify", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), singles.len(), "one answer per input: {v}");
    for (d, r) in data.iter().zip(&singles) {
        assert_eq!(d["num_classes"], 3);
        let probs = floats(&d["probs"]);
        check_probs(&format!("classify {}", r["id"]), &probs, r);
        let best = (0..3).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
        assert_eq!(d["label"], ["no", "good", "the"][best]);
    }
    // /pooling gives the same probabilities.
    let v = ok(s, "/pooling", json!({"input": texts[0]}));
    check_probs("pooling", &floats(&v["data"][0]["data"]), singles[0]);
}

#[test]
fn hf_overrides_and_classify_errors_stop_start_up() {
    let llama = fixture("tiny-llama");
    let cases: [(&[&str], &str); 6] = [
        (&["--hf-overrides", "{not json"], "--hf-overrides is not valid JSON"),
        (&["--hf-overrides", "[1, 2]"], "--hf-overrides must be a JSON object"),
        // No head and no conversion: a clear error, never a random head.
        (&["--task", "classify"], "--task classify: LlamaForCausalLM has no classification head"),
        (
            &["--task", "classify", "--hf-overrides", r#"{"classifier_from_token": ["Ġno", "Ġgood"]}"#],
            "classifier_from_token needs a method",
        ),
        (
            &["--task", "classify", "--hf-overrides", r#"{"classifier_from_token": ["Ġno"], "method": "from_2_way_softmax"}"#],
            "from_2_way_softmax takes two tokens",
        ),
        (
            &["--task", "classify", "--hf-overrides", r#"{"classifier_from_token": ["no", "yes"], "method": "from_2_way_softmax"}"#],
            "classifier_from_token: \"no\" is not a token of this model's vocabulary",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec![llama.as_str(), "--dtype", "float32"];
        all.extend_from_slice(args);
        let err = common::start_fails(&all);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // The overrides reach architecture resolution: an architecture we do not have is named.
    let err = common::start_fails(&[&llama, "--hf-overrides", r#"{"architectures": ["FalconForSequenceClassification"]}"#]);
    assert!(err.contains("FalconForSequenceClassification is not supported"), "{err}");
}

/// Newer vLLM's spelling: `--runner pooling --convert reward` is `--task reward`, and
/// `--runner pooling` alone embeds a causal LM; mixing the two spellings is refused.
#[test]
fn runner_and_convert_are_the_task_by_another_name() {
    let s = start("tiny-llama", &["--runner", "pooling", "--convert", "reward", "--dtype", "float32"]);
    check_rows(s, &reference_items("tiny_llama_token_states.json")[..2], 64);
    let s = start("tiny-llama", &["--runner", "pooling", "--dtype", "float32"]);
    let v = ok(s, "/v1/embeddings", json!({"input": "hello"}));
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 64);
    let llama = fixture("tiny-llama");
    let err = common::start_fails(&[&llama, "--task", "embed", "--runner", "pooling"]);
    assert!(err.contains("give either --task or --runner/--convert"), "{err}");
    let err = common::start_fails(&[&llama, "--runner", "generate", "--convert", "embed"]);
    assert!(err.contains("conversions are for --runner pooling"), "{err}");
}
