//! The HTTP server loop of the local API: hyper's HTTP/1 connection driver with a header read
//! timeout, an idle timeout on request bodies, a cap on open connections, and a graceful
//! drain on shutdown. (`axum::serve` has none of the three limits: a half-sent request kept
//! its connection, and its buffers, for as long as the client liked.)

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// How long connections get to finish their requests after shutdown begins.
const DRAIN_GRACE: Duration = Duration::from_secs(4);
/// Pause after a failed accept (out of descriptors, say) before trying again, so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Limits on what one client can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// A request's headers must arrive within this (also bounds an idle keep-alive
    /// connection's wait for its next request).
    pub header_read_timeout: Duration,
    /// A request body that sends nothing for this long fails and its connection closes.
    pub body_read_timeout: Duration,
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: crate::config::DEFAULT_HTTP_MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` until `cancel`, then drains open connections for up to
/// `DRAIN_GRACE`.
pub async fn serve(listener: TcpListener, router: Router, limits: ServerLimits, cancel: CancellationToken) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    loop {
        // Cancel-safe: acquiring a permit and accepting both lose nothing when dropped.
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let body_read_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let request = request.map(|body| Body::new(TimeoutBody::new(body_read_timeout, body)));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Invariant: the permit lives as long as the connection.
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain grace; closing them");
    }
    Ok(())
}
