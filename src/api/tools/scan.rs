//! Reading JSON that is still being written. Tool calls stream in as the model writes
//! them, so the parsers must find where a call's name and arguments are in text that may
//! stop anywhere: these helpers say how far a JSON value reaches, whether it is complete,
//! and where the `name` and arguments of a call object are, without needing the end.

/// Where a JSON value starting at the beginning of `s` ends: `Some(len)` when it is
/// complete, `None` when the text stops inside it (or it is not JSON at all, which the
/// caller finds out when it tries to parse the complete value). Numbers and literals are
/// complete only once something follows them, unless `last` says no more text comes.
pub fn value_end(s: &str, last: bool) -> Option<usize> {
    let b = s.as_bytes();
    match b.first()? {
        b'{' | b'[' => bracketed_end(b, b"{[", b"}]", b"\""),
        b'"' => quoted_end(b, 0, b'"'),
        _ => {
            let end = b.iter().position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t' | b';'));
            match end {
                Some(e) if e > 0 => Some(e),
                None if last && !b.is_empty() => Some(b.len()),
                _ => None,
            }
        }
    }
}

/// Where the bracketed value opening at `b[0]` ends, once it is closed: the brackets in
/// `open` and `close` nest, and strings between the `quotes` (with backslash escapes) are
/// skipped whole, brackets in them and all.
pub fn bracketed_end(b: &[u8], open: &[u8], close: &[u8], quotes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if quotes.contains(&c) {
            i = quoted_end(b, i, c)?;
            continue;
        }
        i += 1;
        if open.contains(&c) {
            depth += 1;
        } else if close.contains(&c) {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// The index just past the string that opens with the quote `q` at `b[start]`, if it is
/// closed.
pub fn quoted_end(b: &[u8], start: usize, q: u8) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == q => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Skips JSON whitespace from `at`.
pub fn skip_ws(s: &str, at: usize) -> usize {
    at + s[at..].len() - s[at..].trim_start_matches([' ', '\n', '\r', '\t']).len()
}

/// A call object (`{"name": …, "arguments": {…}}`) as far as it has been written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CallObject {
    /// The function's name, once its string is complete.
    pub name: Option<String>,
    /// The byte range of the arguments value in the text, and whether it is complete.
    pub args: Option<(usize, usize, bool)>,
    /// Just past the closing brace, once the object is complete.
    pub end: Option<usize>,
    /// The text is not a call object (a key is not a string, a colon is missing, …).
    pub malformed: bool,
}

/// Reads the call object that opens at `s[start]` (a `{`). `name_keys` and `args_keys`
/// say which keys hold the name and the arguments (formats differ: `arguments`,
/// `parameters`); the first key found of each wins.
pub fn call_object(s: &str, start: usize, name_keys: &[&str], args_keys: &[&str], last: bool) -> CallObject {
    let mut out = CallObject::default();
    let b = s.as_bytes();
    let mut i = start + 1;
    loop {
        i = skip_ws(s, i);
        if i >= b.len() {
            return out;
        }
        match b[i] {
            b'}' => {
                out.end = Some(i + 1);
                return out;
            }
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => {
                out.malformed = true;
                return out;
            }
        }
        let Some(key_end) = quoted_end(b, i, b'"') else { return out };
        let key: Option<String> = serde_json::from_str(&s[i..key_end]).ok();
        i = skip_ws(s, key_end);
        if i >= b.len() {
            return out;
        }
        if b[i] != b':' {
            out.malformed = true;
            return out;
        }
        i = skip_ws(s, i + 1);
        if i >= b.len() {
            return out;
        }
        let end = value_end(&s[i..], last).map(|e| i + e);
        let key = key.as_deref().unwrap_or("");
        if name_keys.contains(&key) && out.name.is_none() {
            match end {
                Some(e) => match serde_json::from_str::<serde_json::Value>(&s[i..e]) {
                    Ok(serde_json::Value::String(n)) => out.name = Some(n),
                    _ => {
                        out.malformed = true;
                        return out;
                    }
                },
                None => return out,
            }
        } else if args_keys.contains(&key) && out.args.is_none() {
            out.args = Some((i, end.unwrap_or(s.len()), end.is_some()));
        }
        match end {
            Some(e) => i = e,
            None => return out,
        }
    }
}

/// How much of the end of `text` could be the start of `marker`: that many bytes must
/// be held back until the next text says whether the marker follows.
pub fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len()).rev().find(|&k| text.ends_with(&marker[..k])).unwrap_or(0)
}

/// JSON as Python's `json.dumps` writes it, which is how vLLM's parsers serialize
/// arguments they rebuild: the chat templates' `tojson` writes it too.
pub use crate::model::chat_template::python_json;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_end_where_json_says() {
        assert_eq!(value_end(r#"{"a": "}", "b": [1, {"c": 2}]} tail"#, false), Some(30));
        assert_eq!(value_end(r#"{"a": "x\"}"#, false), None);
        assert_eq!(value_end(r#""x\"y" ,"#, false), Some(6));
        assert_eq!(value_end("12", false), None);
        assert_eq!(value_end("12", true), Some(2));
        assert_eq!(value_end("true}", false), Some(4));
    }

    #[test]
    fn call_objects_are_read_as_far_as_written() {
        let s = r#"{"name": "get_weather", "arguments": {"city": "Par"#;
        let c = call_object(s, 0, &["name"], &["arguments"], false);
        assert_eq!(c.name.as_deref(), Some("get_weather"));
        assert_eq!(c.args, Some((37, s.len(), false)));
        assert_eq!(c.end, None);
        let s = r#"{"arguments": {"x": [1]}, "name": "f"} rest"#;
        let c = call_object(s, 0, &["name"], &["arguments"], false);
        assert_eq!((c.name.as_deref(), c.args, c.end), (Some("f"), Some((14, 24, true)), Some(38)));
        assert!(call_object("{not json}", 0, &["name"], &["arguments"], true).malformed);
        assert_eq!(call_object(r#"{"name": "f"#, 0, &["name"], &["arguments"], false).name, None);
    }

    #[test]
    fn python_separators() {
        assert_eq!(python_json(&serde_json::json!({"a": [1, "é"], "b": null})), r#"{"a": [1, "é"], "b": null}"#);
    }
}
