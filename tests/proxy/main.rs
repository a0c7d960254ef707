//! Integration tests of `idv-token-operator proxy`: the real binary in front of a local HTTPS
//! upstream (in this process, with a CA made per run) that records what it received. No
//! control plane, no IdP. Each scenario starts its own upstream and proxy process, with a
//! token directory laid out as the kubelet does; every process and wait is bounded, and every
//! proxy's output and /metrics are scanned for the tokens and credentials it handled.

#[path = "../support/mod.rs"]
mod support;

mod fixtures;

use std::{
    convert::Infallible,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lc_rs::digest;
use bytes::Bytes;
use fixtures::*;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::StreamBody;
use hyper::body::Frame;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use support::IdpTls;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A scenario as a whole; every single wait has `WAIT`.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

struct Env {
    rt: tokio::runtime::Runtime,
    tls: IdpTls,
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// One request written as raw bytes (forms reqwest does not send), and the answer's status
/// and body. The request must ask for `Connection: close`.
async fn raw(port: u16, request: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).to_string()
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("a raw answer in time");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("idv-proxy-test-")
        .tempdir()
        .unwrap()
}

/// A proxy in front of the good upstream, holding one valid kubelet-style token.
struct Running {
    dir: tempfile::TempDir,
    upstream: Upstream,
    tokens: TokenDir,
    token: String,
    proxy: Proxy,
}

async fn running(env: &Env, token: &str, args: &[&str]) -> Running {
    let dir = tempdir();
    let upstream = Upstream::start(&env.tls.good).await;
    let mut tokens = TokenDir::new(dir.path());
    let token = new_token(token);
    tokens.kubelet_token(&token, 3600);
    let proxy = Proxy::start(env.tls.ca_path(), dir.path(), &upstream.url, &tokens, args).await;
    Running {
        dir,
        upstream,
        tokens,
        token,
        proxy,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

async fn the_header_is_the_current_token_and_replaces_any_incoming_one(env: &Env) {
    let Running {
        dir: _dir,
        upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "current", &["--access-log"]).await;

    let incoming = format!("Basic {}", new_token("incoming"));
    let proxy_credential = format!("Basic {}", new_token("proxy-credential"));
    let response = proxy
        .http
        .post(proxy.url("/v1/items?filter=a%20b&page=2"))
        .header("authorization", &incoming)
        .header("proxy-authorization", &proxy_credential)
        .header("connection", "x-private")
        .header("x-private", "for the next hop only")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-end-to-end", "kept")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(response.text().await.unwrap(), "{\"received\":7}");
    // The upstream's hop-by-hop headers stay with the proxy, end-to-end ones pass.
    assert_eq!(headers["x-end-to-end"], "kept");
    assert!(
        headers.get("x-hop").is_none() && headers.get("keep-alive").is_none(),
        "{headers:?}"
    );

    let seen = upstream.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/v1/items?filter=a%20b&page=2")
    );
    assert_eq!(seen.header("authorization"), [format!("Bearer {token}")]);
    assert_eq!(
        seen.header("host"),
        [upstream.url.trim_start_matches("https://")]
    );
    assert_eq!(seen.header("x-forwarded-for"), ["10.1.2.3, 127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), ["http"]);
    assert_eq!(
        seen.header("x-forwarded-host"),
        [format!("127.0.0.1:{}", proxy.port)]
    );
    assert_eq!(seen.header("x-end-to-end"), ["kept"]);
    for gone in ["proxy-authorization", "x-private", "connection"] {
        assert!(
            seen.header(gone).is_empty(),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen.body_len, 7);

    let output = proxy.finish(&[&token, &incoming, &proxy_credential]).await;
    // The access log: method, path without the query, status; no headers.
    let line = output
        .lines()
        .find(|l| l.contains("proxy::access"))
        .unwrap_or_else(|| panic!("no access log line:\n{output}"));
    assert!(
        line.contains("method=POST")
            && line.contains("path=\"/v1/items\"")
            && line.contains("status=200"),
        "{line}"
    );
    assert!(
        !line.contains("filter") && !line.contains("x-end-to-end"),
        "{line}"
    );
}

async fn a_kubelet_swap_changes_the_header_on_the_next_request(env: &Env) {
    let dir = tempdir();
    let upstream = Upstream::start(&env.tls.good).await;
    let mut tokens = TokenDir::new(dir.path());
    let first = new_token("first");
    tokens.kubelet_token(&first, 3600);
    let proxy = Proxy::start(env.tls.ca_path(), dir.path(), &upstream.url, &tokens, &[]).await;
    assert_eq!(proxy.get("/a").await.0, StatusCode::OK);
    assert_eq!(
        upstream.last().header("authorization"),
        [format!("Bearer {first}")]
    );

    let mut all = vec![first];
    for round in 0..3 {
        let next = new_token(&format!("refreshed{round}"));
        tokens.kubelet_token(&next, 3600);
        // The very next request, no waiting: one readlink per request notices the swap.
        assert_eq!(proxy.get("/b").await.0, StatusCode::OK);
        assert_eq!(
            upstream.last().header("authorization"),
            [format!("Bearer {next}")],
            "round {round}"
        );
        all.push(next);
    }
    let expires_in = proxy
        .metric("idv_token_proxy_token_expires_in_seconds")
        .await
        .unwrap();
    assert!((3590.0..=3600.0).contains(&expires_in), "{expires_in}");

    // A plain directory (no ..data), edited in place: followed too.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let plain_tokens = TokenDir {
        path: plain.clone(),
        versions: 0,
    };
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    std::fs::write(plain.join("expires_at"), &expires).unwrap();
    let one = new_token("plain-one");
    std::fs::write(plain.join("authorization"), format!("Bearer {one}\n")).unwrap();
    let plain_proxy = Proxy::start(
        env.tls.ca_path(),
        dir.path(),
        &upstream.url,
        &plain_tokens,
        &[],
    )
    .await;
    assert_eq!(plain_proxy.get("/c").await.0, StatusCode::OK);
    assert_eq!(
        upstream.last().header("authorization"),
        [format!("Bearer {one}")]
    );
    let two = new_token("plain-two");
    std::fs::write(plain.join("authorization"), format!("Bearer {two}\n")).unwrap();
    assert_eq!(plain_proxy.get("/c").await.0, StatusCode::OK);
    assert_eq!(
        upstream.last().header("authorization"),
        [format!("Bearer {two}")]
    );
    all.extend([one, two]);

    let secrets: Vec<&str> = all.iter().map(String::as_str).collect();
    plain_proxy.finish(&secrets).await;
    proxy.finish(&secrets).await;
}

async fn an_expired_or_missing_token_gives_503_until_a_good_one_arrives(env: &Env) {
    let dir = tempdir();
    let upstream = Upstream::start(&env.tls.good).await;
    let mut tokens = TokenDir::new(dir.path());
    // Nothing mounted yet.
    let proxy = Proxy::start(env.tls.ca_path(), dir.path(), &upstream.url, &tokens, &[]).await;
    let (status, body) = proxy.get("/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error = json(&body);
    assert_eq!(error["error"], "token_missing", "{body}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("authorization does not exist"),
        "{body}"
    );
    assert_eq!(
        proxy.admin("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(proxy.admin("/healthz").await.0, StatusCode::OK);
    // A refusal does not depend on the token.
    let (status, body) = raw(
        proxy.port,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (405, Some("connect_refused"))
    );

    // Only the authorization key mounted (a volume with `items` that left expires_at out).
    let partial = new_token("partial");
    tokens.kubelet_write(&[("authorization", &format!("Bearer {partial}"))]);
    let (status, body) = proxy.get("/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("expires_at does not exist"),
        "{body}"
    );

    let expired = new_token("expired");
    tokens.kubelet_token(&expired, -120);
    let (status, body) = proxy.get("/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error = json(&body);
    assert_eq!(error["error"], "token_expired", "{body}");
    assert!(
        error["message"].as_str().unwrap().contains("expired at"),
        "{body}"
    );
    assert_eq!(
        proxy.metric("idv_token_proxy_token_usable").await,
        Some(0.0)
    );
    let expires_in = proxy
        .metric("idv_token_proxy_token_expires_in_seconds")
        .await
        .unwrap();
    assert!(expires_in <= -115.0, "{expires_in}");
    assert!(
        upstream.requests().is_empty(),
        "no request may reach the upstream without a usable token"
    );

    let good = new_token("good");
    tokens.kubelet_token(&good, 600);
    assert_eq!(proxy.get("/x").await.0, StatusCode::OK);
    assert_eq!(
        upstream.last().header("authorization"),
        [format!("Bearer {good}")]
    );
    assert_eq!(proxy.admin("/readyz").await.0, StatusCode::OK);
    assert_eq!(
        proxy.metric("idv_token_proxy_token_usable").await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("idv_token_proxy_requests_total{code=\"503\",origin=\"proxy\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        proxy
            .metric("idv_token_proxy_requests_total{code=\"200\",origin=\"upstream\"}")
            .await,
        Some(1.0)
    );
    proxy.finish(&[&partial, &expired, &good]).await;
}

async fn not_an_open_proxy(env: &Env) {
    let Running {
        dir: _dir,
        upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "token", &[]).await;
    let upstream_authority = upstream.url.trim_start_matches("https://");

    for (request, status, code) in [
        (
            "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            403,
            "other_host_refused",
        ),
        (
            "GET https://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
            403,
            "other_host_refused",
        ),
        (
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
            405,
            "connect_refused",
        ),
        (
            &format!(
                "CONNECT {upstream_authority} HTTP/1.1\r\nHost: {upstream_authority}\r\nConnection: close\r\n\r\n"
            ),
            405,
            "connect_refused",
        ),
    ] {
        let (got, body) = raw(proxy.port, request).await;
        assert_eq!(got, status, "{request:?}: {body}");
        assert_eq!(json(&body)["error"], code, "{body}");
        assert!(
            json(&body)["message"]
                .as_str()
                .unwrap()
                .contains("not an open proxy"),
            "{body}"
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused request reached the upstream"
    );

    // The upstream itself in absolute form (a client with http_proxy set) is forwarded.
    let (got, body) = raw(
        proxy.port,
        &format!("GET http://{upstream_authority}/own?x=1 HTTP/1.1\r\nHost: {upstream_authority}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(got, 200, "{body}");
    assert_eq!(upstream.last().target, "/own?x=1");

    // Loopback unless told otherwise.
    let help = Command::new(BIN)
        .args(["proxy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 127.0.0.1:8181]"), "{help}");
    proxy.finish(&[&token]).await;
}

async fn upstream_certificates_are_checked_and_failures_give_502(env: &Env) {
    let dir = tempdir();
    let mut tokens = TokenDir::new(dir.path());
    let token = new_token("token");
    tokens.kubelet_token(&token, 3600);

    let untrusted = Upstream::start(&env.tls.untrusted).await;
    let proxy = Proxy::start(env.tls.ca_path(), dir.path(), &untrusted.url, &tokens, &[]).await;
    let (status, body) = proxy.get("/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = json(&body);
    assert_eq!(error["error"], "upstream_tls_failed", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("certificate is not trusted") && message.contains("--ca-bundle"),
        "{message}"
    );
    assert!(untrusted.requests().is_empty());
    proxy.finish(&[&token]).await;

    // The test CA is not in the system store: without --ca-bundle the good certificate fails too.
    let good = Upstream::start(&env.tls.good).await;
    let without_bundle = Proxy::start_with(dir.path(), &good.url, &tokens, &[]).await;
    let (status, body) = without_bundle.get("/x").await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("upstream_tls_failed")),
        "{body}"
    );
    without_bundle.finish(&[&token]).await;

    // The system store is honoured: here it is told (SSL_CERT_FILE) to be the test CA alone.
    let system_store = Proxy::spawn(
        dir.path(),
        &good.url,
        &tokens,
        &[],
        &[("RUST_LOG", "trace"), ("SSL_CERT_FILE", env.tls.ca_path())],
    )
    .await;
    assert_eq!(system_store.get("/x").await.0, StatusCode::OK);
    system_store.finish(&[&token]).await;

    // Nothing listening.
    let closed = format!("https://127.0.0.1:{}", support::free_port());
    let proxy = Proxy::start(env.tls.ca_path(), dir.path(), &closed, &tokens, &[]).await;
    let (status, body) = proxy.get("/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(json(&body)["error"], "upstream_unreachable", "{body}");
    assert!(body.contains("refused"), "{body}");
    proxy.finish(&[&token]).await;
}

async fn an_upstream_401_is_passed_through_and_counted(env: &Env) {
    let Running {
        dir: _dir,
        upstream: _upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "token", &[]).await;
    for _ in 0..2 {
        let response = proxy
            .http
            .get(proxy.url("/status/401"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"api\", error=\"invalid_token\""
        );
        assert_eq!(
            response.text().await.unwrap(),
            "{\"message\":\"wrong audience\"}"
        );
    }
    assert_eq!(
        proxy
            .metric("idv_token_proxy_upstream_unauthorized_total")
            .await,
        Some(2.0)
    );
    assert_eq!(
        proxy
            .metric("idv_token_proxy_requests_total{code=\"401\",origin=\"upstream\"}")
            .await,
        Some(2.0)
    );
    let output = proxy.finish(&[&token]).await;
    let hints: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("another audience"))
        .collect();
    // Throttled: one hint, naming the upstream's error code.
    assert_eq!(hints.len(), 1, "{output}");
    assert!(hints[0].contains("invalid_token"), "{}", hints[0]);
}

async fn a_slow_upstream_gives_504(env: &Env) {
    let Running {
        dir: _dir,
        upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "token", &["--upstream-timeout", "1s"]).await;
    let started = Instant::now();
    let (status, body) = proxy.get("/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(json(&body)["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    upstream.recorded.gate.notify_waiters();
    proxy.finish(&[&token]).await;
}

async fn bodies_stream_both_ways_in_little_memory(env: &Env) {
    let Running {
        dir: _dir,
        upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "token", &[]).await;

    // The response's first bytes reach the client while the upstream still holds the rest.
    let mut response = proxy.http.get(proxy.url("/gated")).send().await.unwrap();
    let first = tokio::time::timeout(WAIT, response.chunk())
        .await
        .expect("the first chunk before the rest is sent");
    assert_eq!(first.unwrap().unwrap(), "first;");
    upstream.recorded.gate.notify_one();
    assert_eq!(response.text().await.unwrap(), "rest");

    // The request's first bytes reach the upstream while the client still holds the rest.
    let (mut sender, receiver) = futures::channel::mpsc::channel::<Bytes>(1);
    let body = reqwest::Body::wrap(StreamBody::new(
        receiver.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ));
    let request = tokio::spawn(
        proxy
            .http
            .post(proxy.url("/upload-gated"))
            .body(body)
            .send(),
    );
    sender.send(Bytes::from("first;")).await.unwrap();
    tokio::time::timeout(WAIT, upstream.recorded.first_chunk.notified())
        .await
        .expect("the upstream got the first chunk before the rest was sent");
    sender.send(Bytes::from("rest")).await.unwrap();
    drop(sender);
    assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(upstream.last().body_len, "first;rest".len());

    // Large bodies: the peak RSS may grow by far less than the body.
    let size = 32 * MIB;
    let before = proxy.rss_kib("VmHWM:");
    let upload = futures::stream::iter((0..size).step_by(MIB))
        .map(move |offset| Ok::<_, Infallible>(Frame::data(pattern(offset, MIB))));
    let response = proxy
        .http
        .put(proxy.url("/upload"))
        .body(reqwest::Body::wrap(StreamBody::new(upload)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(
        (seen.body_len, seen.body_sha256.as_str()),
        (size, sha256_of_pattern(size).as_str())
    );

    let mut response = proxy
        .http
        .get(proxy.url(&format!("/download?bytes={size}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut context = digest::Context::new(&digest::SHA256);
    let mut received = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
        context.update(&chunk);
    }
    assert_eq!(
        (received, hex(context.finish().as_ref())),
        (size, sha256_of_pattern(size))
    );
    let after = proxy.rss_kib("VmHWM:");
    let grown = after.saturating_sub(before);
    eprintln!(
        "proxy peak RSS {before} KiB before, {after} KiB after 2 x {} MiB",
        size / MIB
    );
    assert!(
        grown < 4 * 1024,
        "the proxy's peak RSS grew by {grown} KiB while streaming 2 x 32 MiB"
    );
    proxy.finish(&[&token]).await;
}

async fn keep_alive_reuses_upstream_connections(env: &Env) {
    let Running {
        dir: _dir,
        upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "token", &[]).await;
    for i in 0..20 {
        // A new client connection each time: the upstream connection outlives them.
        let (status, _) = raw(
            proxy.port,
            &format!("GET /k/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(upstream.requests().len(), 20);
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests must share one upstream connection"
    );
    assert_eq!(
        proxy
            .metric("idv_token_proxy_upstream_connections_total")
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("idv_token_proxy_upstream_duration_seconds_count")
            .await,
        Some(20.0)
    );
    proxy.finish(&[&token]).await;
}

async fn the_example_sidecar_arguments_start_the_proxy(env: &Env) {
    let text = std::fs::read_to_string(format!(
        "{}/examples/deployment-with-token-proxy.yaml",
        support::REPO
    ))
    .unwrap();
    let deployment: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let sidecar = &deployment["spec"]["template"]["spec"]["initContainers"][0];
    let args: Vec<String> = serde_yaml::from_value(sidecar["args"].clone()).unwrap();
    assert_eq!(args[0], "proxy");
    // This machine's upstream, addresses and token directory instead of the pod's; every
    // other argument as the example has it.
    let pod_specific = [
        "--upstream=",
        "--token-dir=",
        "--listen=",
        "--metrics-listen=",
    ];
    let kept: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| !pod_specific.iter().any(|p| a.starts_with(p)))
        .collect();
    assert!(kept.contains(&"--log-format=json"), "{args:?}");
    let Running {
        dir: _dir,
        upstream: _upstream,
        tokens: _tokens,
        token,
        proxy,
    } = running(env, "token", &kept).await;
    // The probes the example declares.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = sidecar[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(proxy.admin(path).await.0, StatusCode::OK, "{probe} {path}");
    }
    assert_eq!(proxy.get("/api/v1/ping").await.0, StatusCode::OK);
    let output = proxy.finish(&[&token]).await;
    for line in output.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------------

type Scenario =
    for<'a> fn(&'a Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

fn main() {
    let args = Arguments::from_args();
    let list: Vec<(&str, Scenario)> = scenarios![
        the_header_is_the_current_token_and_replaces_any_incoming_one,
        a_kubelet_swap_changes_the_header_on_the_next_request,
        an_expired_or_missing_token_gives_503_until_a_good_one_arrives,
        not_an_open_proxy,
        upstream_certificates_are_checked_and_failures_give_502,
        an_upstream_401_is_passed_through_and_counted,
        a_slow_upstream_gives_504,
        bodies_stream_both_ways_in_little_memory,
        keep_alive_reuses_upstream_connections,
        the_example_sidecar_arguments_start_the_proxy,
    ];
    if args.list {
        let trials = list
            .iter()
            .map(|(name, _)| Trial::test(*name, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = Arc::new(Env {
        rt,
        tls: IdpTls::generate(),
    });
    let trials = list
        .into_iter()
        .map(|(name, scenario)| {
            let env = env.clone();
            Trial::test(name, move || {
                env.rt
                    .block_on(async { tokio::time::timeout(SCENARIO_LIMIT, scenario(&env)).await })
                    .map_err(|_| {
                        Failed::from(format!("{name} did not finish within {SCENARIO_LIMIT:?}"))
                    })
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
