//! A fault-injecting TCP proxy between a client (an agent) and a broker: limits bandwidth,
//! stalls traffic, or cuts every connection, on command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub address: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    /// Bytes per second towards the client; 0 means unlimited.
    rate: AtomicU64,
    stalled: AtomicBool,
    /// Holds only the broker-to-client direction.
    downstream_stalled: AtomicBool,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    pub bytes_to_client: AtomicU64,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let (cut, _) = watch::channel(0u64);
        let state = Arc::new(ProxyState {
            rate: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            downstream_stalled: AtomicBool::new(false),
            cut,
            bytes_to_client: AtomicU64::new(0),
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, state).await;
                    }
                });
            }
        });
        FaultProxy { address, state, task }
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.address)
    }

    /// Limits traffic towards the client to `bytes_per_second` (0: unlimited).
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.state.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// Holds all traffic (connections stay open) until `resume`.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// Holds what the broker sends to the client; the client's requests still go through.
    pub fn stall_downstream(&self) {
        self.state.downstream_stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
        self.state.downstream_stalled.store(false, Ordering::SeqCst);
    }

    /// Closes every open connection; new ones are accepted.
    pub fn cut(&self) {
        self.state.cut.send_modify(|generation| *generation += 1);
    }

    pub fn bytes_to_client(&self) -> u64 {
        self.state.bytes_to_client.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<ProxyState>) {
    let mut cut = state.cut.subscribe();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream_state = state.clone();
    let upstream = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            while upstream_state.stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0u8; 4 * 1024];
        loop {
            while state.stalled.load(Ordering::SeqCst) || state.downstream_stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            state.bytes_to_client.fetch_add(n as u64, Ordering::SeqCst);
            let rate = state.rate.load(Ordering::SeqCst);
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = cut.changed() => {}
    }
}
