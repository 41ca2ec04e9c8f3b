//! Pythonic calls, as Llama 3.2 and Llama 4 write them: the answer is a Python list of
//! calls with literal keyword arguments, `[get_weather(city="Paris"), get_time()]`. The
//! arguments become a JSON object, one argument at a time as each value is complete. An
//! answer that does not start with `[` is plain content.

use serde_json::{Map, Number, Value};

use super::scan::{bracketed_end, python_json, quoted_end, skip_ws};
use super::{PartialCall, Scan};

pub fn scan(text: &str, last: bool) -> Scan {
    let lead = skip_ws(text, 0);
    if !text[lead..].starts_with('[') {
        return Scan::content(if !last && lead == text.len() { 0 } else { text.len() });
    }
    let mut out = Scan::content(0);
    let b = text.as_bytes();
    let mut i = lead + 1;
    loop {
        i = skip_ws(text, i);
        if i >= b.len() {
            break;
        }
        match b[i] {
            b']' => {
                out.malformed = skip_ws(text, i + 1) < b.len();
                break;
            }
            b',' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let name_len = ident_len(&text[i..], true);
        if i + name_len >= b.len() {
            break; // the name is still being written
        }
        if name_len == 0 || b[i + name_len] != b'(' {
            out.calls.push(PartialCall { malformed: true, ..Default::default() });
            break;
        }
        let name = text[i..i + name_len].to_string();
        let (call, end) = arguments(text, i + name_len + 1, name, last);
        let malformed = call.malformed;
        out.calls.push(call);
        match end {
            Some(e) if !malformed => i = e,
            _ => break,
        }
    }
    if out.calls.is_empty() && last {
        out.calls.push(PartialCall { malformed: true, ..Default::default() });
    }
    out
}

/// The keyword arguments from `text[start]` (just after `(`) as a JSON object's text,
/// growing by whole arguments; and the end of the call once `)` is read.
fn arguments(text: &str, start: usize, name: String, last: bool) -> (PartialCall, Option<usize>) {
    let b = text.as_bytes();
    let mut parts = Vec::new();
    let mut j = start;
    let mut call = PartialCall { name: Some(name), ..Default::default() };
    let end = loop {
        j = skip_ws(text, j);
        if j >= b.len() {
            break None;
        }
        match b[j] {
            b')' => break Some(j + 1),
            b',' => {
                j += 1;
                continue;
            }
            _ => {}
        }
        let key_len = ident_len(&text[j..], false);
        let k = skip_ws(text, j + key_len);
        if k >= b.len() {
            break None;
        }
        if key_len == 0 || b[k] != b'=' {
            call.malformed = true; // positional arguments have no name to send
            break None;
        }
        let v = skip_ws(text, k + 1);
        if v >= b.len() {
            break None;
        }
        let Some(len) = literal_end(&text[v..], last) else { break None };
        match literal(&text[v..v + len]) {
            Some(value) => parts.push(format!("{}: {}", python_json(&Value::from(&text[j..j + key_len])), python_json(&value))),
            None => {
                call.malformed = true;
                break None;
            }
        }
        j = v + len;
    };
    call.complete = end.is_some();
    call.args = format!("{{{}{}", parts.join(", "), if call.complete { "}" } else { "" });
    (call, end)
}

/// The length of the identifier at the start of `s` (dotted names for functions).
fn ident_len(s: &str, dotted: bool) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_' || (dotted && c == '.'))).unwrap_or(s.len())
}

/// Where the Python literal at the start of `s` ends, once it is complete.
fn literal_end(s: &str, last: bool) -> Option<usize> {
    let b = s.as_bytes();
    match b[0] {
        b'[' | b'(' | b'{' => bracketed_end(b, b"[({", b"])}", b"\"'"),
        q @ (b'"' | b'\'') => quoted_end(b, 0, q),
        _ => match s.find([',', ')', ']', '}', ' ', '\n']) {
            Some(e) if e > 0 => Some(e),
            None if last => Some(s.len()),
            _ => None,
        },
    }
}

/// A complete Python literal as JSON: strings, numbers, True/False/None, lists, tuples
/// and dicts of them.
fn literal(s: &str) -> Option<Value> {
    let mut p = Literal { s, i: 0 };
    let v = p.value()?;
    (skip_ws(s, p.i) == s.len()).then_some(v)
}

struct Literal<'a> {
    s: &'a str,
    i: usize,
}

impl Literal<'_> {
    fn value(&mut self) -> Option<Value> {
        self.i = skip_ws(self.s, self.i);
        let rest = &self.s[self.i..];
        let c = rest.chars().next()?;
        match c {
            '"' | '\'' => self.string(c).map(Value::String),
            '[' | '(' => {
                let close = if c == '[' { ']' } else { ')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.i = skip_ws(self.s, self.i);
                    if self.s[self.i..].starts_with(close) {
                        self.i += 1;
                        return Some(Value::Array(items));
                    }
                    items.push(self.value()?);
                    self.i = skip_ws(self.s, self.i);
                    if self.s[self.i..].starts_with(',') {
                        self.i += 1;
                    } else if !self.s[self.i..].starts_with(close) {
                        return None;
                    }
                }
            }
            '{' => {
                self.i += 1;
                let mut map = Map::new();
                loop {
                    self.i = skip_ws(self.s, self.i);
                    if self.s[self.i..].starts_with('}') {
                        self.i += 1;
                        return Some(Value::Object(map));
                    }
                    let key = match self.value()? {
                        Value::String(k) => k,
                        other => other.to_string(),
                    };
                    self.i = skip_ws(self.s, self.i);
                    self.s[self.i..].starts_with(':').then_some(())?;
                    self.i += 1;
                    map.insert(key, self.value()?);
                    self.i = skip_ws(self.s, self.i);
                    if self.s[self.i..].starts_with(',') {
                        self.i += 1;
                    } else if !self.s[self.i..].starts_with('}') {
                        return None;
                    }
                }
            }
            _ => {
                let len = rest.find([',', ')', ']', '}', ':', ' ', '\n']).unwrap_or(rest.len());
                let word = &rest[..len];
                self.i += len;
                match word {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    _ => word
                        .parse::<i64>()
                        .map(Value::from)
                        .ok()
                        .or_else(|| word.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)),
                }
            }
        }
    }

    fn string(&mut self, q: char) -> Option<String> {
        let mut out = String::new();
        let mut chars = self.s[self.i + 1..].char_indices();
        while let Some((k, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, e) = chars.next()?;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        'u' => {
                            let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                            out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        other => out.push(other), // \\ \' \" and the rest as themselves
                    }
                }
                c if c == q => {
                    self.i += 1 + k + 1;
                    return Some(out);
                }
                c => out.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::ToolParser;
    use super::super::stream::tests::{assert_streams_like_whole, read};

    const TEXT: &str = r#"[get_weather(city='San Francisco', metric="celsius", days=3, detail=True), search(q="a, b)", filters={'lang': ['en', "fr"], 'max': 1.5, 'x': None}), noop()]"#;

    #[test]
    fn calls_become_json_arguments() {
        let p = ToolParser::Pythonic.parse(TEXT, &[]);
        assert_eq!(p.content, None);
        assert_eq!(
            read(&p),
            [
                ("get_weather", r#"{"city": "San Francisco", "metric": "celsius", "days": 3, "detail": true}"#),
                ("search", r#"{"q": "a, b)", "filters": {"lang": ["en", "fr"], "max": 1.5, "x": null}}"#),
                ("noop", "{}"),
            ]
        );
        for text in ["Paris is sunny.", "[f(1)]", "[f(a=1)] trailing", "[f(a=undefined_name)]"] {
            assert_eq!(ToolParser::Pythonic.parse(text, &[]).content.as_deref(), Some(text), "{text}");
        }
    }

    #[test]
    fn escapes_in_strings() {
        let p = ToolParser::Pythonic.parse(r#"[f(s='it\'s\n"ok"', u="\u00e9")]"#, &[]);
        assert_eq!(read(&p), [("f", r#"{"s": "it's\n\"ok\"", "u": "é"}"#)]);
    }

    #[test]
    fn streaming_at_every_cut_reads_what_the_whole_reads() {
        assert_streams_like_whole(ToolParser::Pythonic, TEXT, &[]);
        assert_streams_like_whole(ToolParser::Pythonic, "Not a call: [x]", &[]);
    }
}
