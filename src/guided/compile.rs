//! Constraints → guides, with llguidance over our tokenizer. `Guides` builds the token
//! trie and parser factory once (on the first constrained request, in a guide-stage
//! worker), and keeps compiled guides by constraint so a repeated schema costs a lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{Value, json};
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::{Constraint, TagStructure, Whitespace, gbnf_to_lark};
use crate::model::tokenizer::Tokenizer;

/// Compiled guides kept at most; the least recently used goes first.
const CACHE_CAPACITY: usize = 256;

/// Why a constraint could not be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    /// The schema, regex or grammar is wrong; the parser's message.
    #[error("{0}")]
    Invalid(String),
    /// This model's tokenizer cannot be mapped to bytes for guided decoding.
    #[error("structured outputs are not available for this model: {0}")]
    Unavailable(String),
}

/// Our tokenizer as llguidance sees it: every token's bytes in a trie, and a way to
/// tokenize text.
struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| self.tokenizer.encode(text, false).unwrap_or_default())
    }
}

/// The compiler and cache of guides for one tokenizer.
pub struct Guides {
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<u32>,
    factory: OnceLock<Result<ParserFactory, String>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, (Arc<Guide>, u64)>,
    clock: u64,
    hits: u64,
}

impl Guides {
    /// Nothing is built until the first `compile`; `eos_ids` end a choice, and are
    /// allowed exactly where the constraint accepts.
    pub fn new(tokenizer: Arc<Tokenizer>, eos_ids: Vec<u32>) -> Self {
        Guides { tokenizer, eos_ids, factory: OnceLock::new(), cache: Mutex::default() }
    }

    fn factory(&self) -> Result<&ParserFactory, CompileError> {
        self.factory
            .get_or_init(|| build_factory(&self.tokenizer, &self.eos_ids))
            .as_ref()
            .map_err(|e| CompileError::Unavailable(e.clone()))
    }

    /// The guide for `c`, compiled now or found in the cache.
    pub fn compile(&self, c: &Constraint) -> Result<Arc<Guide>, CompileError> {
        let key = c.cache_key();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.clock += 1;
            let now = cache.clock;
            if let Some((g, used)) = cache.map.get_mut(&key) {
                *used = now;
                let g = g.clone();
                cache.hits += 1;
                return Ok(g);
            }
        }
        let factory = self.factory()?;
        let grammar = grammar_of(c)?;
        let parser = factory.create_parser(grammar).map_err(|e| CompileError::Invalid(e.to_string()))?;
        let guide = Arc::new(Guide { parser, vocab: self.tokenizer.vocab_size() });
        // Fail now, not at the first step, when the start state already has no way on.
        guide.start().mask().map_err(CompileError::Invalid)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.map.len() >= CACHE_CAPACITY {
            if let Some(oldest) = cache.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) {
                cache.map.remove(&oldest);
            }
        }
        let now = cache.clock;
        cache.map.insert(key, (guide.clone(), now));
        Ok(guide)
    }

    /// Compilations answered from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).hits
    }
}

fn build_factory(tokenizer: &Arc<Tokenizer>, eos_ids: &[u32]) -> Result<ParserFactory, String> {
    let json: Value = serde_json::from_str(&tokenizer.to_json()?).map_err(|e| e.to_string())?;
    let mut words = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())?;
    words.resize(words.len().max(tokenizer.vocab_size()), Vec::new());
    let eos = *eos_ids.first().ok_or("the model names no end-of-sequence token")?;
    let info = TokRxInfo::new(words.len() as u32, eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_ids);
    let env: TokEnv = Arc::new(Env { trie, tokenizer: tokenizer.clone() });
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    factory.quiet();
    Ok(factory)
}

/// The grammar llguidance compiles for a constraint.
fn grammar_of(c: &Constraint) -> Result<TopLevelGrammar, CompileError> {
    Ok(match c {
        Constraint::Json { schema, whitespace } => {
            let mut schema = match schema {
                Value::Bool(true) => json!({}),
                Value::Object(_) => schema.clone(),
                other => return Err(CompileError::Invalid(format!("a JSON schema must be an object or true, got {other}"))),
            };
            let options = match whitespace {
                Whitespace::Flexible => None,
                Whitespace::Compact => Some(json!({"whitespace_flexible": false})),
                Whitespace::Pattern(p) => Some(json!({"whitespace_pattern": p})),
            };
            if let (Some(o), Some(map)) = (options, schema.as_object_mut()) {
                map.entry("x-guidance").or_insert(o);
            }
            TopLevelGrammar::from_json_schema(schema)
        }
        Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
        Constraint::Choice(choices) => {
            let alternatives: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
            TopLevelGrammar::from_regex(&format!("(?:{})", alternatives.join("|")))
        }
        Constraint::Grammar(g) if g.contains("::=") => {
            TopLevelGrammar::from_lark(gbnf_to_lark(g).map_err(CompileError::Invalid)?)
        }
        Constraint::Grammar(g) => TopLevelGrammar::from_lark(g.clone()),
        Constraint::StructuralTag { structures, triggers } => {
            TopLevelGrammar::from_lark(structural_tag_lark(structures, triggers).map_err(CompileError::Invalid)?)
        }
    })
}

/// The Lark grammar of a structural tag: text free of triggers, where each trigger (the
/// text up to and including it is one lexeme, so the lexer never has to give bytes back)
/// is followed by the rest of one of its structures' `begin`, the JSON, and the `end`.
pub fn structural_tag_lark(structures: &[TagStructure], triggers: &[String]) -> Result<String, String> {
    if triggers.is_empty() || triggers.iter().any(String::is_empty) {
        return Err("a structural tag needs at least one trigger, none of them empty".into());
    }
    if structures.is_empty() {
        return Err("a structural tag needs at least one structure".into());
    }
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let any_trigger = triggers.iter().map(|t| escape_regex(t)).collect::<Vec<_>>().join("|");
    let mut out = format!(
        "start: tagged* FREE\nFREE: /(?s:.*)/ & ~/(?s:.*)(?:{any_trigger})(?s:.*)/\n"
    );
    let mut alternatives = Vec::new();
    for (i, t) in triggers.iter().enumerate() {
        let mine: Vec<&TagStructure> = structures.iter().filter(|s| s.begin.starts_with(t.as_str())).collect();
        if mine.is_empty() {
            continue;
        }
        out.push_str(&format!("UPTO_{i}: FREE {}\n", quote(t)));
        let bodies: Vec<String> = mine
            .iter()
            .map(|s| {
                let rest = &s.begin[t.len()..];
                let schema = serde_json::to_string(&s.schema).expect("a value serializes");
                let open = if rest.is_empty() { String::new() } else { format!("{} ", quote(rest)) };
                format!("{open}%json {schema} {}", quote(&s.end))
            })
            .collect();
        alternatives.push(format!("UPTO_{i} ({})", bodies.join(" | ")));
    }
    if let Some(s) = structures.iter().find(|s| !triggers.iter().any(|t| s.begin.starts_with(t.as_str()))) {
        return Err(format!("the structure beginning {:?} starts with none of the triggers", s.begin));
    }
    out.push_str(&format!("tagged: {}\n", alternatives.join(" | ")));
    Ok(out)
}

/// `s` as a regular expression that matches exactly `s`.
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A compiled constraint: the start state every sequence under it copies.
pub struct Guide {
    parser: TokenParser,
    vocab: usize,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide").finish_non_exhaustive()
    }
}

impl Guide {
    /// A fresh walk for one sequence. Walks of one guide share its lexer's caches.
    pub fn start(&self) -> GuideState {
        GuideState { matcher: Matcher::new(Ok(self.parser.clone())), vocab: self.vocab, gate: None }
    }

    /// A walk that begins only once the sequence has written one of `markers` (the end
    /// of a reasoning section): until then every token is allowed, and the constraint
    /// applies to what follows the marker.
    pub fn start_after(&self, markers: &[String]) -> GuideState {
        let mut state = self.start();
        let env = state.matcher.tok_env().ok();
        if let (Some(env), false) = (env, markers.is_empty()) {
            state.gate = Some(Gate { markers: markers.iter().map(|m| m.as_bytes().to_vec()).collect(), written: Vec::new(), env });
        }
        state
    }
}

/// Holds a constraint back until one of its markers has been written.
struct Gate {
    markers: Vec<Vec<u8>>,
    /// The bytes written so far (the tail that could still hold a marker).
    written: Vec<u8>,
    env: TokEnv,
}

impl Gate {
    /// Takes a token's bytes; true once a marker has been written.
    fn passes(&mut self, token: u32) -> bool {
        let bytes = self.env.tok_trie().token(token);
        // Special tokens carry a marker byte before their text.
        let bytes = bytes.strip_prefix(&[TokTrie::SPECIAL_TOKEN_MARKER]).unwrap_or(bytes);
        self.written.extend_from_slice(bytes);
        if self.markers.iter().any(|m| self.written.windows(m.len()).any(|w| w == m.as_slice())) {
            return true;
        }
        let keep = self.markers.iter().map(Vec::len).max().unwrap_or(0);
        if self.written.len() > keep {
            self.written.drain(..self.written.len() - keep);
        }
        false
    }
}

/// One sequence's place in its guide.
pub struct GuideState {
    matcher: Matcher,
    vocab: usize,
    /// Set while the constraint waits for its start (the end of reasoning).
    gate: Option<Gate>,
}

impl std::fmt::Debug for GuideState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuideState").field("finished", &self.is_finished()).finish()
    }
}

impl GuideState {
    /// The tokens allowed next, EOS among them exactly when the text so far is complete;
    /// None while the constraint has not begun (every token is allowed).
    pub fn mask(&mut self) -> Result<Option<TokenMask>, String> {
        if self.gate.is_some() {
            return Ok(None);
        }
        self.matcher.compute_mask().map(|v| Some(TokenMask { bits: v, vocab: self.vocab })).map_err(|e| e.to_string())
    }

    /// Takes a generated token (not EOS: the engine ends the choice there).
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        if let Some(gate) = &mut self.gate {
            if gate.passes(token) {
                self.gate = None;
            }
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The constraint is satisfied and nothing more may follow.
    pub fn is_finished(&self) -> bool {
        self.gate.is_none() && self.matcher.is_stopped() && !self.matcher.is_error()
    }
}

/// The set of tokens a sequence may produce next.
#[derive(Clone)]
pub struct TokenMask {
    bits: SimpleVob,
    vocab: usize,
}

impl std::fmt::Debug for TokenMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenMask({} of {})", self.count(), self.vocab)
    }
}

impl TokenMask {
    /// A mask over `vocab` tokens that allows exactly `allowed`.
    pub fn from_allowed(vocab: usize, allowed: &[u32]) -> Self {
        let mut bits = SimpleVob::alloc(vocab);
        allowed.iter().filter(|&&t| (t as usize) < vocab).for_each(|&t| bits.allow_token(t));
        TokenMask { bits, vocab }
    }

    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.bits.len() && self.bits.is_allowed(token)
    }

    pub fn count(&self) -> usize {
        self.bits.num_set()
    }

    /// Bit `i % 32` of word `i / 32` is token `i`; bits at or past `vocab_size()` are 0.
    pub fn words(&self) -> &[u32] {
        self.bits.as_slice()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn disallow(&mut self, token: u32) {
        if (token as usize) < self.bits.len() {
            self.bits.disallow_token(token);
        }
    }

    /// The allowed ids, in order.
    pub fn to_vec(&self) -> Vec<u32> {
        self.bits.to_list()
    }
}
