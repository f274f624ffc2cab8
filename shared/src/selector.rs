//! Label selectors with the Kubernetes grammar, used by `deploy`, rollouts and drift cohorts:
//! `k=v` (or `k==v`), `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; a comma means AND.
//! The empty selector matches every device.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid selector `{selector}`: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl Selector {
    pub fn everything() -> Self {
        Selector { requirements: Vec::new() }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |reason: String| SelectorError { selector: text.to_string(), reason };
        let mut requirements = Vec::new();
        for clause in split_top_level_commas(text).map_err(error)? {
            let clause = clause.trim();
            if clause.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(error("empty requirement between commas".into()));
            }
            requirements.push(parse_requirement(clause).map_err(error)?);
        }
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|requirement| {
            let value = labels.get(&requirement.key);
            match &requirement.operator {
                Operator::Equals(expected) => value == Some(expected),
                Operator::NotEquals(expected) => value != Some(expected),
                Operator::In(set) => value.is_some_and(|value| set.contains(value)),
                Operator::NotIn(set) => !value.is_some_and(|value| set.contains(value)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clauses: Vec<String> = self
            .requirements
            .iter()
            .map(|requirement| {
                let key = &requirement.key;
                match &requirement.operator {
                    Operator::Equals(value) => format!("{key}={value}"),
                    Operator::NotEquals(value) => format!("{key}!={value}"),
                    Operator::In(set) => format!("{key} in ({})", set.join(",")),
                    Operator::NotIn(set) => format!("{key} notin ({})", set.join(",")),
                    Operator::Exists => key.clone(),
                    Operator::DoesNotExist => format!("!{key}"),
                }
            })
            .collect();
        f.write_str(&clauses.join(","))
    }
}

fn split_top_level_commas(text: &str) -> Result<Vec<&str>, String> {
    let mut clauses = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (byte_idx, character) in text.char_indices() {
        match character {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parentheses".into()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("unbalanced `)`".into()),
            ',' if depth == 0 => {
                clauses.push(&text[start..byte_idx]);
                start = byte_idx + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed `(`".into());
    }
    clauses.push(&text[start..]);
    Ok(clauses)
}

fn parse_requirement(clause: &str) -> Result<Requirement, String> {
    if let Some(key) = clause.strip_prefix('!') {
        return Ok(Requirement { key: checked_key(key.trim())?, operator: Operator::DoesNotExist });
    }
    if let Some((key, value)) = clause.split_once("!=") {
        return Ok(Requirement { key: checked_key(key.trim())?, operator: Operator::NotEquals(checked_value(value.trim())?) });
    }
    if let Some((key, value)) = clause.split_once("==").or_else(|| clause.split_once('=')) {
        return Ok(Requirement { key: checked_key(key.trim())?, operator: Operator::Equals(checked_value(value.trim())?) });
    }
    if let Some(open) = clause.find('(') {
        let head = clause[..open].trim();
        let close = clause.rfind(')').ok_or("missing `)`")?;
        if !clause[close + 1..].trim().is_empty() {
            return Err(format!("unexpected text after `)` in `{clause}`"));
        }
        let values: Vec<String> = clause[open + 1..close].split(',').map(|value| checked_value(value.trim())).collect::<Result<_, _>>()?;
        if values.iter().any(String::is_empty) {
            return Err(format!("empty value in set of `{clause}`"));
        }
        let (key, operator) = if let Some(key) = head.strip_suffix(" notin") {
            (key, Operator::NotIn(values))
        } else if let Some(key) = head.strip_suffix(" in") {
            (key, Operator::In(values))
        } else {
            return Err(format!("expected `in` or `notin` before `(` in `{clause}`"));
        };
        return Ok(Requirement { key: checked_key(key.trim())?, operator });
    }
    Ok(Requirement { key: checked_key(clause)?, operator: Operator::Exists })
}

fn checked_key(key: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'/'));
    if valid { Ok(key.to_string()) } else { Err(format!("`{key}` is not a valid label key")) }
}

fn checked_value(value: &str) -> Result<String, String> {
    let valid = value.len() <= 256 && value.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid { Ok(value.to_string()) } else { Err(format!("`{value}` is not a valid label value")) }
}

/// Parses `key=value` as given to `--label`.
pub fn parse_label(text: &str) -> Result<(String, String), SelectorError> {
    let error = |reason: String| SelectorError { selector: text.to_string(), reason };
    let (key, value) = text.split_once('=').ok_or_else(|| error("a label is written key=value".into()))?;
    Ok((checked_key(key.trim()).map_err(error)?, checked_value(value.trim()).map_err(error)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[track_caller]
    fn check(selector: &str, device_labels: &[(&str, &str)], expected: bool) {
        let parsed = Selector::parse(selector).unwrap();
        assert_eq!(parsed.matches(&labels(device_labels)), expected, "{selector} on {device_labels:?}");
        // Display gives a selector that parses to the same thing.
        assert_eq!(Selector::parse(&parsed.to_string()).unwrap(), parsed);
    }

    #[test]
    fn grammar_matches_like_kubernetes() {
        let arm_a = [("arch", "arm64"), ("site", "a")];
        check("", &arm_a, true);
        check("arch=arm64", &arm_a, true);
        check("arch==arm64", &arm_a, true);
        check("arch=x86", &arm_a, false);
        check("arch!=x86", &arm_a, true);
        check("gpu!=yes", &arm_a, true);
        check("site in (a,b)", &arm_a, true);
        check("site in (b, c)", &arm_a, false);
        check("site notin (b,c)", &arm_a, true);
        check("gpu notin (yes)", &arm_a, true);
        check("arch", &arm_a, true);
        check("gpu", &arm_a, false);
        check("!gpu", &arm_a, true);
        check("!arch", &arm_a, false);
        check("arch=arm64, site in (a,b), !gpu", &arm_a, true);
        check("arch=arm64,site=b", &arm_a, false);
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, reason_part) in [
            ("site in (a,b", "unclosed"),
            ("site in a,b)", "unbalanced"),
            ("site within (a)", "expected `in` or `notin`"),
            ("a=b,,c=d", "empty requirement"),
            ("a b=c", "not a valid label key"),
            ("a=b c", "not a valid label value"),
            ("site in (a,)", "empty value"),
        ] {
            let error = Selector::parse(text).unwrap_err();
            assert!(error.reason.contains(reason_part), "{text}: {error}");
        }
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("site=a").unwrap(), ("site".into(), "a".into()));
        assert!(parse_label("site").is_err());
    }
}
