//! The structured-output fields of a generation request, in every spelling clients send —
//! OpenAI's `response_format`, vLLM's `guided_*` fields and newer vLLM's
//! `structured_outputs` object — read into one `Constraint`. What a constraint says (is
//! the schema valid, does the regex parse) is checked when the guide stage compiles it.

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::guided::{Constraint, RequestedConstraint, TagStructure, Whitespace};
use super::Fields;

/// The names `guided_decoding_backend` accepts; every one is served by the same engine.
const BACKENDS: [&str; 7] = ["auto", "llguidance", "guidance", "xgrammar", "outlines", "lm-format-enforcer", "lm_format_enforcer"];

/// Takes every structured-output field from the body. At most one constraint may be set.
pub fn take_constraint(f: &mut Fields) -> Result<Option<RequestedConstraint>, ApiError> {
    let mut found: Vec<(String, Constraint)> = Vec::new();
    let mut whitespace = Whitespace::Flexible;

    if let Some(rf) = f.take::<Map<String, Value>>("response_format")? {
        if let Some(c) = response_format(&rf)? {
            found.push(("response_format".into(), c));
        }
    }
    if let Some(v) = f.take::<Value>("guided_json")? {
        found.push(("guided_json".into(), json_constraint("guided_json", v)?));
    }
    if let Some(r) = f.take::<String>("guided_regex")? {
        found.push(("guided_regex".into(), Constraint::Regex(r)));
    }
    if let Some(c) = f.take::<Vec<String>>("guided_choice")? {
        found.push(("guided_choice".into(), choice("guided_choice", c)?));
    }
    if let Some(g) = f.take::<String>("guided_grammar")? {
        found.push(("guided_grammar".into(), grammar("guided_grammar", g)?));
    }
    if let Some(v) = f.take::<Value>("structural_tag")? {
        found.push(("structural_tag".into(), structural_tag("structural_tag", v)?));
    }
    if let Some(so) = f.take::<Map<String, Value>>("structured_outputs")? {
        structured_outputs(so, &mut found, &mut whitespace)?;
    }
    if let Some(p) = f.take::<String>("guided_whitespace_pattern")? {
        whitespace = Whitespace::Pattern(p);
    }
    if let Some(b) = f.take::<String>("guided_decoding_backend")? {
        backend(&b, &mut whitespace)?;
    }

    match found.len() {
        0 => Ok(None),
        1 => {
            let (field, mut constraint) = found.pop().expect("one");
            if let Constraint::Json { whitespace: w, .. } = &mut constraint {
                *w = whitespace;
            }
            Ok(Some(RequestedConstraint { field, constraint }))
        }
        _ => Err(ApiError::invalid(
            found[1].0.clone(),
            format!(
                "Only one structured-output constraint may be set per request; got `{}` and `{}`.",
                found[0].0, found[1].0
            ),
        )),
    }
}

fn response_format(rf: &Map<String, Value>) -> Result<Option<Constraint>, ApiError> {
    let any_json = || Constraint::Json { schema: serde_json::json!({"type": "object"}), whitespace: Whitespace::Flexible };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(any_json())),
        Some("json_schema") => {
            let Some(Value::Object(js)) = rf.get("json_schema") else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "`response_format` of type json_schema needs a `json_schema` object (with `name` and `schema`).",
                ));
            };
            if let Some(strict) = js.get("strict") {
                if !strict.is_boolean() && !strict.is_null() {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.strict",
                        "`response_format.json_schema.strict` must be a boolean.",
                    ));
                }
            }
            // OpenAI makes `schema` optional: without one, any JSON object is allowed.
            let schema = match js.get("schema") {
                None | Some(Value::Null) => return Ok(Some(any_json())),
                Some(s) => s.clone(),
            };
            json_constraint("response_format.json_schema.schema", schema).map(Some)
        }
        Some("structural_tag") => structural_tag("response_format", Value::Object(rf.clone())).map(Some),
        Some(other) => Err(ApiError::invalid(
            "response_format.type",
            format!("Unknown `response_format` type {other:?}; allowed are text, json_object, json_schema, structural_tag."),
        )),
        None => Err(ApiError::invalid(
            "response_format.type",
            "`response_format` needs a `type`: text, json_object, json_schema or structural_tag.",
        )),
    }
}

/// A schema sent as an object, `true`, or a string holding either.
fn json_constraint(param: &str, v: Value) -> Result<Constraint, ApiError> {
    let schema = match v {
        Value::String(s) => serde_json::from_str(&s)
            .map_err(|e| ApiError::invalid(param, format!("`{param}` is not valid JSON: {e}.")))?,
        v => v,
    };
    match schema {
        Value::Object(_) | Value::Bool(true) => Ok(Constraint::Json { schema, whitespace: Whitespace::Flexible }),
        other => Err(ApiError::invalid(
            param,
            format!("`{param}` must be a JSON schema (an object), got {other}."),
        )),
    }
}

fn choice(param: &str, c: Vec<String>) -> Result<Constraint, ApiError> {
    if c.is_empty() {
        return Err(ApiError::invalid(param, format!("`{param}` must list at least one choice.")));
    }
    Ok(Constraint::Choice(c))
}

fn grammar(param: &str, g: String) -> Result<Constraint, ApiError> {
    if g.trim().is_empty() {
        return Err(ApiError::invalid(param, format!("`{param}` must not be empty.")));
    }
    Ok(Constraint::Grammar(g))
}

/// A structural tag: `{"structures": [{"begin", "schema", "end"}, …], "triggers": […]}`,
/// as an object or a string holding one.
fn structural_tag(param: &str, v: Value) -> Result<Constraint, ApiError> {
    let bad = |what: &str| ApiError::invalid(param, format!("`{param}` {what}"));
    let v = match v {
        Value::String(s) => serde_json::from_str(&s).map_err(|e| bad(&format!("is not valid JSON: {e}.")))?,
        v => v,
    };
    let Value::Object(mut o) = v else {
        return Err(bad("must be an object with `structures` and `triggers`."));
    };
    if o.contains_key("format") {
        return Err(bad("uses the `format` form of structural tags, which is not supported yet; send `structures` and `triggers`."));
    }
    let triggers: Vec<String> = serde_json::from_value(o.remove("triggers").unwrap_or(Value::Null))
        .map_err(|_| bad("needs `triggers`, a list of strings."))?;
    let list = match o.remove("structures") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(bad("needs `structures`, a non-empty list of {begin, schema, end}.")),
    };
    let mut structures = Vec::with_capacity(list.len());
    for (i, s) in list.into_iter().enumerate() {
        let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(begin), Some(end)) = (text("begin"), text("end")) else {
            return Err(bad(&format!("structure {i} needs string `begin` and `end`.")));
        };
        let schema = match s.get("schema") {
            Some(v @ (Value::Object(_) | Value::Bool(true))) => v.clone(),
            None | Some(Value::Null) => serde_json::json!({}),
            Some(_) => return Err(bad(&format!("structure {i}: `schema` must be a JSON schema object."))),
        };
        structures.push(TagStructure { begin, schema, end });
    }
    if triggers.is_empty() {
        return Err(bad("needs at least one trigger."));
    }
    Ok(Constraint::StructuralTag { structures, triggers })
}

/// Newer vLLM's `structured_outputs: {json, regex, choice, grammar, json_object, ...}`.
fn structured_outputs(
    so: Map<String, Value>,
    found: &mut Vec<(String, Constraint)>,
    whitespace: &mut Whitespace,
) -> Result<(), ApiError> {
    let param = |k: &str| format!("structured_outputs.{k}");
    let string = |k: &str, v: Value| -> Result<String, ApiError> {
        match v {
            Value::String(s) => Ok(s),
            _ => Err(ApiError::invalid(param(k), format!("`structured_outputs.{k}` must be a string."))),
        }
    };
    let flag = |k: &str, v: &Value| -> Result<bool, ApiError> {
        v.as_bool().ok_or_else(|| ApiError::invalid(param(k), format!("`structured_outputs.{k}` must be a boolean.")))
    };
    for (k, v) in so {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "json" => found.push((param(&k), json_constraint(&param(&k), v)?)),
            "regex" => found.push((param(&k), Constraint::Regex(string(&k, v)?))),
            "choice" => {
                let c: Vec<String> = serde_json::from_value(v).map_err(|_| {
                    ApiError::invalid(param(&k), "`structured_outputs.choice` must be a list of strings.")
                })?;
                found.push((param(&k), choice(&param(&k), c)?));
            }
            "grammar" => found.push((param(&k), grammar(&param(&k), string(&k, v)?)?)),
            "json_object" => {
                if flag(&k, &v)? {
                    found.push((
                        param(&k),
                        Constraint::Json { schema: serde_json::json!({"type": "object"}), whitespace: Whitespace::Flexible },
                    ));
                }
            }
            "structural_tag" => found.push((param(&k), structural_tag(&param(&k), v)?)),
            "whitespace_pattern" => *whitespace = Whitespace::Pattern(string(&k, v)?),
            "disable_any_whitespace" => {
                if flag(&k, &v)? && *whitespace == Whitespace::Flexible {
                    *whitespace = Whitespace::Compact;
                }
            }
            // With one engine there is nothing to fall back to.
            "disable_fallback" => {
                flag(&k, &v)?;
            }
            "disable_additional_properties" => {
                if flag(&k, &v)? {
                    return Err(ApiError::invalid(
                        param(&k),
                        "`structured_outputs.disable_additional_properties` is not supported yet; set \"additionalProperties\": false in the schema instead.",
                    ));
                }
            }
            other => {
                return Err(ApiError::invalid(
                    param(other),
                    format!(
                        "Unknown field `structured_outputs.{other}`; allowed are json, regex, choice, grammar, json_object, structural_tag, whitespace_pattern, disable_any_whitespace, disable_fallback."
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `guided_decoding_backend`: a name, optionally with options (`xgrammar:disable-any-whitespace`).
fn backend(spec: &str, whitespace: &mut Whitespace) -> Result<(), ApiError> {
    let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
    if !BACKENDS.contains(&name) {
        return Err(ApiError::invalid(
            "guided_decoding_backend",
            format!("Unknown `guided_decoding_backend` {name:?}; allowed are {}.", BACKENDS.join(", ")),
        ));
    }
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match opt {
            "disable-any-whitespace" => {
                if *whitespace == Whitespace::Flexible {
                    *whitespace = Whitespace::Compact;
                }
            }
            "no-fallback" => {}
            other => {
                return Err(ApiError::invalid(
                    "guided_decoding_backend",
                    format!(
                        "Unknown `guided_decoding_backend` option {other:?}; allowed are disable-any-whitespace, no-fallback."
                    ),
                ));
            }
        }
    }
    Ok(())
}
