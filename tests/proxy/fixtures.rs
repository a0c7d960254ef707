//! What the proxy tests and the proxy benchmark share: the recording HTTPS upstream, the
//! kubelet-style token directory, and the proxy process.

#![allow(dead_code)]

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::digest;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Notify};

use crate::support::{CertFiles, ChildGuard, spawn};

pub const BIN: &str = env!("CARGO_BIN_EXE_idv-token-operator");
/// Upper bound of every single wait.
pub const WAIT: Duration = Duration::from_secs(10);
pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The upstream: HTTPS, records every request, counts connections.

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sha256: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
pub struct Recorded {
    pub requests: Mutex<Vec<Seen>>,
    /// TLS connections accepted (handshake done).
    pub connections: AtomicUsize,
    /// `/gated` waits for this before the rest of its body; `/slow` waits for it to answer.
    pub gate: Notify,
    /// `/upload-gated` signals its first body chunk.
    pub first_chunk: Notify,
}

pub struct Upstream {
    pub url: String,
    pub recorded: Arc<Recorded>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(cert: &CertFiles) -> Upstream {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let recorded = Arc::new(Recorded::default());
        let state = recorded.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Upstream {
            url,
            recorded,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.recorded.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream got a request")
    }

    pub fn connections(&self) -> usize {
        self.recorded.connections.load(Ordering::SeqCst)
    }
}

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

/// `len` bytes of a fixed pattern from `offset` on: what `/download` sends and uploads hold.
pub fn pattern(offset: usize, len: usize) -> Bytes {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

pub fn sha256_of_pattern(len: usize) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for offset in (0..len).step_by(MIB) {
        context.update(&pattern(offset, MIB.min(len - offset)));
    }
    hex(context.finish().as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn answer(state: Arc<Recorded>, request: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    // The body is read as it arrives (never buffered whole): length and digest.
    let mut context = digest::Context::new(&digest::SHA256);
    let mut body_len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            if body_len == 0 && path == "/upload-gated" {
                state.first_chunk.notify_one();
            }
            body_len += data.len();
            context.update(data);
        }
    }
    state.requests.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body_len,
        body_sha256: hex(context.finish().as_ref()),
    });
    let response = Response::builder();
    match path.as_str() {
        "/status/401" => response
            .status(StatusCode::UNAUTHORIZED)
            .header(
                "www-authenticate",
                "Bearer realm=\"api\", error=\"invalid_token\"",
            )
            .body(full("{\"message\":\"wrong audience\"}")),
        "/download" => {
            let total: usize = query.trim_start_matches("bytes=").parse().unwrap();
            let chunks = futures::stream::iter((0..total).step_by(64 * 1024)).map(move |offset| {
                Ok::<_, Infallible>(Frame::data(pattern(
                    offset,
                    (64 * 1024).min(total - offset),
                )))
            });
            response.body(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "/gated" => {
            let first =
                futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from("first;")))]);
            let rest = futures::stream::once(async move {
                state.gate.notified().await;
                Ok(Frame::data(Bytes::from("rest")))
            });
            response.body(BodyExt::boxed(StreamBody::new(first.chain(rest))))
        }
        "/slow" => {
            state.gate.notified().await;
            response.body(full("late"))
        }
        _ => response
            .header("content-type", "application/json")
            .header("connection", "x-hop")
            .header("x-hop", "hop-by-hop")
            .header("keep-alive", "timeout=30")
            .header("x-end-to-end", "kept")
            .body(full(format!("{{\"received\":{body_len}}}"))),
    }
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The token directory, as the kubelet writes a Secret volume.

pub struct TokenDir {
    pub path: PathBuf,
    pub versions: usize,
}

impl TokenDir {
    pub fn new(parent: &Path) -> TokenDir {
        let path = parent.join("token");
        std::fs::create_dir(&path).unwrap();
        TokenDir { path, versions: 0 }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The kubelet's atomic update: a new timestamped directory with the files, a new
    /// `..data` symlink renamed over the old one, per-key symlinks into `..data`, the old
    /// directory removed.
    pub fn kubelet_write(&mut self, files: &[(&str, &str)]) {
        self.versions += 1;
        let version = format!("..2026_11_27_18_37_44.{:09}", self.versions);
        let new = self.path.join(&version);
        std::fs::create_dir(&new).unwrap();
        for (name, content) in files {
            std::fs::write(new.join(name), content).unwrap();
        }
        let old = std::fs::read_link(self.path.join("..data")).ok();
        let tmp = self.path.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.path.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.path.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.path.join(old)).unwrap();
        }
    }

    /// A token as the operator writes it, expiring `expires_in` from now (negative: past).
    pub fn kubelet_token(&mut self, token: &str, expires_in: i64) {
        let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(expires_in);
        let authorization = format!("Bearer {token}");
        self.kubelet_write(&[
            ("access_token", token),
            ("authorization", &authorization),
            ("token_type", "Bearer"),
            (
                "expires_at",
                &expires_at.round(jiff::Unit::Second).unwrap().to_string(),
            ),
            ("scope", "api_read"),
        ]);
    }
}

/// A fresh random token (what must never show up in the proxy's output).
pub fn new_token(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// The proxy process.

pub struct Proxy {
    pub process: ChildGuard,
    pub log: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub http: reqwest::Client,
}

impl Proxy {
    /// The proxy for `upstream`, trusting the test CA, with the most verbose logging (the
    /// secret scan then covers every line the code can print).
    pub async fn start(
        ca_bundle: &str,
        dir: &Path,
        upstream: &str,
        tokens: &TokenDir,
        extra: &[&str],
    ) -> Proxy {
        let mut args = vec!["--ca-bundle", ca_bundle];
        args.extend_from_slice(extra);
        Proxy::start_with(dir, upstream, tokens, &args).await
    }

    pub async fn start_with(dir: &Path, upstream: &str, tokens: &TokenDir, args: &[&str]) -> Proxy {
        let log_level = std::env::var("IDV_TEST_PROXY_LOG").unwrap_or_else(|_| "trace".into());
        Proxy::spawn(dir, upstream, tokens, args, &[("RUST_LOG", &log_level)]).await
    }

    /// The proxy with these environment variables (`RUST_LOG` among them); the trust-store
    /// ones (`SSL_CERT_FILE`, `SSL_CERT_DIR`) only when given.
    pub async fn spawn(
        dir: &Path,
        upstream: &str,
        tokens: &TokenDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let log = dir.join(format!("proxy-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).unwrap();
        let mut process = spawn(
            "proxy",
            Command::new(BIN)
                .args([
                    "proxy",
                    "--upstream",
                    upstream,
                    "--token-dir",
                    tokens.path(),
                ])
                .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
                .args(args)
                .env_remove("SSL_CERT_FILE")
                .env_remove("SSL_CERT_DIR")
                .envs(env.iter().copied())
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file),
        );
        let deadline = Instant::now() + WAIT;
        let (port, admin_port) = loop {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let port = logged_port(&output, "proxy listening");
            let admin = logged_port(&output, "serving /healthz");
            if let (Some(port), Some(admin)) = (port, admin) {
                break (port, admin);
            }
            assert!(process.is_running(), "the proxy exited at start:\n{output}");
            assert!(
                Instant::now() < deadline,
                "the proxy did not start within {WAIT:?}:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Proxy {
            process,
            log,
            port,
            admin_port,
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn admin(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.admin("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn rss_kib(&self, field: &str) -> u64 {
        let pid = self.process.pid();
        crate::support::proc_status_kib(pid, field)
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    /// Stop with SIGTERM (it must exit in time), then check that none of `secrets` is in
    /// anything it printed or served. Returns the output.
    pub async fn finish(mut self, secrets: &[&str]) -> String {
        let (_, metrics) = self.admin("/metrics").await;
        assert!(
            self.process.terminate(WAIT),
            "the proxy did not exit within {WAIT:?} of SIGTERM"
        );
        let output = self.output();
        for secret in secrets {
            // The credential part alone too: "Basic xyz" must not leak as "xyz".
            let bare = secret.rsplit(' ').next().unwrap();
            for (what, text) in [("output", &output), ("/metrics", &metrics)] {
                assert!(
                    !text.contains(bare),
                    "a secret ({}...) is in the proxy's {what}:\n{text}",
                    &bare[..bare.len().min(6)]
                );
            }
        }
        assert!(output.contains("shutdown requested"), "{output}");
        output
    }
}

/// The port in the first line with `marker`: the first `127.0.0.1:` after it is the address
/// field, in text (`address=127.0.0.1:N`) and JSON (`"address":"127.0.0.1:N"`) logs alike.
pub fn logged_port(output: &str, marker: &str) -> Option<u16> {
    let line = output.lines().find(|l| l.contains(marker))?;
    let rest = &line[line.find(marker)?..];
    let after = &rest[rest.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    after
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}
