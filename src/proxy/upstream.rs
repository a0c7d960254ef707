//! The HTTP client to the upstream: HTTP/1.1 with keep-alive, TLS verified with the same
//! trust as the operator's IdP client (rustls-platform-verifier: the system store, plus
//! `--ca-bundle`), and its failures in words.
//!
//! hyper-util's pooled client rather than reqwest (which wraps it): a proxy must send the
//! headers it was given and no others (reqwest adds `Accept` and its own `Host` handling),
//! and hyper takes the server's `Incoming` body as it is, so bodies stream through without a
//! conversion or a copy.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{StatusCode, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::{
    client::legacy::{Client, Error as ClientError, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpStream;

use super::{forward::Upstream, metrics::ProxyMetrics};
use crate::oauth::tls_failure;

pub type UpstreamClient = Client<Counted, Incoming>;

/// How long an idle upstream connection is kept (Go's http.Transport default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const MAX_BUF_SIZE: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client: one pool of HTTP/1.1 connections (ALPN offers only `http/1.1`).
pub fn client(
    ca_bundle_pem: Option<&[u8]>,
    metrics: Arc<ProxyMetrics>,
) -> Result<UpstreamClient, String> {
    let extra_roots = match ca_bundle_pem {
        Some(pem) => {
            let roots = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("invalid CA bundle: {e}"))?;
            if roots.is_empty() {
                return Err("invalid CA bundle: no PEM certificate in it".into());
            }
            roots
        }
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
        .map_err(|e| match e.to_string() {
            text if text.contains("No CA certificates were loaded") => "no CA certificates to verify the upstream with: the system trust store (SSL_CERT_FILE and SSL_CERT_DIR when set, else the distribution's files such as /etc/ssl/certs/ca-certificates.crt) holds none, and no --ca-bundle was given".to_string(),
            text => format!("invalid CA bundle: {text}"),
        })?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    // The TLS layer needs https URIs through; it refuses http for https-only upstreams below.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .http1_max_buf_size(MAX_BUF_SIZE)
        .pool_timer(TokioTimer::new())
        // The request carries the upstream's Host already.
        .set_host(false)
        .build(Counted {
            inner: https,
            metrics,
        }))
}

/// The connector, counting the connections it opens (the keep-alive metric).
#[derive(Clone)]
pub struct Counted {
    inner: HttpsConnector<HttpConnector>,
    metrics: Arc<ProxyMetrics>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Counted {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let connection = connecting.await?;
            metrics.connection_opened();
            Ok(connection)
        })
    }
}

/// Why the upstream gave no answer: the status for the client, a fixed code and a message.
pub fn failure(error: &ClientError, upstream: &Upstream) -> (StatusCode, &'static str, String) {
    let endpoint = upstream.endpoint();
    if let Some(reason) = tls_failure(error) {
        return (
            StatusCode::BAD_GATEWAY,
            "upstream_tls_failed",
            format!("TLS handshake with the upstream {endpoint} failed: {reason}"),
        );
    }
    // The innermost cause says the most (`Connection refused`, a DNS failure).
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    for _ in 0..16 {
        let Some(current) = source else { break };
        detail = current.to_string();
        source = current.source();
    }
    if error.is_connect() {
        (
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("cannot connect to the upstream {endpoint}: {detail}"),
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            format!("the upstream {endpoint} gave no answer: {detail}"),
        )
    }
}
