//! The local inference API: the Open Inference Protocol (KServe v2) over REST.
//!
//! One device serves `/v2/...`; a simulated fleet serves every device from one listener
//! under `/devices/{device}/v2/...`. Models are addressed by their registry name.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleetml_shared::bundle::{DType, TensorData, TensorValues};
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::host::ModelHost;
use crate::inference::{InferenceError, InferencePool, LoadedModel};

#[derive(Clone)]
pub struct ApiState {
    hosts: Arc<RwLock<HashMap<String, Arc<ModelHost>>>>,
    default_device: Option<String>,
    pool: InferencePool,
    shadow_permits: Arc<tokio::sync::Semaphore>,
    allowed_hosts: Arc<HostAllowList>,
}

/// The `Host` names the API answers to. A web page the device's browser opens can make the
/// browser send requests to `127.0.0.1` under its own name (DNS rebinding); refusing names
/// other than these stops it reading or driving the API.
#[derive(Clone, Debug, PartialEq)]
pub struct HostAllowList {
    names: Vec<String>,
}

impl HostAllowList {
    /// `localhost`, `127.0.0.1`, `[::1]`, the listen address (unless it is 0.0.0.0 or `[::]`)
    /// and `extra` names, compared without case and without the port.
    pub fn new(listen: std::net::SocketAddr, extra: &[String]) -> Self {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        if !listen.ip().is_unspecified() {
            names.push(match listen.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        names.extend(extra.iter().map(|name| strip_port(name).to_ascii_lowercase()));
        HostAllowList { names }
    }

    pub fn allows(&self, host_header: &str) -> bool {
        let name = strip_port(host_header.trim()).to_ascii_lowercase();
        self.names.contains(&name)
    }
}

/// `name:port` → `name`, `[v6]:port` → `[v6]`; a bare name is returned as it is.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Request content types the API takes: JSON, bytes, or none (Triton's HTTP client sends
/// none). Browsers send `text/plain`, forms and `multipart/form-data` cross-origin without
/// asking first, so those are refused with 415.
fn accepted_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/json" | "application/octet-stream")
}

/// Refuses foreign `Host` names (403) and content types a browser can send without a CORS
/// preflight (415) before any route runs. A request without `Host` (HTTP/1.0) is not from a
/// browser and passes.
async fn guard(State(state): State<ApiState>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    if let Some(host) = headers.get(axum::http::header::HOST) {
        let text = host.to_str().unwrap_or_default();
        if !state.allowed_hosts.allows(text) {
            return ApiError::ForeignHost(format!(
                "Host `{}` is not served here (allowed: localhost, the listen address and --allowed-host names)",
                text.escape_default()
            ))
            .into_response();
        }
    }
    if let Some(content_type) = headers.get(axum::http::header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or_default();
        if !accepted_content_type(text) {
            return ApiError::UnsupportedMediaType(format!(
                "Content-Type `{}` is not accepted: send application/json, application/octet-stream or none",
                text.escape_default()
            ))
            .into_response();
        }
    }
    next.run(request).await
}

impl ApiState {
    pub fn new(pool: InferencePool, default_device: Option<String>, allowed_hosts: HostAllowList) -> Self {
        let shadow_permits = Arc::new(tokio::sync::Semaphore::new(crate::shadow::MAX_SHADOW_IN_FLIGHT));
        ApiState {
            hosts: Arc::new(RwLock::new(HashMap::new())),
            default_device,
            pool,
            shadow_permits,
            allowed_hosts: Arc::new(allowed_hosts),
        }
    }

    pub fn add_host(&self, host: Arc<ModelHost>) {
        if let Ok(mut hosts) = self.hosts.write() {
            hosts.insert(host.device_id.clone(), host);
        }
    }

    fn host(&self, params: &HashMap<String, String>) -> Result<Arc<ModelHost>, ApiError> {
        let device = params.get("device").or(self.default_device.as_ref()).ok_or(ApiError::NotFound("no device on this path".into()))?;
        self.hosts
            .read()
            .ok()
            .and_then(|hosts| hosts.get(device).cloned())
            .ok_or_else(|| ApiError::NotFound(format!("device `{device}` is not served here")))
    }
}

pub fn router(state: ApiState) -> Router {
    let v2 = Router::new()
        .route("/", get(server_metadata))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/models/{name}", get(model_metadata))
        .route("/models/{name}/ready", get(model_ready))
        .route("/models/{name}/infer", post(infer))
        .route("/models/{name}/versions/{version}", get(model_metadata))
        .route("/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/models/{name}/versions/{version}/infer", post(infer));
    Router::new()
        .nest("/v2", v2.clone())
        .nest("/devices/{device}/v2", v2)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

#[derive(Debug)]
pub enum ApiError {
    NotFound(String),
    BadRequest(String),
    ForeignHost(String),
    UnsupportedMediaType(String),
    Unavailable(String),
    Internal(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NotFound(message)
            | ApiError::BadRequest(message)
            | ApiError::ForeignHost(message)
            | ApiError::UnsupportedMediaType(message)
            | ApiError::Unavailable(message)
            | ApiError::Internal(message) => f.write_str(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ForeignHost(_) => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<InferenceError> for ApiError {
    fn from(error: InferenceError) -> Self {
        let message = error.to_string();
        match error {
            InferenceError::UnknownInput(_)
            | InferenceError::MissingInput(_)
            | InferenceError::WrongDatatype { .. }
            | InferenceError::WrongShape { .. }
            | InferenceError::WrongLength { .. }
            | InferenceError::TooManyElements { .. } => ApiError::BadRequest(message),
            InferenceError::Overloaded | InferenceError::ShutDown => ApiError::Unavailable(message),
            InferenceError::Load(_) | InferenceError::Runtime(_) => ApiError::Internal(message),
        }
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "name": "fleetml-agent", "version": env!("CARGO_PKG_VERSION"), "extensions": [] }))
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "live": true }))
}

async fn ready(State(state): State<ApiState>, Path(params): Path<HashMap<String, String>>) -> Result<Response, ApiError> {
    let host = state.host(&params)?;
    let is_ready = host.is_ready();
    let status = if is_ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(serde_json::json!({ "ready": is_ready, "models": host.model_names() }))).into_response())
}

fn served_model(state: &ApiState, params: &HashMap<String, String>) -> Result<Arc<LoadedModel>, ApiError> {
    let host = state.host(params)?;
    let name = params.get("name").cloned().unwrap_or_default();
    let model = host.get(&name).ok_or_else(|| ApiError::NotFound(format!("model `{name}` is not served on this device")))?;
    if let Some(version) = params.get("version")
        && version.parse::<u64>().ok() != Some(model.version)
    {
        return Err(ApiError::NotFound(format!("model `{name}` serves version {}, not {version}", model.version)));
    }
    Ok(model)
}

#[derive(Serialize)]
struct TensorMetadata {
    name: String,
    datatype: &'static str,
    shape: Vec<i64>,
}

async fn model_metadata(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = served_model(&state, &params)?;
    let describe = |specs: &[fleetml_shared::bundle::TensorSpec]| -> Vec<TensorMetadata> {
        specs
            .iter()
            .map(|spec| TensorMetadata { name: spec.name.clone(), datatype: spec.dtype.oip_name(), shape: spec.oip_shape() })
            .collect()
    };
    Ok(Json(serde_json::json!({
        "name": model.model,
        "versions": [model.version.to_string()],
        "platform": "onnx_tract",
        "inputs": describe(&model.inputs),
        "outputs": describe(&model.outputs),
    })))
}

async fn model_ready(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = served_model(&state, &params)?;
    Ok(Json(serde_json::json!({ "name": model.model, "version": model.version.to_string(), "ready": true })))
}

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: FlatNumbers,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
}

/// The `data` of a request tensor: flat or nested arrays of numbers, flattened in row-major
/// order without building a JSON tree. Integers stay exact until a float appears.
enum FlatNumbers {
    Integers(Vec<i64>),
    Floats(Vec<f64>),
}

impl<'de> Deserialize<'de> for FlatNumbers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Flattener<'a>(&'a mut FlatNumbers);

        impl Flattener<'_> {
            fn push_float(&mut self, value: f64) {
                if let FlatNumbers::Integers(integers) = self.0 {
                    *self.0 = FlatNumbers::Floats(integers.iter().map(|&value| value as f64).collect());
                }
                if let FlatNumbers::Floats(floats) = self.0 {
                    floats.push(value);
                }
            }

            fn push_integer(&mut self, value: i64) {
                match self.0 {
                    FlatNumbers::Integers(integers) => integers.push(value),
                    FlatNumbers::Floats(floats) => floats.push(value as f64),
                }
            }
        }

        impl<'de> Visitor<'de> for Flattener<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a (nested) array of numbers")
            }
            fn visit_i64<E: serde::de::Error>(mut self, value: i64) -> Result<(), E> {
                self.push_integer(value);
                Ok(())
            }
            fn visit_u64<E: serde::de::Error>(mut self, value: u64) -> Result<(), E> {
                match i64::try_from(value) {
                    Ok(value) => self.push_integer(value),
                    Err(_) => self.push_float(value as f64),
                }
                Ok(())
            }
            fn visit_f64<E: serde::de::Error>(mut self, value: f64) -> Result<(), E> {
                self.push_float(value);
                Ok(())
            }
            fn visit_bool<E: serde::de::Error>(mut self, value: bool) -> Result<(), E> {
                self.push_integer(value as i64);
                Ok(())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Flattener(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }

        impl<'de> serde::de::DeserializeSeed<'de> for Flattener<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
                deserializer.deserialize_any(self)
            }
        }

        let mut numbers = FlatNumbers::Integers(Vec::new());
        deserializer.deserialize_any(Flattener(&mut numbers))?;
        Ok(numbers)
    }
}

/// The number of elements of `shape`, or `None` when it does not fit a `usize`. Zero
/// dimensions are skipped, so that every partial product fits as well.
pub fn element_count(shape: &[u64]) -> Option<usize> {
    shape.iter().filter(|dim| **dim > 0).try_fold(1usize, |count, dim| count.checked_mul(usize::try_from(*dim).ok()?))
}

fn to_tensor(input: RequestInput) -> Result<TensorData, ApiError> {
    let dtype = DType::from_oip_name(&input.datatype).ok_or_else(|| {
        ApiError::BadRequest(format!("input `{}`: datatype `{}` is not supported (FP32, INT64)", input.name, input.datatype))
    })?;
    let shape: Vec<u64> = input
        .shape
        .iter()
        .map(|&dim| u64::try_from(dim).map_err(|_| ApiError::BadRequest(format!("input `{}`: negative dimension in shape", input.name))))
        .collect::<Result<_, _>>()?;
    // Checked: a shape such as [2^40, 2^40] must be a clear 400, not a wrapped count that
    // passes validation and fails in the runtime (a 500 counted against the model).
    if element_count(&shape).is_none() {
        return Err(ApiError::BadRequest(format!("input `{}`: shape {:?} has more elements than can be addressed", input.name, shape)));
    }
    let values = match (dtype, input.data) {
        (DType::F32, FlatNumbers::Floats(values)) => TensorValues::F32(values.into_iter().map(|value| value as f32).collect()),
        (DType::F32, FlatNumbers::Integers(values)) => TensorValues::F32(values.into_iter().map(|value| value as f32).collect()),
        (DType::I64, FlatNumbers::Integers(values)) => TensorValues::I64(values),
        (DType::I64, FlatNumbers::Floats(_)) => {
            return Err(ApiError::BadRequest(format!("input `{}`: INT64 data must be integers", input.name)));
        }
    };
    Ok(TensorData { name: input.name, shape, values })
}

#[derive(Serialize)]
struct ResponseOutput {
    name: String,
    datatype: &'static str,
    shape: Vec<u64>,
    data: ResponseData,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ResponseData {
    Floats(Vec<f32>),
    Integers(Vec<i64>),
}

async fn infer(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let host = state.host(&params)?;
    let model = served_model(&state, &params)?;
    let request: InferRequest = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("request body is not a valid inference request: {error}")))?;
    let inputs: Vec<TensorData> = request.inputs.into_iter().map(to_tensor).collect::<Result<_, _>>()?;
    for wanted in &request.outputs {
        if !model.outputs.iter().any(|spec| spec.name == wanted.name) {
            return Err(ApiError::BadRequest(format!("model `{}` has no output `{}`", model.model, wanted.name)));
        }
    }
    // The inputs are copied once, and only when a drift tap or a shadow candidate needs them.
    let shadow = host.shadow(&model.model);
    let drift = host.drift_tap(&model.model).filter(|tap| tap.version == model.version);
    let inputs_copy = (shadow.is_some() || drift.is_some()).then(|| inputs.clone());
    let started = Instant::now();
    let result = state.pool.run(model.clone(), inputs).await;
    let latency_us = started.elapsed().as_micros() as u64;
    let outputs = match result {
        Ok(outputs) => {
            host.record(&model.model, model.version, latency_us, true);
            if let (Some(tap), Some(copy)) = (&drift, &inputs_copy) {
                tap.observe(copy, &outputs);
            }
            if let (Some(candidate), Some(copy)) = (shadow, inputs_copy) {
                crate::shadow::mirror(&state.pool, &state.shadow_permits, host.clone(), &model, candidate, copy, outputs.clone());
            }
            outputs
        }
        Err(error) => {
            if !error.is_client_error() {
                host.record(&model.model, model.version, latency_us, false);
                tracing::warn!(model = %model.model, %error, "inference failed");
            }
            return Err(error.into());
        }
    };
    let outputs: Vec<ResponseOutput> = outputs
        .into_iter()
        .filter(|output| request.outputs.is_empty() || request.outputs.iter().any(|wanted| wanted.name == output.name))
        .map(|output| match output.values {
            TensorValues::F32(values) => {
                ResponseOutput { name: output.name, datatype: "FP32", shape: output.shape, data: ResponseData::Floats(values) }
            }
            TensorValues::I64(values) => {
                ResponseOutput { name: output.name, datatype: "INT64", shape: output.shape, data: ResponseData::Integers(values) }
            }
        })
        .collect();
    let mut response = serde_json::json!({
        "model_name": model.model,
        "model_version": model.version.to_string(),
        "outputs": outputs,
    });
    if let Some(id) = request.id {
        response["id"] = serde_json::Value::String(id);
    }
    Ok(Json(response).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(json: &str, datatype: &str, expected: Result<TensorValues, &str>) {
        let input: RequestInput =
            serde_json::from_str(&format!(r#"{{"name":"x","shape":[2,2],"datatype":"{datatype}","data":{json}}}"#)).unwrap();
        match (to_tensor(input), expected) {
            (Ok(tensor), Ok(values)) => assert_eq!(tensor.values, values),
            (Err(error), Err(part)) => assert!(error.to_string().contains(part), "{error}"),
            (got, want) => panic!("{json}: got {:?}, want {want:?}", got.map(|tensor| tensor.values)),
        }
    }

    #[test]
    fn request_data_flattens_and_converts() {
        check("[1,2,3,4]", "FP32", Ok(TensorValues::F32(vec![1.0, 2.0, 3.0, 4.0])));
        check("[[1.5,2],[3,4]]", "FP32", Ok(TensorValues::F32(vec![1.5, 2.0, 3.0, 4.0])));
        check("[[1,2],[3,9007199254740993]]", "INT64", Ok(TensorValues::I64(vec![1, 2, 3, 9007199254740993])));
        check("[1.5,2,3,4]", "INT64", Err("must be integers"));
        check("[1,2,3,4]", "BYTES", Err("not supported"));
    }

    #[test]
    fn non_numeric_data_is_a_parse_error() {
        assert!(serde_json::from_str::<RequestInput>(r#"{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}"#).is_err());
    }

    #[test]
    fn host_names_are_checked_without_port_or_case() {
        let allowed = HostAllowList::new("192.168.1.5:8081".parse().unwrap(), &["edge.local".into(), "Cam-7:9000".into()]);
        for (host, expected) in [
            ("localhost", true),
            ("LOCALHOST:8081", true),
            ("127.0.0.1:1", true),
            ("[::1]:8081", true),
            ("192.168.1.5:8081", true),
            ("edge.local", true),
            ("cam-7", true),
            ("attacker.example", false),
            ("localhost.attacker.example", false),
            ("127.0.0.1.nip.io:8081", false),
            ("[::2]", false),
            ("", false),
        ] {
            assert_eq!(allowed.allows(host), expected, "{host}");
        }
        let unspecified = HostAllowList::new("0.0.0.0:8081".parse().unwrap(), &[]);
        assert!(!unspecified.allows("0.0.0.0"));
        assert!(unspecified.allows("localhost"));
    }

    #[test]
    fn only_json_bytes_or_no_content_type_are_accepted() {
        for (content_type, expected) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/octet-stream", true),
            ("text/plain", false),
            ("text/plain;charset=UTF-8", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            assert_eq!(accepted_content_type(content_type), expected, "{content_type}");
        }
    }

    #[test]
    fn element_counts_are_checked() {
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[0, 5]), Some(5));
        assert_eq!(element_count(&[1 << 40, 1 << 40]), None);
        assert_eq!(element_count(&[1 << 62, 4]), None);
        assert_eq!(element_count(&[u64::MAX]), Some(usize::MAX).filter(|_| usize::BITS == 64));
    }
}
