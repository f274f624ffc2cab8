//! Agent configuration: built-in defaults, then a TOML file, then FLEETML_AGENT_* variables
//! and flags (clap reads both; a flag wins over its variable).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetml_shared::broker::BrokerAddress;
use fleetml_shared::selector::{Selector, parse_label};
use fleetml_shared::signing::{PublicKey, TrustedKeys};
use fleetml_shared::topics::is_valid_name;
use serde::Deserialize;

/// A configuration error: the binary exits with code 64 (EX_USAGE) and this message.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn config_error(field: &str, reason: impl ToString) -> ConfigError {
    ConfigError { field: field.to_string(), reason: reason.to_string() }
}

/// Settings shared by one agent and by every agent of a simulated fleet.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub broker: BrokerAddress,
    pub topic_root: String,
    pub keep_alive: Duration,
}

#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub heartbeat_interval: Duration,
    /// Overrides the profile's drift window length.
    pub drift_window: Option<Duration>,
    /// Overrides the profile's drift window size in samples.
    pub drift_window_samples: Option<u64>,
    /// Closed drift windows kept on disk while offline; beyond it the oldest are dropped.
    pub drift_outbox_windows: usize,
}

#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// A transfer that receives nothing for this long is re-requested, with backoff.
    pub stall_timeout: Duration,
    pub max_backoff: Duration,
}

/// Test-only knobs (for `sim`, the firmware tests and rollout drills); all off by default.
#[derive(Clone, Debug, Default)]
pub struct TestingConfig {
    /// Self-tests of these `NAME` or `NAME@VERSION` bundles fail on this device.
    pub fail_self_test: Vec<String>,
}

impl TestingConfig {
    pub fn forces_self_test_failure(&self, model: &str, version: u64) -> bool {
        self.fail_self_test.iter().any(|spec| match spec.split_once('@') {
            Some((name, wanted)) => name == model && wanted.parse::<u64>() == Ok(version),
            None => spec == model || spec == "*",
        })
    }
}

/// Everything one device needs.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub device_id: String,
    pub labels: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    pub trusted_keys: TrustedKeys,
    pub link: LinkConfig,
    pub telemetry: TelemetryConfig,
    pub transfer: TransferConfig,
    pub testing: TestingConfig,
}

/// The local API's server limits and the Host names it answers to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiConfig {
    pub limits: crate::http::ServerLimits,
    /// Host names accepted besides `localhost`, `127.0.0.1`, `[::1]` and the listen address
    /// (a browser page on the device cannot reach the API through DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

/// `fleetml-agent run`.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub device: DeviceConfig,
    pub http: SocketAddr,
    pub api: ApiConfig,
    pub inference_threads: usize,
}

/// `fleetml-agent sim`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub count: usize,
    pub id_prefix: String,
    pub first_index: usize,
    pub base_labels: BTreeMap<String, String>,
    /// `key=a,b,c`: device i gets value i mod 3.
    pub label_cycles: Vec<(String, Vec<String>)>,
    pub state_dir: PathBuf,
    pub trusted_keys: TrustedKeys,
    pub link: LinkConfig,
    pub telemetry: TelemetryConfig,
    pub transfer: TransferConfig,
    pub http: SocketAddr,
    pub api: ApiConfig,
    pub inference_threads: usize,
    pub testing: TestingConfig,
    /// Only devices matching this selector get `testing.fail_self_test`.
    pub testing_selector: Selector,
    /// Devices started (and so MQTT connections opened) per second; `None`: all at once.
    pub connect_rate: Option<f64>,
}

/// Options common to `run` and `sim`, as given on the command line or in the environment.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (flags and FLEETML_AGENT_* variables override it).
    #[arg(long, env = "FLEETML_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Broker URL, mqtt://host:port.
    #[arg(long, env = "FLEETML_AGENT_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Topic root shared with the plane (several fleets can share a broker).
    #[arg(long, env = "FLEETML_AGENT_MQTT_TOPIC_ROOT")]
    pub mqtt_topic_root: Option<String>,
    /// Folder for the agent's state (installed bundles, transfers in progress).
    #[arg(long, env = "FLEETML_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// A public key (PEM) whose signatures this device trusts; repeatable.
    #[arg(long = "trusted-key", env = "FLEETML_AGENT_TRUSTED_KEYS", value_delimiter = ',')]
    pub trusted_keys: Vec<PathBuf>,
    /// A device label, key=value; repeatable.
    #[arg(long = "label", env = "FLEETML_AGENT_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Local inference API address (Open Inference Protocol).
    #[arg(long, env = "FLEETML_AGENT_HTTP")]
    pub http: Option<SocketAddr>,
    /// Seconds a client has to send a request's headers (default 10).
    #[arg(long, env = "FLEETML_AGENT_HTTP_HEADER_TIMEOUT_SECONDS")]
    pub http_header_timeout_seconds: Option<f64>,
    /// Seconds a request body may send nothing before its connection closes (default 10).
    #[arg(long, env = "FLEETML_AGENT_HTTP_BODY_TIMEOUT_SECONDS")]
    pub http_body_timeout_seconds: Option<f64>,
    /// Connections the local API serves at once (default 64); more wait to be accepted.
    #[arg(long, env = "FLEETML_AGENT_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// A Host name the local API answers to besides localhost and its listen address; repeatable.
    #[arg(long = "allowed-host", env = "FLEETML_AGENT_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Seconds between heartbeats.
    #[arg(long, env = "FLEETML_AGENT_HEARTBEAT_SECONDS")]
    pub heartbeat_seconds: Option<f64>,
    /// Drift windows close after this many seconds (default: the model's profile says).
    #[arg(long, env = "FLEETML_AGENT_DRIFT_WINDOW_SECONDS")]
    pub drift_window_seconds: Option<f64>,
    /// Drift windows close after this many samples (default: the model's profile says).
    #[arg(long, env = "FLEETML_AGENT_DRIFT_WINDOW_SAMPLES")]
    pub drift_window_samples: Option<u64>,
    /// Closed drift windows kept on disk while offline (default 10000); the oldest go first.
    #[arg(long, env = "FLEETML_AGENT_DRIFT_OUTBOX_WINDOWS")]
    pub drift_outbox_windows: Option<usize>,
    /// Seconds without progress before a transfer is re-requested.
    #[arg(long, env = "FLEETML_AGENT_TRANSFER_STALL_SECONDS")]
    pub transfer_stall_seconds: Option<f64>,
    /// Inference worker threads (default: the number of cores).
    #[arg(long, env = "FLEETML_AGENT_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,
    /// TESTING ONLY: make the self-test of NAME or NAME@VERSION fail on this device; repeatable.
    #[arg(long = "testing-fail-self-test", env = "FLEETML_AGENT_TESTING_FAIL_SELF_TEST", value_delimiter = ',')]
    pub testing_fail_self_test: Vec<String>,
}

/// The TOML file: the same names as the flags, in snake_case, plus a `[labels]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub device_id: Option<String>,
    pub mqtt_url: Option<String>,
    pub mqtt_topic_root: Option<String>,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub http: Option<SocketAddr>,
    pub http_header_timeout_seconds: Option<f64>,
    pub http_body_timeout_seconds: Option<f64>,
    pub http_max_connections: Option<usize>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    pub heartbeat_seconds: Option<f64>,
    pub drift_window_seconds: Option<f64>,
    pub drift_window_samples: Option<u64>,
    pub drift_outbox_windows: Option<usize>,
    pub transfer_stall_seconds: Option<f64>,
    pub inference_threads: Option<usize>,
    #[serde(default)]
    pub testing_fail_self_test: Vec<String>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| config_error("--config", format!("{}: {error}", path.display())))?;
        toml::from_str(&text).map_err(|error| config_error("--config", format!("{}: {error}", path.display())))
    }
}

/// The layered result of defaults, file and arguments, before it is split per device.
pub struct Resolved {
    pub labels: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    pub trusted_keys: TrustedKeys,
    pub link: LinkConfig,
    pub telemetry: TelemetryConfig,
    pub transfer: TransferConfig,
    pub http: SocketAddr,
    pub api: ApiConfig,
    pub inference_threads: usize,
    pub testing: TestingConfig,
}

/// Connections the local API serves at once unless configured: a device's local clients
/// need few, and each open connection holds buffers (a 2,000-connection flood without a cap
/// left the agent at 79 MiB instead of 24).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 64;

pub fn resolve(args: &CommonArgs, file: &FileConfig, default_http: SocketAddr) -> Result<Resolved, ConfigError> {
    let mqtt_url = args.mqtt_url.clone().or_else(|| file.mqtt_url.clone()).unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let broker = BrokerAddress::parse(&mqtt_url).map_err(|error| config_error("mqtt_url", error))?;
    let topic_root = args.mqtt_topic_root.clone().or_else(|| file.mqtt_topic_root.clone()).unwrap_or_else(|| "fleetml".into());
    if topic_root.is_empty() || topic_root.contains(['+', '#']) {
        return Err(config_error("mqtt_topic_root", "must be non-empty and contain no MQTT wildcards"));
    }
    let state_dir =
        args.state_dir.clone().or_else(|| file.state_dir.clone()).ok_or_else(|| config_error("state_dir", "required (--state-dir)"))?;
    let key_paths = if args.trusted_keys.is_empty() { &file.trusted_keys } else { &args.trusted_keys };
    if key_paths.is_empty() {
        return Err(config_error("trusted_keys", "at least one --trusted-key is required: the device accepts nothing unsigned"));
    }
    let mut keys = Vec::new();
    for path in key_paths {
        keys.push(PublicKey::read(path).map_err(|error| config_error("trusted_keys", error))?);
    }
    let mut labels = file.labels.clone();
    for text in &args.labels {
        let (key, value) = parse_label(text).map_err(|error| config_error("label", error))?;
        labels.insert(key, value);
    }
    let seconds = |field: &str, value: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value > 0.0 && value < 86_400.0) {
            return Err(config_error(field, format!("{value} is not a number of seconds in (0, 86400)")));
        }
        Ok(Duration::from_secs_f64(value))
    };
    let heartbeat_interval = seconds("heartbeat_seconds", args.heartbeat_seconds.or(file.heartbeat_seconds), 10.0)?;
    let drift_window = match args.drift_window_seconds.or(file.drift_window_seconds) {
        Some(value) => Some(seconds("drift_window_seconds", Some(value), 60.0)?),
        None => None,
    };
    let drift_window_samples = args.drift_window_samples.or(file.drift_window_samples);
    if drift_window_samples == Some(0) {
        return Err(config_error("drift_window_samples", "must be at least 1"));
    }
    let drift_outbox_windows = args.drift_outbox_windows.or(file.drift_outbox_windows).unwrap_or(10_000);
    if drift_outbox_windows == 0 {
        return Err(config_error("drift_outbox_windows", "must be at least 1"));
    }
    let stall_timeout = seconds("transfer_stall_seconds", args.transfer_stall_seconds.or(file.transfer_stall_seconds), 10.0)?;
    let inference_threads = args
        .inference_threads
        .or(file.inference_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1));
    if inference_threads == 0 || inference_threads > 256 {
        return Err(config_error("inference_threads", "must be between 1 and 256"));
    }
    let http_max_connections = args.http_max_connections.or(file.http_max_connections).unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
    if !(1..=65_536).contains(&http_max_connections) {
        return Err(config_error("http_max_connections", format!("{http_max_connections}: must be between 1 and 65536")));
    }
    let limits = crate::http::ServerLimits {
        header_read_timeout: seconds(
            "http_header_timeout_seconds",
            args.http_header_timeout_seconds.or(file.http_header_timeout_seconds),
            10.0,
        )?,
        body_read_timeout: seconds("http_body_timeout_seconds", args.http_body_timeout_seconds.or(file.http_body_timeout_seconds), 10.0)?,
        max_connections: http_max_connections,
    };
    let allowed_hosts = if args.allowed_hosts.is_empty() { file.allowed_hosts.clone() } else { args.allowed_hosts.clone() };
    for host in &allowed_hosts {
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(config_error("allowed_hosts", format!("`{host}` is not a host name")));
        }
    }
    let fail_self_test =
        if args.testing_fail_self_test.is_empty() { file.testing_fail_self_test.clone() } else { args.testing_fail_self_test.clone() };
    Ok(Resolved {
        labels,
        state_dir,
        trusted_keys: TrustedKeys::new(keys),
        link: LinkConfig { broker, topic_root, keep_alive: Duration::from_secs(15) },
        telemetry: TelemetryConfig { heartbeat_interval, drift_window, drift_window_samples, drift_outbox_windows },
        transfer: TransferConfig { stall_timeout, max_backoff: Duration::from_secs(60) },
        http: args.http.or(file.http).unwrap_or(default_http),
        api: ApiConfig { limits, allowed_hosts },
        inference_threads,
        testing: TestingConfig { fail_self_test },
    })
}

pub fn check_device_id(device_id: &str) -> Result<(), ConfigError> {
    if is_valid_name(device_id) {
        Ok(())
    } else {
        Err(config_error("device_id", format!("`{device_id}` must be 1-128 characters of A-Z a-z 0-9 - _ .")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path) -> PathBuf {
        let key_pair = fleetml_shared::signing::SigningKeyPair::generate().unwrap();
        let path = dir.join("signing.pub");
        std::fs::write(&path, key_pair.public_key().to_pem().unwrap()).unwrap();
        path
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let file: FileConfig = toml::from_str(&format!(
            "mqtt_url = \"mqtt://file:1\"\nstate_dir = \"/from/file\"\ntrusted_keys = [\"{}\"]\nheartbeat_seconds = 3\n[labels]\nsite = \"a\"\nzone = \"z\"\n",
            key.display()
        ))
        .unwrap();
        let args = CommonArgs { mqtt_url: Some("mqtt://flag:2".into()), labels: vec!["site=b".into()], ..CommonArgs::default() };
        let resolved = resolve(&args, &file, "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(resolved.link.broker.host, "flag");
        assert_eq!(resolved.state_dir, PathBuf::from("/from/file"));
        assert_eq!(resolved.telemetry.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(resolved.labels.get("site").map(String::as_str), Some("b"));
        assert_eq!(resolved.labels.get("zone").map(String::as_str), Some("z"));
        assert_eq!(resolved.link.topic_root, "fleetml");
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let base = CommonArgs { state_dir: Some(dir.path().into()), trusted_keys: vec![key], ..CommonArgs::default() };
        let http = "127.0.0.1:0".parse().unwrap();
        for (args, field) in [
            (CommonArgs { mqtt_url: Some("http://x".into()), ..base.clone() }, "mqtt_url"),
            (CommonArgs { trusted_keys: vec![], ..base.clone() }, "trusted_keys"),
            (CommonArgs { trusted_keys: vec![dir.path().join("missing.pub")], ..base.clone() }, "trusted_keys"),
            (CommonArgs { labels: vec!["novalue".into()], ..base.clone() }, "label"),
            (CommonArgs { heartbeat_seconds: Some(-1.0), ..base.clone() }, "heartbeat_seconds"),
            (CommonArgs { mqtt_topic_root: Some("a/#".into()), ..base.clone() }, "mqtt_topic_root"),
            (CommonArgs { state_dir: None, ..base.clone() }, "state_dir"),
        ] {
            let error = resolve(&args, &FileConfig::default(), http).err().expect(field);
            assert_eq!(error.field, field, "{error}");
        }
        assert!(toml::from_str::<FileConfig>("unknown_key = 1").is_err());
    }

    #[test]
    fn forced_self_test_failures_match_name_or_version() {
        let testing = TestingConfig { fail_self_test: vec!["a".into(), "b@2".into()] };
        assert!(testing.forces_self_test_failure("a", 7));
        assert!(testing.forces_self_test_failure("b", 2));
        assert!(!testing.forces_self_test_failure("b", 3));
        assert!(!testing.forces_self_test_failure("c", 1));
    }
}
