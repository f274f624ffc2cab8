//! The rollout policy document, the same in TOML and JSON for the API and the CLI.

use serde::{Deserialize, Serialize};

use fleetml_shared::selector::Selector;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub target: TargetDocument,
    pub waves: Vec<WaveDocument>,
    #[serde(default)]
    pub gates: Vec<GateDocument>,
    #[serde(default)]
    pub on_failure: FailureAction,
    /// A device that has not settled this long after it was told (offline, say) is marked
    /// failed. Until then an offline device waits and counts against the offline gate.
    #[serde(default = "default_device_timeout_seconds")]
    pub device_timeout_seconds: u64,
}

fn default_device_timeout_seconds() -> u64 {
    600
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetDocument {
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    /// Devices that match later (new, or relabelled) join the rollout.
    #[serde(default = "yes")]
    pub include_new: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveDocument {
    /// `"10%"` or a device count.
    pub size: WaveSize,
    #[serde(default)]
    pub bake_seconds: u64,
    /// The most devices installing at once in this wave (default: no limit).
    #[serde(default)]
    pub max_concurrent: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WaveSize {
    /// Cumulative share of the target, in percent.
    Percent(f64),
    /// Cumulative number of devices.
    Count(u64),
}

impl Serialize for WaveSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Percent(percent) => serializer.serialize_str(&format!("{percent}%")),
            WaveSize::Count(count) => serializer.serialize_u64(*count),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(count) => Ok(WaveSize::Count(count)),
            Raw::Text(text) => {
                let number = text
                    .trim()
                    .strip_suffix('%')
                    .ok_or_else(|| serde::de::Error::custom(format!("wave size `{text}`: a count or a percentage like \"10%\"")))?;
                let percent: f64 =
                    number.trim().parse().map_err(|_| serde::de::Error::custom(format!("wave size `{text}` is not a percentage")))?;
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(serde::de::Error::custom(format!("wave size `{text}` must be in (0%, 100%]")));
                }
                Ok(WaveSize::Percent(percent))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    InstallFailureRate,
    InferenceErrorRate,
    /// New version's p95 latency over the previous version's, minus one (0.2: 20% slower).
    P95LatencyRegression,
    OfflineRate,
    /// The share of features drifted on the wave's devices (drift monitoring).
    DriftScore,
    /// The share of live requests on which the candidate, run as a shadow beside the active
    /// version anywhere in the fleet, agreed with it. Checked before the first wave moves any
    /// device, and again at every wave: a gate with `min`.
    ShadowAgreement,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateDocument {
    pub metric: GateMetric,
    /// The wave fails when the value exceeds this;
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// or falls below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Fewer samples than this cannot decide a wave.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

fn default_min_samples() -> u64 {
    1
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid rollout policy: {0}")]
pub struct PolicyError(pub String);

impl PolicyDocument {
    /// Parses TOML or JSON (JSON when the text starts with `{`) and checks it.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let document: PolicyDocument = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|error| PolicyError(error.to_string()))?
        } else {
            toml::from_str(text).map_err(|error| PolicyError(error.to_string()))?
        };
        document.check()?;
        Ok(document)
    }

    fn check(&self) -> Result<(), PolicyError> {
        if self.target.selector.is_none() && self.target.devices.is_empty() {
            return Err(PolicyError("target needs a selector or device ids".into()));
        }
        if let Some(selector) = &self.target.selector {
            Selector::parse(selector).map_err(|error| PolicyError(error.to_string()))?;
        }
        if self.waves.is_empty() {
            return Err(PolicyError("at least one wave is needed".into()));
        }
        let mut previous = 0.0f64;
        let mut previous_count = 0u64;
        for (wave_idx, wave) in self.waves.iter().enumerate() {
            match wave.size {
                WaveSize::Percent(percent) if percent < previous => {
                    return Err(PolicyError(format!("wave {} shrinks: sizes are cumulative", wave_idx + 1)));
                }
                WaveSize::Percent(percent) => previous = percent,
                WaveSize::Count(0) => return Err(PolicyError(format!("wave {} has no devices", wave_idx + 1))),
                WaveSize::Count(count) if count < previous_count => {
                    return Err(PolicyError(format!("wave {} shrinks: sizes are cumulative", wave_idx + 1)));
                }
                WaveSize::Count(count) => previous_count = count,
            }
            if wave.max_concurrent == Some(0) {
                return Err(PolicyError(format!("wave {}: max_concurrent must be at least 1", wave_idx + 1)));
            }
        }
        for gate in &self.gates {
            let name = serde_json::to_value(gate.metric).ok().and_then(|value| value.as_str().map(str::to_string)).unwrap_or_default();
            match (gate.max, gate.min) {
                (Some(_), Some(_)) | (None, None) => return Err(PolicyError(format!("gate {name}: give one of `max` or `min`"))),
                (Some(bound), None) | (None, Some(bound)) if !bound.is_finite() || bound < 0.0 => {
                    return Err(PolicyError(format!("gate {name}: the bound must be a non-negative number")));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_documents_parse_alike() {
        let toml_text = r#"
on_failure = "rollback"
[target]
selector = "arch=arm64, site in (a,b)"
[[waves]]
size = "1%"
bake_seconds = 600
[[waves]]
size = "10%"
max_concurrent = 50
[[waves]]
size = "100%"
[[gates]]
metric = "install_failure_rate"
max = 0.05
min_samples = 10
"#;
        let json_text = r#"{"on_failure": "rollback", "target": {"selector": "arch=arm64, site in (a,b)"},
            "waves": [{"size": "1%", "bake_seconds": 600}, {"size": "10%", "max_concurrent": 50}, {"size": "100%"}],
            "gates": [{"metric": "install_failure_rate", "max": 0.05, "min_samples": 10}]}"#;
        let from_toml = PolicyDocument::parse(toml_text).unwrap();
        assert_eq!(from_toml, PolicyDocument::parse(json_text).unwrap());
        assert_eq!(from_toml.waves[0].size, WaveSize::Percent(1.0));
        assert_eq!(from_toml.on_failure, FailureAction::Rollback);
        assert!(from_toml.target.include_new);
    }

    #[track_caller]
    fn refused(text: &str, part: &str) {
        let error = PolicyDocument::parse(text).unwrap_err();
        assert!(error.0.contains(part), "{text}: {error}");
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        refused(r#"{"target": {}, "waves": [{"size": 1}]}"#, "selector or device ids");
        refused(r#"{"target": {"selector": "a in (b"}, "waves": [{"size": 1}]}"#, "unclosed");
        refused(r#"{"target": {"devices": ["d"]}, "waves": []}"#, "at least one wave");
        refused(r#"{"target": {"devices": ["d"]}, "waves": [{"size": "50%"}, {"size": "10%"}]}"#, "shrinks");
        refused(r#"{"target": {"devices": ["d"]}, "waves": [{"size": "150%"}]}"#, "(0%, 100%]");
        refused(r#"{"target": {"devices": ["d"]}, "waves": [{"size": "ten"}]}"#, "percentage");
        refused(r#"{"target": {"devices": ["d"]}, "waves": [{"size": 1}], "gates": [{"metric": "vibes", "max": 1}]}"#, "unknown variant");
        refused(r#"{"target": {"devices": ["d"]}, "waves": [{"size": 1, "surprise": 1}]}"#, "unknown field");
        refused(
            r#"{"target": {"devices": ["d"]}, "waves": [{"size": 1}], "gates": [{"metric": "offline_rate"}]}"#,
            "one of `max` or `min`",
        );
        refused(
            r#"{"target": {"devices": ["d"]}, "waves": [{"size": 1}], "gates": [{"metric": "shadow_agreement", "min": -1}]}"#,
            "non-negative",
        );
    }
}
