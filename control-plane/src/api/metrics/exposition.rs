//! The Prometheus text exposition format, version 0.0.4: metric families, each with one
//! `# HELP` and one `# TYPE` line, then its samples. Families are rendered sorted by name,
//! samples in the order they were added, so the same fleet renders the same text.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The content type of the rendered text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// The families of one scrape, keyed (and so rendered) by name.
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    /// `_bucket`, `_sum`, `_count` for histograms; empty otherwise.
    suffix: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

/// One series of a histogram: cumulative counts per upper bound (ascending, without
/// `+Inf`), the sum of the observations and their count.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    pub cumulative: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Exposition {
    /// The family `name`, declared on first use. Invariant: a name is declared with one kind
    /// and one help text (checked in debug builds).
    pub fn family(&mut self, name: &'static str, kind: MetricKind, help: &'static str) -> &mut Family {
        debug_assert!(is_valid_name(name), "metric name `{name}`");
        let family = self.families.entry(name).or_insert_with(|| Family { name, help, kind, samples: Vec::new() });
        debug_assert!(family.kind == kind && family.help == help, "family `{name}` declared twice differently");
        family
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        for family in self.families.values() {
            family.render(&mut text);
        }
        text
    }
}

impl Family {
    /// A counter or gauge sample.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) -> &mut Self {
        debug_assert!(self.kind != MetricKind::Histogram, "`{}` is a histogram", self.name);
        self.samples.push(Sample { suffix: "", labels: owned(labels), value });
        self
    }

    /// A histogram series: `_bucket` per bound and `+Inf` (equal to `_count`), `_sum`, `_count`.
    pub fn histogram(&mut self, labels: &[(&'static str, &str)], histogram: &HistogramSample) -> &mut Self {
        debug_assert!(self.kind == MetricKind::Histogram, "`{}` is not a histogram", self.name);
        debug_assert!(labels.iter().all(|(label, _)| *label != "le"));
        for &(bound, cumulative) in &histogram.cumulative {
            let mut bucket_labels = owned(labels);
            bucket_labels.push(("le", format_value(bound)));
            self.samples.push(Sample { suffix: "_bucket", labels: bucket_labels, value: cumulative as f64 });
        }
        let mut infinity_labels = owned(labels);
        infinity_labels.push(("le", "+Inf".to_string()));
        self.samples.push(Sample { suffix: "_bucket", labels: infinity_labels, value: histogram.count as f64 });
        self.samples.push(Sample { suffix: "_sum", labels: owned(labels), value: histogram.sum });
        self.samples.push(Sample { suffix: "_count", labels: owned(labels), value: histogram.count as f64 });
        self
    }

    fn render(&self, text: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(text, "# TYPE {} {}", self.name, self.kind.as_str());
        for sample in &self.samples {
            text.push_str(self.name);
            text.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                text.push('{');
                for (label_idx, (label, value)) in sample.labels.iter().enumerate() {
                    if label_idx > 0 {
                        text.push(',');
                    }
                    let _ = write!(text, "{label}=\"{}\"", escape_label_value(value));
                }
                text.push('}');
            }
            let _ = writeln!(text, " {}", format_value(sample.value));
        }
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    debug_assert!(labels.iter().all(|(label, _)| is_valid_name(label) && !label.starts_with("__")), "label names {labels:?}");
    labels.iter().map(|(label, value)| (*label, value.to_string())).collect()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the rule for metric and label names.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_' || rest == ':')
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Help text escapes backslash and line feed (a quote is literal there).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's `ParseFloat` forms: `+Inf`, `-Inf`, `NaN`, else the shortest decimal that round-trips.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_escape(input: &str, expected: &str) {
        assert_eq!(escape_label_value(input), expected);
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        check_escape("plain", "plain");
        check_escape(r"a\b", r"a\\b");
        check_escape(r#"say "hi""#, r#"say \"hi\""#);
        check_escape("two\nlines", r"two\nlines");
        check_escape("tab\tand é stay", "tab\tand é stay");
    }

    #[test]
    fn values_use_prometheus_float_forms() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.000064), "0.000064");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn families_render_sorted_with_help_and_type_once() {
        let mut exposition = Exposition::default();
        exposition.family("zeta_total", MetricKind::Counter, "Last by name.").sample(&[], 2.0);
        exposition
            .family("alpha", MetricKind::Gauge, "First by name.\nSecond line with a \\.")
            .sample(&[("model", "m\"1"), ("version", "2")], 1.5)
            .sample(&[("model", "m"), ("version", "3")], 0.0);
        exposition.family("alpha", MetricKind::Gauge, "First by name.\nSecond line with a \\.").sample(&[("model", "x")], 4.0);
        exposition.family("empty", MetricKind::Gauge, "Declared, no samples.");
        let expected = "\
# HELP alpha First by name.\\nSecond line with a \\\\.
# TYPE alpha gauge
alpha{model=\"m\\\"1\",version=\"2\"} 1.5
alpha{model=\"m\",version=\"3\"} 0
alpha{model=\"x\"} 4
# HELP empty Declared, no samples.
# TYPE empty gauge
# HELP zeta_total Last by name.
# TYPE zeta_total counter
zeta_total 2
";
        assert_eq!(exposition.render(), expected);
    }

    #[test]
    fn histograms_end_in_an_infinite_bucket_equal_to_the_count() {
        let mut exposition = Exposition::default();
        let histogram = HistogramSample { cumulative: vec![(0.001, 2), (0.5, 5)], sum: 0.75, count: 6 };
        exposition.family("latency_seconds", MetricKind::Histogram, "Latency.").histogram(&[("model", "m")], &histogram);
        let expected = "\
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{model=\"m\",le=\"0.001\"} 2
latency_seconds_bucket{model=\"m\",le=\"0.5\"} 5
latency_seconds_bucket{model=\"m\",le=\"+Inf\"} 6
latency_seconds_sum{model=\"m\"} 0.75
latency_seconds_count{model=\"m\"} 6
";
        assert_eq!(exposition.render(), expected);
    }
}
