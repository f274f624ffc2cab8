//! Plane configuration: built-in defaults, then a TOML file (`--config`), then FLEETML_*
//! variables and flags (clap reads both; a flag wins over its variable).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetml_shared::broker::BrokerAddress;
use serde::Deserialize;

use crate::broker::DEFAULT_MAX_CONNECTIONS;

/// The plane's own link and the broker's start-up probe take two connections; room for two devices.
const MIN_MAX_CONNECTIONS: usize = 4;
/// rumqttd allocates its per-connection tables for the limit up front.
const MAX_MAX_CONNECTIONS: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

pub fn config_error(field: &str, reason: impl ToString) -> ConfigError {
    ConfigError { field: field.to_string(), reason: reason.to_string() }
}

/// Where the plane's MQTT traffic goes.
#[derive(Clone, Debug)]
pub enum BrokerConfig {
    /// rumqttd inside the plane, listening here (port 0: any free port).
    Embedded {
        listen: SocketAddr,
        /// MQTT connections it accepts: devices, the plane's own link, and a spare.
        max_connections: usize,
    },
    External {
        address: BrokerAddress,
    },
}

#[derive(Clone, Debug)]
pub struct PlaneConfig {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub broker: BrokerConfig,
    pub topic_root: String,
    pub http: SocketAddr,
    /// Header and body read timeouts and the connection cap of the HTTP API.
    pub http_limits: crate::http::ServerLimits,
    pub signing_key: Option<PathBuf>,
    pub admin_token: Option<String>,
    /// Fetch requests for a bundle arriving within this window share one chunk publish.
    pub coalesce_window: Duration,
    pub drift: DriftConfig,
    /// Print the generated admin token (serve does; the demo prints it itself).
    pub announce_token: bool,
}

/// Drift alerts: where they go and when windows are judged.
#[derive(Clone, Debug, PartialEq)]
pub struct DriftConfig {
    /// Drift events are POSTed here as JSON (none: MQTT and the store only).
    pub webhook_url: Option<String>,
    /// How long after a window period closes the plane waits for late windows before it judges it.
    pub grace: Duration,
    /// Overrides the period of each profile's window for alerting.
    pub evaluation_period: Option<Duration>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { webhook_url: None, grace: Duration::from_secs(2), evaluation_period: None }
    }
}

#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags and FLEETML_* variables override it).
    #[arg(long, env = "FLEETML_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder for the database, bundles, keys and the admin token.
    #[arg(long, env = "FLEETML_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://PATH (default: DATA_DIR/fleetml.db) or postgres://...
    #[arg(long, env = "FLEETML_DATABASE_URL")]
    pub database_url: Option<String>,
    /// An external broker, mqtt://host:port; without it the plane runs its own.
    #[arg(long, env = "FLEETML_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Where the embedded broker listens (default 127.0.0.1:1883; port 0 picks a free one).
    #[arg(long, env = "FLEETML_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Connections the embedded broker accepts (default 20000); with an open-file limit to
    /// match (`ulimit -n`: one descriptor per connection).
    #[arg(long, env = "FLEETML_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,
    /// Topic root shared with the agents.
    #[arg(long, env = "FLEETML_MQTT_TOPIC_ROOT")]
    pub mqtt_topic_root: Option<String>,
    /// REST API and dashboard address (default 127.0.0.1:8080).
    #[arg(long, env = "FLEETML_HTTP")]
    pub http: Option<SocketAddr>,
    /// Seconds a client has to send a request's headers (default 10).
    #[arg(long, env = "FLEETML_HTTP_HEADER_TIMEOUT_SECONDS")]
    pub http_header_timeout_seconds: Option<f64>,
    /// Seconds a request body may send nothing before its connection closes (default 30).
    #[arg(long, env = "FLEETML_HTTP_BODY_TIMEOUT_SECONDS")]
    pub http_body_timeout_seconds: Option<f64>,
    /// HTTP connections served at once (default 1024; lowered to fit the open-file limit).
    #[arg(long, env = "FLEETML_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// ed25519 private key (PEM); without it the plane makes one in its data folder.
    #[arg(long, env = "FLEETML_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// The bootstrap admin token to accept (instead of a generated one). Prefer
    /// FLEETML_ADMIN_TOKEN or --admin-token-file: a flag's value shows in the process list.
    #[arg(long, env = "FLEETML_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the bootstrap admin token.
    #[arg(long, env = "FLEETML_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Milliseconds during which fetch requests are coalesced into one publish.
    #[arg(long, env = "FLEETML_COALESCE_MS")]
    pub coalesce_ms: Option<u64>,
    /// POST drift events (JSON) to this URL.
    #[arg(long, env = "FLEETML_DRIFT_WEBHOOK")]
    pub drift_webhook: Option<String>,
    /// Wait this long for late device windows before judging a window period.
    #[arg(long, env = "FLEETML_DRIFT_GRACE_MS")]
    pub drift_grace_ms: Option<u64>,
    /// Judge drift over periods of this many seconds instead of each profile's window.
    #[arg(long, env = "FLEETML_DRIFT_PERIOD_SECONDS")]
    pub drift_period_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub mqtt_url: Option<String>,
    pub mqtt_listen: Option<SocketAddr>,
    pub mqtt_max_connections: Option<usize>,
    pub mqtt_topic_root: Option<String>,
    pub http: Option<SocketAddr>,
    pub http_header_timeout_seconds: Option<f64>,
    pub http_body_timeout_seconds: Option<f64>,
    pub http_max_connections: Option<usize>,
    pub signing_key: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub coalesce_ms: Option<u64>,
    #[serde(default)]
    pub drift: FileDriftConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDriftConfig {
    pub webhook_url: Option<String>,
    pub grace_ms: Option<u64>,
    pub period_seconds: Option<u64>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| config_error("config", format!("{}: {error}", path.display())))?;
        toml::from_str(&text).map_err(|error| config_error("config", format!("{}: {error}", path.display())))
    }
}

pub fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<PlaneConfig, ConfigError> {
    let data_dir = args.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("fleetml-data"));
    let database_url = args
        .database_url
        .clone()
        .or_else(|| file.database_url.clone())
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("fleetml.db").display()));
    if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres:") || database_url.starts_with("postgresql:")) {
        return Err(config_error("database_url", format!("`{database_url}`: expected sqlite://PATH or postgres://...")));
    }
    let max_connections = args.mqtt_max_connections.or(file.mqtt_max_connections);
    let broker = match args.mqtt_url.clone().or_else(|| file.mqtt_url.clone()) {
        Some(_) if max_connections.is_some() => {
            return Err(config_error("mqtt_max_connections", "applies to the embedded broker only (set the limit in the external broker)"));
        }
        Some(url) => BrokerConfig::External { address: BrokerAddress::parse(&url).map_err(|error| config_error("mqtt_url", error))? },
        None => BrokerConfig::Embedded {
            listen: args.mqtt_listen.or(file.mqtt_listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883))),
            max_connections: max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        },
    };
    if let BrokerConfig::Embedded { max_connections, .. } = broker
        && !(MIN_MAX_CONNECTIONS..=MAX_MAX_CONNECTIONS).contains(&max_connections)
    {
        return Err(config_error(
            "mqtt_max_connections",
            format!("{max_connections}: must be between {MIN_MAX_CONNECTIONS} and {MAX_MAX_CONNECTIONS}"),
        ));
    }
    let topic_root = args.mqtt_topic_root.clone().or_else(|| file.mqtt_topic_root.clone()).unwrap_or_else(|| "fleetml".into());
    if topic_root.is_empty() || topic_root.contains(['+', '#']) {
        return Err(config_error("mqtt_topic_root", "must be non-empty and contain no MQTT wildcards"));
    }
    let admin_token_file = args.admin_token_file.clone().or_else(|| file.admin_token_file.clone());
    let admin_token = match (args.admin_token.clone().or_else(|| file.admin_token.clone()), admin_token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|error| config_error("admin_token_file", format!("{}: {error}", path.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if let Some(token) = &admin_token
        && token.len() < 16
    {
        return Err(config_error("admin_token", "must be at least 16 characters"));
    }
    let coalesce_ms = args.coalesce_ms.or(file.coalesce_ms).unwrap_or(50);
    if coalesce_ms > 10_000 {
        return Err(config_error("coalesce_ms", "must be at most 10000"));
    }
    let webhook_url = args.drift_webhook.clone().or_else(|| file.drift.webhook_url.clone());
    if let Some(url) = &webhook_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(config_error("drift.webhook_url", format!("`{url}`: expected an http:// or https:// URL")));
    }
    let period_seconds = args.drift_period_seconds.or(file.drift.period_seconds);
    if period_seconds == Some(0) {
        return Err(config_error("drift.period_seconds", "must be at least 1"));
    }
    let defaults = crate::http::ServerLimits::default();
    let seconds = |field: &str, value: Option<f64>, default: Duration| -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(value) if value.is_finite() && value > 0.0 && value <= 3600.0 => Ok(Duration::from_secs_f64(value)),
            Some(value) => Err(config_error(field, format!("{value}: must be a number of seconds in (0, 3600]"))),
        }
    };
    let http_max_connections = args.http_max_connections.or(file.http_max_connections).unwrap_or(defaults.max_connections);
    if !(1..=1_000_000).contains(&http_max_connections) {
        return Err(config_error("http_max_connections", format!("{http_max_connections}: must be between 1 and 1000000")));
    }
    let http_limits = crate::http::ServerLimits {
        header_read_timeout: seconds(
            "http_header_timeout_seconds",
            args.http_header_timeout_seconds.or(file.http_header_timeout_seconds),
            defaults.header_read_timeout,
        )?,
        body_read_timeout: seconds(
            "http_body_timeout_seconds",
            args.http_body_timeout_seconds.or(file.http_body_timeout_seconds),
            defaults.body_read_timeout,
        )?,
        max_connections: http_max_connections,
    };
    let drift = DriftConfig {
        webhook_url,
        grace: Duration::from_millis(args.drift_grace_ms.or(file.drift.grace_ms).unwrap_or(2_000)),
        evaluation_period: period_seconds.map(Duration::from_secs),
    };
    Ok(PlaneConfig {
        drift,
        data_dir,
        database_url,
        broker,
        topic_root,
        http: args.http.or(file.http).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        http_limits,
        signing_key: args.signing_key.clone().or_else(|| file.signing_key.clone()),
        admin_token,
        coalesce_window: Duration::from_millis(coalesce_ms),
        announce_token: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let file: FileConfig =
            toml::from_str("data_dir = \"/srv/fleetml\"\nhttp = \"0.0.0.0:9000\"\nmqtt_url = \"mqtt://broker:1884\"").unwrap();
        let args = ServeArgs { http: Some("127.0.0.1:7000".parse().unwrap()), ..ServeArgs::default() };
        let config = resolve(&args, &file).unwrap();
        assert_eq!(config.http, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.database_url, "sqlite:///srv/fleetml/fleetml.db");
        assert!(matches!(config.broker, BrokerConfig::External { ref address } if address.port == 1884));
        assert_eq!(config.topic_root, "fleetml");
        assert_eq!(config.http_limits, crate::http::ServerLimits::default());
        let file: FileConfig = toml::from_str("http_header_timeout_seconds = 2.5\nhttp_max_connections = 50").unwrap();
        let args = ServeArgs { http_body_timeout_seconds: Some(7.0), ..ServeArgs::default() };
        let limits = resolve(&args, &file).unwrap().http_limits;
        assert_eq!(
            (limits.header_read_timeout, limits.body_read_timeout, limits.max_connections),
            (Duration::from_millis(2500), Duration::from_secs(7), 50)
        );
    }

    #[test]
    fn the_embedded_broker_limit_comes_from_the_file_unless_a_flag_overrides_it() {
        let file: FileConfig = toml::from_str("mqtt_max_connections = 30000").unwrap();
        let from_file = resolve(&ServeArgs::default(), &file).unwrap();
        assert!(matches!(from_file.broker, BrokerConfig::Embedded { max_connections: 30_000, .. }));
        let args = ServeArgs { mqtt_max_connections: Some(50_000), ..ServeArgs::default() };
        assert!(matches!(resolve(&args, &file).unwrap().broker, BrokerConfig::Embedded { max_connections: 50_000, .. }));
        let defaults = resolve(&ServeArgs::default(), &FileConfig::default()).unwrap();
        assert!(matches!(defaults.broker, BrokerConfig::Embedded { max_connections: DEFAULT_MAX_CONNECTIONS, .. }));
    }

    #[test]
    fn invalid_settings_name_their_field() {
        for (args, field) in [
            (ServeArgs { database_url: Some("mysql://x".into()), ..ServeArgs::default() }, "database_url"),
            (ServeArgs { mqtt_url: Some("http://x".into()), ..ServeArgs::default() }, "mqtt_url"),
            (ServeArgs { admin_token: Some("short".into()), ..ServeArgs::default() }, "admin_token"),
            (ServeArgs { mqtt_topic_root: Some("#".into()), ..ServeArgs::default() }, "mqtt_topic_root"),
            (ServeArgs { mqtt_max_connections: Some(2), ..ServeArgs::default() }, "mqtt_max_connections"),
            (ServeArgs { http_header_timeout_seconds: Some(0.0), ..ServeArgs::default() }, "http_header_timeout_seconds"),
            (ServeArgs { http_body_timeout_seconds: Some(f64::NAN), ..ServeArgs::default() }, "http_body_timeout_seconds"),
            (ServeArgs { http_max_connections: Some(0), ..ServeArgs::default() }, "http_max_connections"),
            (
                ServeArgs { mqtt_max_connections: Some(30_000), mqtt_url: Some("mqtt://broker:1883".into()), ..ServeArgs::default() },
                "mqtt_max_connections",
            ),
        ] {
            assert_eq!(resolve(&args, &FileConfig::default()).unwrap_err().field, field);
        }
        assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
    }
}
