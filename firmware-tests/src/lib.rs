//! The firmware-test harness: starts the real `fleetml` and `fleetml-agent` binaries (built
//! beforehand with `cargo build --workspace --bins`) on free ports in a temporary folder,
//! talks to them over HTTP and MQTT, and injects faults.
//!
//! Every process is killed when its handle drops; its output is kept in the test's folder
//! and printed when a test fails.

#![allow(clippy::unwrap_used)]

pub mod proxy;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub use fleetml_plane::api::views::{DeviceView, SlotView};

/// How long a test waits for a condition unless it says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The folder holding the built binaries: next to this test executable's `deps/` folder.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("FLEETML_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let exe_dir = exe.parent().expect("executable folder");
    // A bench binary sits beside the binaries; a test binary one level down, in deps/.
    if exe_dir.join("fleetml").exists() { exe_dir.to_path_buf() } else { exe_dir.parent().map(Path::to_path_buf).expect("target folder") }
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` before the firmware tests", path.display());
    path
}

/// A unique topic root, so tests sharing a broker never see each other's messages.
pub fn unique_root() -> String {
    format!("fmtest-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Polls `probe` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process whose output goes to a log file; killed on drop.
pub struct Process {
    pub name: String,
    child: Child,
    pub log_path: PathBuf,
}

impl Process {
    /// Spawns `command` and waits until a line of its standard output starts with `ready_prefix`.
    fn spawn(name: &str, mut command: Command, log_path: PathBuf, ready_prefix: &str) -> anyhow::Result<(Process, String)> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        command.env("FLEETML_LOG", "info,rumqttd=warn,rumqttc=warn");
        let mut child = command.spawn().with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (line_sender, line_receiver) = mpsc::channel::<String>();
        for (stream, sender) in [(Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(line_sender)), (Box::new(stderr), None)] {
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(log, "{line}");
                    if let Some(sender) = &sender {
                        let _ = sender.send(line);
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut process = Process { name: name.to_string(), child, log_path };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match line_receiver.recv_timeout(remaining) {
                Ok(line) if line.starts_with(ready_prefix) => return Ok((process, line)),
                Ok(_) => continue,
                Err(_) => {
                    let status = process.child.try_wait().ok().flatten();
                    bail!("{name} did not become ready (exit status {status:?}); log:\n{}", process.log_tail());
                }
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// SIGKILL: no clean shutdown, no goodbye message (the broker sends the last will).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ({}) ----\n{}", self.name, self.log_path.display(), self.log_tail());
        }
        self.kill();
    }
}

fn address_after(line: &str, marker: &str) -> anyhow::Result<String> {
    let start = line.find(marker).with_context(|| format!("`{marker}` not in `{line}`"))? + marker.len();
    Ok(line[start..].split_whitespace().next().unwrap_or_default().to_string())
}

#[derive(Clone, Debug, Default)]
pub struct PlaneOptions {
    /// An external broker; default: the plane's embedded one on a free port.
    pub mqtt_url: Option<String>,
    /// Default: SQLite in the test folder.
    pub database_url: Option<String>,
    pub topic_root: Option<String>,
    pub extra_args: Vec<String>,
}

/// A running `fleetml serve`.
pub struct Plane {
    pub process: Process,
    command_args: Vec<std::ffi::OsString>,
    command_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub dir: PathBuf,
    pub api: String,
    pub mqtt_url: String,
    pub topic_root: String,
    pub token: String,
    pub signing_key: PathBuf,
    pub public_key: PathBuf,
    pub http: reqwest::Client,
}

impl Plane {
    /// Starts a plane with a signing key the test holds too (to forge and replay messages).
    pub async fn start(dir: &Path, options: PlaneOptions) -> Plane {
        let key_dir = dir.join("keys");
        let status = Command::new(binary("fleetml")).args(["keys", "generate", "--out"]).arg(&key_dir).status().unwrap();
        assert!(status.success(), "fleetml keys generate failed");
        let token = format!("test-token-{:016x}", fastrand::u64(..));
        let topic_root = options.topic_root.clone().unwrap_or_else(unique_root);
        let data_dir = dir.join("plane");
        let mut command = Command::new(binary("fleetml"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--http", "127.0.0.1:0", "--mqtt-topic-root", &topic_root])
            // From the environment, as operators should: a flag's value shows in the process list.
            .env("FLEETML_ADMIN_TOKEN", &token)
            .arg("--signing-key")
            .arg(key_dir.join("signing.key"));
        match &options.mqtt_url {
            Some(url) => command.args(["--mqtt-url", url]),
            None => command.args(["--mqtt-listen", "127.0.0.1:0"]),
        };
        if let Some(url) = &options.database_url {
            command.args(["--database-url", url]);
        }
        command.args(&options.extra_args);
        let command_args: Vec<std::ffi::OsString> = command.get_args().map(|arg| arg.to_os_string()).collect();
        let command_env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
            command.get_envs().filter_map(|(key, value)| Some((key.to_os_string(), value?.to_os_string()))).collect();
        let (process, line) = Process::spawn("plane", command, dir.join("plane.log"), "fleetml control plane:").unwrap();
        let api = address_after(&line, "API ").unwrap();
        let mqtt_url = address_after(&line, "broker ").unwrap();
        Plane {
            process,
            command_args,
            command_env,
            dir: dir.to_path_buf(),
            api,
            mqtt_url,
            topic_root,
            token,
            signing_key: key_dir.join("signing.key"),
            public_key: key_dir.join("signing.pub"),
            http: reqwest::Client::new(),
        }
    }

    /// SIGKILL, then the same `fleetml serve` again on the same data (the API gets a new port;
    /// use an external broker so the agents keep theirs).
    pub async fn kill_and_restart(&mut self) {
        self.process.kill();
        let mut command = Command::new(binary("fleetml"));
        command.args(&self.command_args).envs(self.command_env.iter().map(|(key, value)| (key, value)));
        let (process, line) =
            Process::spawn("plane (restarted)", command, self.dir.join("plane-restarted.log"), "fleetml control plane:").unwrap();
        self.process = process;
        self.api = address_after(&line, "API ").unwrap();
    }

    /// SIGKILL, then the same `fleetml serve` with another bootstrap admin token.
    pub async fn restart_with_admin_token(&mut self, token: &str) {
        for (key, value) in &mut self.command_env {
            if key == "FLEETML_ADMIN_TOKEN" {
                *value = token.into();
            }
        }
        self.token = token.to_string();
        self.kill_and_restart().await;
    }

    pub fn signing_key_pair(&self) -> fleetml_shared::signing::SigningKeyPair {
        fleetml_shared::signing::SigningKeyPair::read(&self.signing_key).unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.api)).bearer_auth(&self.token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.http.post(format!("{}{path}", self.api)).bearer_auth(&self.token).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Pushes an ONNX file; returns (status, answer).
    pub async fn push(&self, model: &str, onnx: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/models/{model}/versions", self.api))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(onnx)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn push_ok(&self, model: &str, onnx: Vec<u8>) -> i64 {
        let (status, answer) = self.push(model, onnx).await;
        assert_eq!(status, 201, "push of {model} failed: {answer}");
        answer["version"].as_i64().unwrap()
    }

    pub async fn deploy(&self, model: &str, version: i64, target: (&str, &str)) -> Value {
        let body = serde_json::json!({ "model": model, "version": version, target.0: target.1 });
        let (status, answer) = self.post("/api/v1/deployments", &body).await;
        assert_eq!(status, 201, "deploy failed: {answer}");
        answer
    }

    /// Deploys `model@alias`; returns the deployment.
    pub async fn deploy_alias(&self, model: &str, alias: &str, target: (&str, &str)) -> Value {
        let body = serde_json::json!({ "model": model, "alias": alias, target.0: target.1 });
        let (status, answer) = self.post("/api/v1/deployments", &body).await;
        assert_eq!(status, 201, "deploy failed: {answer}");
        answer
    }

    pub async fn devices(&self) -> Vec<DeviceView> {
        let (status, answer) = self.get("/api/v1/devices").await;
        assert_eq!(status, 200, "{answer}");
        serde_json::from_value(answer).unwrap()
    }

    pub async fn device(&self, device_id: &str) -> Option<DeviceView> {
        self.devices().await.into_iter().find(|device| device.device_id == device_id)
    }

    pub async fn slot(&self, device_id: &str, model: &str) -> Option<SlotView> {
        self.device(device_id).await?.slots.into_iter().find(|slot| slot.model == model)
    }

    /// Waits until the device reports `version` of `model` active.
    pub async fn wait_active(&self, device_id: &str, model: &str, version: i64) {
        wait_for(&format!("{device_id} to run {model}@{version}"), TIMEOUT, || async {
            let slot = self.slot(device_id, model).await?;
            (slot.active_version == Some(version as u64) && slot.phase == "active").then_some(())
        })
        .await
    }

    /// Waits for the device's last install result for `version` to be a refusal; returns it.
    pub async fn wait_refused(&self, device_id: &str, model: &str, version: i64) -> fleetml_plane::api::views::InstallResultView {
        wait_for(&format!("{device_id} to refuse {model}@{version}"), TIMEOUT, || async {
            let result = self.slot(device_id, model).await?.last_result?;
            (!result.ok && result.version == version as u64).then_some(result)
        })
        .await
    }

    pub async fn status(&self) -> Value {
        self.get("/api/v1/status").await.1
    }

    /// Runs the `fleetml` CLI against this plane with `token` (in the environment, never on the
    /// command line); returns the exit code, stdout and stderr.
    pub fn cli(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(binary("fleetml"))
            .args(args)
            .env("FLEETML_SERVER", &self.api)
            .env("FLEETML_TOKEN", token)
            .env("FLEETML_DATA_DIR", self.dir.join("no-such-folder"))
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
        (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
    }

    /// A request with another token than the admin one.
    pub async fn request_as(&self, token: &str, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.api)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub labels: Vec<(String, String)>,
    pub extra_args: Vec<String>,
}

/// A running `fleetml-agent run`.
pub struct Agent {
    pub process: Process,
    pub device_id: String,
    pub api: String,
    pub state_dir: PathBuf,
}

impl Agent {
    pub async fn start(plane: &Plane, device_id: &str, options: AgentOptions) -> Agent {
        Self::start_with_broker(plane, &plane.mqtt_url, device_id, options).await
    }

    pub async fn start_with_broker(plane: &Plane, mqtt_url: &str, device_id: &str, options: AgentOptions) -> Agent {
        let state_dir = plane.dir.join("agents").join(device_id);
        let mut command = Command::new(binary("fleetml-agent"));
        command
            .args(["run", "--device-id", device_id, "--mqtt-url", mqtt_url, "--mqtt-topic-root", &plane.topic_root])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--trusted-key")
            .arg(&plane.public_key)
            .args(["--http", "127.0.0.1:0", "--heartbeat-seconds", "0.5", "--transfer-stall-seconds", "2", "--inference-threads", "1"]);
        for (key, value) in &options.labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        command.args(&options.extra_args);
        let log_path = plane.dir.join(format!("agent-{device_id}.log"));
        let (process, line) = Process::spawn(&format!("agent {device_id}"), command, log_path, "fleetml-agent: device").unwrap();
        let api = address_after(&line, "local API ").unwrap();
        Agent { process, device_id: device_id.to_string(), api, state_dir }
    }

    pub async fn infer(&self, model: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new().post(format!("{}/v2/models/{model}/infer", self.api)).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Models for the tests, made in Rust (the demo's classifier): two versions with the same
/// inputs, `features` FP32 [N, 4].
pub fn demo_models() -> (Vec<u8>, Vec<u8>) {
    use fleetml_plane::demo::classifier::{Classifier, dataset};
    let (features, labels) = dataset(600, 3);
    let linear = Classifier::train(&features, &labels, 0, 100, 0.5, 5);
    let mlp = Classifier::train(&features, &labels, 8, 100, 0.5, 5);
    (linear.to_onnx("test"), mlp.to_onnx("test"))
}

pub fn features_request(rows: &[[f32; 4]]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    serde_json::json!({ "inputs": [{ "name": "features", "shape": [rows.len(), 4], "datatype": "FP32", "data": data }] })
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("models").join(name)
}

/// A raw MQTT client for injecting messages.
pub struct MqttProbe {
    pub client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    /// (topic, payload, retained)
    pub received: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
}

impl MqttProbe {
    pub async fn connect(mqtt_url: &str) -> MqttProbe {
        let address = fleetml_shared::broker::BrokerAddress::parse(mqtt_url).unwrap();
        let mut options = rumqttc::MqttOptions::new(format!("fmtest-probe-{:08x}", fastrand::u32(..)), address.host, address.port);
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        let (connected_sender, connected) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connected_sender = Some(connected_sender);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(connected) = connected_sender.take() {
                            let _ = connected.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                        let _ = sender.send((publish.topic.clone(), publish.payload.to_vec(), publish.retain));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(TIMEOUT, connected).await.expect("probe connects").expect("probe task");
        MqttProbe { client, task, received }
    }

    pub async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload).await.unwrap();
    }

    pub async fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
    }

    /// The next message on `topic`, within the timeout.
    pub async fn next_on(&mut self, topic: &str) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some((received_topic, payload, _))) if received_topic == topic => return payload,
                Ok(Some(_)) => continue,
                _ => panic!("no message on {topic}"),
            }
        }
    }
}

impl Drop for MqttProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("fleetml-it-").tempdir().unwrap()
}

/// Whether CI demands every service (then a missing one fails the test instead of skipping it).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

fn unavailable(what: &str) {
    if ci() {
        panic!("CI=true but {what}");
    }
    eprintln!("SKIPPED: {what}");
}

/// The three setups the spine's end-to-end tests run on.
#[derive(Clone, Copy, Debug)]
pub enum Setup {
    EmbeddedBrokerSqlite,
    MosquittoSqlite,
    EmbeddedBrokerPostgres,
}

impl Setup {
    /// Plane options for this setup, or `None` (outside CI) when its service is missing.
    pub async fn plane_options(self) -> Option<PlaneOptions> {
        match self {
            Setup::EmbeddedBrokerSqlite => Some(PlaneOptions::default()),
            Setup::MosquittoSqlite => {
                let url = shared_mosquitto_url().await?;
                Some(PlaneOptions { mqtt_url: Some(url), ..PlaneOptions::default() })
            }
            Setup::EmbeddedBrokerPostgres => {
                let url = fresh_postgres_database().await?;
                Some(PlaneOptions { database_url: Some(url), ..PlaneOptions::default() })
            }
        }
    }
}

/// The machine's Mosquitto (FLEETML_TEST_MQTT_URL, default mqtt://127.0.0.1:1883), if an MQTT
/// broker answers there.
pub async fn shared_mosquitto_url() -> Option<String> {
    let url = std::env::var("FLEETML_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    if mqtt_answers(&url).await {
        Some(url)
    } else {
        unavailable(&format!("no MQTT broker answers at {url} (start Mosquitto: `mosquitto -d`)"));
        None
    }
}

async fn mqtt_answers(url: &str) -> bool {
    let Ok(address) = fleetml_shared::broker::BrokerAddress::parse(url) else { return false };
    let options = rumqttc::MqttOptions::new(format!("fmtest-ping-{:08x}", fastrand::u32(..)), address.host, address.port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let answered = tokio::time::timeout(Duration::from_secs(3), async {
        matches!(eventloop.poll().await, Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
    })
    .await
    .unwrap_or(false);
    let _ = client.try_disconnect();
    answered
}

/// A new, empty PostgreSQL database (FLEETML_TEST_POSTGRES_URL names the server's admin
/// database, default postgres://postgres@127.0.0.1:5432/test).
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Connection;
    let admin_url = std::env::var("FLEETML_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut connection = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(connection) => connection,
        Err(error) => {
            unavailable(&format!("PostgreSQL at {admin_url} is not reachable: {error}"));
            return None;
        }
    };
    let name = format!("fleetml_it_{:016x}", fastrand::u64(..));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut connection).await.unwrap();
    let base = admin_url.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap_or(admin_url);
    Some(format!("{base}/{name}"))
}

/// A Mosquitto of the test's own on a free port, for killing and restarting.
pub struct PrivateMosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl PrivateMosquitto {
    /// `None` (outside CI) when Mosquitto is not installed.
    pub async fn start(dir: &Path) -> Option<PrivateMosquitto> {
        if Command::new("mosquitto").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            unavailable("the mosquitto binary is not installed (apt-get install mosquitto)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = PrivateMosquitto { port, child: None, dir: dir.to_path_buf() };
        broker.spawn().await;
        Some(broker)
    }

    async fn spawn(&mut self) {
        let config = self.dir.join("mosquitto.conf");
        std::fs::write(&config, format!("listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n", self.port)).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("mosquitto-{}.log", self.port))).unwrap();
        let child = Command::new("mosquitto").arg("-c").arg(&config).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        let url = self.url();
        wait_for("the private Mosquitto to answer", TIMEOUT, || async { mqtt_answers(&url).await.then_some(()) }).await;
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: everything in memory (retained messages, sessions) is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Plane {
    /// Clears every retained message under this plane's topic root, so a shared broker keeps
    /// nothing from the test.
    pub async fn clear_retained(&self) {
        let mut probe = MqttProbe::connect(&self.mqtt_url).await;
        probe.subscribe(&format!("{}/#", self.topic_root)).await;
        let mut topics = std::collections::BTreeSet::new();
        // Retained messages arrive right after the subscription (live traffic may keep
        // flowing): collect those flagged retained until none came for half a second.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut quiet_until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some((topic, payload, retained))) = tokio::time::timeout_at(quiet_until.min(deadline), probe.received.recv()).await {
            if retained && !payload.is_empty() {
                topics.insert(topic);
                quiet_until = tokio::time::Instant::now() + Duration::from_millis(500);
            }
        }
        for topic in topics {
            probe.publish(&topic, true, Vec::new()).await;
        }
    }
}

/// A model of about `megabytes` MB (untrained weights), `features` FP32 [N, 256].
pub fn big_model(megabytes: usize) -> Vec<u8> {
    let hidden_units = megabytes * 1024 * 1024 / 4 / 256;
    fleetml_plane::demo::classifier::Classifier::random(256, hidden_units.max(1), 99).to_onnx("big")
}

/// A running `fleetml-agent sim`.
pub struct Sim {
    pub process: Process,
    pub api: String,
    pub device_ids: Vec<String>,
}

impl Sim {
    pub async fn start(plane: &Plane, count: usize, id_prefix: &str, extra_args: &[&str]) -> Sim {
        let mut command = Command::new(binary("fleetml-agent"));
        command
            .args(["sim", "--count", &count.to_string(), "--id-prefix", id_prefix, "--mqtt-url", &plane.mqtt_url])
            .args(["--mqtt-topic-root", &plane.topic_root, "--http", "127.0.0.1:0", "--inference-threads", "1"])
            .args(if extra_args.contains(&"--heartbeat-seconds") { &[][..] } else { &["--heartbeat-seconds", "1"][..] })
            .arg("--state-dir")
            .arg(plane.dir.join(format!("sim-{id_prefix}")))
            .arg("--trusted-key")
            .arg(&plane.public_key)
            .args(extra_args);
        let log_path = plane.dir.join(format!("sim-{id_prefix}.log"));
        let (process, line) = Process::spawn(&format!("sim {id_prefix}"), command, log_path, "fleetml-agent: simulated fleet").unwrap();
        let api = address_after(&line, "local API ").unwrap().replace("/devices/{device}/v2", "");
        let device_ids = (0..count).map(|device_idx| format!("{id_prefix}{device_idx:04}")).collect();
        Sim { process, api, device_ids }
    }
}

impl Plane {
    /// Waits until `n` devices are online.
    pub async fn wait_online(&self, n: usize) {
        wait_for(&format!("{n} devices online"), TIMEOUT, || async {
            (self.devices().await.iter().filter(|device| device.online).count() >= n).then_some(())
        })
        .await
    }

    /// Waits until every listed device runs `model@version`.
    pub async fn wait_all_active(&self, device_ids: &[String], model: &str, version: i64, timeout: Duration) {
        wait_for(&format!("{} devices to run {model}@{version}", device_ids.len()), timeout, || async {
            let devices = self.devices().await;
            let n_active = devices
                .iter()
                .filter(|device| device_ids.contains(&device.device_id))
                .filter(|device| device.slots.iter().any(|slot| slot.model == model && slot.active_version == Some(version as u64)))
                .count();
            (n_active == device_ids.len()).then_some(())
        })
        .await
    }
}
