//! Chat templates: Hugging Face's Jinja templates rendered with minijinja, set up the way
//! transformers sets up Jinja (`trim_blocks`, `lstrip_blocks`, Python string and dict
//! methods, `raise_exception`, `strftime_now`, and a `tojson` that writes what Python's
//! `json.dumps` writes), so prompts come out byte for byte as transformers renders them.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

const NAME: &str = "chat";

pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("len", &self.source.len()).finish()
    }
}

impl ChatTemplate {
    /// Compiles a template; the error names the line where Jinja parsing failed.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned()).map_err(|e| describe(&e))?;
        Ok(ChatTemplate { env, source: source.to_owned() })
    }

    /// Renders with `messages`, `add_generation_prompt`, the special tokens and any extra
    /// variables (tools, documents, chat_template_kwargs).
    pub fn render<S: Serialize>(&self, context: &S) -> Result<String, String> {
        let tmpl = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        tmpl.render(minijinja::value::Serde(context)).map_err(|e| describe(&e))
    }

    /// Whether the template walks message content as a list of parts
    /// (`for part in message['content']` or `content[0]`), vLLM's "openai" format. A test
    /// such as `'</think>' in message.content` reads the content as a string.
    pub fn iterates_content_parts(&self) -> bool {
        let s = self.source.replace([' ', '\n', '\t'], "");
        if s.contains("content'][0]") || s.contains("content\"][0]") || s.contains("content[0]") {
            return true;
        }
        s.split("{%").skip(1).any(|block| {
            let statement = block.split("%}").next().unwrap_or("").trim_start_matches(['-', '+']);
            statement.starts_with("for")
                && ["inmessage['content']", "inmessage[\"content\"]", "inmessage.content"].iter().any(|p| statement.contains(p))
        })
    }
}

fn describe(e: &Error) -> String {
    // raise_exception's message is the template author's own words, for the client.
    if e.kind() == ErrorKind::InvalidOperation {
        return e.detail().unwrap_or("invalid operation").to_string();
    }
    let mut msg = e.to_string();
    if let Some(line) = e.line() {
        if !msg.contains("line") {
            msg = format!("{msg} (chat template line {line})");
        }
    }
    msg
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`; without an indent Python separates items
/// with ", " and keys with ": ".
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        Some(v) if !v.is_none() => Some(usize::try_from(v)?),
        _ => None,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    if sort_keys {
        sort_json_keys(&mut json);
    }
    let Some(n) = indent else {
        return Ok(Value::from_safe_string(python_json(&json)));
    };
    let pad = vec![b' '; n];
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(&pad));
    json.serialize(&mut ser).map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    Ok(Value::from_safe_string(String::from_utf8(out).expect("serde_json writes UTF-8")))
}

fn sort_json_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut val) in entries {
                sort_json_keys(&mut val);
                map.insert(k, val);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_json_keys),
        _ => {}
    }
}

/// JSON as Python's `json.dumps` writes it by default: ", " and ": " separators,
/// non-ASCII kept.
pub fn python_json(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    v.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter)).expect("JSON values serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Compact JSON with Python's default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let out = t.render(&json!({"x": {"b": [1, "é<>"], "a": null}})).unwrap();
        assert_eq!(out, "{\"b\": [1, \"é<>\"], \"a\": null}|{\n  \"b\": [\n    1,\n    \"é<>\"\n  ],\n  \"a\": null\n}");
    }

    #[test]
    fn python_methods_and_whitespace_control() {
        let src = "{% for m in messages %}\n  {{ m['role'].upper() }}:{{ m['content'].strip() }}\n{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t.render(&json!({"messages": [{"role": "user", "content": "  hi "}]})).unwrap();
        assert_eq!(out, "  USER:hi\n");
    }

    #[test]
    fn raise_exception_message_reaches_the_caller() {
        let t = ChatTemplate::new("{{ raise_exception('Only user and assistant roles are supported!') }}").unwrap();
        assert_eq!(t.render(&json!({})).unwrap_err(), "Only user and assistant roles are supported!");
    }

    #[test]
    fn content_parts_only_when_a_loop_walks_them() {
        let parts = ChatTemplate::new("{% for m in messages %}{%- for item in message['content'] -%}{{ item.text }}{% endfor %}{% endfor %}");
        assert!(parts.unwrap().iterates_content_parts());
        assert!(ChatTemplate::new("{{ messages[0]['content'][0]['text'] }}").unwrap().iterates_content_parts());
        // Qwen3's templates test the content as a string.
        let string = ChatTemplate::new("{% for message in messages %}{% if '</think>' in message.content %}x{% endif %}{% endfor %}");
        assert!(!string.unwrap().iterates_content_parts());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = ChatTemplate::new("line one\n{% if %}").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
