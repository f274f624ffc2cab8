//! The plane's MQTT link: a cloneable publish handle and one event loop that reconnects,
//! resubscribes, and routes device messages to ingest and the distributor.

use std::time::Duration;

use fleetml_shared::protocol::MAX_MESSAGE_BYTES;
use fleetml_shared::topics::{TopicKind, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::deployment::ControllerCommand;

/// Publishes queued towards the broker; `publish` waits when full (backpressure on the
/// distributor and the controllers, never unbounded memory).
const REQUEST_CAPACITY: usize = 1024;
/// Unacknowledged QoS 1 publishes in flight: enough to stream chunks at line rate.
const INFLIGHT: u16 = 200;
const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 4096;

#[derive(Debug)]
pub struct Inbound {
    pub kind: TopicKind,
    pub payload: bytes::Bytes,
}

#[derive(Clone)]
pub struct PlaneMqtt {
    client: AsyncClient,
}

impl PlaneMqtt {
    pub async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> bool {
        match self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "publish not queued");
                false
            }
        }
    }
}

pub struct PlaneLink {
    topics: Topics,
    eventloop: EventLoop,
    client: AsyncClient,
    ingest: mpsc::Sender<Inbound>,
    fetches: mpsc::Sender<Inbound>,
    controller: mpsc::Sender<ControllerCommand>,
}

impl PlaneLink {
    pub fn new(
        host: &str,
        port: u16,
        topics: Topics,
        ingest: mpsc::Sender<Inbound>,
        fetches: mpsc::Sender<Inbound>,
        controller: mpsc::Sender<ControllerCommand>,
    ) -> (PlaneLink, PlaneMqtt) {
        let client_id = format!(
            "fleetml-plane-{}-{:08x}",
            topics.root().replace('/', "-"),
            fastrand::u32(..)
        );
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(true);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options.set_inflight(INFLIGHT);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let link = PlaneLink {
            topics,
            eventloop,
            client: client.clone(),
            ingest,
            fetches,
            controller,
        };
        (link, PlaneMqtt { client })
    }

    #[tracing::instrument(name = "plane_link", skip_all)]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        let mut connected = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: rumqttc keeps its state in the EventLoop between polls.
                polled = self.eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(100);
                        tracing::info!("plane connected to the broker");
                        for filter in self.topics.plane_filters() {
                            if let Err(error) = self.client.subscribe(filter, QoS::AtLeastOnce).await {
                                tracing::warn!(%error, "subscribe not queued");
                            }
                        }
                        // Retained desired states may be gone (a broker restart): publish them again.
                        let _ = self.controller.send(ControllerCommand::RepublishAll).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let Some(kind) = self.topics.parse(&publish.topic) else { continue };
                        let inbound = Inbound { kind, payload: publish.payload };
                        let target = match inbound.kind {
                            TopicKind::Fetch { .. } => &self.fetches,
                            TopicKind::Reported { .. } | TopicKind::Telemetry { .. } => &self.ingest,
                            TopicKind::Desired { .. } | TopicKind::Chunks { .. } => continue,
                        };
                        if target.send(inbound).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if connected {
                            tracing::warn!(%error, "plane lost the broker; reconnecting");
                            connected = false;
                        } else {
                            tracing::debug!(%error, "broker not reachable; retrying");
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        let _ = self.client.try_disconnect();
        Ok(())
    }
}
