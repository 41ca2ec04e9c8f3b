//! A profile as a picture: one horizontal bar per stage, its mean time per request split
//! into queue wait and work, and one bar for the engine's step split into schedule,
//! forward and sample. Plain SVG, no script, readable in any browser.

use std::fmt::Write;

use super::report::Report;

const WIDTH: f64 = 900.0;
const LABEL: f64 = 130.0;
const BAR: f64 = 22.0;
const GAP: f64 = 10.0;
const PLOT: f64 = WIDTH - LABEL - 150.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A bar made of segments (label, seconds, colour), scaled so `full` seconds fill the plot.
fn bar(out: &mut String, y: f64, label: &str, segments: &[(&str, f64, &str)], full: f64, note: &str) {
    let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="end" class="label">{}</text>"#, LABEL - 8.0, y + BAR * 0.7, escape(label));
    let mut x = LABEL;
    for (what, secs, colour) in segments {
        let w = if full > 0.0 { (secs / full * PLOT).max(0.0) } else { 0.0 };
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BAR}" fill="{colour}"><title>{}: {:.3} ms</title></rect>"#,
            escape(&format!("{label} {what}")),
            secs * 1e3
        );
        x += w;
    }
    let _ = writeln!(out, r#"<text x="{:.1}" y="{}" class="note">{}</text>"#, x + 6.0, y + BAR * 0.7, escape(note));
}

pub fn render(r: &Report) -> String {
    let rows = r.stages.len() + usize::from(!r.steps.is_empty()) + 1;
    let height = 70.0 + rows as f64 * (BAR + GAP) + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, "<style>.label{{font-size:13px}} .note{{font-size:12px;fill:#444}} .title{{font-size:15px;font-weight:bold}}</style>");
    let _ = writeln!(
        out,
        r#"<text x="10" y="22" class="title">sluice profile: {} requests, {:.1} output tokens/s, mean time per request by stage</text>"#,
        r.requests,
        r.output_tokens as f64 / r.wall.max(1e-9)
    );
    let legend = [("queue wait", "#f4a261"), ("work", "#2a9d8f"), ("schedule", "#e9c46a"), ("forward", "#264653"), ("sample", "#e76f51")];
    for (i, (name, colour)) in legend.iter().enumerate() {
        let x = 10.0 + i as f64 * 120.0;
        let _ = writeln!(out, r#"<rect x="{x}" y="34" width="12" height="12" fill="{colour}"/><text x="{}" y="45" class="note">{name}</text>"#, x + 16.0);
    }
    let full = r
        .stages
        .iter()
        .map(|s| s.per_request)
        .chain(std::iter::once(r.e2e.sum / r.e2e.count.max(1) as f64))
        .fold(0.0, f64::max);
    let mut y = 60.0;
    let per = |sum: f64| sum / r.requests.max(1) as f64;
    for s in &r.stages {
        let queue = per(s.queue.sum);
        let work = (s.per_request - queue).max(0.0);
        bar(&mut out, y, &s.name, &[("queue wait", queue, "#f4a261"), ("work", work, "#2a9d8f")], full, &format!("{:.2} ms, {:.0}% of e2e", s.per_request * 1e3, 100.0 * r.share(s)));
        y += BAR + GAP;
    }
    let e2e = r.e2e.sum / r.e2e.count.max(1) as f64;
    bar(&mut out, y, "end to end", &[("total", e2e, "#8d99ae")], full, &format!("{:.2} ms", e2e * 1e3));
    y += BAR + GAP;
    if !r.steps.is_empty() {
        let steps = r.steps[0].time.count.max(1) as f64;
        let colours = ["#e9c46a", "#264653", "#e76f51", "#8ab17d"];
        let segments: Vec<(&str, f64, &str)> =
            r.steps.iter().zip(colours).map(|(s, c)| (s.part, s.time.sum / steps, c)).collect();
        let step: f64 = segments.iter().map(|s| s.1).sum();
        // Its own scale: a step is far shorter than a request.
        bar(&mut out, y, "engine step", &segments, step / 0.6, &format!("mean step {:.2} ms (own scale)", step * 1e3));
    }
    out.push_str("</svg>\n");
    out
}
