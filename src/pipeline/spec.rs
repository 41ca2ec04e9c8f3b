//! Pipeline files (`stages/*.toml`): parsed, checked against the JSON Schema in
//! `schemas/pipeline.schema.json`, and turned into a `PipelineSpec`. Every problem is
//! reported with the file, the line, and the stage it concerns.

use std::path::Path;

use serde_json::{Map, Value as Json};
use toml_edit::{Document, Item, Table, Value};

pub const SCHEMA: &str = include_str!("../../schemas/pipeline.schema.json");

/// One stage as the file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    pub name: String,
    pub kind: String,
    pub workers: usize,
    pub queue: usize,
    /// 1-based line of the stage's table in the file.
    pub line: usize,
    /// 1-based line of each field of the stage, for messages about one of them.
    pub field_lines: Vec<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    pub name: String,
    /// What feeds the first stage ("http", "jsonl").
    pub source: String,
    pub stages: Vec<StageSpec>,
    /// Where the file came from, for messages.
    pub origin: String,
}

/// A problem in a pipeline file, already phrased for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl PipelineSpec {
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError(format!("{}: cannot read the pipeline file: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, SpecError> {
        let doc = Document::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            SpecError(format!("{origin}:{line}: not valid TOML: {}", e.message()))
        })?;
        let json = item_to_json(doc.as_item());

        let schema: Json = serde_json::from_str(SCHEMA).expect("the pipeline schema is valid JSON");
        let validator = jsonschema::validator_for(&schema).expect("the pipeline schema compiles");
        let mut problems: Vec<(usize, String)> = validator
            .iter_errors(&json)
            .map(|err| {
                let pointer = err.instance_path().as_str().to_string();
                let line = span_of(&doc, &pointer).map(|s| line_of(text, s)).unwrap_or(1);
                let whom = describe_location(&json, &pointer);
                let what = match err.kind() {
                    // List every allowed value (the default message names only a few).
                    jsonschema::error::ValidationErrorKind::Enum { options } => {
                        let allowed: Vec<String> =
                            options.as_array().into_iter().flatten().map(|o| o.to_string()).collect();
                        format!("{} is not one of {}", err.instance(), allowed.join(", "))
                    }
                    _ => err.to_string(),
                };
                (line, format!("{origin}:{line}: {whom}{what}"))
            })
            .collect();
        if !problems.is_empty() {
            problems.sort();
            let lines: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
            return Err(SpecError(lines.join("\n")));
        }

        let stages_item = doc.as_table().get("stage").and_then(Item::as_array_of_tables);
        let mut stages = Vec::new();
        for (i, stage) in json["stage"].as_array().into_iter().flatten().enumerate() {
            let kind = stage["kind"].as_str().unwrap_or_default().to_string();
            let line = stages_item
                .and_then(|a| a.get(i))
                .and_then(|t| t.span())
                .map(|s| line_of(text, s.start))
                .unwrap_or(1);
            stages.push(StageSpec {
                name: stage.get("name").and_then(Json::as_str).unwrap_or(&kind).to_string(),
                kind,
                workers: stage["workers"].as_u64().unwrap_or(1) as usize,
                queue: stage["queue"].as_u64().unwrap_or(1) as usize,
                line,
                field_lines: ["kind", "name", "workers", "queue"]
                    .iter()
                    .filter_map(|f| span_of(&doc, &format!("/stage/{i}/{f}")).map(|s| (f.to_string(), line_of(text, s))))
                    .collect(),
            });
        }
        for (i, s) in stages.iter().enumerate() {
            if let Some(first) = stages[..i].iter().find(|o| o.name == s.name) {
                return Err(SpecError(format!(
                    "{origin}:{}: stage {} ({:?}): the name is already used by the stage on line {}; give one of them a `name`",
                    s.line,
                    i + 1,
                    s.name,
                    first.line
                )));
            }
        }
        Ok(PipelineSpec {
            name: json["name"].as_str().unwrap_or_default().to_string(),
            source: json["source"].as_str().unwrap_or_default().to_string(),
            stages,
            origin: origin.to_string(),
        })
    }

    /// "stages/serve.toml:12: stage 3 (\"tokenize\")" for messages about one stage.
    pub fn locate(&self, stage: &StageSpec) -> String {
        let i = self.stages.iter().position(|s| s == stage).unwrap_or(0);
        format!("{}:{}: stage {} ({:?})", self.origin, stage.line, i + 1, stage.name)
    }

    /// As `locate`, at the line of one of the stage's fields ("kind", "workers", …).
    pub fn locate_field(&self, stage: &StageSpec, field: &str) -> String {
        let i = self.stages.iter().position(|s| s == stage).unwrap_or(0);
        let line = stage.field_lines.iter().find(|(f, _)| f == field).map_or(stage.line, |(_, l)| *l);
        format!("{}:{line}: stage {} ({:?}): {field}", self.origin, i + 1, stage.name)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// "stage 2 (\"render\"): " when the pointer is inside a stage table.
fn describe_location(json: &Json, pointer: &str) -> String {
    let mut parts = pointer.split('/').skip(1);
    match (parts.next(), parts.next().and_then(|i| i.parse::<usize>().ok())) {
        (Some("stage"), Some(i)) => {
            let stage = &json["stage"][i];
            let name = stage.get("name").or_else(|| stage.get("kind")).and_then(Json::as_str);
            let field = parts.next().map(|f| format!("{f}: ")).unwrap_or_default();
            match name {
                Some(n) => format!("stage {} ({n:?}): {field}", i + 1),
                None => format!("stage {}: {field}", i + 1),
            }
        }
        (Some(field), _) => format!("{field}: "),
        _ => String::new(),
    }
}

/// Byte offset where the value at a JSON pointer starts in the TOML text (or, when the
/// pointer goes past what the file has, where its closest existing parent starts).
fn span_of(doc: &Document<&str>, pointer: &str) -> Option<usize> {
    let segs: Vec<&str> = pointer.split('/').skip(1).collect();
    find_in_table(doc.as_table(), &segs)
}

fn find_in_table(t: &Table, segs: &[&str]) -> Option<usize> {
    let here = t.span().map(|s| s.start);
    let Some((first, _)) = segs.split_first() else { return here };
    t.get(first).and_then(|item| find_in_item(item, &segs[1..])).or(here)
}

fn find_in_item(item: &Item, segs: &[&str]) -> Option<usize> {
    let here = item.span().map(|s| s.start);
    let Some((first, rest)) = segs.split_first() else { return here };
    let inner = match item {
        Item::Table(t) => find_in_table(t, segs),
        Item::ArrayOfTables(a) => first.parse().ok().and_then(|i: usize| a.get(i)).and_then(|t| find_in_table(t, rest)),
        Item::Value(Value::Array(a)) => {
            first.parse().ok().and_then(|i: usize| a.get(i)).and_then(|v| v.span()).map(|s| s.start)
        }
        Item::Value(Value::InlineTable(t)) => t.get(first).and_then(|v| v.span()).map(|s| s.start),
        _ => None,
    };
    inner.or(here)
}

fn item_to_json(item: &Item) -> Json {
    match item {
        Item::None => Json::Null,
        Item::Value(v) => value_to_json(v),
        Item::Table(t) => {
            Json::Object(t.iter().map(|(k, v)| (k.to_string(), item_to_json(v))).collect::<Map<_, _>>())
        }
        Item::ArrayOfTables(a) => Json::Array(
            a.iter()
                .map(|t| Json::Object(t.iter().map(|(k, v)| (k.to_string(), item_to_json(v))).collect()))
                .collect(),
        ),
    }
}

fn value_to_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.value().clone()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value()).map(Json::Number).unwrap_or(Json::Null),
        Value::Boolean(b) => Json::Bool(*b.value()),
        Value::Datetime(d) => Json::String(d.value().to_string()),
        Value::Array(a) => Json::Array(a.iter().map(value_to_json).collect()),
        Value::InlineTable(t) => {
            Json::Object(t.iter().map(|(k, v)| (k.to_string(), value_to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
source = "http"

[[stage]]
kind = "render"
workers = 2
queue = 8

[[stage]]
kind = "engine"
workers = 1
queue = 8
"#;

    #[test]
    fn parses_stages_with_lines() {
        let spec = PipelineSpec::parse(GOOD, "t.toml").unwrap();
        assert_eq!(spec.stages.len(), 2);
        assert_eq!(spec.stages[0].name, "render");
        assert_eq!(spec.stages[0].workers, 2);
        assert_eq!(spec.stages[1].line, 10);
    }

    #[test]
    fn bad_number_names_file_line_and_stage() {
        let text = GOOD.replace("workers = 2", "workers = 0");
        let err = PipelineSpec::parse(&text, "t.toml").unwrap_err().0;
        assert!(err.starts_with("t.toml:7: stage 1 (\"render\"): workers: "), "{err}");
        assert!(err.contains("minimum"), "{err}");
    }

    #[test]
    fn missing_field_is_reported() {
        let text = GOOD.replace("queue = 8\n\n[[stage]]", "\n[[stage]]");
        let err = PipelineSpec::parse(&text, "t.toml").unwrap_err().0;
        assert!(err.contains("stage 1 (\"render\"): \"queue\" is a required property"), "{err}");
    }

    #[test]
    fn kinds_are_the_registry_s_to_check() {
        // Any kind name parses; the pipeline's catalog decides which exist
        // (runtime::tests), so the schema lists none.
        let text = GOOD.replace("kind = \"render\"", "kind = \"my_stage\"").replace("workers = 1", "workers = 3");
        let spec = PipelineSpec::parse(&text, "t.toml").unwrap();
        assert_eq!((spec.stages[0].kind.as_str(), spec.stages[1].workers), ("my_stage", 3));
    }

    #[test]
    fn toml_syntax_errors_have_a_line() {
        let err = PipelineSpec::parse("name = \"x\"\n[[stage]\n", "t.toml").unwrap_err().0;
        assert!(err.starts_with("t.toml:2: not valid TOML"), "{err}");
    }
}
