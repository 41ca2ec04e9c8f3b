//! all-MiniLM-L6-v2 served with `--task embed` from its folder, checked over HTTP against
//! sentence-transformers' float32 embeddings (tests/fixtures/reference/minilm_f32_embed.json,
//! made by the shared oracle): every input form, batched and one by one, floats and
//! base64, the openai client, and the errors of fields this model cannot honour.

#[macro_use]
mod common;

use common::{Server, fixture, minilm_dir, venv_python};
use serde_json::{Value, json};


fn server() -> &'static Server {
    static ARGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    let args = ARGS.get_or_init(|| {
        let dir: &'static str = Box::leak(minilm_dir().into_boxed_str());
        Box::leak(Box::new([dir, "--task", "embed", "--dtype", "float32", "--served-model-name", "minilm"]))
    });
    Server::shared(args)
}

struct Item {
    id: String,
    text: String,
    num_tokens: usize,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Item> {
    let text = std::fs::read_to_string(fixture("reference/minilm_f32_embed.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Item {
            id: i["id"].as_str().unwrap().to_string(),
            text: i["text"].as_str().unwrap().to_string(),
            num_tokens: i["num_tokens"].as_u64().unwrap() as usize,
            embedding: i["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("a list of floats").iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Cosine ≥ 0.9999 and every component within 1e-5 of the reference.
fn assert_close(id: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{id}: dimensions");
    let cos = cosine(got, want);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(cos >= 0.9999, "{id}: cosine {cos}");
    assert!(worst < 1e-5, "{id}: largest difference {worst}");
}

fn embed(body: Value) -> Value {
    let (status, v) = server().post("/v1/embeddings", &body);
    assert_eq!(status, 200, "{v}");
    v
}

#[test]
fn every_text_at_once_matches_sentence_transformers() {
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    // The oracle, like sentence-transformers, cuts inputs at max_seq_length (256).
    let v = embed(json!({"model": "minilm", "input": texts, "truncate_prompt_tokens": 256}));
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    assert!(v["id"].as_str().unwrap().starts_with("embd-"));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len());
    for (i, (d, r)) in data.iter().zip(&refs).enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
        assert_close(&r.id, &floats(&d["embedding"]), &r.embedding);
    }
    let tokens: usize = refs.iter().map(|r| r.num_tokens).sum();
    assert_eq!(v["usage"], json!({"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": null}));
}

#[test]
fn concurrent_single_requests_match_too() {
    let refs = reference();
    std::thread::scope(|s| {
        for r in refs.iter().filter(|r| r.num_tokens < 256) {
            s.spawn(move || {
                let v = embed(json!({"model": "minilm", "input": r.text}));
                assert_eq!(v["usage"]["prompt_tokens"], r.num_tokens, "{}", r.id);
                assert_close(&r.id, &floats(&v["data"][0]["embedding"]), &r.embedding);
            });
        }
    });
}

#[test]
fn token_ids_and_base64_give_the_same_vectors() {
    let refs = reference();
    let text = std::fs::read_to_string(fixture("reference/minilm_f32_embed.json")).unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<Value> = raw["items"].as_array().unwrap()[..3].iter().map(|i| i["token_ids"].clone()).collect();
    let one = embed(json!({"input": ids[0]}));
    assert_close(&refs[0].id, &floats(&one["data"][0]["embedding"]), &refs[0].embedding);
    let many = embed(json!({"input": ids}));
    for k in 0..3 {
        assert_close(&refs[k].id, &floats(&many["data"][k]["embedding"]), &refs[k].embedding);
    }

    let b64 = embed(json!({"input": refs[1].text, "encoding_format": "base64"}));
    let s = b64["data"][0]["embedding"].as_str().expect("base64 is a string");
    let v: Vec<f32> = common::base64_f32s(s).into_iter().map(|x| x as f32).collect();
    assert_close(&refs[1].id, &v, &refs[1].embedding);
}

#[test]
fn normalize_false_returns_the_pooled_vector() {
    let refs = reference();
    let v = embed(json!({"input": refs[2].text, "normalize": false}));
    let raw = floats(&v["data"][0]["embedding"]);
    let norm: f32 = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 0.01, "mean pooling alone is not unit length (norm {norm})");
    let unit: Vec<f32> = raw.iter().map(|x| x / norm).collect();
    assert_close(&refs[2].id, &unit, &refs[2].embedding);
}

#[test]
fn pooling_score_and_rerank_use_the_embeddings() {
    let refs = reference();
    let (status, v) = server().post("/pooling", &json!({"input": [refs[0].text]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][0]["object"], "pooling");
    assert_close("pooling", &floats(&v["data"][0]["data"]), &refs[0].embedding);

    let (a, b, c) = (&refs[1], &refs[11], &refs[2]);
    let (status, v) = server().post("/v1/score", &json!({"text_1": a.text, "text_2": [b.text, c.text]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][1]["object"], "score");
    for (k, other) in [b, c].iter().enumerate() {
        let want = cosine(&a.embedding, &other.embedding);
        let got = v["data"][k]["score"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "score {k}: {got} vs {want}");
    }

    let docs = [&refs[3].text, &refs[1].text, &refs[11].text];
    let (status, v) = server().post("/rerank", &json!({"query": refs[11].text, "documents": docs, "top_n": 2}));
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    // The document identical to the query ranks first, with a score of 1.
    assert_eq!(results[0]["index"], 2);
    assert_eq!(results[0]["document"]["text"], refs[11].text);
    assert!((results[0]["relevance_score"].as_f64().unwrap() - 1.0).abs() < 1e-5);
    assert!(results[0]["relevance_score"].as_f64() >= results[1]["relevance_score"].as_f64());
}

#[test]
fn the_openai_client_embeds_unchanged() {
    let refs = reference();
    let script = format!(
        r#"
import json, sys
from openai import OpenAI
c = OpenAI(base_url="{base}/v1", api_key="none")
r = c.embeddings.create(model="minilm", input={texts})
print(json.dumps([d.embedding for d in r.data]))
"#,
        base = server().base,
        texts = serde_json::to_string(&[&refs[0].text, &refs[4].text]).unwrap()
    );
    let out = std::process::Command::new(venv_python()).args(["-c", &script]).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_close(&refs[0].id, &got[0], &refs[0].embedding);
    assert_close(&refs[4].id, &got[1], &refs[4].embedding);
}


#[test]
fn response_shape() {
    let v = embed(json!({"model": "minilm", "input": ["Hello world", "a"]}));
    assert_eq!(floats(&v["data"][0]["embedding"]).len(), 384);
    snap!("embeddings", v, ".data[].embedding" => "[384 floats]");
}

fn error(path: &str, body: Value) -> Value {
    let (status, v) = server().post(path, &body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    v
}

#[test]
fn fields_the_model_cannot_honour_are_400s_that_name_them() {
    let refs = reference();
    snap!("error_embeddings_dimensions", error("/v1/embeddings", json!({"input": "x", "dimensions": 64})));
    snap!("error_embeddings_too_long", error("/v1/embeddings", json!({"input": refs.last().unwrap().text})));
    snap!("error_embeddings_unknown_field", error("/v1/embeddings", json!({"input": "x", "embed_dtype": "float16"})));
    // MiniLM has no chat template: a chat cannot be rendered.
    snap!(
        "error_embeddings_messages_without_template",
        error("/v1/embeddings", json!({"messages": [{"role": "user", "content": "hi"}]}))
    );
    snap!(
        "error_generation_on_pooling_model",
        error("/v1/chat/completions", json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}))
    );
    let e = error("/v1/embeddings", json!({"input": "x", "encoding_format": "int8"}));
    assert_eq!(e["error"]["param"], "encoding_format");
    let e = error("/v1/embeddings", json!({"input": []}));
    assert_eq!(e["error"]["param"], "input");
    let e = error("/v1/embeddings", json!({"input": "x", "truncate_prompt_tokens": 257}));
    assert_eq!(e["error"]["param"], "truncate_prompt_tokens");
    let e = error("/v1/embeddings", json!({"input": [[1, 2, 999999]]}));
    assert_eq!(e["error"]["param"], "input");
    let e = error("/classify", json!({"input": "x"}));
    assert!(e["error"]["message"].as_str().unwrap().contains("--task embed"), "{e}");
    let (status, e) = server().post("/v1/embeddings", &json!({"model": "other", "input": "x"}));
    assert_eq!((status, &e["error"]["param"]), (404, &json!("model")));
}

#[test]
fn metrics_count_the_prompt_tokens_encoded() {
    let count = || -> u64 {
        let text = Server::client().get(server().url("/metrics")).send().unwrap().text().unwrap();
        let line = text.lines().find(|l| l.starts_with("vllm:prompt_tokens_total")).expect("the counter");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let before = count();
    embed(json!({"input": ["Hello world", "a"]})); // 4 + 3 tokens
    assert!(count() >= before + 7);
}

/// The reverse: a generation model refuses pooling requests.
#[test]
fn a_generation_model_refuses_embeddings() {
    let s = Server::start(&[]);
    let (status, v) = s.post("/v1/embeddings", &json!({"model": common::MODEL, "input": "x"}));
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("does not support the Embeddings API") && msg.contains("--task generate"), "{msg}");
}
