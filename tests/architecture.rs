//! The structure ARCHITECTURE.md promises, held by a scan of the sources: the engine and
//! the layers under it import nothing from the edges, the pipeline runtime nothing from
//! the rest of the crate, and the top-level parts of `src/` form no import cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Parts that know OpenAI's wire format, HTTP, the pipeline's items or the command line.
const EDGES: [&str; 9] = ["api", "http", "stages", "cli", "config", "serve", "batch", "profile", "bench"];

/// For each lower part, the parts it must not import (directly; a circle through another
/// part is caught by the cycle check).
fn forbidden(part: &str) -> Option<Vec<&'static str>> {
    let mut edges = EDGES.to_vec();
    match part {
        "engine" => Some(edges),
        "model" | "sampling" | "guided" => {
            edges.push("engine");
            Some(edges)
        }
        _ => None,
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level part a file belongs to: `src/engine/mod.rs` → engine, `src/cli.rs` → cli.
fn part_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its comments (`//` to the end of a line), which may name
/// other parts freely.
fn code(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

/// The top-level parts a file's code names through `crate::`, including grouped imports
/// (`use crate::{a::x, b::y}`).
fn parts_named(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of the group, at brace depth 0.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
        rest = after;
    }
    found.remove("");
    found
}

/// Each part's imports of other parts, with the files that make them.
fn graph() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let parts: BTreeSet<String> = files.iter().map(|f| part_of(f)).collect();
    let mut g: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for file in &files {
        let from = part_of(file);
        let text = std::fs::read_to_string(file).unwrap();
        for to in parts_named(&code(&text)) {
            if to != from && parts.contains(&to) {
                let shown = file.strip_prefix(src().parent().unwrap()).unwrap().display().to_string();
                g.entry(from.clone()).or_default().entry(to).or_default().push(shown);
            }
        }
        g.entry(from).or_default();
    }
    g
}

#[test]
fn lower_parts_import_nothing_from_the_edges() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        let banned: Vec<&str> = match from.as_str() {
            "pipeline" => tos.keys().map(String::as_str).collect(),
            p => forbidden(p).unwrap_or_default(),
        };
        for (to, files) in tos {
            if banned.contains(&to.as_str()) {
                wrong.push(format!("{from} imports {to} in {}", files.join(", ")));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that ARCHITECTURE.md forbids:\n{}", wrong.join("\n"));
}

#[test]
fn the_parts_form_no_cycle() {
    let g = graph();
    // Depth-first search; a back edge is a cycle, reported with its path.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeMap<String, Vec<String>>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        path.push(n);
        for to in g.get(n).into_iter().flat_map(|t| t.keys()) {
            match state.get(to.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == to).unwrap();
                    let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(to.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(to, g, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(cycle) = visit(n, &g, &mut state, &mut Vec::new()) {
                let edges: Vec<String> =
                    cycle.windows(2).map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]].join(", "))).collect();
                panic!("an import cycle between parts of src/:\n{}", edges.join("\n"));
            }
        }
    }
}

#[test]
fn the_scan_sees_grouped_and_plain_imports() {
    let code = code("use crate::engine::Engine;\nuse crate::{api::{x, y}, model};\n// crate::cli in a comment\nlet a = crate::ids::f();");
    let found: Vec<String> = parts_named(&code).into_iter().collect();
    assert_eq!(found, ["api", "engine", "ids", "model"]);
}
