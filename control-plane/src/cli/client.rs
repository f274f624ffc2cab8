//! The REST client behind every `fleetml` command that talks to a plane: typed requests and
//! answers (`api::views`), the bearer token, and the plane's error message on failure.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::views::{DeployRequest, DeploymentView, DeviceView, PushQuery, PushResponse};

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().context("building the HTTP client")?;
        Ok(Client { base: server.trim_end_matches('/').to_string(), token, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response = builder.send().await.with_context(|| format!("cannot reach the plane at {}", self.base))?;
        let status = response.status();
        let body = response.bytes().await.context("reading the plane's answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value.get("message").and_then(|message| message.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).to_string());
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!("{message} (give --token or FLEETML_TOKEN)");
            }
            bail!("{message} (HTTP {})", status.as_u16());
        }
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from the plane: {}", String::from_utf8_lossy(&body)))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn get_query<T: DeserializeOwned>(&self, path: &str, query: &impl Serialize) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path).query(query)).await
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn put_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::PUT, path).json(body)).await
    }

    pub async fn push(&self, model: &str, onnx: Vec<u8>, description: &str) -> anyhow::Result<PushResponse> {
        self.push_with_profile(model, onnx, description, None).await
    }

    /// Uploads `profile` (if any) to `/api/v1/profiles`, then pushes the model with it attached.
    pub async fn push_with_profile(
        &self,
        model: &str,
        onnx: Vec<u8>,
        description: &str,
        profile: Option<Vec<u8>>,
    ) -> anyhow::Result<PushResponse> {
        let mut query = PushQuery { description: Some(description.to_string()), ..PushQuery::default() };
        if let Some(profile) = profile {
            let builder = self
                .request(reqwest::Method::POST, "/api/v1/profiles")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(profile);
            let uploaded: serde_json::Value = self.send(builder).await?;
            let sha256 = uploaded["sha256"].as_str().context("the plane did not answer the profile's sha256")?;
            query.profile = Some(sha256.to_string());
        }
        let builder = self
            .request(reqwest::Method::POST, &format!("/api/v1/models/{model}/versions"))
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(onnx);
        self.send(builder).await
    }

    pub async fn devices(&self) -> anyhow::Result<Vec<DeviceView>> {
        self.get("/api/v1/devices").await
    }

    pub async fn deploy(&self, request: &DeployRequest) -> anyhow::Result<DeploymentView> {
        self.post_json("/api/v1/deployments", request).await
    }
}
