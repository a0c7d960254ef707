//! `idv-token-operator proxy`: a sidecar that forwards every request to one upstream API with
//! the token from a mounted token Secret in `Authorization`, so that software that cannot read
//! a token file (configured, not written) calls the API unchanged.
//!
//! `token` reads the directory, `forward` rewrites the messages (pure), `upstream` is the
//! client; this module wires the listeners and answers.

pub mod forward;
pub mod metrics;
pub mod token;
pub mod upstream;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{Either, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use jiff::Timestamp;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    schedule,
    telemetry::{self, LogFormat},
};
use forward::Upstream;
use metrics::ProxyMetrics;
use token::TokenDir;
use upstream::UpstreamClient;

fn parse_duration(text: &str) -> Result<Duration, String> {
    schedule::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 10s, 5m or 1h"))
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// The one API every request goes to: https://host[:port][/base-path] (plain http only to
    /// a loopback host). Request paths are appended to the base path; queries are kept.
    #[arg(long)]
    pub upstream: String,
    /// The mounted token Secret: a directory with the files `authorization` and `expires_at`
    /// (a Secret volume; the kubelet's updates are followed).
    #[arg(long, default_value = "/var/run/idv")]
    pub token_dir: PathBuf,
    /// Where the application sends its requests. Whoever reaches this address calls the API
    /// with the token: keep it on loopback (the pod's own network namespace).
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub listen: SocketAddr,
    /// Where /healthz, /readyz and /metrics are served ("0": off). All interfaces by default:
    /// kubelet probes and Prometheus connect to the pod IP. Nothing secret is served there.
    #[arg(long, default_value = ":8182")]
    pub metrics_listen: String,
    /// PEM file of extra CA certificates to trust for the upstream (private PKI), besides
    /// the system trust store.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// How long to wait for the upstream's response headers (connecting included); then 504.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Log one line per request: method, path (no query), status, durations. Never headers.
    #[arg(long)]
    pub access_log: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How long in-flight requests may finish after SIGTERM. A native sidecar is stopped after
/// the app containers, so little is left by then.
const DRAIN: Duration = Duration::from_secs(10);
/// A client that does not finish its request head within this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

type Body = Either<Incoming, Full<Bytes>>;

struct Proxy {
    upstream: Upstream,
    tokens: TokenDir,
    client: UpstreamClient,
    metrics: Arc<ProxyMetrics>,
    timeout: Duration,
    access_log: bool,
    /// Warnings that could repeat on every request are logged at most every 10 s each.
    warned: [Throttle; 3],
}

const WARN_UPSTREAM_FAILED: usize = 0;
const WARN_UNAUTHORIZED: usize = 1;
const WARN_NO_TOKEN: usize = 2;

/// At most one event per interval: `allow(now)` says whether this one may pass.
#[derive(Default)]
struct Throttle {
    next_ms: AtomicI64,
}

impl Throttle {
    const INTERVAL_MS: i64 = 10_000;

    fn allow(&self, now: Timestamp) -> bool {
        let now = now.as_millisecond();
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + Self::INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// Run the proxy until SIGTERM or Ctrl-C.
pub fn main(args: ProxyArgs) -> Result<(), String> {
    telemetry::init(args.log_format);
    // Two workers at most: a sidecar serves one pod, and a runtime sized for a 64-core node
    // would only cost memory. (Measured on 2 cores with 16 requests in flight: 21-24k
    // requests/s single-threaded, 29k with two workers; one at a time, the same latency.)
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(args: ProxyArgs) -> Result<(), String> {
    let upstream = Upstream::parse(&args.upstream)?;
    let ca_bundle = args
        .ca_bundle
        .as_ref()
        .map(|path| {
            std::fs::read(path)
                .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))
        })
        .transpose()?;
    let metrics = Arc::new(ProxyMetrics::default());
    let client = upstream::client(ca_bundle.as_deref(), metrics.clone())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    if !address.ip().is_loopback() {
        warn!(%address, "listening beyond loopback: whoever reaches this address calls the upstream with the token");
    }
    let proxy = Arc::new(Proxy {
        upstream,
        tokens: TokenDir::new(args.token_dir.clone()),
        client,
        metrics,
        timeout: args.upstream_timeout,
        access_log: args.access_log,
        warned: Default::default(),
    });
    // Logs the token's state (expiry, or what is wrong) once at start.
    let _ = proxy.tokens.current();
    if args.metrics_listen != "0" {
        let admin = crate::probes::bind(&args.metrics_listen).await?;
        let admin_address = admin.local_addr().map_err(|e| e.to_string())?;
        info!(address = %admin_address, "serving /healthz, /readyz and /metrics");
        tokio::spawn(serve_admin(admin, proxy.clone()));
    }
    info!(%address, upstream = proxy.upstream.origin(), token_dir = %args.token_dir.display(), "proxy listening");

    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, client).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(upstream::MAX_BUF_SIZE)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("client connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => info!("all requests answered; exiting"),
        _ = tokio::time::sleep(DRAIN) => warn!("requests still open after {DRAIN:?}; exiting"),
    }
    Ok(())
}

impl Proxy {
    async fn handle(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        // Logged without the query, which may hold an API key of its own.
        let path: String = request.uri().path().chars().take(256).collect();
        let (response, upstream_time) = self.forward(request, client).await;
        let (status, from_upstream) = (response.status(), upstream_time.is_some());
        self.metrics.answered(status.as_u16(), from_upstream);
        if self.access_log {
            info!(
                target: "idv_token_operator::proxy::access",
                %method,
                path,
                status = status.as_u16(),
                upstream_ms = upstream_time.map(millis),
                duration_ms = millis(started.elapsed()),
                "request"
            );
        }
        response
    }

    /// The answer, and how long the upstream took to its headers (`None`: the proxy answered).
    async fn forward(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> (Response<Body>, Option<Duration>) {
        let (mut parts, body) = request.into_parts();
        let target = match forward::target(&parts, &self.upstream) {
            Ok(target) => target,
            Err(refusal) => {
                let message = refusal.message(&self.upstream);
                return (reply(refusal.status(), refusal.code(), &message), None);
            }
        };
        let now = Timestamp::now();
        let token = self.tokens.current();
        let authorization = match token
            .as_deref()
            .map_err(Clone::clone)
            .and_then(|t| t.usable(now))
        {
            Ok(value) => value,
            Err(problem) => {
                let message = problem.message(self.tokens.path(), now);
                if self.warned[WARN_NO_TOKEN].allow(now) {
                    warn!(problem = problem.code(), "answering 503: {message}");
                }
                return (
                    reply(StatusCode::SERVICE_UNAVAILABLE, problem.code(), &message),
                    None,
                );
            }
        };
        forward::upstream_request(
            &mut parts,
            target,
            &self.upstream,
            authorization,
            client.ip(),
        );
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            self.timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        let elapsed = sent.elapsed();
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                let (status, code, message) = upstream::failure(&error, &self.upstream);
                if self.warned[WARN_UPSTREAM_FAILED].allow(now) {
                    warn!(code, "answering {}: {message}", status.as_u16());
                }
                return (reply(status, code, &message), None);
            }
            Err(_) => {
                let message = format!(
                    "the upstream {} sent no response headers within {:?} (--upstream-timeout)",
                    self.upstream.endpoint(),
                    self.timeout
                );
                if self.warned[WARN_UPSTREAM_FAILED].allow(now) {
                    warn!("answering 504: {message}");
                }
                return (
                    reply(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &message),
                    None,
                );
            }
        };
        self.metrics.upstream_answered(elapsed.as_secs_f64());
        if response.status() == StatusCode::UNAUTHORIZED {
            self.metrics.unauthorized();
            if self.warned[WARN_UNAUTHORIZED].allow(now) {
                let error = forward::bearer_error(response.headers());
                warn!(
                    upstream_error = error.as_deref(),
                    "the upstream answered 401 to the current token: it may be for another audience \
                     (the IdvClient's spec.audience or spec.resource) or lack a scope (spec.scopes)"
                );
            }
        }
        let (mut parts, body) = response.into_parts();
        forward::downstream_response(&mut parts);
        (
            Response::from_parts(parts, Either::Left(body)),
            Some(elapsed),
        )
    }

    /// (expires in seconds, usable) of the token in the directory now.
    fn token_state(&self, now: Timestamp) -> (Option<i64>, Result<(), token::TokenProblem>) {
        match self.tokens.current() {
            Ok(token) => (
                Some((token.expires_at - now).get_seconds()),
                token.usable(now).map(|_| ()),
            ),
            Err(problem) => (None, Err(problem)),
        }
    }
}

/// SIGTERM (the kubelet stopping the sidecar) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!("no SIGTERM handler ({e}); Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    info!("shutdown requested");
}

/// Milliseconds, to the microsecond.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// The proxy's own answer: `{"error": code, "message": ...}`.
fn reply(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// /healthz (the process serves), /readyz (a usable token is in the directory), /metrics.
async fn serve_admin(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.admin(request.uri().path())) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Proxy {
    fn admin(&self, path: &str) -> Response<Body> {
        let now = Timestamp::now();
        let text = |status: StatusCode, content_type: &'static str, body: String| {
            let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        };
        match path {
            "/healthz" | "/livez" => {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
            }
            "/readyz" => match self.token_state(now).1 {
                Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
                Err(problem) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    problem.code(),
                    &problem.message(self.tokens.path(), now),
                ),
            },
            "/metrics" => {
                let (expires_in, usable) = self.token_state(now);
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(expires_in, usable.is_ok()),
                )
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_through_per_interval() {
        let throttle = Throttle::default();
        let at = |ms: i64| Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap();
        assert!(throttle.allow(at(0)));
        assert!(!throttle.allow(at(1)));
        assert!(!throttle.allow(at(9_999)));
        assert!(throttle.allow(at(10_000)));
        assert!(!throttle.allow(at(10_001)));
    }
}
