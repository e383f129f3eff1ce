//! The optional Prometheus endpoint (`[metrics] listen`, off by default): `GET /metrics`
//! answers in the OpenMetrics text format, which Prometheus scrapes.
//!
//! Counters and the transfer-time histogram are kept as things happen ([`Metrics`]); what is
//! a state rather than an event (sessions online, deliveries by state) is read when scraped.
//! The endpoint speaks just enough HTTP/1.1 for a scraper: one request per connection, a
//! bounded request head, a deadline, a few scrapes at once.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::state::{Server, blocking};

/// One label, `reason`.
pub(crate) type ByReason = Family<[(&'static str, String); 1], Counter>;

/// What the server counts as it goes.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Bytes of files sent to members (data chunks and pieces), all members together.
    pub bytes_sent: Counter,
    /// Seconds from a file's offer to a member's acknowledgement.
    pub transfer_seconds: Histogram,
    pub enrollments: Counter,
    pub enrollment_refusals: ByReason,
    pub join_refusals: ByReason,
    pub dropped_datagrams: ByReason,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            bytes_sent: Counter::default(),
            // 0.1 s to about 55 minutes.
            transfer_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            enrollments: Counter::default(),
            enrollment_refusals: ByReason::default(),
            join_refusals: ByReason::default(),
            dropped_datagrams: ByReason::default(),
        }
    }
}

/// Counts one event of `family` for `reason`.
pub(crate) fn count(family: &ByReason, reason: &str) {
    family.get_or_create(&[("reason", reason.to_owned())]).inc();
}

/// The whole text answer to a scrape.
async fn render(server: &Arc<Server>) -> Result<String, String> {
    let states = blocking(server, |store| store.delivery_counts()).await.map_err(|e| e.to_string())?;
    let metrics = &server.metrics;
    let mut registry = Registry::with_prefix("gshare");
    let online = Gauge::<i64>::default();
    online.set(i64::try_from(server.online_sessions()).unwrap_or(i64::MAX));
    registry.register("sessions_online", "Member sessions open now", online);
    let deliveries = Family::<[(&'static str, String); 1], Gauge<i64>>::default();
    for state in ["pending", "delivered", "failed", "dropped", "expired"] {
        let count = states.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        deliveries.get_or_create(&[("state", state.to_owned())]).set(count);
    }
    registry.register("deliveries", "Deliveries by state, as recorded", deliveries);
    registry.register("bytes_sent", "Bytes of files sent to members", metrics.bytes_sent.clone());
    registry.register(
        "transfer_duration_seconds",
        "Seconds from a file's offer to a member's acknowledgement",
        metrics.transfer_seconds.clone(),
    );
    registry.register("enrollments", "Certificates issued at enrollment", metrics.enrollments.clone());
    registry.register("enrollment_refusals", "Enrollments refused, by reason", metrics.enrollment_refusals.clone());
    registry.register("join_refusals", "Join and leave requests refused, by reason", metrics.join_refusals.clone());
    registry.register("dropped_datagrams", "Multicast datagrams dropped, by reason", metrics.dropped_datagrams.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| e.to_string())?;
    Ok(text)
}

/// Scrapes handled at once; more wait for the listener's next accept.
const MAX_SCRAPES: usize = 4;
/// Time a scraper has to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(server: Arc<Server>, listener: TcpListener) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(turn) = Arc::clone(&scrapes).acquire_owned().await else { return };
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(error) = answer(&server, stream).await {
                tracing::debug!(%from, %error, "metrics request failed");
            }
            drop(turn);
        });
    }
}

async fn answer(server: &Arc<Server>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buffer = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_DEADLINE, read).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, content_type, body) = if method != b"GET" {
        ("405 Method Not Allowed", "text/plain", "only GET\n".to_owned())
    } else if path != b"/metrics" {
        ("404 Not Found", "text/plain", "metrics are at /metrics\n".to_owned())
    } else {
        match render(server).await {
            Ok(text) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
            Err(error) => ("500 Internal Server Error", "text/plain", format!("{error}\n")),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
