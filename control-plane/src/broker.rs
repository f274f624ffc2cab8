//! The embedded MQTT broker (rumqttd) for single-machine setups, and the check that the
//! broker answering on its port really is ours (another broker may hold the port).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetml_shared::protocol::MAX_MESSAGE_BYTES;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rumqttd::local::LinkRx;
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::sync::oneshot;

/// Connections the embedded broker accepts by default (a 10,000-device simulation fits
/// twice). rumqttd sizes its router tables for this many up front, and past it refuses a
/// new connection by leaving it without a CONNACK (logged as "no space for new connection").
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Unacknowledged QoS 1 publishes the broker keeps in flight per connection.
const MAX_INFLIGHT_COUNT: usize = 500;
/// Publishes the router hands a connection per scheduling round.
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;
/// Per-topic commit log: segments of this size, at most this many kept (in memory).
const MAX_SEGMENT_SIZE: usize = 16 * 1024 * 1024;
const MAX_SEGMENT_COUNT: usize = 8;
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EmbeddedBroker {
    pub address: SocketAddr,
}

fn broker_config(listen: SocketAddr, max_connections: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        // Room for the largest message; rumqttd resets connections that exceed it.
        max_payload_size: MAX_MESSAGE_BYTES + 64 * 1024,
        max_inflight_count: MAX_INFLIGHT_COUNT,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings { name: "fleetml-v4".into(), listen, tls: None, next_connection_delay_ms: 0, connections };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: MAX_OUTGOING_PACKET_COUNT,
            max_segment_size: MAX_SEGMENT_SIZE,
            max_segment_count: MAX_SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("fleetml-v4".to_string(), server)])),
        ..Config::default()
    }
}

fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0)).context("looking for a free port")?.local_addr()?.port())
}

/// Starts rumqttd on `listen` (port 0: a free port), accepting up to `max_connections`, and
/// proves that the broker answering there is this one, by publishing a nonce over TCP and
/// receiving it on an in-process link.
pub async fn start_embedded(listen: SocketAddr, max_connections: usize) -> anyhow::Result<EmbeddedBroker> {
    let pick_free = listen.port() == 0;
    let attempts = if pick_free { 5 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let address = if pick_free { SocketAddr::new(listen.ip(), free_port(listen.ip())?) } else { listen };
        match start_once(address, max_connections).await {
            Ok(broker) => return Ok(broker),
            Err(error) => {
                tracing::warn!(%address, error = format!("{error:#}"), "embedded broker did not start");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

async fn start_once(address: SocketAddr, max_connections: usize) -> anyhow::Result<EmbeddedBroker> {
    let mut broker = Broker::new(broker_config(address, max_connections));
    let nonce = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let probe_topic = format!("fleetml-broker-probe/{nonce}");
    let (mut link_tx, link_rx) = broker.link("fleetml-broker-probe").context("opening an in-process link to the broker")?;
    link_tx.subscribe(probe_topic.clone()).context("subscribing the probe link")?;
    let (stopped_sender, mut stopped) = oneshot::channel::<String>();
    std::thread::Builder::new().name("mqtt-broker".into()).spawn(move || {
        let outcome = match broker.start() {
            Ok(()) => "the broker stopped".to_string(),
            Err(error) => error.to_string(),
        };
        let _ = stopped_sender.send(outcome);
    })?;
    let probe = probe_over_tcp(address, &probe_topic, nonce.as_bytes(), link_rx);
    tokio::select! {
        outcome = &mut stopped => bail!("the embedded broker on {address} stopped: {}", outcome.unwrap_or_default()),
        result = tokio::time::timeout(PROBE_TIMEOUT, probe) => match result {
            Ok(Ok(())) => {
                tracing::info!(
                    %address,
                    max_connections,
                    max_inflight_count = MAX_INFLIGHT_COUNT,
                    max_outgoing_packet_count = MAX_OUTGOING_PACKET_COUNT,
                    max_segment_size = MAX_SEGMENT_SIZE,
                    max_segment_count = MAX_SEGMENT_COUNT,
                    "embedded MQTT broker running"
                );
                drop(link_tx);
                Ok(EmbeddedBroker { address })
            }
            Ok(Err(error)) => Err(error),
            Err(_) => bail!(
                "port {} answers, but not as this plane's broker (another MQTT server holds it?); choose another --mqtt-listen",
                address.port()
            ),
        },
    }
}

async fn probe_over_tcp(address: SocketAddr, topic: &str, nonce: &[u8], mut link_rx: LinkRx) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(format!("fleetml-probe-{}", fastrand::u32(..)), address.ip().to_string(), address.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    // The broker thread may still be binding: retry the connection until the deadline.
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    client.publish(topic, QoS::AtLeastOnce, false, nonce.to_vec()).await?;
    loop {
        match eventloop.poll().await? {
            Event::Incoming(Packet::PubAck(_)) => break,
            _ => continue,
        }
    }
    let _ = client.try_disconnect();
    loop {
        match link_rx.next().await.context("reading the probe link")? {
            Some(Notification::Forward(forward)) if forward.publish.payload.as_ref() == nonce => {
                return Ok(());
            }
            Some(_) | None => continue,
        }
    }
}
