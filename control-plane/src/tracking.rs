//! Experiment tracking rules shared by the native and the MLflow APIs: the search filter
//! subset (`metrics.acc > 0.9 and params.lr = '0.1' and tags.team = 'a' and
//! attributes.status = 'FINISHED'`), run ordering, and model version filters.

use std::cmp::Ordering;

use crate::store::{ModelVersionRecord, RunRecord};

#[derive(Clone, Debug, PartialEq)]
enum Entity {
    Metric,
    Param,
    Tag,
    Attribute,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Comparison {
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Like,
    ILike,
}

#[derive(Clone, Debug, PartialEq)]
struct Clause {
    entity: Entity,
    key: String,
    comparison: Comparison,
    value: String,
}

/// A conjunction of clauses; the empty filter matches every run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    clauses: Vec<Clause>,
}

fn split_and(text: &str) -> Vec<String> {
    // Split on AND outside quotes.
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let words: Vec<&str> = text.split(' ').collect();
    for word in words {
        for character in word.chars() {
            match quote {
                Some(open) if character == open => quote = None,
                None if character == '\'' || character == '"' || character == '`' => quote = Some(character),
                _ => {}
            }
        }
        if quote.is_none() && word.eq_ignore_ascii_case("and") {
            parts.push(std::mem::take(&mut current));
        } else {
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    parts.push(current);
    parts.into_iter().map(|part| part.trim().to_string()).filter(|part| !part.is_empty()).collect()
}

fn unquote(text: &str) -> String {
    let text = text.trim();
    for quote in ['\'', '"', '`'] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return text[1..text.len() - 1].to_string();
        }
    }
    text.to_string()
}

fn parse_clause(text: &str) -> Result<Clause, String> {
    let lowered = text.to_ascii_lowercase();
    let operators: [(&str, Comparison); 8] = [
        (" ilike ", Comparison::ILike),
        (" like ", Comparison::Like),
        ("!=", Comparison::NotEqual),
        (">=", Comparison::GreaterOrEqual),
        ("<=", Comparison::LessOrEqual),
        ("=", Comparison::Equal),
        (">", Comparison::Greater),
        ("<", Comparison::Less),
    ];
    let (position, symbol, comparison) = operators
        .iter()
        .find_map(|(symbol, comparison)| lowered.find(symbol).map(|position| (position, *symbol, *comparison)))
        .ok_or_else(|| format!("Invalid clause `{text}`: expected a comparison"))?;
    let left = text[..position].trim();
    let value = unquote(&text[position + symbol.len()..]);
    let (entity_text, key) =
        left.split_once('.').ok_or_else(|| format!("Invalid clause `{text}`: expected metrics., params., tags. or attributes."))?;
    let entity = match entity_text.to_ascii_lowercase().as_str() {
        "metric" | "metrics" => Entity::Metric,
        "param" | "params" | "parameter" | "parameters" => Entity::Param,
        "tag" | "tags" => Entity::Tag,
        "attribute" | "attributes" | "attr" | "run" => Entity::Attribute,
        other => return Err(format!("Invalid entity type '{other}'")),
    };
    if matches!(comparison, Comparison::Like | Comparison::ILike) && value.chars().count() > MAX_PATTERN_CHARS {
        return Err(format!(
            "Invalid clause: a LIKE pattern may have at most {MAX_PATTERN_CHARS} characters, not {}",
            value.chars().count()
        ));
    }
    Ok(Clause { entity, key: unquote(key), comparison, value })
}

/// The longest filter accepted, in characters: far above what people write by hand, and a
/// bound on the work one search costs.
pub const MAX_FILTER_CHARS: usize = 4096;
/// The longest `LIKE`/`ILIKE` pattern, in characters: matching costs at most this many steps
/// per character of each value matched.
pub const MAX_PATTERN_CHARS: usize = 256;

fn check_filter_size(text: &str) -> Result<(), String> {
    let n_chars = text.chars().count();
    if n_chars > MAX_FILTER_CHARS {
        return Err(format!("Invalid filter: at most {MAX_FILTER_CHARS} characters, not {n_chars}"));
    }
    Ok(())
}

/// SQL `LIKE`: `%` matches any run of characters, `_` any one character.
///
/// Linear in practice and O(len(pattern) × len(text)) at worst: on a mismatch it backtracks
/// only to the latest `%`, never to earlier ones (the recursive matcher this replaces tried
/// every split for every `%`: exponential, 16.8 s for seven of them on one run).
fn like(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut pattern_idx, mut text_idx) = (0, 0);
    // After the latest `%`: where the pattern resumes, and the text position it resumed at.
    let mut resume: Option<(usize, usize)> = None;
    while text_idx < text.len() {
        match pattern.get(pattern_idx) {
            Some('%') => {
                pattern_idx += 1;
                resume = Some((pattern_idx, text_idx));
            }
            Some(&character) if character == '_' || character == text[text_idx] => {
                pattern_idx += 1;
                text_idx += 1;
            }
            _ => match resume {
                // Let the latest `%` swallow one more character and try again from there.
                Some((resume_pattern_idx, resume_text_idx)) => {
                    pattern_idx = resume_pattern_idx;
                    text_idx = resume_text_idx + 1;
                    resume = Some((resume_pattern_idx, text_idx));
                }
                None => return false,
            },
        }
    }
    pattern[pattern_idx..].iter().all(|character| *character == '%')
}

fn compare_text(comparison: Comparison, got: &str, want: &str) -> bool {
    match comparison {
        Comparison::Equal => got == want,
        Comparison::NotEqual => got != want,
        Comparison::Like => like(want, got),
        Comparison::ILike => like(&want.to_lowercase(), &got.to_lowercase()),
        Comparison::Greater => got > want,
        Comparison::GreaterOrEqual => got >= want,
        Comparison::Less => got < want,
        Comparison::LessOrEqual => got <= want,
    }
}

fn compare_number(comparison: Comparison, got: f64, want: f64) -> bool {
    match comparison {
        Comparison::Equal => got == want,
        Comparison::NotEqual => got != want,
        Comparison::Greater => got > want,
        Comparison::GreaterOrEqual => got >= want,
        Comparison::Less => got < want,
        Comparison::LessOrEqual => got <= want,
        Comparison::Like | Comparison::ILike => false,
    }
}

fn attribute(run: &RunRecord, key: &str) -> Option<String> {
    Some(match key {
        "status" => run.status.as_str().to_string(),
        "run_name" | "name" => run.run_name.clone(),
        "run_id" => run.run_id.clone(),
        "user_id" => run.user_id.clone(),
        "start_time" => run.start_time.to_string(),
        "end_time" => run.end_time?.to_string(),
        "artifact_uri" => run.artifact_uri.clone(),
        _ => return None,
    })
}

impl RunFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_filter_size(text)?;
        Ok(RunFilter { clauses: split_and(text).iter().map(|clause| parse_clause(clause)).collect::<Result<_, _>>()? })
    }

    pub fn matches(&self, run: &RunRecord) -> bool {
        self.clauses.iter().all(|clause| match clause.entity {
            Entity::Metric => {
                let Ok(want) = clause.value.parse::<f64>() else { return false };
                run.latest_metrics
                    .iter()
                    .find(|metric| metric.key == clause.key)
                    .is_some_and(|metric| compare_number(clause.comparison, metric.value, want))
            }
            Entity::Param => run
                .params
                .iter()
                .find(|(key, _)| *key == clause.key)
                .is_some_and(|(_, value)| compare_text(clause.comparison, value, &clause.value)),
            Entity::Tag => run
                .tags
                .iter()
                .find(|(key, _)| *key == clause.key)
                .is_some_and(|(_, value)| compare_text(clause.comparison, value, &clause.value)),
            Entity::Attribute => match (attribute(run, &clause.key), clause.key.as_str()) {
                (Some(got), "start_time" | "end_time") => match (got.parse::<f64>(), clause.value.parse::<f64>()) {
                    (Ok(got), Ok(want)) => compare_number(clause.comparison, got, want),
                    _ => false,
                },
                (Some(got), _) => compare_text(clause.comparison, &got, &clause.value),
                (None, _) => false,
            },
        })
    }
}

/// Keeps the runs `filter` matches and sorts them by `order_by` (see `order_runs`), on a
/// blocking thread: matching thousands of runs is CPU work that must not stall the async
/// runtime (health checks, MQTT ingest and the controllers share it).
pub async fn select_runs(runs: Vec<RunRecord>, filter: RunFilter, order_by: Vec<String>) -> Result<Vec<RunRecord>, String> {
    tokio::task::spawn_blocking(move || {
        let mut runs: Vec<RunRecord> = runs.into_iter().filter(|run| filter.matches(run)).collect();
        order_runs(&mut runs, &order_by)?;
        Ok(runs)
    })
    .await
    .map_err(|error| format!("run search stopped: {error}"))?
}

/// Sorts runs by MLflow `order_by` terms (`metrics.acc DESC`, `attributes.start_time`, ...);
/// the default is newest first. Runs missing a sort key go last.
pub fn order_runs(runs: &mut [RunRecord], order_by: &[String]) -> Result<(), String> {
    let mut keys = Vec::new();
    for term in order_by {
        let mut words = term.split_whitespace();
        let field = words.next().ok_or("empty order_by term")?;
        let descending = match words.next().map(str::to_ascii_uppercase).as_deref() {
            None | Some("ASC") => false,
            Some("DESC") => true,
            Some(other) => return Err(format!("Invalid order_by direction '{other}'")),
        };
        let (entity, key) = field
            .split_once('.')
            .map(|(entity, key)| (entity.to_ascii_lowercase(), unquote(key)))
            .unwrap_or(("attributes".into(), field.to_string()));
        keys.push((entity, key, descending));
    }
    if keys.is_empty() {
        keys.push(("attributes".into(), "start_time".into(), true));
    }
    let value_of = |run: &RunRecord, entity: &str, key: &str| -> Option<(Option<f64>, String)> {
        match entity {
            "metric" | "metrics" => {
                run.latest_metrics.iter().find(|metric| metric.key == key).map(|metric| (Some(metric.value), String::new()))
            }
            "param" | "params" => run.params.iter().find(|(name, _)| name == key).map(|(_, value)| (value.parse().ok(), value.clone())),
            "tag" | "tags" => run.tags.iter().find(|(name, _)| name == key).map(|(_, value)| (None, value.clone())),
            _ => attribute(run, key).map(|value| (value.parse().ok(), value)),
        }
    };
    runs.sort_by(|left, right| {
        for (entity, key, descending) in &keys {
            let ordering = match (value_of(left, entity, key), value_of(right, entity, key)) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => return Ordering::Greater,
                (Some(_), None) => return Ordering::Less,
                (Some((Some(a), _)), Some((Some(b), _))) => a.total_cmp(&b),
                (Some((_, a)), Some((_, b))) => a.cmp(&b),
            };
            let ordering = if *descending { ordering.reverse() } else { ordering };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        left.run_id.cmp(&right.run_id)
    });
    Ok(())
}

/// `name = 'x'`, `name LIKE 'x%'`, `run_id = '...'`, joined by AND.
#[derive(Clone, Debug, Default)]
pub struct VersionFilter {
    pub name: Option<String>,
    clauses: Vec<(String, Comparison, String)>,
}

impl VersionFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_filter_size(text)?;
        let mut filter = VersionFilter::default();
        for clause_text in split_and(text) {
            let clause = parse_clause(&format!("attributes.{clause_text}"))?;
            if !matches!(clause.key.as_str(), "name" | "run_id" | "source") {
                return Err(format!("Invalid model version search attribute '{}'", clause.key));
            }
            if clause.key == "name" && clause.comparison == Comparison::Equal {
                filter.name = Some(clause.value.clone());
            }
            filter.clauses.push((clause.key, clause.comparison, clause.value));
        }
        Ok(filter)
    }

    pub fn matches(&self, version: &ModelVersionRecord) -> bool {
        self.clauses.iter().all(|(key, comparison, value)| {
            let got = match key.as_str() {
                "name" => &version.model,
                "run_id" => &version.run_id,
                _ => &version.source,
            };
            compare_text(*comparison, got, value)
        })
    }
}

/// Registered model filters: `name` (=, !=, LIKE, ILIKE) and `tag.<key>` / `tags.<key>`
/// clauses joined by AND; `!=` holds for a model without the tag.
#[derive(Clone, Debug, Default)]
pub struct ModelFilter {
    clauses: Vec<Clause>,
}

impl ModelFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_filter_size(text)?;
        let mut clauses = Vec::new();
        for clause_text in split_and(text) {
            let lowered = clause_text.to_ascii_lowercase();
            let prefixed = if lowered.starts_with("tag.") || lowered.starts_with("tags.") {
                clause_text.clone()
            } else {
                format!("attributes.{clause_text}")
            };
            let clause = parse_clause(&prefixed)?;
            if clause.entity == Entity::Attribute && clause.key != "name" {
                return Err(format!("Invalid registered model search attribute '{}'", clause.key));
            }
            clauses.push(clause);
        }
        Ok(ModelFilter { clauses })
    }

    pub fn matches(&self, name: &str, tags: &[(String, String)]) -> bool {
        self.clauses.iter().all(|clause| match clause.entity {
            Entity::Tag => match tags.iter().find(|(key, _)| *key == clause.key) {
                Some((_, value)) => compare_text(clause.comparison, value, &clause.value),
                None => clause.comparison == Comparison::NotEqual,
            },
            _ => compare_text(clause.comparison, name, &clause.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MetricPoint, RunStatus};

    fn run(run_id: &str, accuracy: f64, learning_rate: &str, start_time: i64) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            experiment_id: 1,
            run_name: format!("name-{run_id}"),
            user_id: "me".into(),
            status: RunStatus::Finished,
            start_time,
            end_time: Some(start_time + 1),
            lifecycle_stage: "active".into(),
            artifact_uri: String::new(),
            params: vec![("lr".into(), learning_rate.into())],
            tags: vec![("team".into(), "vision".into())],
            latest_metrics: vec![MetricPoint { key: "acc".into(), value: accuracy, timestamp: 0, step: 0 }],
        }
    }

    #[track_caller]
    fn check(filter: &str, expected: &[&str]) {
        let runs = [run("a", 0.9, "0.1", 3), run("b", 0.7, "0.01", 2), run("c", 0.95, "0.1", 1)];
        let parsed = RunFilter::parse(filter).unwrap();
        let got: Vec<&str> = runs.iter().filter(|run| parsed.matches(run)).map(|run| run.run_id.as_str()).collect();
        assert_eq!(got, expected, "{filter}");
    }

    #[test]
    fn filters_cover_metrics_params_tags_and_attributes() {
        check("", &["a", "b", "c"]);
        check("metrics.acc > 0.8", &["a", "c"]);
        check("metrics.acc >= 0.9 AND params.lr = '0.1'", &["a", "c"]);
        check("params.lr != '0.1'", &["b"]);
        check("tags.team = 'vision' and attributes.status = 'FINISHED'", &["a", "b", "c"]);
        check("attributes.run_name LIKE 'name-%'", &["a", "b", "c"]);
        check("attributes.run_name ILIKE 'NAME-B'", &["b"]);
        check("attributes.start_time < 3", &["b", "c"]);
        check("metrics.missing > 0", &[]);
        assert!(RunFilter::parse("nonsense").is_err());
        assert!(RunFilter::parse("bogus.x = 1").is_err());
    }

    #[test]
    fn runs_order_by_metric_and_default_newest_first() {
        let mut runs = vec![run("a", 0.9, "0.1", 3), run("b", 0.7, "0.01", 2), run("c", 0.95, "0.1", 1)];
        order_runs(&mut runs, &["metrics.acc DESC".into()]).unwrap();
        assert_eq!(runs.iter().map(|run| run.run_id.as_str()).collect::<Vec<_>>(), ["c", "a", "b"]);
        order_runs(&mut runs, &[]).unwrap();
        assert_eq!(runs.iter().map(|run| run.run_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(order_runs(&mut runs, &["metrics.acc SIDEWAYS".into()]).is_err());
    }

    #[test]
    fn model_filters_take_the_clients_prompt_clause() {
        let filter = ModelFilter::parse("name LIKE 'fleet%' AND tag.`mlflow.prompt.is_prompt` != 'true'").unwrap();
        assert!(filter.matches("fleet-a", &[]));
        assert!(!filter.matches("fleet-a", &[("mlflow.prompt.is_prompt".into(), "true".into())]));
        assert!(!filter.matches("other", &[]));
        assert!(ModelFilter::parse("tags.`mlflow.prompt.is_prompt` != 'true'").unwrap().matches("x", &[]));
    }

    #[test]
    fn version_filters_take_name_and_run_id() {
        let filter = VersionFilter::parse("name='m' and run_id = 'r1'").unwrap();
        assert_eq!(filter.name.as_deref(), Some("m"));
        assert!(VersionFilter::parse("stage = 'x'").is_err());
    }

    #[test]
    fn like_matches_sql_semantics() {
        #[track_caller]
        fn check_like(pattern: &str, text: &str, expected: bool) {
            assert_eq!(like(pattern, text), expected, "`{text}` LIKE `{pattern}`");
        }
        let table = [
            ("", "", true),
            ("", "a", false),
            ("%", "", true),
            ("%", "anything", true),
            ("%%%", "", true),
            ("_", "", false),
            ("_", "é", true),
            ("a_c", "abc", true),
            ("a_c", "ac", false),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("ab%", "ab", true),
            ("%bc", "abc", true),
            ("%bc", "abcbc", true),
            ("%b%", "abc", true),
            ("a%c", "abxxc", true),
            ("a%c", "abxxcd", false),
            ("a%b%c", "aXbYc", true),
            ("a%b%c", "aXcYb", false),
            ("%a_b%", "xxa-bxx", true),
            ("%aab", "aaab", true),
            ("name-%", "name-b", true),
            ("%_", "", false),
            ("_%_", "ab", true),
            ("_%_", "a", false),
        ];
        for (pattern, text, expected) in table {
            check_like(pattern, text, expected);
        }
    }

    #[test]
    fn pathological_like_patterns_finish_fast() {
        // Seven wildcards took 16.8 s on one short value with the backtracking matcher; a
        // value of 5,000 characters would have taken longer than the universe has existed.
        let text = "a".repeat(5_000);
        let pattern = format!("{}b", "%a".repeat(7));
        let started = std::time::Instant::now();
        assert!(!like(&pattern, &text));
        let worst = format!("%{}b", "a".repeat(MAX_PATTERN_CHARS - 2));
        assert!(!like(&worst, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    #[test]
    fn oversized_filters_and_patterns_are_refused_with_the_limit() {
        let long_pattern = format!("params.lr LIKE '{}'", "%".repeat(MAX_PATTERN_CHARS + 1));
        let error = RunFilter::parse(&long_pattern).unwrap_err();
        assert!(error.contains("at most 256 characters"), "{error}");
        assert!(RunFilter::parse(&format!("params.lr LIKE '{}'", "%".repeat(MAX_PATTERN_CHARS))).is_ok());
        // Equality values are not patterns: a long one costs a comparison, not a search.
        assert!(RunFilter::parse(&format!("params.lr = '{}'", "x".repeat(1000))).is_ok());
        let long_filter = vec!["params.lr = 'x'"; 300].join(" and ");
        let error = RunFilter::parse(&long_filter).unwrap_err();
        assert!(error.contains("at most 4096 characters"), "{error}");
        assert!(ModelFilter::parse(&long_filter).is_err());
        assert!(VersionFilter::parse(&long_filter).is_err());
    }

    #[tokio::test]
    async fn select_runs_filters_and_orders_off_the_runtime() {
        let runs = vec![run("a", 0.9, "0.1", 3), run("b", 0.7, "0.01", 2), run("c", 0.95, "0.1", 1)];
        let filter = RunFilter::parse("params.lr = '0.1'").unwrap();
        let selected = select_runs(runs.clone(), filter, vec!["metrics.acc DESC".into()]).await.unwrap();
        assert_eq!(selected.iter().map(|run| run.run_id.as_str()).collect::<Vec<_>>(), ["c", "a"]);
        assert!(select_runs(runs, RunFilter::default(), vec!["x SIDEWAYS".into()]).await.is_err());
    }
}

/// Which runs a search sees by lifecycle (MLflow's `run_view_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunLifecycle {
    ActiveOnly,
    DeletedOnly,
    All,
}

impl RunLifecycle {
    /// MLflow's names; anything else is ACTIVE_ONLY, as in MLflow.
    pub fn parse(text: &str) -> Self {
        match text {
            "ALL" => RunLifecycle::All,
            "DELETED_ONLY" => RunLifecycle::DeletedOnly,
            _ => RunLifecycle::ActiveOnly,
        }
    }

    fn admits(self, run: &RunRecord) -> bool {
        match self {
            RunLifecycle::All => true,
            RunLifecycle::DeletedOnly => run.lifecycle_stage == "deleted",
            RunLifecycle::ActiveOnly => run.lifecycle_stage == "active",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// A filter or an order_by term that does not parse.
    #[error("{0}")]
    InvalidQuery(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The runs of these experiments that a filter admits, ordered: the one search behind
/// MLflow's `runs/search` and the native `GET /api/v1/runs`.
pub async fn search_runs(
    store: &dyn crate::store::Store,
    experiment_ids: &[i64],
    filter: &str,
    lifecycle: RunLifecycle,
    order_by: &[String],
) -> Result<Vec<RunRecord>, TrackingError> {
    let filter = RunFilter::parse(filter).map_err(TrackingError::InvalidQuery)?;
    let runs: Vec<RunRecord> = store.list_runs(experiment_ids).await?.into_iter().filter(|run| lifecycle.admits(run)).collect();
    // Matching and sorting are CPU work: off the async runtime.
    select_runs(runs, filter, order_by.to_vec()).await.map_err(TrackingError::InvalidQuery)
}
