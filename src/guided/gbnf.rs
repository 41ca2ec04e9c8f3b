//! GBNF (llama.cpp's grammar format, which vLLM's xgrammar backend takes for
//! `guided_grammar`) rewritten as the Lark syntax llguidance compiles. The two share
//! alternatives, grouping, `* + ?` and `{m,n}`; GBNF's rules end at a line's end outside
//! parentheses, its character classes become regular expressions, and its rule names are
//! prefixed so that none clashes with Lark's `start` or reads as a terminal.

/// The Lark grammar for a GBNF grammar; the start rule is GBNF's `root`.
pub fn gbnf_to_lark(src: &str) -> Result<String, String> {
    let tokens = tokenize(src)?;
    let mut rules: Vec<(String, Vec<String>)> = Vec::new();
    let mut i = 0;
    let mut depth = 0usize;
    while i < tokens.len() {
        match (&tokens[i], tokens.get(i + 1)) {
            (Tok::Name(n), Some(Tok::Define)) if depth == 0 => {
                rules.push((rule_name(n), Vec::new()));
                i += 2;
                continue;
            }
            (Tok::Define, _) => return Err(format!("GBNF: `::=` without a rule name before it (token {i})")),
            _ => {}
        }
        let Some((_, body)) = rules.last_mut() else {
            return Err("GBNF: the grammar must start with a rule (`name ::= ...`)".into());
        };
        let t = &tokens[i];
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.checked_sub(1).ok_or("GBNF: unbalanced `)`")?,
            _ => {}
        }
        body.push(t.to_lark());
        i += 1;
    }
    if depth != 0 {
        return Err("GBNF: unbalanced `(`".into());
    }
    if !rules.iter().any(|(n, _)| n == &rule_name("root")) {
        return Err("GBNF: the grammar has no `root` rule".into());
    }
    let mut out = format!("start: {}\n", rule_name("root"));
    for (name, body) in rules {
        if body.is_empty() {
            return Err(format!("GBNF: rule `{}` is empty", &name[2..]));
        }
        out.push_str(&format!("{name}: {}\n", body.join(" ")));
    }
    Ok(out)
}

fn rule_name(gbnf: &str) -> String {
    format!("r_{}", gbnf.to_lowercase())
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Define,
    /// A literal's decoded text.
    Literal(String),
    /// A character class as a regular expression, brackets included.
    Class(String),
    Any,
    /// `|`, `*`, `+`, `?`.
    Op(char),
    Open,
    Close,
    /// `{m}`, `{m,}`, `{m,n}` as written.
    Repeat(String),
}

impl Tok {
    fn to_lark(&self) -> String {
        match self {
            Tok::Name(n) => rule_name(n),
            Tok::Literal(s) => serde_json::to_string(s).expect("a string serializes"),
            Tok::Class(c) => format!("/{c}/"),
            Tok::Any => "/(?s:.)/".into(),
            Tok::Op(c) => c.to_string(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::Repeat(r) => r.clone(),
            Tok::Define => unreachable!("handled by the rule splitter"),
        }
    }
}

fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, what: &str| {
        let line = chars[..i.min(chars.len())].iter().filter(|&&c| c == '\n').count() + 1;
        format!("GBNF line {line}: {what}")
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                out.push(Tok::Define);
                i += 3;
            }
            '|' | '*' | '+' | '?' => {
                out.push(Tok::Op(c));
                i += 1;
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '.' => {
                out.push(Tok::Any);
                i += 1;
            }
            '{' => {
                let end = chars[i..].iter().position(|&c| c == '}').ok_or_else(|| err(i, "unclosed `{`"))? + i;
                let inner: String = chars[i + 1..end].iter().filter(|c| !c.is_whitespace()).collect();
                if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_digit() || c == ',') {
                    return Err(err(i, &format!("bad repetition `{{{inner}}}`")));
                }
                out.push(Tok::Repeat(format!("{{{inner}}}")));
                i = end + 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(i, "unclosed string literal")),
                        Some('"') => break,
                        Some('\\') => {
                            let (ch, used) = escape(&chars[i + 1..]).ok_or_else(|| err(i, "bad escape in a string literal"))?;
                            s.push(ch);
                            i += 1 + used;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Literal(s));
                i += 1;
            }
            '[' => {
                let mut re = String::from("[");
                i += 1;
                if chars.get(i) == Some(&'^') {
                    re.push('^');
                    i += 1;
                }
                loop {
                    match chars.get(i) {
                        None => return Err(err(i, "unclosed character class")),
                        Some(']') => break,
                        Some('\\') => {
                            let (ch, used) =
                                escape(&chars[i + 1..]).ok_or_else(|| err(i, "bad escape in a character class"))?;
                            push_class_char(&mut re, ch);
                            i += 1 + used;
                        }
                        Some('-') => {
                            re.push('-');
                            i += 1;
                        }
                        Some(&ch) => {
                            push_class_char(&mut re, ch);
                            i += 1;
                        }
                    }
                }
                re.push(']');
                out.push(Tok::Class(re));
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '-' || chars[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Name(chars[start..i].iter().collect()));
            }
            other => return Err(err(i, &format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

/// One character of a class, escaped where a regular expression would read it otherwise.
fn push_class_char(re: &mut String, ch: char) {
    match ch {
        '\\' | ']' | '[' | '^' | '-' | '&' | '~' | '/' => {
            re.push('\\');
            re.push(ch);
        }
        '\n' => re.push_str("\\n"),
        '\r' => re.push_str("\\r"),
        '\t' => re.push_str("\\t"),
        c if c.is_control() => re.push_str(&format!("\\x{{{:x}}}", c as u32)),
        c => re.push(c),
    }
}

/// The character of the escape after a backslash, and how many characters it used.
fn escape(rest: &[char]) -> Option<(char, usize)> {
    let hex = |n: usize| -> Option<(char, usize)> {
        let s: String = rest.get(1..=n)?.iter().collect();
        char::from_u32(u32::from_str_radix(&s, 16).ok()?).map(|c| (c, n + 1))
    };
    match rest.first()? {
        'n' => Some(('\n', 1)),
        'r' => Some(('\r', 1)),
        't' => Some(('\t', 1)),
        'x' => hex(2),
        'u' => hex(4),
        'U' => hex(8),
        &c => Some((c, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_literals_classes_and_repeats() {
        let g = "# arithmetic\nroot ::= expr\nexpr ::= term ([-+] term)*\nterm ::= [0-9]{1,3} | \"(\" expr \")\"\n";
        assert_eq!(
            gbnf_to_lark(g).unwrap(),
            "start: r_root\nr_root: r_expr\nr_expr: r_term ( /[-+]/ r_term ) *\nr_term: /[0-9]/ {1,3} | \"(\" r_expr \")\"\n"
        );
    }

    #[test]
    fn parenthesised_rules_span_lines_and_escapes_decode() {
        let g = "root ::= (\n  \"a\\n\" |\n  \"\\x41\"\n) [^\\]/]";
        assert_eq!(gbnf_to_lark(g).unwrap(), "start: r_root\nr_root: ( \"a\\n\" | \"A\" ) /[^\\]\\/]/\n");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(gbnf_to_lark("expr ::= \"a\"").unwrap_err().contains("no `root` rule"));
        assert!(gbnf_to_lark("root ::= (\"a\"").unwrap_err().contains("unbalanced"));
        assert!(gbnf_to_lark("root ::= \"a").unwrap_err().contains("unclosed string"));
    }
}
