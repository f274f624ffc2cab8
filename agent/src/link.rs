//! The MQTT link: a cheap cloneable handle to publish and subscribe, and one owned event
//! loop that reconnects with backoff, restores subscriptions and routes what arrives.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetml_shared::protocol::{self, MAX_MESSAGE_BYTES, Reported};
use fleetml_shared::topics::{TopicKind, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::LinkConfig;

/// Requests queued towards the broker; `publish` waits when full.
const REQUEST_CAPACITY: usize = 256;
/// Room for the largest message plus MQTT headers and topic.
const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 4096;

#[derive(Debug)]
pub enum LinkEvent {
    Connected,
    Disconnected,
    Desired { model: String, payload: bytes::Bytes },
    Chunk { payload: bytes::Bytes },
}

#[derive(Clone)]
pub struct LinkHandle {
    client: AsyncClient,
    subscriptions: Arc<Mutex<BTreeSet<String>>>,
    connected: tokio::sync::watch::Receiver<bool>,
}

impl LinkHandle {
    /// Whether the broker is connected now, and a way to wait for changes.
    pub fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.clone()
    }

    pub async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) {
        if let Err(error) = self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await {
            tracing::warn!(%error, "publish not queued");
        }
    }

    /// Publishes unless the request queue is full (offline for long): telemetry that would
    /// only grow stale is dropped rather than blocking its producer.
    pub fn publish_or_drop(&self, topic: String, payload: Vec<u8>) -> bool {
        self.client.try_publish(topic, QoS::AtMostOnce, false, payload).is_ok()
    }

    pub async fn subscribe(&self, filter: String) {
        let is_new = self.subscriptions.lock().map(|mut set| set.insert(filter.clone())).unwrap_or(true);
        if is_new && let Err(error) = self.client.subscribe(filter, QoS::AtLeastOnce).await {
            tracing::warn!(%error, "subscribe not queued");
        }
    }

    pub async fn unsubscribe(&self, filter: String) {
        let was_there = self.subscriptions.lock().map(|mut set| set.remove(&filter)).unwrap_or(true);
        if was_there && let Err(error) = self.client.unsubscribe(filter).await {
            tracing::warn!(%error, "unsubscribe not queued");
        }
    }
}

pub struct Link {
    device_id: String,
    topics: Topics,
    eventloop: EventLoop,
    handle: LinkHandle,
    events: mpsc::Sender<LinkEvent>,
    connected: tokio::sync::watch::Sender<bool>,
}

impl Link {
    pub fn new(device_id: &str, config: &LinkConfig, events: mpsc::Sender<LinkEvent>) -> (Link, LinkHandle) {
        let topics = Topics::new(&config.topic_root);
        // The client id carries the topic root, so fleets sharing a broker never collide.
        let client_id = format!("fleetml-agent-{}-{device_id}", config.topic_root.replace('/', "-"));
        let mut options = MqttOptions::new(client_id, config.broker.host.clone(), config.broker.port);
        options.set_keep_alive(config.keep_alive);
        options.set_clean_session(true);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let will = protocol::encode(&Reported::Offline { device_id: device_id.to_string() });
        options.set_last_will(LastWill::new(topics.reported(device_id), will, QoS::AtLeastOnce, true));
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (connected, connection) = tokio::sync::watch::channel(false);
        let handle = LinkHandle { client, subscriptions: Arc::new(Mutex::new(BTreeSet::new())), connected: connection };
        let link = Link { device_id: device_id.to_string(), topics, eventloop, handle: handle.clone(), events, connected };
        (link, handle)
    }

    #[tracing::instrument(name = "link", skip_all, fields(device_id = %self.device_id))]
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        let mut connected = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Cancel-safe: rumqttc keeps its state in the EventLoop between polls.
                polled = self.eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(100);
                        connected = true;
                        self.connected.send_replace(true);
                        tracing::info!("connected to broker");
                        // Off this task: the request queue may be full, and only this task drains it.
                        let handle = self.handle.clone();
                        tokio::spawn(async move { restore_subscriptions(&handle).await });
                        if self.events.send(LinkEvent::Connected).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let topic = publish.topic.clone();
                        let event = match self.topics.parse(&topic) {
                            Some(TopicKind::Desired { device_id, model }) if device_id == self.device_id => {
                                LinkEvent::Desired { model, payload: publish.payload }
                            }
                            Some(TopicKind::Chunks { .. }) => LinkEvent::Chunk { payload: publish.payload },
                            _ => {
                                tracing::debug!(%topic, "message on an unexpected topic ignored");
                                continue;
                            }
                        };
                        if self.events.send(event).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if connected {
                            tracing::warn!(%error, "lost the broker; reconnecting");
                            connected = false;
                            self.connected.send_replace(false);
                            let _ = self.events.send(LinkEvent::Disconnected).await;
                        } else {
                            tracing::debug!(%error, ?backoff, "broker not reachable; retrying");
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        self.say_goodbye().await;
        Ok(())
    }

    /// A clean disconnect sends no last will, so the device marks itself offline first.
    async fn say_goodbye(&mut self) {
        let offline = protocol::encode(&Reported::Offline { device_id: self.device_id.clone() });
        let _ = self.handle.client.try_publish(self.topics.reported(&self.device_id), QoS::AtLeastOnce, true, offline);
        let _ = self.handle.client.try_disconnect();
        let flush = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
    }
}

async fn restore_subscriptions(handle: &LinkHandle) {
    let filters: Vec<String> = handle.subscriptions.lock().map(|set| set.iter().cloned().collect()).unwrap_or_default();
    for filter in filters {
        if let Err(error) = handle.client.subscribe(filter, QoS::AtLeastOnce).await {
            tracing::warn!(%error, "resubscribe not queued");
        }
    }
}
