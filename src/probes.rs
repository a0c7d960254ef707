//! `/metrics`, `/healthz` (`/livez`) and `/readyz` over HTTP/1.1, served with hyper: enough
//! for Prometheus and kubelet probes, without a web framework.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
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

/// Longest a connection may take, request and answer: a slow or stuck client is dropped.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Largest request head read (hyper's smallest buffer): no request here has a body.
const MAX_REQUEST_HEAD: usize = 8192;

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
                tokio::spawn(answer(stream, health, metrics));
            }
            Err(e) => {
                warn!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request per connection, then close (as a probe or a scrape uses it).
async fn answer(stream: TcpStream, health: Arc<Health>, metrics: Option<Arc<Metrics>>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let (status, content_type, body) = route(
            request.uri().path(),
            &health,
            metrics.as_deref(),
            Instant::now(),
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let connection = http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("http: {e}"),
        Err(_) => debug!("http: slow client dropped"),
    }
}

fn route(
    path: &str,
    health: &Health,
    metrics: Option<&Metrics>,
    now: Instant,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (path, metrics) {
        ("/metrics", Some(m)) => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(),
        ),
        ("/healthz" | "/livez", _) => match health.progress.check(now) {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        ("/readyz", _) if health.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, TEXT, "ok\n".into())
        }
        ("/readyz", _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "watches not synced yet\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn routes() {
        let health = Health::default();
        let metrics = Metrics::default();
        let now = Instant::now();
        let route = |path, metrics| route(path, &health, metrics, now);
        assert_eq!(route("/healthz", None).0, StatusCode::OK);
        assert_eq!(route("/readyz", None).0, StatusCode::SERVICE_UNAVAILABLE);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", None).0, StatusCode::OK);
        assert_eq!(route("/metrics", None).0, StatusCode::NOT_FOUND);
        assert!(
            route("/metrics", Some(&metrics))
                .2
                .contains("idv_token_operator_reconciles_total")
        );
        health.progress.loop_stopped();
        assert_eq!(
            route("/healthz", None),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "the reconcile loop has stopped\n".into()
            )
        );
        assert_eq!(bind_address(":8080"), "0.0.0.0:8080");
        assert_eq!(bind_address("127.0.0.1:0"), "127.0.0.1:0");
    }

    /// What a client reads back for `request` until the server closes the connection.
    async fn exchange(port: u16, request: &[u8]) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes")?;
        Ok(String::from_utf8(answer).unwrap())
    }

    #[tokio::test]
    async fn answers_over_http_and_bounds_what_it_reads() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Health::default()),
            Some(Arc::new(Metrics::default())),
        ));
        let metrics = exchange(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        let lower = metrics.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(lower.contains("connection: close\r\n"), "{metrics}");
        assert!(metrics.contains("idv_token_operator_reconciles_total"));
        let ready = exchange(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(
            ready.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{ready}"
        );
        assert!(
            ready.ends_with("\r\n\r\nwatches not synced yet\n"),
            "{ready}"
        );
        // A head larger than the bound is refused, not read on and on.
        let huge = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4 * MAX_REQUEST_HEAD)
        );
        // (Closing with the rest unread may reset the connection before the answer is read.)
        match exchange(port, huge.as_bytes()).await {
            Ok(refused) => assert!(refused.starts_with("HTTP/1.1 431"), "{refused}"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{e}"
            ),
        }
        server.abort();
    }
}
