//! The HTTP server loop of the plane's API: hyper's HTTP/1 connection driver with a header read
//! timeout, an idle timeout on request bodies, a cap on open connections, and a graceful
//! drain on shutdown. (`axum::serve` has none of the three limits: a half-sent request kept
//! its connection, even without a token, for as long as the client liked.) The agent has the
//! same loop in `agent/src/http.rs`: the plane links the agent only for the demo.
//!
//! Also the process's descriptor budget: the API and the embedded broker share one
//! `RLIMIT_NOFILE`, so `descriptor_budget` raises the soft limit to the hard one and keeps
//! the broker's connection cap below what the API and the store leave.

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

/// Defaults: 10 s for headers, 30 s of body silence (pushes are large and may cross slow
/// links), 1,024 connections.
impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { header_read_timeout: Duration::from_secs(10), body_read_timeout: Duration::from_secs(30), max_connections: 1024 }
    }
}

/// Descriptors kept for everything but client connections: the database pool, bundle and
/// artifact files, the plane's own MQTT link, the listeners, logs.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// How the process's open-file limit is shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft `RLIMIT_NOFILE` after raising it as far as allowed.
    pub limit: u64,
    pub http_connections: usize,
    /// The embedded broker's connection cap, lowered if the limit cannot hold it.
    pub broker_connections: Option<usize>,
}

/// Raises the soft open-file limit to the hard limit (where the system lets it), then
/// fits the HTTP and broker connection caps in it: the HTTP cap as configured (lowered only
/// when even it does not fit), the broker's lowered to what remains after the HTTP cap and
/// `RESERVED_DESCRIPTORS`, so a flood on one side cannot take the descriptors the other needs.
pub fn descriptor_budget(http_connections: usize, broker_connections: Option<usize>) -> DescriptorBudget {
    let limit = raise_open_file_limit();
    fit_budget(limit, http_connections, broker_connections)
}

fn fit_budget(limit: u64, http_connections: usize, broker_connections: Option<usize>) -> DescriptorBudget {
    let usable = limit.saturating_sub(RESERVED_DESCRIPTORS);
    let (http_share, broker_share) = match broker_connections {
        // Without a broker in the process, the API may use what the store leaves.
        None => (usable, 0),
        // Neither side gets less than a quarter of what is usable.
        Some(_) => (usable - usable / 4, usable / 4),
    };
    let http_connections = http_connections.min(usize::try_from(http_share).unwrap_or(usize::MAX)).max(1);
    let remaining = usable.saturating_sub(http_connections as u64).max(broker_share);
    let broker_connections = broker_connections.map(|wanted| wanted.min(usize::try_from(remaining).unwrap_or(usize::MAX)));
    DescriptorBudget { limit, http_connections, broker_connections }
}

/// The soft `RLIMIT_NOFILE` after trying to raise it to the hard limit.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "could not raise the open-file limit to the hard limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "could not read the open-file limit; assuming 1024");
            1024
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
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
            let mut request = request.map(|body| Body::new(TimeoutBody::new(body_read_timeout, body)));
            // What `into_make_service_with_connect_info` gave handlers (the audit log's "from where").
            request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_gets_what_the_api_and_the_reserve_leave() {
        #[track_caller]
        fn check(limit: u64, http: usize, broker: Option<usize>, expected: (usize, Option<usize>)) {
            let budget = fit_budget(limit, http, broker);
            assert_eq!((budget.http_connections, budget.broker_connections), expected, "limit {limit}");
        }
        // Room for both: nothing changes.
        check(1_048_576, 1024, Some(20_000), (1024, Some(20_000)));
        // 1024 - 256 reserved = 768 usable: the API keeps at most 3/4, the broker the rest.
        check(1024, 1024, Some(20_000), (576, Some(192)));
        check(1024, 100, Some(20_000), (100, Some(668)));
        // 65,536: the broker's 20,000 fits next to the API's 1,024.
        check(65_536, 1024, Some(20_000), (1024, Some(20_000)));
        check(16_384, 1024, Some(20_000), (1024, Some(15_104)));
        // An external broker: the API may use everything usable.
        check(1024, 1024, None, (768, None));
        check(100, 1024, None, (1, None));
    }
}
