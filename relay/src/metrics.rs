//! Prometheus metrics: the relay's own counters plus libp2p-metrics, served as
//! OpenMetrics text over a tiny HTTP/1.1 responder.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Label set `reason="..."`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a request was refused.
    pub reason: String,
}

/// Label set `request="...",reason="..."`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestReasonLabel {
    /// What was asked.
    pub request: String,
    /// Why it was refused.
    pub reason: String,
}

/// The relay's own metrics.
#[derive(Clone, Default)]
pub struct RelayMetrics {
    /// Reservations held now.
    pub reservations: Gauge,
    /// Reservations accepted (new and renewed).
    pub reservations_accepted: Counter,
    /// Reservations refused, by reason.
    pub reservations_refused: Family<ReasonLabel, Counter>,
    /// Circuits open now.
    pub circuits: Gauge,
    /// Circuits accepted.
    pub circuits_accepted: Counter,
    /// Circuits refused, by reason.
    pub circuits_refused: Family<ReasonLabel, Counter>,
    /// Circuits that ended (any reason, including the duration and byte limits).
    pub circuits_closed: Counter,
    /// Peers connected now.
    pub connected_peers: Gauge,
    /// Rendezvous registrations accepted.
    pub rendezvous_registrations: Counter,
    /// Rendezvous discover requests served.
    pub rendezvous_discoveries: Counter,
    /// Rendezvous requests refused, by request and reason.
    pub rendezvous_refused: Family<RequestReasonLabel, Counter>,
    /// Incoming connections refused, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
}

impl RelayMetrics {
    /// Register all metrics under the `confab_relay` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = RelayMetrics::default();
        let r = registry.sub_registry_with_prefix("confab_relay");
        r.register(
            "reservations",
            "Relay reservations held now",
            m.reservations.clone(),
        );
        r.register(
            "reservations_accepted",
            "Relay reservations accepted (new and renewed)",
            m.reservations_accepted.clone(),
        );
        r.register(
            "reservations_refused",
            "Relay reservations refused, by reason",
            m.reservations_refused.clone(),
        );
        r.register("circuits", "Relay circuits open now", m.circuits.clone());
        r.register(
            "circuits_accepted",
            "Relay circuits accepted",
            m.circuits_accepted.clone(),
        );
        r.register(
            "circuits_refused",
            "Relay circuits refused, by reason",
            m.circuits_refused.clone(),
        );
        r.register(
            "circuits_closed",
            "Relay circuits that ended, for any reason",
            m.circuits_closed.clone(),
        );
        r.register(
            "connected_peers",
            "Peers with at least one connection now",
            m.connected_peers.clone(),
        );
        r.register(
            "rendezvous_registrations",
            "Rendezvous registrations accepted",
            m.rendezvous_registrations.clone(),
        );
        r.register(
            "rendezvous_discoveries",
            "Rendezvous discover requests served",
            m.rendezvous_discoveries.clone(),
        );
        r.register(
            "rendezvous_refused",
            "Rendezvous requests refused, by request and reason",
            m.rendezvous_refused.clone(),
        );
        r.register(
            "connections_refused",
            "Incoming connections refused, by reason",
            m.connections_refused.clone(),
        );
        m
    }

    /// Count a refused rendezvous request.
    pub fn rendezvous_refused(&self, request: &str, reason: &str) {
        self.rendezvous_refused
            .get_or_create(&RequestReasonLabel {
                request: request.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count a refused incoming connection.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count a refused reservation.
    pub fn reservation_refused(&self, reason: &str) {
        self.reservations_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Count a refused circuit.
    pub fn circuit_refused(&self, reason: &str) {
        self.circuits_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Longest request head we read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const MAX_CONCURRENT: usize = 16;

/// Serve `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok((socket, _peer)) = listener.accept().await else {
            // Accept errors (e.g. out of file descriptors) are transient; back off briefly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // Too many scrapes at once: drop the connection.
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, respond(socket, &registry)).await;
        });
    }
}

async fn respond(mut socket: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return write_response(&mut socket, "431 Request Header Fields Too Large", "", "")
                .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return write_response(&mut socket, "405 Method Not Allowed", "", "").await;
    }
    if path != "/metrics" && path != "/" {
        return write_response(&mut socket, "404 Not Found", "text/plain", "not found\n").await;
    }
    let mut body = String::new();
    if encode(&mut body, registry).is_err() {
        return write_response(&mut socket, "500 Internal Server Error", "", "").await;
    }
    let body = if method == "HEAD" { "" } else { &body };
    write_response(
        &mut socket,
        "200 OK",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body,
    )
    .await
}

async fn write_response(
    socket: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

/// Bind the metrics listener (done before the relay reports ready, so a bad address is
/// a startup error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::MetricsBind { addr, source })
}
