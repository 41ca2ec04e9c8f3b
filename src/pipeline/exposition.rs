//! The Prometheus text format (version 0.0.4): `# HELP` and `# TYPE` once per metric,
//! then its series; histograms as cumulative `_bucket{le=...}`, `_sum` and `_count`.

use super::metrics::LatencyHistogram;

#[derive(Default)]
pub struct Exposition {
    text: String,
}

/// `{a="x",b="y"}` with values escaped; empty for no labels.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// `# HELP` and `# TYPE` lines; call once per metric name, before its series.
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        self.text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(&format!("{name}{} {}\n", self::labels(labels), number(value)));
    }

    /// A metric with one sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.header(name, kind, help);
        self.sample(name, labels, value);
    }

    /// One histogram series (the header is written separately, once per name).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &LatencyHistogram, bounds: &[f64]) {
        let (counts, total) = h.cumulative(bounds);
        for (b, c) in bounds.iter().zip(counts) {
            let le = number(*b);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, c as f64);
        }
        let mut with_inf = labels.to_vec();
        with_inf.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_inf, total as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds());
        self.sample(&format!("{name}_count"), labels, total as f64);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_histogram_has_buckets_sum_and_count() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_millis(20));
        let mut e = Exposition::default();
        e.header("x_seconds", "histogram", "X.");
        e.histogram("x_seconds", &[("stage", "a\"b")], &h, &[0.01, 0.1]);
        assert_eq!(
            e.finish(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{stage=\"a\\\"b\",le=\"0.01\"} 0\n\
             x_seconds_bucket{stage=\"a\\\"b\",le=\"0.1\"} 1\n\
             x_seconds_bucket{stage=\"a\\\"b\",le=\"+Inf\"} 1\n\
             x_seconds_sum{stage=\"a\\\"b\"} 0.02\n\
             x_seconds_count{stage=\"a\\\"b\"} 1\n"
        );
    }
}
