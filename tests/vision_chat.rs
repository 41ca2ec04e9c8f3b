//! Qwen2-VL over HTTP: chats with images (data: URLs, file:// under the allowed folder,
//! http:// from a loopback server this test starts) against transformers' float32 greedy
//! reference for the tiny random-weight model (tests/fixtures/reference/tiny_qwen2_vl.json,
//! written by qwen2_vl_reference.py): the same tokens, top-5 logprobs within 1e-4, the
//! same prompt length after placeholder expansion. Bad images and URLs are clear 400s, and
//! the server goes on serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use base64::Engine as _;
use common::Server;
use common::greedy::generate;
use serde_json::{Value, json};

const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen2-vl");
const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images");
const ARGS: &[&str] = &[
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen2-vl"),
    "--dtype",
    "float32",
    "--served-model-name",
    "tiny-vl",
    "--limit-mm-per-prompt",
    "{\"image\": 2}",
    "--allowed-local-media-path",
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images"),
];
const TOL: f64 = 1e-4;

fn reference() -> Value {
    let path = format!("{}/tests/fixtures/reference/tiny_qwen2_vl.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn case(id: &str) -> Value {
    reference()["generate"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("no case {id}")).clone()
}

fn data_url(name: &str) -> String {
    let bytes = std::fs::read(format!("{IMAGES}/{name}")).unwrap();
    let media = match name.rsplit('.').next().unwrap() {
        "png" => "image/png",
        "jpg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        other => panic!("{other}"),
    };
    format!("data:{media};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The file sent for a reference image. The JPEG goes as Pillow decoded it (a PNG of those
/// pixels, checked below against the reference's hash of them): sluice's pure-Rust JPEG
/// decoder rounds a few levels differently from libjpeg-turbo (tests/vision_preprocess.rs),
/// which moves a tiny random model's logits by ~1e-2, more than this comparison allows.
fn sent_as(name: &str) -> &str {
    if name == "photo_60x90.jpg" { "photo_60x90_decoded.png" } else { name }
}

/// The reference's messages with each `{"type": "image", "image": NAME}` part as an
/// OpenAI image part whose URL `url(NAME)` gives.
fn messages(case: &Value, url: impl Fn(&str) -> String) -> Value {
    let mut m = case["messages"].clone();
    for msg in m.as_array_mut().unwrap() {
        if let Some(parts) = msg["content"].as_array_mut() {
            for p in parts {
                if p["type"] == "image" {
                    let name = sent_as(p["image"].as_str().unwrap()).to_string();
                    *p = json!({"type": "image_url", "image_url": {"url": url(&name), "detail": "auto"}});
                }
            }
        }
    }
    m
}

/// Sends a reference case greedily and compares tokens, logprobs and top-5 with it.
fn check(server: &Server, case: &Value, msgs: Value, stream: bool) {
    let name = case["id"].as_str().unwrap();
    let mut prompt = json!({"messages": msgs});
    if let Some(kw) = case.get("mm_processor_kwargs").filter(|v| !v.is_null()) {
        prompt["mm_processor_kwargs"] = kw.clone();
    }
    let want = common::greedy::reference_ids(case);
    let got = generate_with(server, &prompt, name, want.len(), stream);
    let ids: Vec<u32> = got.tokens.iter().map(|t| t.0).collect();
    assert_eq!(ids, want, "{name}: token ids differ from transformers");
    assert_eq!(got.usage["prompt_tokens"].as_u64().unwrap() as usize, case["prompt_token_ids"].as_array().unwrap().len(), "{name}: prompt tokens");
    for (i, (_, lp, top)) in got.tokens.iter().enumerate() {
        let w = case["output_logprobs"][i].as_f64().unwrap();
        assert!((lp - w).abs() < TOL, "{name}: logprob {i}: {lp} vs {w}");
        let want_top: Vec<(u32, f64)> = case["top_logprobs"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["token_id"].as_u64().unwrap() as u32, e["logprob"].as_f64().unwrap()))
            .collect();
        let fifth = top.last().unwrap().1;
        for (id, wl) in want_top {
            match top.iter().find(|t| t.0 == id) {
                Some((_, l)) => assert!((l - wl).abs() < TOL, "{name}: top logprob of {id} at {i}: {l} vs {wl}"),
                // Only a tie at the fifth place may swap an alternative out.
                None => assert!((wl - fifth).abs() < TOL, "{name}: {id} ({wl}) missing from the top 5 at {i}: {top:?}"),
            }
        }
    }
}

/// `generate` with the request's extra fields (mm_processor_kwargs) passed through.
fn generate_with(server: &Server, prompt: &Value, name: &str, max_tokens: usize, stream: bool) -> common::greedy::Answer {
    if prompt.get("mm_processor_kwargs").is_none() {
        return generate(server, "tiny-vl", prompt, name, max_tokens, stream);
    }
    let body = json!({
        "model": "tiny-vl", "messages": prompt["messages"], "temperature": 0, "max_tokens": max_tokens,
        "logprobs": true, "top_logprobs": 5, "return_tokens_as_token_ids": true,
        "mm_processor_kwargs": prompt["mm_processor_kwargs"],
    });
    let (status, resp) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{name}: {resp}");
    let c = &resp["choices"][0];
    common::greedy::Answer {
        text: c["message"]["content"].as_str().unwrap().to_string(),
        finish: c["finish_reason"].clone(),
        usage: resp["usage"].clone(),
        tokens: common::greedy::parse_logprobs(c, true),
    }
}

#[test]
fn the_decoded_jpeg_is_what_pillow_decoded() {
    use sha2::{Digest, Sha256};
    let want = reference()["preprocess"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["image"] == "photo_60x90.jpg")
        .unwrap()["decoded_rgb_sha256"]
        .clone();
    let bytes = std::fs::read(format!("{IMAGES}/{}", sent_as("photo_60x90.jpg"))).unwrap();
    let rgb = sluice::vision::decode::decode(&bytes, u64::MAX).unwrap();
    let got: String = Sha256::digest(&rgb.data).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(json!(got), want);
}

#[test]
fn greedy_chats_with_images_match_transformers() {
    let s = Server::shared(ARGS);
    for id in ["one_image", "two_images", "image_after_turns", "max_pixels", "text_only"] {
        let c = case(id);
        check(s, &c, messages(&c, data_url), false);
    }
    // Streamed, and the same image read from the allowed folder.
    let c = case("two_images");
    check(s, &c, messages(&c, data_url), true);
    check(s, &c, messages(&c, |n| format!("file://{IMAGES}/{n}")), false);
}

/// `/tokenize` with image parts answers what the model is fed: each image's placeholder
/// repeated once per merged patch, equal to transformers' processor's `input_ids` and to
/// the chat's `usage.prompt_tokens`.
#[test]
fn tokenize_expands_image_placeholders() {
    let s = Server::shared(ARGS);
    for id in ["one_image", "two_images", "image_after_turns", "max_pixels", "text_only"] {
        let c = case(id);
        let mut body = json!({"model": "tiny-vl", "messages": messages(&c, data_url), "return_token_strs": true});
        if let Some(kw) = c.get("mm_processor_kwargs").filter(|v| !v.is_null()) {
            body["mm_processor_kwargs"] = kw.clone();
        }
        let (status, r) = s.post("/tokenize", &body);
        assert_eq!(status, 200, "{id}: {r}");
        assert_eq!(r["tokens"], c["prompt_token_ids"], "{id}: token ids differ from transformers' processor");
        assert_eq!(r["count"].as_u64().unwrap() as usize, c["prompt_token_ids"].as_array().unwrap().len(), "{id}");
        assert!(r["max_model_len"].as_u64().unwrap() > 0, "{id}: {r}");
        let pads = r["token_strs"].as_array().unwrap().iter().filter(|t| *t == "<|image_pad|>").count();
        assert_eq!(pads as u64, c["num_image_tokens"].as_u64().unwrap_or(0), "{id}: image tokens");
    }
    // The same count as the chat that sends the same messages (a file:// image this time).
    let c = case("two_images");
    let msgs = messages(&c, |n| format!("file://{IMAGES}/{n}"));
    let (_, tok) = s.post("/tokenize", &json!({"messages": msgs}));
    let (status, chat) = s.post("/v1/chat/completions", &json!({"model": "tiny-vl", "messages": msgs, "max_tokens": 1}));
    assert_eq!(status, 200, "{chat}");
    assert_eq!(tok["count"], chat["usage"]["prompt_tokens"], "{tok}");
}

#[test]
fn the_prefix_cache_keeps_images_apart() {
    let s = Server::shared(ARGS);
    let c = case("one_image");
    let ask = |image: &str, salt: &str| {
        let body = json!({"model": "tiny-vl", "messages": messages(&c, |_| data_url(image)), "temperature": 0,
            "max_tokens": 8, "logprobs": true, "cache_salt": salt, "return_tokens_as_token_ids": true});
        let (status, r) = s.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{r}");
        common::greedy::parse_logprobs(&r["choices"][0], true)
    };
    // The same text with two images of the same size: the same tokens up to the
    // placeholders. The second must not reuse the first one's cached blocks.
    let first = ask("gradient_64x48.png", "a");
    let other = ask("black_56x56.png", "a");
    let alone = ask("black_56x56.png", "b");
    let ids = |a: &Vec<(u32, f64, Vec<(u32, f64)>)>| a.iter().map(|t| t.0).collect::<Vec<_>>();
    assert_eq!(ids(&other), ids(&alone), "an image's answer depends on what was cached before it");
    for (a, b) in other.iter().zip(&alone) {
        assert!((a.1 - b.1).abs() < 1e-5, "an image's logprobs depend on what was cached before it: {a:?} vs {b:?}");
    }
    assert_ne!(ids(&first), ids(&other), "two images, one answer");
}

#[test]
fn bad_images_are_clear_400s() {
    let s = Server::shared(ARGS);
    let chat = |parts: Value, extra: Value| {
        let mut body = json!({"model": "tiny-vl", "messages": [{"role": "user", "content": parts}], "max_tokens": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s.post("/v1/chat/completions", &body)
    };
    let image = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let png = std::fs::read(format!("{IMAGES}/gradient_64x48.png")).unwrap();
    let truncated = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png[..png.len() / 2]));
    let bmp = format!("data:image/bmp;base64,{}", base64::engine::general_purpose::STANDARD.encode(std::fs::read(format!("{IMAGES}/tiny_20x20.bmp")).unwrap()));
    let cases = [
        (json!([image(&truncated)]), json!({}), "broken or truncated PNG"),
        (json!([image(&bmp)]), json!({}), "not supported"),
        (json!([image(&data_url("black_56x56.png")), image(&data_url("black_56x56.png")), image(&data_url("black_56x56.png"))]), json!({}), "at most 2"),
        (json!([image("file:///etc/passwd")]), json!({}), "outside the folder"),
        (json!([image(&format!("file://{IMAGES}/../tiny-qwen2-vl/config.json"))]), json!({}), "outside the folder"),
        (json!([image(&format!("file://{IMAGES}/missing.png"))]), json!({}), "cannot be read"),
        (json!([image(&data_url("black_56x56.png"))]), json!({"mm_processor_kwargs": {"max_pixels": 10}}), "max_pixels must be at least"),
        (json!([image(&data_url("black_56x56.png"))]), json!({"mm_processor_kwargs": {"size": 10}}), "min_pixels and max_pixels"),
        (json!([{"type": "text", "text": "<|image_pad|>"}, image(&data_url("black_56x56.png"))]), json!({}), "image placeholders"),
    ];
    for (parts, extra, says) in cases {
        let (status, r) = chat(parts.clone(), extra);
        assert_eq!(status, 400, "{parts}: {r}");
        assert_eq!(r["error"]["type"], "invalid_request_error", "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{says}: {r}");
    }
    // /tokenize reads images the same way, with the same 400s.
    for (parts, extra, says) in [
        (json!([image(&truncated)]), json!({}), "broken or truncated PNG"),
        (json!([image(&data_url("black_56x56.png")), image(&data_url("black_56x56.png")), image(&data_url("black_56x56.png"))]), json!({}), "at most 2"),
        (json!([image("file:///etc/passwd")]), json!({}), "outside the folder"),
        (json!([image(&data_url("black_56x56.png"))]), json!({"mm_processor_kwargs": {"size": 10}}), "min_pixels and max_pixels"),
    ] {
        let mut body = json!({"model": "tiny-vl", "messages": [{"role": "user", "content": parts}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, r) = s.post("/tokenize", &body);
        assert_eq!(status, 400, "{body}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{says}: {r}");
    }
    // Still serving, a JPEG too.
    let (status, r) = chat(json!([image(&data_url("photo_60x90.jpg")), {"type": "text", "text": "Hi"}]), json!({}));
    assert_eq!(status, 200, "{r}");
}

/// A loopback HTTP server answering by path: `/<name>` an image of the fixtures, `/missing`
/// a 404, `/page` an HTML page, `/slow` an image after 3 s, `/huge` more bytes than allowed.
fn image_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = |conn: &mut std::net::TcpStream, status: &str, ct: &str, body: &[u8]| {
                    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(body);
                };
                match path.as_str() {
                    "/missing" => reply(&mut conn, "404 Not Found", "text/plain", b"no"),
                    "/page" => reply(&mut conn, "200 OK", "text/html", b"<html></html>"),
                    "/slow" => {
                        std::thread::sleep(std::time::Duration::from_secs(3));
                        reply(&mut conn, "200 OK", "image/png", &std::fs::read(format!("{IMAGES}/black_56x56.png")).unwrap());
                    }
                    "/huge" => {
                        let head = "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n";
                        let _ = conn.write_all(head.as_bytes());
                        let chunk = vec![0u8; 1 << 20];
                        for _ in 0..24 {
                            if conn.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                    }
                    p => {
                        let name = p.trim_start_matches('/');
                        let ct = if name.ends_with(".jpg") { "image/jpeg" } else { "image/png" };
                        reply(&mut conn, "200 OK", ct, &std::fs::read(format!("{IMAGES}/{name}")).unwrap());
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn images_fetched_over_http() {
    let base = image_server();
    let s = Server::start_env(ARGS, &[("VLLM_IMAGE_FETCH_TIMEOUT", Some("1"))]);
    let c = case("two_images");
    check(&s, &c, messages(&c, |n| format!("{base}/{n}")), false);
    let image = |url: String| json!([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]);
    for (path, says) in [
        ("/missing", "answered HTTP 404"),
        ("/page", "is not an image: its content type is \"text/html\""),
        ("/slow", "took longer than 1 s"),
        ("/huge", "over the limit"),
    ] {
        let body = json!({"model": "tiny-vl", "messages": [{"role": "user", "content": image(format!("{base}{path}"))}], "max_tokens": 2});
        let (status, r) = s.post("/v1/chat/completions", &body);
        assert_eq!(status, 400, "{path}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{says}: {r}");
    }
    // Nothing listens on port 9 of loopback: a refused connection.
    let body = json!({"model": "tiny-vl", "messages": [{"role": "user", "content": image("http://127.0.0.1:9/x.png".into())}], "max_tokens": 2});
    let (status, r) = s.post("/v1/chat/completions", &body);
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("fetching http://127.0.0.1:9/x.png failed"), "{r}");
    let (status, r) = s.post("/v1/chat/completions", &json!({"model": "tiny-vl", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}));
    assert_eq!(status, 200, "{r}");
}

#[test]
fn file_urls_need_the_flag() {
    let s = Server::start(&[MODEL_DIR, "--dtype", "float32"]);
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": format!("file://{IMAGES}/black_56x56.png")}}]}], "max_tokens": 2});
    let (status, r) = s.post("/v1/chat/completions", &body);
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("--allowed-local-media-path"), "{r}");
}

/// DSE's recipe (`--task embed`, examples/template_dse_qwen2_vl.jinja): the last token's
/// final hidden state of image + text chats, normalised, against transformers'.
#[test]
fn dse_embeddings_of_image_chats_match_transformers() {
    const EMBED: &[&str] = &[
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-qwen2-vl"),
        "--task",
        "embed",
        "--dtype",
        "float32",
        "--served-model-name",
        "tiny-vl",
        "--chat-template",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/template_dse_qwen2_vl.jinja"),
        "--limit-mm-per-prompt",
        "{\"image\": 2}",
    ];
    let s = Server::shared(EMBED);
    for case in reference()["embed"].as_array().unwrap() {
        let name = case["id"].as_str().unwrap();
        let body = json!({"model": "tiny-vl", "messages": messages(case, data_url), "encoding_format": "float"});
        let (status, r) = s.post("/v1/embeddings", &body);
        assert_eq!(status, 200, "{name}: {r}");
        assert_eq!(r["usage"]["prompt_tokens"].as_u64().unwrap() as usize, case["prompt_token_ids"].as_array().unwrap().len(), "{name}");
        let got = common::floats(&r["data"][0]["embedding"]);
        let want = common::floats(&case["embedding"]);
        let dot: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cosine = dot / (norm(&got) * norm(&want));
        assert!(cosine >= 0.9999, "{name}: cosine {cosine}");
    }
    // An image that cannot be read is a 400 here too; text alone still embeds.
    let bad = json!({"model": "tiny-vl", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]});
    let (status, r) = s.post("/v1/embeddings", &bad);
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("Image 1 of 1"), "{r}");
    let (status, r) = s.post("/v1/embeddings", &json!({"model": "tiny-vl", "input": "just text"}));
    assert_eq!(status, 200, "{r}");
}

/// Image and text chats batched together (sent at once, twice over) give each the answer
/// it gets alone; an image chat under a JSON schema answers valid JSON.
#[test]
fn image_and_text_chats_batch_together() {
    let s = Server::shared(ARGS);
    let ids = ["one_image", "two_images", "text_only", "image_after_turns", "max_pixels"];
    std::thread::scope(|scope| {
        for id in ids.iter().chain(ids.iter()) {
            scope.spawn(move || {
                let c = case(id);
                check(s, &c, messages(&c, data_url), false);
            });
        }
        scope.spawn(move || {
            let c = case("one_image");
            let schema = json!({"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}}, "required": ["colour"]});
            let body = json!({"model": "tiny-vl", "messages": messages(&c, data_url), "max_tokens": 40,
                "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}});
            let (status, r) = s.post("/v1/chat/completions", &body);
            assert_eq!(status, 200, "{r}");
            let text = r["choices"][0]["message"]["content"].as_str().unwrap();
            if r["choices"][0]["finish_reason"] == "stop" {
                let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                assert!(v["colour"].is_string(), "{v}");
            } else {
                assert!(text.starts_with('{'), "{text:?}");
            }
        });
    });
}

/// `run-batch` takes image chats too (the media stage of stages/batch.toml).
#[test]
fn run_batch_answers_image_chats() {
    let c = case("one_image");
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "tiny-vl", "messages": messages(&c, data_url), "temperature": 0, "max_tokens": 24,
        "logprobs": true, "return_tokens_as_token_ids": true}});
    let (answers, _) =
        common::run_batch_lines(&["--model", MODEL_DIR, "--dtype", "float32", "--served-model-name", "tiny-vl"], &[line]);
    let answer = &answers[0];
    assert_eq!(answer["response"]["status_code"], 200, "{answer}");
    let got: Vec<(u32, f64, Vec<(u32, f64)>)> = common::greedy::parse_logprobs(&answer["response"]["body"]["choices"][0], true);
    let ids: Vec<Value> = got.iter().map(|t| json!(t.0)).collect();
    assert_eq!(Value::Array(ids), c["output_token_ids"], "{answer}");
}

/// The vision tower runs in the encode_images stage: a pipeline file without it serves
/// text, and answers an image chat with a 400 that names the missing stage.
#[test]
fn images_need_the_encode_images_stage() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/stages/serve.toml")).unwrap();
    let start = shipped.find("[[stage]]\nkind = \"encode_images\"").expect("serve.toml has encode_images");
    let end = start + shipped[start..].find("\n\n").unwrap() + 2;
    let without = format!("{}{}", &shipped[..start], &shipped[end..]);
    let dir = std::env::temp_dir().join(format!("sluice-no-encode-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.toml");
    std::fs::write(&path, without).unwrap();
    let mut args = ARGS.to_vec();
    args.extend(["--pipeline", path.to_str().unwrap()]);
    let s = Server::start(&args);
    let c = case("one_image");
    let (status, r) = s.post("/v1/chat/completions", &json!({"model": "tiny-vl", "messages": messages(&c, data_url), "max_tokens": 2}));
    assert_eq!(status, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("`encode_images` stage"), "{r}");
    let text = case("text_only");
    let (status, r) = s.post("/v1/chat/completions", &json!({"model": "tiny-vl", "messages": text["messages"], "max_tokens": 2}));
    assert_eq!(status, 200, "{r}");
    let _ = std::fs::remove_dir_all(&dir);
}
