//! MQTT topic names. One namespace under a configurable root; the device id sits in the
//! path so a broker ACL can pin each device to its own subtree.

/// Characters allowed in device ids and model names: they become topic levels and paths.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

/// Topic builder for one fleet (one topic root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    root: String,
}

/// What a topic received by the plane or an agent is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicKind {
    Desired { device_id: String, model: String },
    Reported { device_id: String },
    Telemetry { device_id: String },
    Fetch { device_id: String },
    Chunks { digest_hex: String },
}

impl Topics {
    pub fn new(root: &str) -> Self {
        Topics { root: root.trim_end_matches('/').to_string() }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// plane → agent, retained: the signed desired state of one model slot.
    pub fn desired(&self, device_id: &str, model: &str) -> String {
        format!("{}/v1/d/{device_id}/desired/{model}", self.root)
    }

    pub fn desired_filter(&self, device_id: &str) -> String {
        format!("{}/v1/d/{device_id}/desired/+", self.root)
    }

    /// agent → plane, retained: reported state; the last will marks the device offline.
    pub fn reported(&self, device_id: &str) -> String {
        format!("{}/v1/d/{device_id}/reported", self.root)
    }

    /// agent → plane: heartbeats.
    pub fn telemetry(&self, device_id: &str) -> String {
        format!("{}/v1/d/{device_id}/telemetry", self.root)
    }

    /// plane → consumers: drift events (JSON, QoS 1, not retained).
    pub fn drift_events(&self) -> String {
        format!("{}/v1/events/drift", self.root)
    }

    /// agent → plane: requests for a bundle's chunks.
    pub fn fetch(&self, device_id: &str) -> String {
        format!("{}/v1/d/{device_id}/fetch", self.root)
    }

    /// plane → agents: a bundle's chunks, published once per request burst.
    pub fn chunks(&self, digest_hex: &str) -> String {
        format!("{}/v1/b/{digest_hex}/chunks", self.root)
    }

    /// The filters the plane subscribes to.
    pub fn plane_filters(&self) -> [String; 3] {
        [format!("{}/v1/d/+/reported", self.root), format!("{}/v1/d/+/telemetry", self.root), format!("{}/v1/d/+/fetch", self.root)]
    }

    pub fn parse(&self, topic: &str) -> Option<TopicKind> {
        let rest = topic.strip_prefix(&self.root)?.strip_prefix("/v1/")?;
        let levels: Vec<&str> = rest.split('/').collect();
        match levels.as_slice() {
            ["d", device_id, "desired", model] => Some(TopicKind::Desired { device_id: device_id.to_string(), model: model.to_string() }),
            ["d", device_id, "reported"] => Some(TopicKind::Reported { device_id: device_id.to_string() }),
            ["d", device_id, "telemetry"] => Some(TopicKind::Telemetry { device_id: device_id.to_string() }),
            ["d", device_id, "fetch"] => Some(TopicKind::Fetch { device_id: device_id.to_string() }),
            ["b", digest_hex, "chunks"] => Some(TopicKind::Chunks { digest_hex: digest_hex.to_string() }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_back() {
        let topics = Topics::new("fleetml/");
        for (topic, expected) in [
            (topics.desired("dev-1", "m"), TopicKind::Desired { device_id: "dev-1".into(), model: "m".into() }),
            (topics.reported("dev-1"), TopicKind::Reported { device_id: "dev-1".into() }),
            (topics.telemetry("d"), TopicKind::Telemetry { device_id: "d".into() }),
            (topics.fetch("d"), TopicKind::Fetch { device_id: "d".into() }),
            (topics.chunks("ab"), TopicKind::Chunks { digest_hex: "ab".into() }),
        ] {
            assert_eq!(topics.parse(&topic), Some(expected), "{topic}");
        }
        assert_eq!(topics.parse("other/v1/d/x/reported"), None);
        assert_eq!(topics.parse("fleetml/v1/d/x/y/z/reported"), None);
    }

    #[test]
    fn names_that_would_break_topics_or_paths_are_invalid() {
        for good in ["dev-1", "a.b_c", "X9"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "a/b", "+", "#", "..", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
