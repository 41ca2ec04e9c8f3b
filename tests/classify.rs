//! BertForSequenceClassification over HTTP against transformers: a tiny random-weight
//! classifier (2 labels) on /classify, and a tiny cross-encoder (1 label) on /score and
//! /rerank, both from tests/fixtures with references made by the shared oracle
//! (tests/fixtures/reference/tiny_bert_*.json). Scores must agree within 1e-4.

#[macro_use]
mod common;

use common::{Server, reference_items, fixture};
use serde_json::{Value, json};

const CLS_ARGS: &[&str] = &["--dtype", "float32", "--served-model-name", "tiny-cls"];
const RERANK_ARGS: &[&str] = &["--dtype", "float32", "--served-model-name", "tiny-rerank", "--task", "score"];

/// The folder first, then `args`; Server::shared finds a running server by equal arguments.
fn start(dir: &str, args: &[&'static str]) -> &'static Server {
    let mut v: Vec<&'static str> = vec![Box::leak(fixture(dir).into_boxed_str())];
    v.extend_from_slice(args);
    Server::shared(Box::leak(v.into_boxed_slice()))
}

fn classifier() -> &'static Server {
    start("tiny-bert-cls", CLS_ARGS)
}

fn reranker() -> &'static Server {
    start("tiny-bert-rerank", RERANK_ARGS)
}

fn close(what: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!((g - w).abs() < 1e-4, "{what}: {g} vs {w}");
}

#[test]
fn classify_matches_transformers() {
    let refs = reference_items("tiny_bert_cls.json");
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let (status, v) = classifier().post("/classify", &json!({"model": "tiny-cls", "input": texts}));
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("classify-"));
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len());
    for (i, (d, r)) in data.iter().zip(&refs).enumerate() {
        let id = r["id"].as_str().unwrap();
        assert_eq!(d["index"], i);
        assert_eq!(d["num_classes"], 2);
        assert_eq!(d["label"], r["label"], "{id}");
        for k in 0..2 {
            close(id, &d["probs"][k], &r["probs"][k]);
        }
    }
    let tokens: usize = refs.iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);

    // Token ids give the same answer as the text they encode.
    let ids = &refs[0]["input_ids"];
    let (status, v) = classifier().post("/classify", &json!({"input": ids}));
    assert_eq!(status, 200, "{v}");
    close("ids", &v["data"][0]["probs"][0], &refs[0]["probs"][0]);
}

#[test]
fn score_matches_the_cross_encoder() {
    let refs = reference_items("tiny_bert_rerank.json");
    // The first four pairs share their query: one text_1 against four text_2.
    let query = refs[0]["text"].as_str().unwrap();
    let docs: Vec<&str> = refs[..4].iter().map(|r| r["text_pair"].as_str().unwrap()).collect();
    for path in ["/score", "/v1/score"] {
        let (status, v) = reranker().post(path, &json!({"model": "tiny-rerank", "text_1": query, "text_2": docs}));
        assert_eq!(status, 200, "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("score-"));
        for (k, r) in refs[..4].iter().enumerate() {
            assert_eq!(v["data"][k]["index"], k);
            assert_eq!(v["data"][k]["object"], "score");
            close(r["id"].as_str().unwrap(), &v["data"][k]["score"], &r["sigmoid"][0]);
        }
        let tokens: usize = refs[..4].iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
        assert_eq!(v["usage"]["prompt_tokens"], tokens);
    }
    // Two lists of the same length pair item by item.
    let t1: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let t2: Vec<&str> = refs.iter().map(|r| r["text_pair"].as_str().unwrap()).collect();
    let (status, v) = reranker().post("/score", &json!({"text_1": t1, "text_2": t2}));
    assert_eq!(status, 200, "{v}");
    for (k, r) in refs.iter().enumerate() {
        close(r["id"].as_str().unwrap(), &v["data"][k]["score"], &r["sigmoid"][0]);
    }
    let (status, e) = reranker().post("/score", &json!({"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}));
    assert_eq!((status, &e["error"]["param"]), (400, &json!("text_2")));
}

#[test]
fn rerank_orders_documents_by_the_cross_encoder() {
    let refs = reference_items("tiny_bert_rerank.json");
    let query = refs[0]["text"].as_str().unwrap();
    let docs: Vec<&str> = refs[..4].iter().map(|r| r["text_pair"].as_str().unwrap()).collect();
    let mut want: Vec<(usize, f64)> = refs[..4].iter().enumerate().map(|(i, r)| (i, r["sigmoid"][0].as_f64().unwrap())).collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    for path in ["/rerank", "/v1/rerank", "/v2/rerank"] {
        let (status, v) = reranker().post(path, &json!({"query": query, "documents": docs, "top_n": 3}));
        assert_eq!(status, 200, "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("rerank-"));
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        for (r, (i, score)) in results.iter().zip(&want) {
            assert_eq!(r["index"], *i, "{path}: {v}");
            assert_eq!(r["document"]["text"], docs[*i]);
            close(path, &r["relevance_score"], &json!(score));
        }
    }
    let (status, v) = reranker().post("/rerank", &json!({"query": query, "documents": docs, "return_documents": false}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 4);
    assert!(v["results"][0].get("document").is_none(), "{v}");
}

#[test]
fn each_model_refuses_what_it_cannot_do() {
    // A 2-label classifier is not a cross-encoder; neither embeds.
    let (status, e) = classifier().post("/score", &json!({"text_1": "a", "text_2": "b"}));
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("2 labels"), "{e}");
    let (status, e) = classifier().post("/v1/embeddings", &json!({"input": "a"}));
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("--task classify"), "{e}");
    let (status, e) = reranker().post("/v1/completions", &json!({"model": "tiny-rerank", "prompt": "a"}));
    assert_eq!(status, 400, "{e}");
    let (status, e) = reranker().post("/rerank", &json!({"query": "a", "documents": []}));
    assert_eq!((status, &e["error"]["param"]), (400, &json!("documents")));
    let (status, e) = reranker().post("/rerank", &json!({"query": "a", "documents": ["b"], "top_n": -1}));
    assert_eq!((status, &e["error"]["param"]), (400, &json!("top_n")));
}

#[test]
fn task_flags_that_do_not_fit_the_model_stop_start_up() {
    let err = common::start_fails(&[&fixture("tiny-bert-cls"), "--task", "embed"]);
    assert!(err.contains("--task embed: BertForSequenceClassification is a classifier"), "{err}");
    let err = common::start_fails(&[&fixture("tiny-llama"), "--task", "classify"]);
    assert!(err.contains("--task classify: LlamaForCausalLM has no classification head"), "{err}");
}

#[test]
fn the_api_key_guards_the_pooling_routes_outside_v1() {
    let s = start("tiny-bert-rerank", &["--api-key", "k3y"]);
    for path in ["/pooling", "/score", "/rerank", "/v2/rerank", "/v1/score"] {
        let (status, e) = s.post(path, &json!({"input": "a", "text_1": "a", "text_2": "b", "query": "a", "documents": ["b"]}));
        assert_eq!(status, 401, "{path}: {e}");
    }
    let r = Server::client()
        .post(s.url("/rerank"))
        .bearer_auth("k3y")
        .json(&json!({"query": "a", "documents": ["b"]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn response_shapes() {
    let (_, v) = classifier().post("/classify", &json!({"model": "tiny-cls", "input": ["good", "bad"]}));
    snap!("classify", v, ".data[].probs[]" => "[prob]", ".data[].score" => "[score]", ".results[].relevance_score" => "[score]");
    let (_, v) = reranker().post("/score", &json!({"model": "tiny-rerank", "text_1": "q", "text_2": ["a", "b"]}));
    snap!("score", v, ".data[].probs[]" => "[prob]", ".data[].score" => "[score]", ".results[].relevance_score" => "[score]");
    let (_, v) = reranker().post("/rerank", &json!({"model": "tiny-rerank", "query": "q", "documents": ["a", "b"]}));
    snap!("rerank", v, ".data[].probs[]" => "[prob]", ".data[].score" => "[score]", ".results[].relevance_score" => "[score]");
}
