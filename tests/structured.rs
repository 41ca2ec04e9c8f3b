//! Structured outputs over HTTP against the real model: for each kind of constraint,
//! dozens of seeded samples at temperature 1.0 all satisfy it (schemas checked by a JSON
//! Schema validator, regexes by a full match, grammars by a parser of their language);
//! streaming and n > 1; other sampling fields still apply; bad constraints are 400s.

#[macro_use]
mod common;

use common::{MODEL, Server};
use serde_json::{Value, json};

/// float32 without the prefix cache: the tests that compare two runs of one seeded request
/// then compare the same arithmetic.
const ARGS: &[&str] = &["--dtype", "float32", "--no-enable-prefix-caching"];

fn server() -> &'static Server {
    Server::shared(ARGS)
}

/// A chat request at temperature 1.0 with `n` seeded choices and `extra` merged in;
/// returns (content, finish_reason) per choice.
fn chat(content: &str, n: usize, seed: u64, max_tokens: usize, extra: Value) -> Vec<(String, String)> {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
                          "max_tokens": max_tokens, "temperature": 1.0, "seed": seed, "n": n});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, r) = server().post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), n);
    choices
        .iter()
        .map(|c| (c["message"]["content"].as_str().unwrap().to_string(), c["finish_reason"].as_str().unwrap().to_string()))
        .collect()
}

/// As `chat`, on the completions API.
fn complete(prompt: &str, n: usize, seed: u64, max_tokens: usize, extra: Value) -> Vec<(String, String)> {
    let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
                          "seed": seed, "n": n});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, r) = server().post("/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), n, "{r}");
    choices
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_string(), c["finish_reason"].as_str().unwrap().to_string()))
        .collect()
}

/// 32 samples: two seeded requests of 16 choices each.
fn samples(f: impl Fn(u64) -> Vec<(String, String)>) -> Vec<(String, String)> {
    let mut all = f(11);
    all.extend(f(12));
    assert_eq!(all.len(), 32);
    all
}

fn all_stopped(outs: &[(String, String)]) {
    for (text, finish) in outs {
        assert_eq!(finish, "stop", "a bounded constraint ends by itself: {text:?}");
    }
}

const PERSON: &str = r#"{"type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "fish"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2}
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": false}"#;

#[test]
fn json_schema_outputs_validate() {
    let schema: Value = serde_json::from_str(PERSON).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    // OpenAI's spelling, strict, with vLLM's option for compact JSON.
    let outs = samples(|seed| {
        chat("Describe a person as JSON.", 16, seed, 80, json!({
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": schema}},
            "guided_decoding_backend": "xgrammar:disable-any-whitespace",
        }))
    });
    all_stopped(&outs);
    for (text, _) in &outs {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert!(validator.is_valid(&v), "{text:?} does not match the schema");
    }
    let distinct: std::collections::HashSet<_> = outs.iter().map(|o| &o.0).collect();
    assert!(distinct.len() > 10, "temperature 1.0 should vary the samples: {distinct:?}");
}

#[test]
fn guided_json_and_structured_outputs_spellings_agree() {
    // vLLM's guided_json as a string, and newer vLLM's structured_outputs: the same
    // constraint, so the same seeded draws.
    let a = chat("Describe a person as JSON.", 4, 5, 80, json!({"guided_json": PERSON, "guided_whitespace_pattern": " ?"}));
    let b = chat("Describe a person as JSON.", 4, 5, 80, json!({"structured_outputs": {
        "json": serde_json::from_str::<Value>(PERSON).unwrap(), "whitespace_pattern": " ?"}}));
    assert_eq!(a, b);
    let validator = jsonschema::validator_for(&serde_json::from_str(PERSON).unwrap()).unwrap();
    for (text, finish) in &a {
        assert_eq!(finish, "stop");
        assert!(validator.is_valid(&serde_json::from_str(text).unwrap()), "{text:?}");
        assert!(!text.contains("  ") && !text.contains('\n'), "whitespace is at most one space: {text:?}");
    }
}

/// Whether `text` is a prefix of some JSON text (serde_json runs out of input rather than
/// meeting a wrong character).
fn is_json_prefix(text: &str) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(_) => true,
        Err(e) => e.is_eof(),
    }
}

#[test]
fn json_object_outputs_are_objects_or_cut_prefixes() {
    let outs = samples(|seed| chat("Describe a cat as a JSON object.", 16, seed, 48, json!({"response_format": {"type": "json_object"}})));
    let mut whole = 0;
    for (text, finish) in &outs {
        if finish == "stop" {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
            assert!(v.is_object(), "{text:?}");
            whole += 1;
        } else {
            assert_eq!(finish, "length");
            assert!(text.trim_start().starts_with('{') && is_json_prefix(text), "not a JSON prefix: {text:?}");
        }
    }
    assert!(whole >= 8, "most objects should close within 48 tokens: {outs:?}");
}

#[test]
fn max_tokens_cuts_a_constraint_to_a_valid_prefix() {
    let outs = complete("Phone number:", 8, 3, 2, json!({"guided_regex": r"\(\d{3}\) \d{3}-\d{4}"}));
    let prefix = regex::Regex::new(r"^\((\d{0,3}(\) ?(\d{0,3}(-\d{0,4})?)?)?)?$").unwrap();
    for (text, finish) in &outs {
        assert_eq!(finish, "length", "{text:?}");
        assert!(prefix.is_match(text), "not a prefix of the pattern: {text:?}");
    }
}

#[test]
fn regex_outputs_match_in_full() {
    let pattern = r"[a-z]{2,8}@(example|test)\.(com|org)";
    let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let outs = samples(|seed| complete("An email address:", 16, seed, 24, json!({"guided_regex": pattern})));
    all_stopped(&outs);
    for (text, _) in &outs {
        assert!(full.is_match(text), "{text:?} does not match {pattern}");
    }
}

#[test]
fn choice_outputs_are_one_of_the_choices() {
    let choices = ["positive", "negative", "neutral", "mixed (both)"];
    let outs = samples(|seed| {
        chat("How does 'I loved it' sound?", 16, seed, 10, json!({"structured_outputs": {"choice": choices}}))
    });
    all_stopped(&outs);
    for (text, _) in &outs {
        assert!(choices.contains(&text.as_str()), "{text:?} is not a choice");
    }
    let seen: std::collections::HashSet<_> = outs.iter().map(|o| o.0.as_str()).collect();
    assert!(seen.len() >= 2, "temperature 1.0 picks more than one choice: {seen:?}");
}

/// Whether `s` is a sentence of EXPR below: a number of one or two digits, or a bracketed
/// pair of sentences joined by an operator.
fn is_expr(s: &str) -> bool {
    fn expr(b: &[u8]) -> Option<&[u8]> {
        match b.first()? {
            b'(' => {
                let rest = expr(&b[1..])?;
                let rest = rest.strip_prefix(b"+").or_else(|| rest.strip_prefix(b"-")).or_else(|| rest.strip_prefix(b"*"))?;
                expr(rest)?.strip_prefix(b")")
            }
            c if c.is_ascii_digit() => {
                let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
                (digits <= 2).then(|| &b[digits..])
            }
            _ => None,
        }
    }
    expr(s.as_bytes()).is_some_and(<[u8]>::is_empty)
}

const EXPR_LARK: &str = "start: expr\nexpr: NUM | \"(\" expr OP expr \")\"\nNUM: /[0-9]{1,2}/\nOP: /[-+*]/\n";
const EXPR_GBNF: &str = "# the same language\nroot ::= expr\nexpr ::= num | \"(\" expr [-+*] expr \")\"\nnum ::= [0-9] [0-9]?\n";

#[test]
fn grammar_outputs_are_sentences_of_the_grammar() {
    assert!(is_expr("((1+2)*30)") && !is_expr("(1+2") && !is_expr("123"));
    for grammar in [EXPR_LARK, EXPR_GBNF] {
        let outs = samples(|seed| chat("Write an arithmetic expression.", 16, seed, 40, json!({"guided_grammar": grammar})));
        all_stopped(&outs);
        for (text, _) in &outs {
            assert!(is_expr(text), "{text:?} is not in the grammar's language");
        }
        assert!(outs.iter().any(|(t, _)| t.starts_with('(')), "some samples should nest: {outs:?}");
    }
}

/// Checks a structural-tag output: free text, and after every trigger one of the
/// structures — its begin, JSON valid under its schema, its end; a last one cut by
/// max_tokens must be a JSON prefix. Returns how many complete tags it held.
fn check_tags(text: &str, begin: &str, end: &str, validator: &jsonschema::Validator, cut: bool) -> usize {
    let mut rest = text;
    let mut tags = 0;
    while let Some(at) = rest.find("<tool") {
        let after = &rest[at..];
        if !after.starts_with(begin) {
            assert!(cut && begin.starts_with(after), "a trigger not followed by a structure: {text:?}");
            return tags;
        }
        let body = &after[begin.len()..];
        match body.find(end) {
            Some(e) => {
                let v: Value = serde_json::from_str(&body[..e]).unwrap_or_else(|err| panic!("not JSON ({err}) in {text:?}"));
                assert!(validator.is_valid(&v), "{v} does not match the schema in {text:?}");
                tags += 1;
                rest = &body[e + end.len()..];
            }
            None => {
                assert!(cut, "an unclosed tag in a finished output: {text:?}");
                let prefix_ok = is_json_prefix(body)
                    || (0..body.len()).rev().any(|i| body.is_char_boundary(i) && serde_json::from_str::<Value>(&body[..i]).is_ok() && end.starts_with(&body[i..]));
                assert!(prefix_ok, "the cut tag is not a prefix of a structure: {text:?}");
                return tags;
            }
        }
    }
    tags
}

#[test]
fn structural_tags_wrap_valid_json_after_each_trigger() {
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                        "required": ["city"], "additionalProperties": false});
    let validator = jsonschema::validator_for(&schema).unwrap();
    let (begin, end) = ("<tool=weather>", "</tool>");
    let tag = json!({"type": "structural_tag", "triggers": ["<tool"],
                     "structures": [{"begin": begin, "schema": schema, "end": end}]});
    let prompt = "Q: weather in Paris?\nA: <tool=weather>{\"city\": \"Paris\"}</tool>\n\
                  Q: weather in Rome?\nA: <tool=weather>{\"city\": \"Rome\"}</tool>\nQ: weather in Oslo?\nA:";
    let outs = samples(|seed| complete(prompt, 16, seed, 40, json!({"response_format": tag})));
    let mut tags = 0;
    for (text, finish) in &outs {
        tags += check_tags(text, begin, end, &validator, finish == "length");
    }
    assert!(tags >= 16, "the few-shot prompt should call the tool in most samples: {outs:?}");
}

#[test]
fn streaming_choices_each_follow_the_constraint() {
    let schema: Value = serde_json::from_str(PERSON).unwrap();
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "A person as JSON."}],
        "max_tokens": 80, "temperature": 1.0, "seed": 21, "n": 3, "stream": true,
        "structured_outputs": {"json": schema, "disable_any_whitespace": true}});
    let events = server().post_sse("/v1/chat/completions", &body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut texts = vec![String::new(); 3];
    let mut finishes = vec![None; 3];
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                texts[i].push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finishes[i] = Some(f.to_string());
            }
        }
    }
    // The same request, not streamed, draws the same.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let (status, r) = server().post("/v1/chat/completions", &plain);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"].as_array().map(Vec::len), Some(3), "{r}");
    let validator = jsonschema::validator_for(&schema).unwrap();
    for i in 0..3 {
        assert_eq!(finishes[i].as_deref(), Some("stop"));
        assert!(validator.is_valid(&serde_json::from_str(&texts[i]).unwrap()), "{}", texts[i]);
        assert_eq!(r["choices"][i]["message"]["content"], texts[i]);
    }
}

#[test]
fn other_sampling_fields_still_apply() {
    // logit_bias pushes one choice's first token: every sample takes it, and it is still a choice.
    let (status, tok) = server().post("/tokenize", &json!({"model": MODEL, "prompt": "no"}));
    assert_eq!(status, 200, "{tok}");
    let no = tok["tokens"][0].as_u64().unwrap();
    let outs = complete("Is the sky green?", 8, 1, 5, json!({"guided_choice": ["yes", "no"], "logit_bias": {no.to_string(): 100}}));
    assert!(outs.iter().all(|(t, f)| t == "no" && f == "stop"), "{outs:?}");
    // Greedy under a constraint is deterministic; top_k 1 is greedy.
    let greedy = complete("An email address:", 1, 1, 24, json!({"guided_regex": "[a-z]{2,8}@example\\.com", "temperature": 0}));
    let top1 = complete("An email address:", 2, 9, 24, json!({"guided_regex": "[a-z]{2,8}@example\\.com", "top_k": 1}));
    assert_eq!(top1[0], greedy[0]);
    assert_eq!(top1[1], greedy[0]);
}

#[test]
fn bad_constraints_are_400s_before_anything_runs() {
    let chat = |extra: Value| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let cases: Vec<(&str, Value)> = vec![
        ("error_guided_bad_schema", chat(json!({"guided_json": {"type": "object", "properties": {"a": {"type": "strnig"}}}}))),
        ("error_guided_bad_regex", chat(json!({"guided_regex": "(ab"}))),
        ("error_guided_bad_grammar", chat(json!({"guided_grammar": "start: undefined_rule"}))),
        ("error_guided_bad_gbnf", chat(json!({"guided_grammar": "root ::= (\"a\""}))),
        ("error_guided_unknown_backend", chat(json!({"guided_regex": "a", "guided_decoding_backend": "magic"}))),
        ("error_guided_two_constraints", chat(json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}))),
        ("error_guided_schema_not_json", chat(json!({"guided_json": "{not json"}))),
        ("error_guided_response_format_type", chat(json!({"response_format": {"type": "yaml"}}))),
        ("error_guided_with_beam_search", chat(json!({"guided_choice": ["a", "b"], "use_beam_search": true, "n": 2}))),
        ("error_guided_structural_tag", chat(json!({"response_format": {"type": "structural_tag", "structures": [], "triggers": []}}))),
        ("error_guided_structural_tag_trigger", chat(json!({"structural_tag": {"triggers": ["<tool"],
            "structures": [{"begin": "[call]", "schema": {"type": "object"}, "end": "[/call]"}]}}))),
    ];
    for (name, body) in cases {
        let (status, resp) = server().post("/v1/chat/completions", &body);
        snap!(name, json!({"status": status, "body": resp}));
    }
    // The server goes on serving, and `text` is no constraint at all.
    let outs = chat(json!({"response_format": {"type": "text"}}));
    let (status, _) = server().post("/v1/chat/completions", &outs);
    assert_eq!(status, 200);
}
