//! Greedy output over HTTP against a transformers reference file: ids, logprobs, top-5.

use serde_json::{Value, json};

use super::Server;

/// Generated ids, logprobs and top-5 (id, logprob) lists from a completions-style or
/// chat-style logprobs object whose tokens are `token_id:N`.
pub fn parse_logprobs(choice: &Value, chat: bool) -> Vec<(u32, f64, Vec<(u32, f64)>)> {
    let id = |s: &str| s.strip_prefix("token_id:").unwrap().parse::<u32>().unwrap();
    if chat {
        choice["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let top = t["top_logprobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (id(e["token"].as_str().unwrap()), e["logprob"].as_f64().unwrap()))
                    .collect();
                (id(t["token"].as_str().unwrap()), t["logprob"].as_f64().unwrap(), top)
            })
            .collect()
    } else {
        let lp = &choice["logprobs"];
        let tokens = lp["tokens"].as_array().unwrap();
        (0..tokens.len())
            .map(|i| {
                let mut top: Vec<(u32, f64)> = lp["top_logprobs"][i]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (id(k), v.as_f64().unwrap()))
                    .collect();
                top.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
                (id(tokens[i].as_str().unwrap()), lp["token_logprobs"][i].as_f64().unwrap(), top)
            })
            .collect()
    }
}

/// Prompts beside the reference items made from them: as many of each, in the same order.
pub fn paired<'a>(prompts: &'a [Value], reference: &'a Value) -> Vec<(&'a Value, &'a Value)> {
    let items = reference["items"].as_array().expect("reference items");
    assert_eq!(prompts.len(), items.len(), "one reference item per prompt");
    for (p, i) in prompts.iter().zip(items) {
        assert_eq!(p["id"], i["id"], "prompts and reference items in the same order");
    }
    prompts.iter().zip(items).collect()
}

/// The token ids a reference item generated.
pub fn reference_ids(item: &Value) -> Vec<u32> {
    item["output_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// A reference item's per-position list of (id, logprob) alternatives.
pub fn reference_top(item: &Value, i: usize) -> Vec<(u32, f64)> {
    item["top_logprobs"][i]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no top_logprobs at {i}", item["id"]))
        .iter()
        .map(|e| (e["token_id"].as_u64().unwrap() as u32, e["logprob"].as_f64().unwrap()))
        .collect()
}

/// What one greedy request answered: the text, finish reason, usage, and per generated
/// token its id, logprob and top-5 (id, logprob) list.
pub struct Answer {
    pub text: String,
    pub finish: Value,
    pub usage: Value,
    pub tokens: Vec<(u32, f64, Vec<(u32, f64)>)>,
}

/// Sends one reference prompt greedily for `max_tokens`, with 5 top logprobs per token.
pub fn generate(server: &Server, model: &str, prompt: &Value, name: &str, max_tokens: usize, stream: bool) -> Answer {
    let chat = prompt.get("messages").is_some();
    let mut body = json!({
        "model": model,
        "temperature": 0,
        "max_tokens": max_tokens,
        "logprobs": if chat { json!(true) } else { json!(5) },
        "return_tokens_as_token_ids": true,
    });
    if chat {
        body["messages"] = prompt["messages"].clone();
        body["top_logprobs"] = json!(5);
    } else {
        body["prompt"] = prompt["prompt"].clone();
    }
    let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
    let (text, finish, usage, got) = if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let events = server.post_sse(path, &body);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let mut text = String::new();
        let mut finish = Value::Null;
        let mut usage = Value::Null;
        let mut got = Vec::new();
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap();
            if let Some(c) = v["choices"].get(0) {
                let piece = if chat { &c["delta"]["content"] } else { &c["text"] };
                text.push_str(piece.as_str().unwrap_or(""));
                if !c["finish_reason"].is_null() {
                    finish = c["finish_reason"].clone();
                }
                if !c["logprobs"].is_null() {
                    got.extend(parse_logprobs(c, chat));
                }
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        (text, finish, usage, got)
    } else {
        let (status, resp) = server.post(path, &body);
        assert_eq!(status, 200, "{name}: {resp}");
        let choices = resp["choices"].as_array().unwrap_or_else(|| panic!("{name}: no choices in {resp}"));
        assert_eq!(choices.len(), 1, "{name}: one choice");
        let c = &choices[0];
        let text = if chat { c["message"]["content"].clone() } else { c["text"].clone() };
        (text.as_str().unwrap().to_string(), c["finish_reason"].clone(), resp["usage"].clone(), parse_logprobs(c, chat))
    };
    for (i, (_, _, top)) in got.iter().enumerate() {
        assert_eq!(top.len(), 5, "{name}: {} alternatives at {i}, asked for 5", top.len());
    }
    Answer { text, finish, usage, tokens: got }
}

/// Sends one reference prompt and compares ids, logprobs (within `tol`), finish and usage
/// (and the text, with `check_text`).
pub fn check_model_item(server: &Server, model: &str, prompt: &Value, item: &Value, stream: bool, check_text: bool, tol: f64) {
    let name = item["id"].as_str().unwrap();
    let want_ids = reference_ids(item);
    let Answer { text, finish, usage, tokens: got } = generate(server, model, prompt, name, want_ids.len(), stream);

    if check_text {
        assert_eq!(text, item["output_text"].as_str().unwrap(), "{name}: text differs");
    }
    assert_eq!(finish, item["finish_reason"], "{name}: finish reason");
    assert_eq!(usage["prompt_tokens"], item["num_prompt_tokens"], "{name}: prompt tokens");
    assert_eq!(usage["completion_tokens"].as_u64().unwrap() as usize, want_ids.len(), "{name}: completion tokens");
    check_tokens(name, &got, item, tol);
}

/// Compares generated (id, logprob, top-5) triples with a reference item's, token by
/// token: ids equal, logprobs within `tol`, alternatives swapped only where they tie.
/// `got` may run past the reference only where the reference stopped for length.
pub fn check_tokens(name: &str, got: &[(u32, f64, Vec<(u32, f64)>)], item: &Value, tol: f64) {
    let want_ids = reference_ids(item);
    let n = want_ids.len();
    if item["finish_reason"] == "length" {
        assert!(got.len() >= n, "{name}: {} tokens, transformers made {n}", got.len());
    } else {
        assert_eq!(got.len(), n, "{name}: transformers stopped after {n} tokens");
    }
    let got = &got[..n];
    let got_ids: Vec<u32> = got.iter().map(|t| t.0).collect();
    assert_eq!(got_ids, want_ids, "{name}: token ids differ from transformers");
    let want_lp = item["output_logprobs"].as_array().unwrap();
    assert_eq!(want_lp.len(), n, "{name}: one reference logprob per token");
    for (i, (_, lp, top)) in got.iter().enumerate() {
        let w = want_lp[i].as_f64().unwrap();
        assert!((lp - w).abs() < tol, "{name}: logprob {i}: {lp} vs {w}");
        let wt = reference_top(item, i);
        assert_eq!(top.len(), wt.len(), "{name}: top logprobs at {i}: {top:?} vs {wt:?}");
        for (j, (g, w)) in top.iter().zip(&wt).enumerate() {
            assert!((g.1 - w.1).abs() < tol, "{name}: top {j} at {i}: {g:?} vs {w:?}");
            // Ids of alternatives may swap only where their logprobs (nearly) tie.
            if g.0 != w.0 {
                assert!((g.1 - w.1).abs() < 1e-4, "{name}: top {j} at {i}: {g:?} vs {w:?}");
            }
        }
    }
}
