//! What `idv-token-operator proxy` costs: latency added per request (direct HTTPS to a local
//! upstream vs. plain HTTP through the proxy to the same upstream), its memory (RSS) and CPU,
//! under sequential and concurrent load, and while streaming a large body. `make bench-proxy`;
//! the results are in docs/benchmarks.md ("Proxy").
//!
//! The upstream is the proxy tests' recording HTTPS server (tests/proxy/fixtures.rs), in this
//! process; the proxy is the release binary, logging at `info` without access log. Both paths
//! use the same client (hyper-util's pooled HTTP/1.1 client, one keep-alive connection per
//! request in flight), and direct and proxied batches alternate, so that the machine's load
//! (other builds) weighs on both alike.
//!
//! Knobs: `BENCH_PROXY_REQUESTS` (sequential requests per path, default 5000),
//! `BENCH_PROXY_CONCURRENCY` (16), `BENCH_PROXY_SECONDS` (5, per path), `BENCH_PROXY_STREAM_MIB` (64).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/proxy/fixtures.rs"]
mod fixtures;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use fixtures::{MIB, Proxy, TokenDir, Upstream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The same client for both paths: trusts the test CA, HTTP/1.1, pooled.
fn client(ca: &std::path::Path) -> HttpClient {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// One GET, body read to the end: its duration and how many body bytes came.
async fn get(client: &HttpClient, url: &str) -> (Duration, usize) {
    let started = Instant::now();
    let request = Request::get(url).body(Empty::new()).unwrap();
    let response = client.request(request).await.expect("a response");
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("the body").data_ref() {
            bytes += data.len();
        }
    }
    (started.elapsed(), bytes)
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Percentiles in microseconds.
fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]);
    Stats {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: us(*samples.last().unwrap()),
        mean: samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64,
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    support::proc_status_kib(pid, field)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// RSS, and how much of it is the proxy's own (anonymous) memory rather than pages of the
/// binary and libraries (file-backed, shared with the page cache).
fn rss(pid: u32) -> String {
    format!(
        "{} ({} anonymous, {} file)",
        mib(status_kib(pid, "VmRSS:")),
        mib(status_kib(pid, "RssAnon:")),
        mib(status_kib(pid, "RssFile:"))
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
    format!("{cores} cores, {cpu}, {memory}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `concurrency` tasks, each sending requests one after the other for `seconds`: requests per
/// second and the latency percentiles.
async fn load(client: &HttpClient, url: &str, concurrency: u64, seconds: u64) -> (f64, Stats) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < until {
                    samples.push(get(&client, &url).await.0);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    (rate, stats(samples))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let requests = setting("BENCH_PROXY_REQUESTS", 5000);
    let concurrency = setting("BENCH_PROXY_CONCURRENCY", 16);
    let seconds = setting("BENCH_PROXY_SECONDS", 5);
    let stream_mib = setting("BENCH_PROXY_STREAM_MIB", 64) as usize;
    let load_at_start = loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = support::IdpTls::generate();
        let dir = tempfile::Builder::new().prefix("idv-proxy-bench-").tempdir().unwrap();
        let upstream = Upstream::start(&tls.good).await;
        let mut tokens = TokenDir::new(dir.path());
        tokens.kubelet_token(&fixtures::new_token("bench"), 3600);
        let proxy = Proxy::spawn(
            dir.path(),
            &upstream.url,
            &tokens,
            &["--ca-bundle", tls.ca_path()],
            &[("RUST_LOG", "info")],
        )
        .await;
        let pid = proxy.process.pid();
        let rss_idle = rss(pid);
        let client = client(&tls.ca);
        let direct = format!("{}/small", upstream.url);
        let proxied = proxy.url("/small");

        // Warm-up: connections, TLS sessions, the proxy's pool.
        for _ in 0..200 {
            get(&client, &direct).await;
            get(&client, &proxied).await;
        }

        // Sequential: one request in flight, batches of both paths taking turns.
        let (mut direct_samples, mut proxied_samples) = (Vec::new(), Vec::new());
        let cpu_before = cpu_seconds(pid);
        let rounds = 10;
        for _ in 0..rounds {
            for _ in 0..requests / rounds {
                direct_samples.push(get(&client, &direct).await.0);
            }
            for _ in 0..requests / rounds {
                proxied_samples.push(get(&client, &proxied).await.0);
            }
        }
        let cpu_per_request = (cpu_seconds(pid) - cpu_before) / proxied_samples.len() as f64;
        let rss_after_sequential = rss(pid);
        let (d, p) = (stats(direct_samples), stats(proxied_samples));

        // Concurrent.
        let (direct_rate, dc) = load(&client, &direct, concurrency, seconds).await;
        let cpu_before = cpu_seconds(pid);
        let (proxied_rate, pc) = load(&client, &proxied, concurrency, seconds).await;
        let cpu_concurrent = cpu_seconds(pid) - cpu_before;
        let rss_after_concurrent = rss(pid);
        let hwm_after_concurrent = status_kib(pid, "VmHWM:");

        // Streaming one large response.
        let size = stream_mib * MIB;
        let download = |base: &str| format!("{base}/download?bytes={size}");
        let (direct_stream, bytes) = get(&client, &download(&upstream.url)).await;
        assert_eq!(bytes, size);
        let (proxied_stream, bytes) = get(&client, &download(&proxy.url(""))).await;
        assert_eq!(bytes, size);
        let hwm_after_stream = status_kib(pid, "VmHWM:");
        let connections = proxy.metric("idv_token_proxy_upstream_connections_total").await;

        let row = |name: &str, s: &Stats| {
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                s.p50, s.p90, s.p99, s.max, s.mean
            )
        };
        println!("## Proxy benchmark\n");
        println!("machine: {}; load average at start {load_at_start}, at end {}", machine(), loadavg());
        println!("\n### Sequential: {requests} GETs per path, one in flight (µs)\n");
        println!("| path | p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|---|");
        row("direct (HTTPS, keep-alive)", &d);
        row("through the proxy", &p);
        println!(
            "| **added by the proxy** | **{:.0}** | {:.0} | **{:.0}** | | {:.0} |",
            p.p50 - d.p50,
            p.p90 - d.p90,
            p.p99 - d.p99,
            p.mean - d.mean
        );
        println!("\nproxy CPU per request: {:.0} µs", cpu_per_request * 1e6);
        println!("\n### Concurrent: {concurrency} in flight, {seconds} s per path (µs)\n");
        println!("| path | req/s | p50 | p99 |\n|---|---|---|---|");
        println!("| direct | {direct_rate:.0} | {:.0} | {:.0} |", dc.p50, dc.p99);
        println!("| through the proxy | {proxied_rate:.0} | {:.0} | {:.0} |", pc.p50, pc.p99);
        println!(
            "\nproxy CPU per request under concurrency: {:.0} µs; upstream connections opened by the proxy: {}",
            cpu_concurrent / (proxied_rate * seconds as f64) * 1e6,
            connections.map_or("?".into(), |c| c.to_string())
        );
        println!("\n### Streaming one {stream_mib} MiB response\n");
        let rate = |d: Duration| stream_mib as f64 / d.as_secs_f64();
        println!(
            "direct {:.0} MiB/s, through the proxy {:.0} MiB/s",
            rate(direct_stream),
            rate(proxied_stream)
        );
        println!("\n### Proxy memory\n");
        println!("| when | RSS |\n|---|---|");
        println!("| idle, after start | {rss_idle} |");
        println!("| after the sequential run | {rss_after_sequential} |");
        println!("| after the concurrent run | {} (peak {}) |", rss_after_concurrent, mib(hwm_after_concurrent));
        println!(
            "| peak after streaming {stream_mib} MiB | {} (now {}) |",
            mib(hwm_after_stream),
            rss(pid)
        );
        proxy.finish(&[]).await;
    });
}
