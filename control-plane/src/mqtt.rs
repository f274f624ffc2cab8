//! The plane's MQTT link: a cloneable publish handle and one event loop that reconnects,
//! resubscribes, and routes device messages to ingest and the distributor.

use std::time::Duration;

use fleetml_shared::protocol::MAX_MESSAGE_BYTES;
use fleetml_shared::topics::{TopicKind, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::PlaneCounters;
use crate::deployment::controller::{ControllerCommand, ControllerQueue};

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
        match self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await {
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
    controller: Arc<ControllerQueue>,
    counters: Arc<PlaneCounters>,
}

impl PlaneLink {
    pub fn new(
        host: &str,
        port: u16,
        topics: Topics,
        ingest: mpsc::Sender<Inbound>,
        fetches: mpsc::Sender<Inbound>,
        controller: Arc<ControllerQueue>,
        counters: Arc<PlaneCounters>,
    ) -> (PlaneLink, PlaneMqtt) {
        let client_id = format!("fleetml-plane-{}-{:08x}", topics.root().replace('/', "-"), fastrand::u32(..));
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(true);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options.set_inflight(INFLIGHT);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let link = PlaneLink { topics, eventloop, client: client.clone(), ingest, fetches, controller, counters };
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
                        // Off this task: the request queue may be full, and only this task drains it.
                        let (client, filters) = (self.client.clone(), self.topics.plane_filters());
                        tokio::spawn(async move {
                            for filter in filters {
                                if let Err(error) = client.subscribe(filter, QoS::AtLeastOnce).await {
                                    tracing::warn!(%error, "subscribe not queued");
                                }
                            }
                        });
                        // Retained desired states may be gone (a broker restart): publish them again.
                        self.controller.request(ControllerCommand::RepublishAll);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let Some(kind) = self.topics.parse(&publish.topic) else { continue };
                        let inbound = Inbound { kind, payload: publish.payload };
                        match inbound.kind {
                            // Never wait on the distributor: it publishes through this very
                            // loop. A dropped request is asked again by the device's stall timer.
                            TopicKind::Fetch { .. } => match self.fetches.try_send(inbound) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    self.counters.fetch_requests_dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => break,
                            },
                            // Ingest only writes to the store, so waiting on it is safe backpressure.
                            TopicKind::Reported { .. } | TopicKind::Telemetry { .. } => {
                                if self.ingest.send(inbound).await.is_err() {
                                    break;
                                }
                            }
                            TopicKind::Desired { .. } | TopicKind::Chunks { .. } => {}
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
