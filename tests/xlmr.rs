//! XLM-RoBERTa over HTTP against sentence-transformers and transformers: a tiny
//! random-weight `XLMRobertaModel` in a sentence-transformers folder (CLS pooling and
//! Normalize, as bge-m3's dense vector) on /v1/embeddings, and a tiny one-label
//! `XLMRobertaForSequenceClassification` (as bge-reranker-v2-m3) on /score, /rerank and
//! /classify, both from tests/fixtures (tests/fixtures/xlmr/make_tiny_xlmr.py) with
//! references made by the shared oracle (tests/fixtures/xlmr/regenerate.sh). The texts
//! cover batches of mixed lengths, scripts the vocabulary lacks, and a literal `<pad>` in
//! the text, whose position RoBERTa does not count.

#[macro_use]
mod common;

use common::{Server, fixture, floats, reference_items};
use serde_json::{Value, json};

fn start(dir: &str, args: &[&'static str]) -> &'static Server {
    let mut v: Vec<&'static str> = vec![Box::leak(fixture(dir).into_boxed_str())];
    v.extend_from_slice(args);
    Server::shared(Box::leak(v.into_boxed_slice()))
}

fn embedder() -> &'static Server {
    start("tiny-xlmr-embed", &["--dtype", "float32", "--served-model-name", "tiny-m3"])
}

fn reranker() -> &'static Server {
    start("tiny-xlmr-rerank", &["--dtype", "float32", "--served-model-name", "tiny-reranker"])
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn close(what: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!((g - w).abs() < 1e-4, "{what}: {g} vs {w}");
}

#[test]
fn embeddings_match_sentence_transformers() {
    let refs = reference_items("tiny_xlmr_embed.json");
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    // All at once (a batch of mixed lengths), then one by one.
    let (status, v) = embedder().post("/v1/embeddings", &json!({"model": "tiny-m3", "input": texts}));
    assert_eq!(status, 200, "{v}");
    let tokens: u64 = refs.iter().map(|r| r["num_tokens"].as_u64().unwrap()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    for (d, r) in v["data"].as_array().unwrap().iter().zip(&refs) {
        let (got, want) = (floats(&d["embedding"]), floats(&r["embedding"]));
        let cos = cosine(&got, &want);
        assert!(cos >= 0.9999, "{}: cosine {cos}", r["id"]);
        let norm = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{}: norm {norm}", r["id"]);
    }
    for r in &refs {
        let (status, v) = embedder().post("/v1/embeddings", &json!({"input": r["text"]}));
        assert_eq!(status, 200, "{v}");
        let cos = cosine(&floats(&v["data"][0]["embedding"]), &floats(&r["embedding"]));
        assert!(cos >= 0.9999, "{} alone: cosine {cos}", r["id"]);
    }
}

#[test]
fn tokenization_is_transformers() {
    for r in reference_items("tiny_xlmr_embed.json") {
        let (status, v) = embedder().post("/tokenize", &json!({"prompt": r["text"]}));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["tokens"], r["token_ids"], "{}", r["id"]);
    }
}

#[test]
fn positions_end_where_the_table_does() {
    // 130 positions, less the two up to the padding id: 128 tokens at most.
    let ok: Vec<u32> = std::iter::once(0).chain(std::iter::repeat_n(41, 126)).chain(std::iter::once(2)).collect();
    let (status, v) = embedder().post("/v1/embeddings", &json!({"input": [ok.clone()]}));
    assert_eq!(status, 200, "{v}");
    let mut long = ok;
    long.push(2);
    let (status, e) = embedder().post("/v1/embeddings", &json!({"input": [long]}));
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("maximum context length is 128"), "{e}");
}

#[test]
fn score_and_rerank_match_the_cross_encoder() {
    let refs = reference_items("tiny_xlmr_rerank.json");
    let query = refs[0]["text"].as_str().unwrap();
    let docs: Vec<&str> = refs[..4].iter().map(|r| r["text_pair"].as_str().unwrap()).collect();
    let (status, v) = reranker().post("/score", &json!({"model": "tiny-reranker", "text_1": query, "text_2": docs}));
    assert_eq!(status, 200, "{v}");
    for (k, r) in refs[..4].iter().enumerate() {
        close(r["id"].as_str().unwrap(), &v["data"][k]["score"], &r["sigmoid"][0]);
    }
    // `<s> query </s></s> document </s>`, as transformers pairs them: the same token count.
    let tokens: usize = refs[..4].iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    let pairs_1: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let pairs_2: Vec<&str> = refs.iter().map(|r| r["text_pair"].as_str().unwrap()).collect();
    let (status, v) = reranker().post("/v1/score", &json!({"text_1": pairs_1, "text_2": pairs_2}));
    assert_eq!(status, 200, "{v}");
    for (k, r) in refs.iter().enumerate() {
        close(r["id"].as_str().unwrap(), &v["data"][k]["score"], &r["sigmoid"][0]);
    }

    let mut want: Vec<(usize, f64)> = refs[..4].iter().enumerate().map(|(i, r)| (i, r["sigmoid"][0].as_f64().unwrap())).collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (status, v) = reranker().post("/rerank", &json!({"query": query, "documents": docs}));
    assert_eq!(status, 200, "{v}");
    for (r, (i, score)) in v["results"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(r["index"], *i, "{v}");
        close("rerank", &r["relevance_score"], &json!(score));
    }

    // /classify on one label: the sigmoid, as vLLM.
    let (status, v) = reranker().post("/classify", &json!({"input": query}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][0]["num_classes"], 1);
    assert_eq!(v["data"][0]["label"], "LABEL_0");
}
