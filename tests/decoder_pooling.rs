//! Llama-family decoders as pooling models, over HTTP against transformers: the tiny Llama
//! under `--task embed` (last-token pooling, normalised) against sentence-transformers'
//! last-token pooling of the same folder, the tiny LlamaForSequenceClassification folders
//! on /classify, /score and /rerank against transformers, chat `messages` rendered with
//! the chat template, and the shipped SmolLM2 GGUF under `--task embed`. References are in
//! tests/fixtures/reference/tiny_llama_*.json (see regenerate_pooling.sh there).

#[macro_use]
mod common;

use common::{Server, reference_items, floats, fixture};
use serde_json::{Value, json};

/// The folder first, then `args`; Server::shared finds a running server by equal arguments.
fn start(dir: &str, args: &[&'static str]) -> &'static Server {
    let mut v: Vec<&'static str> = vec![Box::leak(fixture(dir).into_boxed_str())];
    v.extend_from_slice(args);
    Server::shared(Box::leak(v.into_boxed_slice()))
}

fn embedder() -> &'static Server {
    start("tiny-llama", &["--task", "embed", "--dtype", "float32", "--served-model-name", "tiny-embed"])
}

fn classifier() -> &'static Server {
    start("tiny-llama-cls", &["--dtype", "float32"])
}

fn reranker() -> &'static Server {
    start("tiny-llama-rerank", &["--dtype", "float32", "--task", "score"])
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn close(what: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    assert!((g - w).abs() < 1e-4, "{what}: {g} vs {w}");
}

fn ok(s: &Server, path: &str, body: Value) -> Value {
    let (status, v) = s.post(path, &body);
    assert_eq!(status, 200, "{path} {body}: {v}");
    v
}

fn bad(s: &Server, path: &str, body: Value, param: &str) -> Value {
    let (status, v) = s.post(path, &body);
    assert_eq!(status, 400, "{path} {body}: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["param"], param, "{v}");
    v
}

#[test]
fn last_token_embeddings_match_transformers() {
    let refs = reference_items("tiny_llama_last_embed.json");
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(embedder(), "/v1/embeddings", json!({"model": "tiny-embed", "input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len());
    for (d, r) in data.iter().zip(&refs) {
        let (got, want) = (floats(&d["embedding"]), floats(&r["embedding"]));
        assert_eq!(got.len(), 64);
        let c = cosine(&got, &want);
        assert!(c >= 0.9999, "{}: cosine {c}", r["id"]);
        let norm = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{}: norm {norm}", r["id"]);
    }
    let tokens: u64 = refs.iter().map(|r| r["num_tokens"].as_u64().unwrap()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);

    // One at a time (no neighbours in the scratch cache) gives the same vectors, and so
    // do the token ids the reference saw.
    for (k, r) in refs.iter().enumerate().step_by(4) {
        let alone = ok(embedder(), "/v1/embeddings", json!({"input": r["text"]}));
        let ids = ok(embedder(), "/v1/embeddings", json!({"input": [r["token_ids"]]}));
        let batched = floats(&data[k]["embedding"]);
        assert!(max_diff(&floats(&alone["data"][0]["embedding"]), &batched) < 1e-5, "{}", r["id"]);
        assert!(max_diff(&floats(&ids["data"][0]["embedding"]), &batched) < 1e-5, "{}", r["id"]);
    }
}

/// `--task score` on a causal LM scores by the cosine similarity of its embeddings.
#[test]
fn a_causal_lm_under_task_score_scores_by_cosine() {
    let s = start("tiny-llama", &["--task", "score", "--dtype", "float32"]);
    let docs = ["The capital of France is Paris.", "Horses and cows are both animals."];
    let v = ok(s, "/score", json!({"text_1": "What is the capital of France?", "text_2": docs}));
    let e = ok(s, "/v1/embeddings", json!({"input": ["What is the capital of France?", docs[0], docs[1]]}));
    let vecs: Vec<Vec<f64>> = e["data"].as_array().unwrap().iter().map(|d| floats(&d["embedding"])).collect();
    for k in 0..2 {
        close("score", &v["data"][k]["score"], &json!(cosine(&vecs[0], &vecs[k + 1])));
    }
    // and on a GGUF file, a classifier has no head to load
    let err = common::start_fails(&["--task", "classify"]);
    assert!(err.contains("--task classify: the model has no classification head"), "{err}");
}

/// A decoder folder with sentence-transformers files pools as they say: here the mean over
/// the tokens, not normalised, at most 64 tokens (`sentence_bert_config.json`).
#[test]
fn a_decoder_folders_own_pooling_config_wins() {
    let s = start("tiny-llama-mean", &["--task", "embed", "--dtype", "float32"]);
    let refs = reference_items("tiny_llama_mean_embed.json");
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(s, "/v1/embeddings", json!({"input": texts, "truncate_prompt_tokens": -1}));
    for (d, r) in v["data"].as_array().unwrap().iter().zip(&refs) {
        let (got, want) = (floats(&d["embedding"]), floats(&r["embedding"]));
        let c = cosine(&got, &want);
        assert!(c >= 0.9999, "{}: cosine {c}", r["id"]);
        let scale = want.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(max_diff(&got, &want) < 1e-5 * scale, "{}: not the unnormalised mean", r["id"]);
    }
    let tokens: u64 = refs.iter().map(|r| r["num_tokens"].as_u64().unwrap()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    // Past 64 tokens without truncation: a 400 that names the input.
    let long = refs.iter().find(|r| r["truncated"] == true).unwrap();
    bad(s, "/v1/embeddings", json!({"input": long["text"]}), "input");
}

/// SmolLM2's ChatML template, as the tiny fixture carries it: a default system message
/// when the chat has none.
const SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn embedding_of(s: &Server, path: &str, body: Value) -> (Vec<f64>, u64) {
    let v = ok(s, path, body);
    let key = if path == "/pooling" { "data" } else { "embedding" };
    (floats(&v["data"][0][key]), v["usage"]["prompt_tokens"].as_u64().unwrap())
}

#[test]
fn chat_messages_embed_as_their_rendered_prompt() {
    let s = embedder();
    let user = json!([{"role": "user", "content": "Hello there"}]);
    let plain = format!("{SYSTEM}<|im_start|>user\nHello there<|im_end|>\n");
    // Rendered without the generation prompt unless asked (vLLM's default for embeddings).
    let (chat, n) = embedding_of(s, "/v1/embeddings", json!({"messages": user}));
    let (text, m) = embedding_of(s, "/v1/embeddings", json!({"input": plain}));
    assert_eq!((chat.clone(), n), (text, m));
    let (pooled, _) = embedding_of(s, "/pooling", json!({"messages": user}));
    assert_eq!(pooled, chat);

    let (chat, n) = embedding_of(s, "/v1/embeddings", json!({"messages": user, "add_generation_prompt": true}));
    let (text, m) = embedding_of(s, "/v1/embeddings", json!({"input": format!("{plain}<|im_start|>assistant\n")}));
    assert_eq!((chat, n), (text, m));

    // continue_final_message leaves the last message open: no end of turn after it.
    let open = json!([{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "General"}]);
    let (chat, n) = embedding_of(s, "/v1/embeddings", json!({"messages": open, "continue_final_message": true}));
    let (text, m) = embedding_of(s, "/v1/embeddings", json!({"input": format!("{plain}<|im_start|>assistant\nGeneral")}));
    assert_eq!((chat, n), (text, m));

    // truncate_prompt_tokens cuts the rendered prompt.
    let v = ok(s, "/v1/embeddings", json!({"messages": user, "truncate_prompt_tokens": 5}));
    assert_eq!(v["usage"]["prompt_tokens"], 5);

    bad(s, "/v1/embeddings", json!({"messages": user, "input": "x"}), "messages");
    bad(s, "/v1/embeddings", json!({"messages": []}), "messages");
    bad(s, "/v1/embeddings", json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role");
    bad(
        s,
        "/v1/embeddings",
        json!({"messages": open, "continue_final_message": true, "add_generation_prompt": true}),
        "continue_final_message",
    );
    bad(s, "/v1/embeddings", json!({"messages": user, "chat_template": "{{ messages }}"}), "chat_template");
    // An empty one asks nothing and is accepted; options for a processor this text model
    // lacks are refused.
    bad(s, "/v1/embeddings", json!({"messages": user, "mm_processor_kwargs": {"num_crops": 4}}), "mm_processor_kwargs");
}

#[test]
fn a_request_template_and_its_kwargs_render_the_chat() {
    let s = start("tiny-llama", &["--task", "embed", "--dtype", "float32", "--trust-request-chat-template"]);
    let template = "{{ greeting }},{% for m in messages %} {{ m['content'] }}{% endfor %}";
    let (chat, _) = embedding_of(
        s,
        "/v1/embeddings",
        json!({
            "messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}],
            "chat_template": template,
            "chat_template_kwargs": {"greeting": "Hi"},
        }),
    );
    let (text, _) = embedding_of(s, "/v1/embeddings", json!({"input": "Hi, one two"}));
    assert_eq!(chat, text);
    bad(s, "/v1/embeddings", json!({"messages": [{"role": "user", "content": "x"}], "chat_template": "{% if %}"}), "chat_template");
}

#[test]
fn a_model_without_a_chat_template_refuses_messages() {
    let s = start("tiny-bert-cls", &["--dtype", "float32"]);
    let e = bad(s, "/classify", json!({"messages": [{"role": "user", "content": "hi"}]}), "messages");
    assert!(e["error"]["message"].as_str().unwrap().contains("no chat template"), "{e}");
    // and keeps serving
    ok(s, "/classify", json!({"input": "hi"}));
}

#[test]
fn sequence_classification_matches_transformers() {
    let refs = reference_items("tiny_llama_cls.json");
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let v = ok(classifier(), "/classify", json!({"input": texts}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), refs.len());
    for (d, r) in data.iter().zip(&refs) {
        let id = r["id"].as_str().unwrap();
        assert_eq!(d["num_classes"], 2);
        assert_eq!(d["label"], r["label"], "{id}");
        for k in 0..2 {
            close(id, &d["probs"][k], &r["probs"][k]);
        }
    }
    let tokens: usize = refs.iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    let v = ok(classifier(), "/classify", json!({"input": refs[2]["input_ids"]}));
    close("ids", &v["data"][0]["probs"][1], &refs[2]["probs"][1]);
    // A classifier neither embeds nor scores pairs.
    let (status, _) = classifier().post("/v1/embeddings", &json!({"input": "a"}));
    assert_eq!(status, 400);
    let (status, _) = classifier().post("/score", &json!({"text_1": "a", "text_2": "b"}));
    assert_eq!(status, 400);
}

#[test]
fn a_one_label_decoder_scores_and_reranks_by_its_sigmoid() {
    let refs = reference_items("tiny_llama_rerank.json");
    let query = refs[0]["text"].as_str().unwrap();
    let docs: Vec<&str> = refs[..4].iter().map(|r| r["text_pair"].as_str().unwrap()).collect();
    let v = ok(reranker(), "/score", json!({"text_1": query, "text_2": docs}));
    for (k, r) in refs[..4].iter().enumerate() {
        close(r["id"].as_str().unwrap(), &v["data"][k]["score"], &r["sigmoid"][0]);
    }
    let tokens: usize = refs[..4].iter().map(|r| r["input_ids"].as_array().unwrap().len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);

    let mut want: Vec<(usize, f64)> = refs[..4].iter().enumerate().map(|(i, r)| (i, r["sigmoid"][0].as_f64().unwrap())).collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let v = ok(reranker(), "/v1/rerank", json!({"query": query, "documents": docs, "top_n": 2}));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, (i, score)) in results.iter().zip(&want) {
        assert_eq!(r["index"], *i, "{v}");
        close("rerank", &r["relevance_score"], &json!(score));
    }
}

/// The shipped SmolLM2 GGUF pooled as vLLM pools a decoder: its last token, normalised;
/// alone or batched with other inputs, the same vector.
#[test]
fn the_gguf_decoder_embeds_under_task_embed() {
    let s = Server::start(&["--task", "embed", "--dtype", "float32"]);
    let texts = ["The capital of France is Paris.", "a", "Digits 12345 and more words here"];
    let v = ok(&s, "/v1/embeddings", json!({"input": texts}));
    let batched: Vec<Vec<f64>> = v["data"].as_array().unwrap().iter().map(|d| floats(&d["embedding"])).collect();
    for (t, b) in texts.iter().zip(&batched) {
        assert_eq!(b.len(), 576);
        let norm = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{t}: norm {norm}");
        let (alone, _) = embedding_of(&s, "/v1/embeddings", json!({"input": t}));
        assert!(max_diff(&alone, b) < 1e-4, "{t}");
    }
    assert!(cosine(&batched[0], &batched[1]) < 0.9999, "different texts, different vectors");
    // Its chat template renders messages; a generation request is refused.
    let (chat, n) = embedding_of(&s, "/v1/embeddings", json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(chat.len(), 576);
    assert!(n > 10, "the default system message is rendered: {n} tokens");
    let (status, _) = s.post("/v1/completions", &json!({"prompt": "a"}));
    assert_eq!(status, 400);
}
