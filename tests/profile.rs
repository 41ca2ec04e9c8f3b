//! `sluice profile` with the real model: the table's shape (columns and rows, not the
//! timings, which vary), its counts, and the SVG chart.

#[macro_use]
mod common;

use std::process::Command;

use common::MODEL;

/// The table with every number replaced by `#` and runs of spaces collapsed.
fn shape(table: &str) -> String {
    table
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    let bare = w.trim_end_matches([',', ';', ':']);
                    if bare.parse::<f64>().is_ok() { w.replacen(bare, "#", 1) } else { w.to_string() }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn profile(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["profile", "--dtype", "float32"])
        .args(args)
        .output()
        .expect("run sluice profile");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "profile failed:\n{stderr}");
    (stdout, stderr)
}

/// The numbers on a table row, after its name.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no row {name}:\n{table}"));
    line.split_whitespace().skip(if name == "engine" && line.starts_with("engine step") { 2 } else { 1 }).filter(|w| *w != "|").collect()
}

#[test]
fn a_synthetic_profile_prints_every_stage_and_the_engine_step() {
    let dir = std::env::temp_dir().join(format!("sluice-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("profile.svg");
    let (table, _) = profile(&["--num-prompts", "3", "--input-len", "8", "--output-len", "4", "--svg", svg.to_str().unwrap()]);
    insta::with_settings!({snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"), prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("profile_table", shape(&table));
    });
    assert!(table.starts_with("3 requests in "), "{table}");
    for stage in ["decode", "render", "media", "tokenize", "guide", "encode_images"] {
        assert_eq!(row(&table, stage)[0], "3", "{stage} handled every request once:\n{table}");
    }
    // Four tokens per request: at least four engine steps, and a text event per token.
    assert!(row(&table, "engine")[0].parse::<u64>().unwrap() >= 4, "{table}");
    assert!(row(&table, "stream")[0].parse::<u64>().unwrap() >= 12, "{table}");
    let steps = row(&table, "forward");
    assert_eq!(steps[0], row(&table, "schedule")[0]);

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
    for label in ["decode", "engine", "stream", "end to end", "engine step"] {
        assert!(svg.contains(&format!(">{label}</text>")), "no bar for {label}");
    }
    assert_eq!(svg.matches("<rect ").count(), 5 + 9 * 2 + 1 + 3, "legend, two segments per stage, e2e, step parts");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_file_can_be_profiled() {
    let dir = std::env::temp_dir().join(format!("sluice-profile-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let line = |id: &str, content: &str| {
        serde_json::json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 3}})
        .to_string()
    };
    std::fs::write(&input, [line("a", "hi"), line("b", "hello"), "not json".into()].join("\n")).unwrap();
    let (table, log) = profile(&["-i", input.to_str().unwrap()]);
    assert!(table.starts_with("2 requests in "), "{table}");
    assert_eq!(row(&table, "decode")[0], "2");
    assert!(log.contains("1 of 3 requests failed"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
