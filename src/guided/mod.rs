//! Structured outputs: what a request's text must match (a `Constraint`), compiled once
//! per distinct constraint into a token-level automaton (`Guide`), and walked per sequence
//! (`GuideState`) to give the tokens allowed at each step.
//!
//! One engine serves every kind: llguidance compiles JSON schemas, regular expressions and
//! Lark grammars to an Earley parser over a lexer, and answers masks over the whole
//! vocabulary in microseconds. A choice is a regular expression of its alternatives; a GBNF
//! grammar is rewritten to Lark first (`gbnf`); a structural tag becomes a Lark grammar of
//! trigger-free text and tagged JSON.

mod compile;
mod gbnf;

pub use compile::{structural_tag_lark, CompileError, Guide, GuideState, Guides, TokenMask};
pub use gbnf::gbnf_to_lark;

use serde_json::Value;

/// How much whitespace a JSON constraint allows between tokens.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Whitespace {
    /// Any run of JSON whitespace (vLLM's default).
    #[default]
    Flexible,
    /// None: the most compact JSON (`disable_any_whitespace`).
    Compact,
    /// Whitespace matching this regular expression (`guided_whitespace_pattern`).
    Pattern(String),
}

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A JSON value valid under this schema (`json_object` is `{"type": "object"}`).
    Json { schema: Value, whitespace: Whitespace },
    /// A full match of this regular expression.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A sentence of this context-free grammar, in Lark syntax or GBNF.
    Grammar(String),
    /// Free text in which every trigger opens a tagged structure: one of the structures
    /// whose `begin` starts with that trigger, then JSON valid under its schema, then its
    /// `end` (vLLM's structural tags, as tool calls use them).
    StructuralTag { structures: Vec<TagStructure>, triggers: Vec<String> },
}

/// One kind of tagged section in a structural-tag constraint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TagStructure {
    pub begin: String,
    pub schema: Value,
    pub end: String,
}

/// A constraint and the request field that set it, which errors name.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedConstraint {
    pub field: String,
    pub constraint: Constraint,
}

impl Constraint {
    /// What the constraint is, as an error message names it.
    pub fn describe(&self) -> &'static str {
        match self {
            Constraint::Json { .. } => "JSON schema",
            Constraint::Regex(_) => "regular expression",
            Constraint::Choice(_) => "choice list",
            Constraint::Grammar(_) => "grammar",
            Constraint::StructuralTag { .. } => "structural tag",
        }
    }

    /// A string that two constraints share exactly when they compile to the same guide.
    pub fn cache_key(&self) -> String {
        let json = |v: &Value| serde_json::to_string(v).unwrap_or_default();
        match self {
            Constraint::Json { schema, whitespace } => format!("json\0{whitespace:?}\0{}", json(schema)),
            Constraint::Regex(r) => format!("regex\0{r}"),
            Constraint::Choice(c) => format!("choice\0{}", json(&Value::from(c.clone()))),
            Constraint::Grammar(g) => format!("grammar\0{g}"),
            Constraint::StructuralTag { structures, triggers } => {
                let s = serde_json::to_string(structures).unwrap_or_default();
                format!("tag\0{}\0{s}", json(&Value::from(triggers.clone())))
            }
        }
    }
}
