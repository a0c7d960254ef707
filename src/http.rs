//! A minimal HTTP/1.1 responder for `/metrics`, `/healthz` and `/readyz`: enough for
//! Prometheus and kubelet probes, without a web framework.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{liveness::Progress, metrics::Metrics};

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// Watches synced (or this replica is a standby waiting for the lease).
    pub ready: AtomicBool,
    /// Whether the reconcile loop makes progress (liveness).
    pub progress: Arc<Progress>,
}

/// Turn `:8080` (controller-runtime style) into a bindable address.
pub fn bind_address(address: &str) -> String {
    if address.starts_with(':') {
        format!("0.0.0.0{address}")
    } else {
        address.to_string()
    }
}

pub async fn bind(address: &str) -> Result<TcpListener, String> {
    TcpListener::bind(bind_address(address))
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))
}

/// Serve until the task is dropped. `metrics` is `None` on the probe listener.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Option<Arc<Metrics>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (health, metrics) = (health.clone(), metrics.clone());
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(
                        Duration::from_secs(10),
                        answer(stream, &health, metrics.as_deref()),
                    )
                    .await
                    {
                        debug!("http: slow client dropped: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, health: &Health, metrics: Option<&Metrics>) {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    // Read the request head only; no request here has a body.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/");
    let (status, content_type, body) = route(path, health, metrics, Instant::now());
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(
    path: &str,
    health: &Health,
    metrics: Option<&Metrics>,
    now: Instant,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (path, metrics) {
        ("/metrics", Some(m)) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        ("/healthz" | "/livez", _) => match health.progress.check(now) {
            Ok(()) => ("200 OK", TEXT, "ok\n".into()),
            Err(why) => ("503 Service Unavailable", TEXT, format!("{why}\n")),
        },
        ("/readyz", _) if health.ready.load(Ordering::Relaxed) => ("200 OK", TEXT, "ok\n".into()),
        ("/readyz", _) => (
            "503 Service Unavailable",
            TEXT,
            "watches not synced yet\n".into(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let health = Health::default();
        let metrics = Metrics::default();
        let now = Instant::now();
        let route = |path, metrics| route(path, &health, metrics, now);
        assert_eq!(route("/healthz", None).0, "200 OK");
        assert_eq!(route("/readyz", None).0, "503 Service Unavailable");
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", None).0, "200 OK");
        assert_eq!(route("/metrics", None).0, "404 Not Found");
        assert!(
            route("/metrics", Some(&metrics))
                .2
                .contains("idv_token_operator_reconciles_total")
        );
        health.progress.loop_stopped();
        assert_eq!(
            route("/healthz", None),
            (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                "the reconcile loop has stopped\n".into()
            )
        );
        assert_eq!(bind_address(":8080"), "0.0.0.0:8080");
        assert_eq!(bind_address("127.0.0.1:0"), "127.0.0.1:0");
    }
}
