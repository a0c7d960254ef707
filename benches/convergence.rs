//! `make bench`: how fast the operator brings N IdvClients to a token Secret, compared with the
//! bare work done by a plain sequential client; what it costs (memory, CPU, apiserver and IdP
//! requests); what a restart costs; and that an idle operator is quiet. See docs/benchmarks.md.
//!
//! Everything runs locally: etcd + kube-apiserver from the test harness (tests/support), and a
//! minimal token endpoint inside this process (so the IdP is never the bottleneck).
//!
//! Environment:
//! - `BENCH_CLIENTS` (1000): N, the number of IdvClients.
//! - `BENCH_SETTINGS` ("8/8,32/32"): operator settings to try, `concurrency/max-concurrent-token-requests`.
//! - `BENCH_APPLY_PARALLELISM` (16): parallel creates when applying key Secrets and IdvClients.
//! - `BENCH_RESTART_SECS` (60), `BENCH_IDLE_SECS` (60): the restart and idle windows.
//! - `BENCH_DEADLINE_SECS` (600 + 0.12 s per client): the whole run ends by then, whatever happens.
//! - `BENCH_PROFILE` (1): afterwards, measure the cost of each kind of request the operator makes.
//! - `BENCH_JSON`: also write the results as JSON to this file.
//! - `BENCH_LOG_DIR`: keep each operator process's output there.
//! - `BENCH_OPERATOR_ENV` ("K=V,K=V"): debugging; extra environment for the first operator of
//!   each setting, e.g. `LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so,DUMP_HEAPTRACK_OUTPUT=/tmp/op-{ns}.raw`.
//! - `BENCH_DEBUG`: print every /readyz answer.
//! - The operator binary: the release build cargo makes for this bench (`CARGO_BIN_EXE_…`), else
//!   `IDV_OPERATOR_BIN` (see tests/support).
//! - `IDV_TEST_OPERATOR_LOG` (`info,idv_token_operator::controller=debug`): the operator's RUST_LOG.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::StreamExt;
use idv_token_operator::{
    api::{IdvClient, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    assertion,
    jwk::{self, KeygenAlgorithm},
    oauth::CLIENT_ASSERTION_TYPE,
};
use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::Serialize;
use serde_json::{Value, json};
use support::{
    ControlPlane, LOCAL_IDP_HOSTS, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, Operator,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

struct Config {
    clients: usize,
    settings: Vec<(u16, usize)>,
    parallelism: usize,
    restart_window: Duration,
    idle_window: Duration,
    deadline: Duration,
    json: Option<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not valid")),
        _ => default,
    }
}

impl Config {
    fn from_env() -> Config {
        let clients: usize = env_or("BENCH_CLIENTS", 1000);
        assert!(clients > 0, "BENCH_CLIENTS must be positive");
        let settings = env_or("BENCH_SETTINGS", "8/8,32/32".to_string())
            .split(',')
            .map(|pair| {
                let (c, r) = pair
                    .trim()
                    .split_once('/')
                    .unwrap_or_else(|| panic!("BENCH_SETTINGS: {pair:?} is not C/R"));
                (
                    c.parse().expect("concurrency"),
                    r.parse().expect("max concurrent token requests"),
                )
            })
            .collect();
        Config {
            clients,
            settings,
            parallelism: env_or("BENCH_APPLY_PARALLELISM", 16),
            restart_window: Duration::from_secs(env_or("BENCH_RESTART_SECS", 60)),
            idle_window: Duration::from_secs(env_or("BENCH_IDLE_SECS", 60)),
            deadline: Duration::from_secs(env_or(
                "BENCH_DEADLINE_SECS",
                600 + (clients as u64 * 12) / 100,
            )),
            json: std::env::var("BENCH_JSON").ok().filter(|s| !s.is_empty()),
        }
    }

    /// Time allowed for all N token Secrets to appear after the operator starts.
    fn converge_deadline(&self) -> Duration {
        Duration::from_secs(60 + (self.clients as u64 * 6) / 100)
    }

    /// Time allowed after convergence for every IdvClient to be Ready and the operator quiet.
    fn settle_deadline(&self) -> Duration {
        Duration::from_secs(60 + self.clients as u64 / 100)
    }

    /// Time allowed after a restart for every IdvClient to be reconciled again.
    fn restart_deadline(&self) -> Duration {
        self.restart_window
            .max(Duration::from_secs(30 + self.clients as u64 / 50))
    }
}

// ---------------------------------------------------------------------------------------------
// The fast token endpoint
// ---------------------------------------------------------------------------------------------

/// A minimal OAuth token endpoint: HTTP/1.1 with keep-alive, `POST /token`, client_credentials
/// with a client assertion. It checks the form, decodes the assertion's payload (no signature
/// check) and counts requests per client id (the assertion's `iss`).
#[derive(Default)]
struct TokenEndpoint {
    total: AtomicU64,
    rejected: AtomicU64,
    per_client: Mutex<HashMap<String, u64>>,
}

/// Per-client counts of the clients whose id starts with a prefix.
#[derive(Debug, Default, Clone, Copy)]
struct IdpStats {
    requests: u64,
    clients: usize,
    max_per_client: u64,
}

impl TokenEndpoint {
    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn stats(&self, prefix: &str) -> IdpStats {
        let map = self.per_client.lock().unwrap();
        let mut stats = IdpStats::default();
        for (_, count) in map.iter().filter(|(id, _)| id.starts_with(prefix)) {
            stats.requests += count;
            stats.clients += 1;
            stats.max_per_client = stats.max_per_client.max(*count);
        }
        stats
    }

    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (&'static str, String) {
        if method != "POST" || path.split('?').next() != Some("/token") {
            return ("404 Not Found", r#"{"error":"not_found"}"#.into());
        }
        let (mut grant_type, mut assertion_type, mut assertion) = (None, None, None);
        for (key, value) in url::form_urlencoded::parse(body) {
            match &*key {
                "grant_type" => grant_type = Some(value.into_owned()),
                "client_assertion_type" => assertion_type = Some(value.into_owned()),
                "client_assertion" => assertion = Some(value.into_owned()),
                _ => {}
            }
        }
        if grant_type.as_deref() != Some("client_credentials") {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return (
                "400 Bad Request",
                r#"{"error":"unsupported_grant_type"}"#.into(),
            );
        }
        let issuer = assertion
            .as_deref()
            .filter(|_| assertion_type.as_deref() == Some(CLIENT_ASSERTION_TYPE))
            .and_then(issuer_of);
        let Some(issuer) = issuer else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return ("401 Unauthorized", r#"{"error":"invalid_client","error_description":"a client assertion is required"}"#.into());
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.per_client.lock().unwrap().entry(issuer).or_default() += 1;
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        (
            "200 OK",
            format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#),
        )
    }
}

/// The `iss` claim of a JWT (payload decoded, signature not checked).
fn issuer_of(jwt: &str) -> Option<String> {
    let mut parts = jwt.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

async fn start_token_endpoint(state: Arc<TokenEndpoint>) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the token endpoint");
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    (port, task)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve_connection(mut stream: TcpStream, state: Arc<TokenEndpoint>) {
    let _ = stream.set_nodelay(true);
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(at) = find(&buffer, b"\r\n\r\n") {
                break at + 4;
            }
            if buffer.len() > 64 * 1024 {
                return;
            }
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split_whitespace();
        let (method, path) = (
            request_line.next().unwrap_or_default(),
            request_line.next().unwrap_or_default(),
        );
        let (mut length, mut close) = (0usize, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                "transfer-encoding" => return, // never sent by the clients here
                _ => {}
            }
        }
        if length > 1024 * 1024 {
            return;
        }
        while buffer.len() < head_end + length {
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let (status, body) = state.answer(method, path, &buffer[head_end..head_end + length]);
        buffer.drain(..head_end + length);
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements: /proc, apiserver metrics, operator metrics and log
// ---------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// A `Vm*` line of /proc/PID/status, in MiB.
fn vm_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A child of this process by command name (kube-apiserver, etcd).
fn child_pid(name: &str) -> Option<u32> {
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == name && ppid == Some(me) {
            return Some(pid);
        }
    }
    None
}

/// CPU seconds of the operator, kube-apiserver, etcd and this process (the bench, token endpoint included).
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    operator: f64,
    apiserver: f64,
    etcd: f64,
    bench: f64,
    /// Whole machine, from /proc/stat, in seconds of CPU time: busy (all but idle and
    /// iowait), all, and stolen by the hypervisor.
    machine_busy: f64,
    machine_all: f64,
    machine_steal: f64,
}

impl Cpu {
    /// Share of the machine's CPU time that was busy, in percent.
    fn busy_percent(&self) -> f64 {
        if self.machine_all > 0.0 {
            100.0 * self.machine_busy / self.machine_all
        } else {
            0.0
        }
    }
    fn steal_percent(&self) -> f64 {
        if self.machine_all > 0.0 {
            100.0 * self.machine_steal / self.machine_all
        } else {
            0.0
        }
    }
}

fn machine_cpu() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or_default() + v.get(4).copied().unwrap_or_default();
    let steal = v.get(7).copied().unwrap_or_default();
    let tck = clock_ticks();
    ((all - idle) / tck, all / tck, steal / tck)
}

fn cpu_now(operator: Option<u32>) -> Cpu {
    let machine = machine_cpu();
    Cpu {
        operator: operator.and_then(cpu_seconds).unwrap_or_default(),
        apiserver: child_pid("kube-apiserver")
            .and_then(cpu_seconds)
            .unwrap_or_default(),
        etcd: child_pid("etcd").and_then(cpu_seconds).unwrap_or_default(),
        bench: cpu_seconds(std::process::id()).unwrap_or_default(),
        machine_busy: machine.0,
        machine_all: machine.1,
        machine_steal: machine.2,
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            operator: self.operator - o.operator,
            apiserver: self.apiserver - o.apiserver,
            etcd: self.etcd - o.etcd,
            bench: self.bench - o.bench,
            machine_busy: self.machine_busy - o.machine_busy,
            machine_all: self.machine_all - o.machine_all,
            machine_steal: self.machine_steal - o.machine_steal,
        }
    }
}

/// apiserver_request_total by "VERB resource[/subresource]" ("VERB (non-resource)" for /metrics, /readyz...).
type ApiCounts = BTreeMap<String, f64>;

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// What the operator writes: everything else (leases...) is kube-apiserver's own bookkeeping.
const OPERATOR_RESOURCES: [&str; 4] = ["secrets", "idvclients", "idvclients/status", "events"];

fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let (mut value, mut escaped, mut end) = (String::new(), false, None);
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, c) => {
                    value.push(if c == 'n' { '\n' } else { c });
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let Some(end) = end else { break };
        labels.insert(key, value);
        rest = &after[end + 1..];
    }
    labels
}

async fn apiserver_counts(admin: &Client) -> Result<ApiCounts, String> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin
        .request_text(request)
        .await
        .map_err(|e| format!("GET apiserver /metrics: {e}"))?;
    let mut counts = ApiCounts::new();
    for line in text.lines() {
        // Request counts, and the latency histogram's sum and count ("~sum ...", "~count ...").
        let prefix = if line.starts_with("apiserver_request_total{") {
            ""
        } else if line.starts_with("apiserver_request_duration_seconds_sum{") {
            "~sum "
        } else if line.starts_with("apiserver_request_duration_seconds_count{") {
            "~count "
        } else {
            continue;
        };
        let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
            continue;
        };
        let labels = parse_labels(&line[open + 1..close]);
        let value: f64 = line[close + 1..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        let verb = labels.get("verb").cloned().unwrap_or_default();
        let resource = labels.get("resource").cloned().unwrap_or_default();
        let what = match (
            resource.as_str(),
            labels
                .get("subresource")
                .map(String::as_str)
                .unwrap_or_default(),
        ) {
            ("", _) => "(non-resource)".to_string(),
            (r, "") => r.to_string(),
            (r, s) => format!("{r}/{s}"),
        };
        *counts.entry(format!("{prefix}{verb} {what}")).or_default() += value;
    }
    Ok(counts)
}

fn diff(after: &ApiCounts, before: &ApiCounts) -> ApiCounts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn total(counts: &ApiCounts, filter: impl Fn(&str, &str) -> bool) -> f64 {
    counts
        .iter()
        .filter(|(k, _)| !k.starts_with('~'))
        .filter(|(k, _)| {
            let (verb, what) = k.split_once(' ').unwrap_or((k, ""));
            filter(verb, what)
        })
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

fn by_verb(counts: &ApiCounts) -> BTreeMap<String, f64> {
    let mut verbs = BTreeMap::new();
    for (key, value) in counts.iter().filter(|(k, _)| !k.starts_with('~')) {
        *verbs
            .entry(key.split(' ').next().unwrap_or_default().to_string())
            .or_default() += value;
    }
    verbs
}

/// Mean apiserver-side latency of "VERB resource" in a window, in milliseconds.
fn latency_ms(counts: &ApiCounts, key: &str) -> Option<f64> {
    let (sum, count) = (
        counts.get(&format!("~sum {key}"))?,
        counts.get(&format!("~count {key}"))?,
    );
    (*count > 0.0).then(|| sum / count * 1000.0)
}

fn resource_requests(counts: &ApiCounts) -> f64 {
    total(counts, |_, what| what != "(non-resource)")
}

fn writes(counts: &ApiCounts) -> f64 {
    total(counts, |verb, _| WRITE_VERBS.contains(&verb))
}

fn operator_writes(counts: &ApiCounts) -> f64 {
    total(counts, |verb, what| {
        WRITE_VERBS.contains(&verb) && OPERATOR_RESOURCES.contains(&what)
    })
}

/// Sum of every series of a metric on the operator's /metrics.
async fn operator_metric(operator: &Running, name: &str) -> Option<f64> {
    let (status, body) = operator
        .inner
        .get(operator.metrics_port, "/metrics")
        .await?;
    if status != 200 {
        return None;
    }
    let values = body.lines().filter(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    });
    Some(
        values
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum(),
    )
}

async fn operator_ready(operator: &Running) -> bool {
    let answer = operator.inner.get(operator.health_port, "/readyz").await;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "bench: debug: /readyz on {}: {answer:?}",
            operator.health_port
        );
    }
    matches!(answer, Some((200, _)))
}

/// An operator process and the ports it logged.
struct Running {
    inner: Operator,
    metrics_port: u16,
    health_port: u16,
}

/// With `BENCH_LOG_DIR`, keep an operator's output as `<dir>/<name>.log`.
fn keep_log(operator: &Running, name: &str) {
    if let Some(dir) = std::env::var_os("BENCH_LOG_DIR") {
        let path = Path::new(&dir).join(format!("{name}.log"));
        let _ = std::fs::create_dir_all(&dir);
        if let Err(e) = std::fs::write(&path, operator.inner.output()) {
            eprintln!("bench: cannot write {}: {e}", path.display());
        }
    }
}

/// The operator's log filter: info, plus one line per reconcile (to know when a restarted
/// operator has seen every client). `IDV_TEST_OPERATOR_LOG` overrides it.
fn operator_log() -> String {
    std::env::var("IDV_TEST_OPERATOR_LOG")
        .unwrap_or_else(|_| "info,idv_token_operator::controller=debug".into())
}

/// Debugging aid: `BENCH_OPERATOR_ENV="K=V,K=V"` adds variables to the environment of the
/// first operator process of each setting ("{ns}" in a value becomes its namespace), e.g. to
/// run it under heaptrack's preload library.
fn debugging_env(ns: &str) -> Vec<(String, String)> {
    let Ok(spec) = std::env::var("BENCH_OPERATOR_ENV") else {
        return Vec::new();
    };
    spec.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.replace("{ns}", ns)))
        .collect()
}

fn start_operator(kubeconfig: &Path, args: &[&str], extra_env: &[(String, String)]) -> Running {
    let log = operator_log();
    let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", log.as_str())];
    env.extend(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let inner = Operator::start_with_env(kubeconfig, args, &env);
    // The harness waits (blocking, up to 10 s) for the operator to log its ports.
    let (metrics_port, health_port) =
        tokio::task::block_in_place(|| (inner.metrics_port(), inner.health_port()));
    Running {
        inner,
        metrics_port,
        health_port,
    }
}

/// IdvClients the operator logged as reconciled (`reconciled object=IdvClient.../NAME.NS`), in `ns`.
fn reconciled_objects(log: &str, ns: &str) -> usize {
    let suffix = format!(".{ns}");
    log.lines()
        .filter(|l| l.contains(" reconciled "))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("object=")))
        .filter(|o| o.ends_with(&suffix))
        .collect::<HashSet<_>>()
        .len()
}

// ---------------------------------------------------------------------------------------------
// Watches of the bench: token Secrets (metadata) and IdvClient readiness
// ---------------------------------------------------------------------------------------------

/// Aborts its task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When each token Secret was first seen.
#[derive(Default)]
struct SecretsSeen {
    first: Mutex<HashMap<String, Instant>>,
    synced: AtomicBool,
}

impl SecretsSeen {
    fn count(&self) -> usize {
        self.first.lock().unwrap().len()
    }
    fn times(&self) -> Vec<Instant> {
        let mut times: Vec<Instant> = self.first.lock().unwrap().values().copied().collect();
        times.sort();
        times
    }
}

fn watch_token_secrets(admin: &Client, ns: &str) -> (Arc<SecretsSeen>, Task) {
    let seen = Arc::new(SecretsSeen::default());
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(admin.clone(), ns);
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let state = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    state
                        .first
                        .lock()
                        .unwrap()
                        .entry(s.name_any())
                        .or_insert_with(Instant::now);
                }
                Ok(watcher::Event::InitDone) => state.synced.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    });
    (seen, Task(task))
}

/// IdvClients whose Ready condition is True.
#[derive(Default)]
struct ReadySet {
    ready: Mutex<HashSet<String>>,
    synced: AtomicBool,
}

impl ReadySet {
    fn count(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

fn is_ready(client: &IdvClient) -> bool {
    client.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn watch_readiness(admin: &Client, ns: &str) -> (Arc<ReadySet>, Task) {
    let ready = Arc::new(ReadySet::default());
    let api: Api<IdvClient> = Api::namespaced(admin.clone(), ns);
    let state = ready.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                    let mut set = state.ready.lock().unwrap();
                    if is_ready(&c) {
                        set.insert(c.name_any());
                    } else {
                        set.remove(&c.name_any());
                    }
                }
                Ok(watcher::Event::Delete(c)) => {
                    state.ready.lock().unwrap().remove(&c.name_any());
                }
                Ok(watcher::Event::InitDone) => state.synced.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    });
    (ready, Task(task))
}

async fn until_synced(flag: &AtomicBool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !flag.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            return Err(format!(
                "the bench's watch of {what} did not sync within 120 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Serialize)]
struct Bare {
    seconds: f64,
    per_client_ms: f64,
    idp_requests: u64,
    /// apiserver requests in the window (resource requests only).
    api_requests: f64,
    api: ApiCounts,
    apiserver_cpu_s: f64,
    etcd_cpu_s: f64,
    bench_cpu_s: f64,
    machine_busy_percent: f64,
    machine_steal_percent: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Restart {
    shutdown_s: f64,
    shutdown_clean: bool,
    readyz_s: Option<f64>,
    reconciles_ge_n_s: Option<f64>,
    all_reconciled_s: Option<f64>,
    all_ready_true: bool,
    idp_requests: u64,
    window_s: f64,
    api: ApiCounts,
    api_writes: f64,
    api_operator_writes: f64,
    rss_hwm_mib: Option<f64>,
    operator_cpu_s: f64,
    operator_reconciles: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Idle {
    seconds: f64,
    api: ApiCounts,
    api_writes: f64,
    api_operator_writes: f64,
    idp_requests: u64,
    operator_cpu_s: f64,
    apiserver_cpu_s: f64,
    etcd_cpu_s: f64,
    rss_mib: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Run {
    concurrency: u16,
    max_token_requests: usize,
    namespace: String,
    key_secrets_apply_s: f64,
    clients_apply_s: f64,
    readyz_s: Option<f64>,
    converge_s: Option<f64>,
    converge_p50_s: Option<f64>,
    converge_p90_s: Option<f64>,
    ratio: Option<f64>,
    settle_s: Option<f64>,
    rss_hwm_mib_converged: Option<f64>,
    rss_hwm_mib_settled: Option<f64>,
    cpu_s_converged: Option<f64>,
    cpu_s_settled: Option<f64>,
    apiserver_cpu_s_converge: f64,
    etcd_cpu_s_converge: f64,
    bench_cpu_s_converge: f64,
    machine_busy_percent_converge: f64,
    machine_steal_percent_converge: f64,
    idp_requests: u64,
    idp_clients: usize,
    idp_max_per_client: u64,
    operator_token_requests: Option<f64>,
    operator_reconciles_settled: Option<f64>,
    api_converge: ApiCounts,
    api_settle: ApiCounts,
    restart: Option<Restart>,
    idle: Option<Idle>,
    error: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Report {
    clients: usize,
    machine: BTreeMap<String, String>,
    setup_s: BTreeMap<String, f64>,
    bare: Option<Bare>,
    runs: Vec<Run>,
    profile: Vec<RequestCost>,
    error: Option<String>,
}

/// What one kind of apiserver request costs, measured alone and sequentially.
#[derive(Debug, Default, Clone, Serialize)]
struct RequestCost {
    what: String,
    requests: usize,
    wall_ms: f64,
    apiserver_cpu_ms: f64,
    etcd_cpu_ms: f64,
}

fn machine() -> BTreeMap<String, String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let memory = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string());
    let mut m = BTreeMap::new();
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    m.insert("cpu".into(), model.unwrap_or_default());
    m.insert("mem_total_kib".into(), memory.unwrap_or_default());
    m.insert(
        "kernel".into(),
        read("/proc/sys/kernel/osrelease").trim().to_string(),
    );
    m.insert(
        "loadavg_at_start".into(),
        read("/proc/loadavg").trim().to_string(),
    );
    m
}

// ---------------------------------------------------------------------------------------------
// The phases
// ---------------------------------------------------------------------------------------------

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn create_namespace(admin: &Client, name: &str) -> Result<(), String> {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| format!("create namespace {name}: {e}"))?;
    Ok(())
}

/// Create, retrying a few times on errors (409: it exists already, fine).
async fn create<K>(api: &Api<K>, object: &K) -> Result<(), String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut attempt = 0;
    loop {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("bench: create failed ({e}); retry {attempt}");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(format!("create {}: {e}", object.name_any())),
        }
    }
}

/// Create objects with bounded parallelism; returns the elapsed time.
async fn create_all<K>(
    api: &Api<K>,
    objects: Vec<K>,
    parallelism: usize,
) -> Result<Duration, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let started = Instant::now();
    let results: Vec<Result<(), String>> =
        futures::stream::iter(objects.iter().map(|o| create(api, o)))
            .buffer_unordered(parallelism.max(1))
            .collect()
            .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(started.elapsed())
}

fn generate_keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            serde_json::to_vec(&jwk::generate(KeygenAlgorithm::Es256, 0).expect("ES256 keygen"))
                .unwrap()
        })
        .collect()
}

fn token_secret_data(
    token: &str,
    expires_at: Timestamp,
    scope: &str,
) -> BTreeMap<String, ByteString> {
    [
        ("access_token", token.to_string()),
        ("token_type", "Bearer".to_string()),
        ("expires_at", expires_at.to_string()),
        ("scope", scope.to_string()),
        ("authorization", format!("Bearer {token}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect()
}

/// The bare work: for each client, one token request with a freshly signed assertion and one
/// Secret create, one after the other.
async fn bare_baseline(
    admin: &Client,
    cfg: &Config,
    endpoint: &str,
    idp: &TokenEndpoint,
) -> Result<Bare, String> {
    let ns = "bench-bare";
    create_namespace(admin, ns).await?;
    let keys = generate_keys(cfg.clients);
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    // Warm up both connections (TLS handshake to the apiserver, TCP to the endpoint) outside the clock.
    let _ = http.get(endpoint).send().await;
    let _ = secrets.get_opt("warm-up").await;
    let (idp_before, api_before, cpu_before) =
        (idp.total(), apiserver_counts(admin).await?, cpu_now(None));
    let started = Instant::now();
    for (i, key_bytes) in keys.iter().enumerate() {
        let key = jwk::parse_signing_key(key_bytes, None).map_err(|e| e.to_string())?;
        let client_id = format!("{ns}.c{i}");
        let claims =
            assertion::claims(&client_id, endpoint, Timestamp::now(), uuid::Uuid::new_v4());
        let signed = assertion::sign(&claims, &key, false).map_err(|e| e.to_string())?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "bench_read"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", signed.expose()),
        ];
        let issued = Timestamp::now();
        let answer: Value = http
            .post(endpoint)
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("bare token request: {e}"))?
            .json()
            .await
            .map_err(|e| format!("bare token answer: {e}"))?;
        let token = answer["access_token"]
            .as_str()
            .ok_or_else(|| format!("bare: no access_token in {answer}"))?;
        let lifetime =
            jiff::SignedDuration::from_secs(answer["expires_in"].as_i64().unwrap_or(300));
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(format!("c{i}-token")),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "bench-bare".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(token_secret_data(token, issued + lifetime, "bench_read")),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| format!("bare: create Secret: {e}"))?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_now(None) - cpu_before;
    let api = diff(&apiserver_counts(admin).await?, &api_before);
    Ok(Bare {
        seconds: secs(elapsed),
        per_client_ms: secs(elapsed) * 1000.0 / cfg.clients as f64,
        idp_requests: idp.total() - idp_before,
        api_requests: resource_requests(&api),
        api,
        apiserver_cpu_s: cpu.apiserver,
        etcd_cpu_s: cpu.etcd,
        bench_cpu_s: cpu.bench,
        machine_busy_percent: cpu.busy_percent(),
        machine_steal_percent: cpu.steal_percent(),
    })
}

fn idv_client(name: &str, client_id: &str, endpoint: &str, key_secret: &str) -> IdvClient {
    serde_json::from_value(json!({
        "apiVersion": "idv-token-operator.dev/v1alpha1",
        "kind": "IdvClient",
        "metadata": {"name": name},
        "spec": {
            "clientId": client_id,
            "authServer": {"tokenEndpoint": endpoint},
            "privateKey": {"secretRef": {"name": key_secret, "key": "jwk.json"}},
            "scopes": ["bench_read"],
        },
    }))
    .unwrap()
}

/// One operator setting: apply, converge, settle, restart, idle. Fills `run` as it goes.
async fn operator_run(
    kubeconfig: &Path,
    admin: &Client,
    cfg: &Config,
    endpoint: &str,
    idp: &TokenEndpoint,
    bare_seconds: f64,
    run: &Mutex<Run>,
) -> Result<(), String> {
    let n = cfg.clients;
    let (c, r) = {
        let run = run.lock().unwrap();
        (run.concurrency, run.max_token_requests)
    };
    let ns = format!("bench-c{c}-r{r}");
    run.lock().unwrap().namespace = ns.clone();
    let update = |f: &dyn Fn(&mut Run)| f(&mut run.lock().unwrap());
    create_namespace(admin, &ns).await?;

    // Apply: key Secrets, then IdvClients (not timed against the operator).
    eprintln!("bench: [{c}/{r}] applying {n} key Secrets and {n} IdvClients in {ns}");
    let keys = generate_keys(n);
    let key_secrets: Vec<Secret> = keys
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| Secret {
            metadata: ObjectMeta {
                name: Some(format!("c{i}-jwk")),
                labels: Some(BTreeMap::from([(
                    idv_token_operator::api::CREDENTIAL_LABEL.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "jwk.json".to_string(),
                ByteString(bytes),
            )])),
            ..Default::default()
        })
        .collect();
    let took = create_all(
        &Api::namespaced(admin.clone(), &ns),
        key_secrets,
        cfg.parallelism,
    )
    .await?;
    update(&|run| run.key_secrets_apply_s = secs(took));
    let clients: Vec<IdvClient> = (0..n)
        .map(|i| {
            idv_client(
                &format!("c{i}"),
                &format!("{ns}.c{i}"),
                endpoint,
                &format!("c{i}-jwk"),
            )
        })
        .collect();
    let took = create_all(
        &Api::namespaced(admin.clone(), &ns),
        clients,
        cfg.parallelism,
    )
    .await?;
    update(&|run| run.clients_apply_s = secs(took));
    eprintln!(
        "bench: [{c}/{r}] applied: key Secrets {:.1}s, IdvClients {:.1}s",
        run.lock().unwrap().key_secrets_apply_s,
        secs(took)
    );

    let (secrets_seen, _secrets_watch) = watch_token_secrets(admin, &ns);
    let (ready, _ready_watch) = watch_readiness(admin, &ns);
    until_synced(&secrets_seen.synced, "token Secrets").await?;
    until_synced(&ready.synced, "IdvClients").await?;

    // Converge: the clock starts when the operator process is started, all clients applied.
    let args = [
        "--watch-namespaces",
        ns.as_str(),
        "--concurrency",
        &c.to_string(),
        "--max-concurrent-token-requests",
        &r.to_string(),
        LOCAL_IDP_HOSTS[0],
        LOCAL_IDP_HOSTS[1],
    ];
    let (api_before, idp_before, cpu_before) =
        (apiserver_counts(admin).await?, idp.total(), cpu_now(None));
    eprintln!("bench: [{c}/{r}] starting the operator: {}", args.join(" "));
    let started = Instant::now();
    let mut operator = start_operator(kubeconfig, &args, &debugging_env(&ns));
    let pid = operator.inner.process.pid();
    let deadline = started + cfg.converge_deadline();
    let mut last_report = Instant::now();
    loop {
        if run.lock().unwrap().readyz_s.is_none() && operator_ready(&operator).await {
            update(&|run| run.readyz_s = Some(secs(started.elapsed())));
        }
        if secrets_seen.count() >= n {
            break;
        }
        if !operator.inner.process.is_running() {
            return Err(format!(
                "the operator exited during convergence; log tail:\n{}",
                operator.inner.tail(40)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "convergence: only {} of {n} token Secrets after {:?}; operator log tail:\n{}",
                secrets_seen.count(),
                cfg.converge_deadline(),
                operator.inner.tail(40)
            ));
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "bench: [{c}/{r}] {:.0}s: {} of {n} token Secrets",
                secs(started.elapsed()),
                secrets_seen.count()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times = secrets_seen.times();
    let at = |q: f64| {
        secs(
            times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1]
                .saturating_duration_since(started),
        )
    };
    let converge = at(1.0);
    let cpu_converged = cpu_now(Some(pid)) - cpu_before;
    let api_converge = diff(&apiserver_counts(admin).await?, &api_before);
    update(&|run| {
        run.converge_s = Some(converge);
        run.converge_p50_s = Some(at(0.5));
        run.converge_p90_s = Some(at(0.9));
        run.ratio = Some(converge / bare_seconds);
        run.rss_hwm_mib_converged = vm_mib(pid, "VmHWM:");
        run.cpu_s_converged = Some(cpu_converged.operator);
        run.apiserver_cpu_s_converge = cpu_converged.apiserver;
        run.etcd_cpu_s_converge = cpu_converged.etcd;
        run.bench_cpu_s_converge = cpu_converged.bench;
        run.machine_busy_percent_converge = cpu_converged.busy_percent();
        run.machine_steal_percent_converge = cpu_converged.steal_percent();
        run.api_converge = api_converge.clone();
    });
    eprintln!(
        "bench: [{c}/{r}] converged: {n} token Secrets in {converge:.2}s (ratio {:.2})",
        converge / bare_seconds
    );

    // Settle: every IdvClient Ready and the operator's reconcile counter still for 2 s.
    let deadline = Instant::now() + cfg.settle_deadline();
    let (mut last, mut still_since) = (None, Instant::now());
    loop {
        let reconciles = operator_metric(&operator, "idv_token_operator_reconciles_total").await;
        if reconciles != last {
            (last, still_since) = (reconciles, Instant::now());
        }
        if ready.count() >= n && still_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "settle: {} of {n} IdvClients Ready after {:?}",
                ready.count(),
                cfg.settle_deadline()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The settle time is when the counter last moved (the 2 s of quiet are not work).
    let settled = secs(still_since.saturating_duration_since(started));
    let cpu_settled = cpu_now(Some(pid)) - cpu_before;
    let api_settle = diff(&apiserver_counts(admin).await?, &api_before);
    let stats = idp.stats(&format!("{ns}."));
    let token_requests =
        operator_metric(&operator, "idv_token_operator_token_requests_total").await;
    update(&|run| {
        run.settle_s = Some(settled);
        run.rss_hwm_mib_settled = vm_mib(pid, "VmHWM:");
        run.cpu_s_settled = Some(cpu_settled.operator);
        run.api_settle = api_settle.clone();
        run.idp_requests = idp.total() - idp_before;
        run.idp_clients = stats.clients;
        run.idp_max_per_client = stats.max_per_client;
        run.operator_token_requests = token_requests;
        run.operator_reconciles_settled = last;
    });
    eprintln!(
        "bench: [{c}/{r}] settled at {settled:.2}s; {:.1} apiserver requests per client; peak RSS {:.1} MiB",
        resource_requests(&api_settle) / n as f64,
        run.lock().unwrap().rss_hwm_mib_settled.unwrap_or_default()
    );

    // Restart: SIGTERM, start again; IdP requests in the next window; time until every client
    // has been reconciled by the new process (its log names each reconciled object).
    keep_log(&operator, &format!("{ns}-first"));
    let (api_before, idp_before) = (apiserver_counts(admin).await?, idp.total());
    let stopping = Instant::now();
    let clean = operator.inner.process.terminate(Duration::from_secs(30));
    let mut restart = Restart {
        shutdown_s: secs(stopping.elapsed()),
        shutdown_clean: clean,
        ..Restart::default()
    };
    drop(operator);
    eprintln!(
        "bench: [{c}/{r}] restarting the operator (stopped in {:.2}s)",
        restart.shutdown_s
    );
    let started = Instant::now();
    let mut operator = start_operator(kubeconfig, &args, &[]);
    let pid = operator.inner.process.pid();
    let cpu_before = cpu_now(Some(pid));
    let deadline = started + cfg.restart_deadline();
    loop {
        let elapsed = secs(started.elapsed());
        if restart.readyz_s.is_none() && operator_ready(&operator).await {
            restart.readyz_s = Some(elapsed);
        }
        let reconciles = operator_metric(&operator, "idv_token_operator_reconciles_total").await;
        if restart.reconciles_ge_n_s.is_none() && reconciles.is_some_and(|v| v >= n as f64) {
            restart.reconciles_ge_n_s = Some(elapsed);
        }
        if restart.reconciles_ge_n_s.is_some()
            && restart.all_reconciled_s.is_none()
            && reconciled_objects(&operator.inner.output(), &ns) >= n
        {
            restart.all_reconciled_s = Some(elapsed);
        }
        restart.operator_reconciles = reconciles;
        if started.elapsed() >= cfg.restart_window
            && (restart.all_reconciled_s.is_some() || Instant::now() > deadline)
        {
            break;
        }
        if !operator.inner.process.is_running() {
            return Err(format!(
                "the restarted operator exited; log tail:\n{}",
                operator.inner.tail(40)
            ));
        }
        if restart.all_reconciled_s.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    restart.window_s = secs(started.elapsed());
    restart.idp_requests = idp.total() - idp_before;
    restart.all_ready_true = ready.count() >= n;
    restart.api = diff(&apiserver_counts(admin).await?, &api_before);
    restart.api_writes = writes(&restart.api);
    restart.api_operator_writes = operator_writes(&restart.api);
    restart.rss_hwm_mib = vm_mib(pid, "VmHWM:");
    restart.operator_cpu_s = (cpu_now(Some(pid)) - cpu_before).operator;
    eprintln!(
        "bench: [{c}/{r}] restart: readyz {:?}s, all reconciled {:?}s, {} IdP requests, {} API writes in {:.0}s",
        restart.readyz_s,
        restart.all_reconciled_s,
        restart.idp_requests,
        restart.api_writes,
        restart.window_s
    );
    update(&|run| run.restart = Some(restart.clone()));

    // Idle.
    eprintln!("bench: [{c}/{r}] idle for {:?}", cfg.idle_window);
    let (api_before, idp_before, cpu_before) = (
        apiserver_counts(admin).await?,
        idp.total(),
        cpu_now(Some(pid)),
    );
    let started = Instant::now();
    tokio::time::sleep(cfg.idle_window).await;
    let cpu = cpu_now(Some(pid)) - cpu_before;
    let api = diff(&apiserver_counts(admin).await?, &api_before);
    let idle = Idle {
        seconds: secs(started.elapsed()),
        api_writes: writes(&api),
        api_operator_writes: operator_writes(&api),
        api,
        idp_requests: idp.total() - idp_before,
        operator_cpu_s: cpu.operator,
        apiserver_cpu_s: cpu.apiserver,
        etcd_cpu_s: cpu.etcd,
        rss_mib: vm_mib(pid, "VmRSS:"),
    };
    eprintln!(
        "bench: [{c}/{r}] idle: {} API writes ({} by the operator), {} IdP requests, {:.2}s operator CPU",
        idle.api_writes, idle.api_operator_writes, idle.idp_requests, idle.operator_cpu_s
    );
    update(&|run| run.idle = Some(idle.clone()));
    keep_log(&operator, &format!("{ns}-restarted"));
    drop(operator);
    Ok(())
}

/// Cost per request of each request the operator makes, one kind at a time, one request after
/// the other, against the IdvClients of an operator run (whose operator has stopped): wall time,
/// kube-apiserver and etcd CPU per request.
async fn profile_requests(
    admin: &Client,
    ns: &str,
    count: usize,
    report: &Mutex<Report>,
) -> Result<(), String> {
    let clients: Vec<IdvClient> = Api::<IdvClient>::namespaced(admin.clone(), ns)
        .list(&Default::default())
        .await
        .map_err(|e| format!("profile: list IdvClients: {e}"))?
        .items
        .into_iter()
        .filter(|c| c.status.is_some())
        .take(count)
        .collect();
    if clients.is_empty() {
        return Err("profile: no IdvClient with a status".into());
    }
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    let idvclients: Api<IdvClient> = Api::namespaced(admin.clone(), ns);
    let n = clients.len();
    let status_body = |c: &IdvClient, suffix: &str| {
        let mut status = c.status.clone().unwrap_or_default();
        for condition in &mut status.conditions {
            condition.message.push_str(suffix);
        }
        json!({"apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient", "status": status})
    };
    let apply = PatchParams::apply(idv_token_operator::api::FIELD_MANAGER).force();
    for kind in 0..7 {
        let (before, started) = (cpu_now(None), Instant::now());
        let what = match kind {
            0 => "GET secrets (the key Secret)",
            1 => "GET secrets (absent: 404)",
            2 => "POST secrets (token Secret, ownerReference)",
            3 => "POST events (events.k8s.io/v1)",
            4 => "APPLY idvclients/status, unchanged",
            5 => "APPLY idvclients/status, changed",
            _ => "PATCH idvclients/status (merge), changed",
        };
        for (i, c) in clients.iter().enumerate() {
            let name = c.name_any();
            let result = match kind {
                0 => secrets.get(&format!("{name}-jwk")).await.map(|_| ()),
                1 => secrets.get_opt(&format!("{name}-absent")).await.map(|_| ()),
                2 => {
                    let mut owner = kube::Resource::controller_owner_ref(c, &()).expect("uid");
                    owner.block_owner_deletion = Some(true);
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(format!("{name}-profile")),
                            labels: Some(BTreeMap::from([(
                                "bench".to_string(),
                                "profile".to_string(),
                            )])),
                            owner_references: Some(vec![owner]),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(token_secret_data(
                            &uuid::Uuid::new_v4().to_string(),
                            Timestamp::now(),
                            "bench_read",
                        )),
                        ..Default::default()
                    };
                    secrets
                        .create(&PostParams::default(), &secret)
                        .await
                        .map(|_| ())
                }
                3 => {
                    let now = Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                        .to_string();
                    let event = serde_json::from_value(json!({
                        "metadata": {"name": format!("{name}.profile{i}")},
                        "eventTime": now,
                        "type": "Normal",
                        "reason": "TokenIssued",
                        "action": "Reconcile",
                        "note": "token issued with key k; expires at t, refresh at r",
                        "reportingController": "idv-token-operator",
                        "reportingInstance": "bench",
                        "regarding": {"apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient", "name": name, "namespace": ns, "uid": c.metadata.uid},
                    }))
                    .expect("an Event");
                    events
                        .create(&PostParams::default(), &event)
                        .await
                        .map(|_| ())
                }
                4 => idvclients
                    .patch_status(&name, &apply, &Patch::Apply(status_body(c, "")))
                    .await
                    .map(|_| ()),
                5 => idvclients
                    .patch_status(&name, &apply, &Patch::Apply(status_body(c, " (profile)")))
                    .await
                    .map(|_| ()),
                _ => idvclients
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": status_body(c, " (merge)")["status"]})),
                    )
                    .await
                    .map(|_| ()),
            };
            result.map_err(|e| format!("profile: {what}: {e}"))?;
        }
        let (cpu, wall) = (cpu_now(None) - before, started.elapsed());
        let cost = RequestCost {
            what: what.into(),
            requests: n,
            wall_ms: secs(wall) * 1000.0 / n as f64,
            apiserver_cpu_ms: cpu.apiserver * 1000.0 / n as f64,
            etcd_cpu_ms: cpu.etcd * 1000.0 / n as f64,
        };
        eprintln!(
            "bench: profile: {what}: {:.2} ms wall, {:.2} ms apiserver CPU per request",
            cost.wall_ms, cost.apiserver_cpu_ms
        );
        report.lock().unwrap().profile.push(cost);
    }
    Ok(())
}

async fn run(cfg: &Config, dir: &Path, report: Arc<Mutex<Report>>) -> Result<(), String> {
    let setup = Instant::now();
    let plane = ControlPlane::start(dir).await;
    plane.install_crds().await;
    plane.install_operator_rbac().await;
    // The operator authenticates with a ServiceAccount token, as in a pod.
    let kubeconfig = plane
        .service_account_kubeconfig(
            OPERATOR_NAMESPACE,
            OPERATOR_SERVICE_ACCOUNT,
            "operator-sa.kubeconfig",
        )
        .await;
    let admin = plane.admin().await;
    let idp = Arc::new(TokenEndpoint::default());
    let (port, _endpoint_task) = start_token_endpoint(idp.clone()).await;
    let _endpoint_task = Task(_endpoint_task);
    let endpoint = format!("http://127.0.0.1:{port}/token");
    report
        .lock()
        .unwrap()
        .setup_s
        .insert("control plane, CRDs, RBAC".into(), secs(setup.elapsed()));
    eprintln!(
        "bench: control plane {} ready; token endpoint {endpoint}; N = {}",
        plane.server, cfg.clients
    );

    eprintln!(
        "bench: bare baseline ({} sequential token requests + Secret creates)",
        cfg.clients
    );
    let bare = bare_baseline(&admin, cfg, &endpoint, &idp).await?;
    eprintln!(
        "bench: bare baseline {:.2}s ({:.2} ms per client)",
        bare.seconds, bare.per_client_ms
    );
    report.lock().unwrap().bare = Some(bare.clone());

    let mut failed = None;
    for &(c, r) in &cfg.settings {
        let run = Mutex::new(Run {
            concurrency: c,
            max_token_requests: r,
            ..Run::default()
        });
        let result = operator_run(
            &kubeconfig,
            &admin,
            cfg,
            &endpoint,
            &idp,
            bare.seconds,
            &run,
        )
        .await;
        let mut run = run.into_inner().unwrap();
        if let Err(e) = result {
            eprintln!("bench: [{c}/{r}] failed: {e}");
            run.error = Some(e.lines().next().unwrap_or_default().to_string());
            failed = Some(e);
        }
        report.lock().unwrap().runs.push(run);
    }
    let profile_in = report
        .lock()
        .unwrap()
        .runs
        .iter()
        .rev()
        .find(|r| r.error.is_none())
        .map(|r| r.namespace.clone());
    if env_or("BENCH_PROFILE", 1) == 1
        && let Some(ns) = profile_in
    {
        eprintln!("bench: profiling each request kind in {ns}");
        if let Err(e) = profile_requests(&admin, &ns, cfg.clients.min(1000), &report).await {
            eprintln!("bench: {e}");
        }
    }
    failed.map_or(Ok(()), Err)
}

// ---------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn verbs_per_client(counts: &ApiCounts, n: usize) -> String {
    let verbs = by_verb(
        &counts
            .iter()
            .filter(|(k, _)| !k.ends_with("(non-resource)"))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    );
    verbs
        .iter()
        .map(|(verb, v)| format!("{verb} {:.2}", v / n as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

fn summary(report: &Report, cfg: &Config) -> String {
    let n = report.clients;
    let rss_target = if n <= 1000 { 64.0 } else { 100.0 };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## idv-token-operator convergence benchmark, N = {n}\n"
    );
    for (k, v) in &report.machine {
        let _ = writeln!(out, "- {k}: {v}");
    }
    for (k, v) in &report.setup_s {
        let _ = writeln!(out, "- setup ({k}): {v:.1} s");
    }
    if let Some(bare) = &report.bare {
        let _ = writeln!(
            out,
            "- bare baseline: {:.2} s for {n} sequential (token request + Secret create) = {:.2} ms per client; {} IdP requests, {:.0} apiserver requests (POST secrets: {} ms mean in the apiserver); CPU: kube-apiserver {:.1} s, etcd {:.1} s, bench {:.1} s; machine {:.0}% busy, {:.0}% steal",
            bare.seconds,
            bare.per_client_ms,
            bare.idp_requests,
            bare.api_requests,
            f(latency_ms(&bare.api, "POST secrets"), 2),
            bare.apiserver_cpu_s,
            bare.etcd_cpu_s,
            bare.bench_cpu_s,
            bare.machine_busy_percent,
            bare.machine_steal_percent
        );
    }
    let _ = writeln!(out);
    let mut header = "| metric |".to_string();
    let mut rule = "|---|".to_string();
    for run in &report.runs {
        let _ = write!(
            header,
            " C/R = {}/{} |",
            run.concurrency, run.max_token_requests
        );
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let row = |out: &mut String, name: &str, cell: &dyn Fn(&Run) -> String| {
        let _ = write!(out, "| {name} |");
        for run in &report.runs {
            let _ = write!(out, " {} |", cell(run));
        }
        let _ = writeln!(out);
    };
    let bare_s = report.bare.as_ref().map(|b| b.seconds);
    row(
        &mut out,
        "apply N key Secrets / N IdvClients (s, parallelism 16)",
        &|r| format!("{:.1} / {:.1}", r.key_secrets_apply_s, r.clients_apply_s),
    );
    row(&mut out, "operator /readyz after start (s)", &|r| {
        f(r.readyz_s, 2)
    });
    row(
        &mut out,
        "all N token Secrets exist (s) [p50 / p90]",
        &|r| {
            format!(
                "{} [{} / {}]",
                f(r.converge_s, 2),
                f(r.converge_p50_s, 2),
                f(r.converge_p90_s, 2)
            )
        },
    );
    row(
        &mut out,
        &format!("ratio operator / bare ({} s) — target <= 1.0", f(bare_s, 2)),
        &|r| format!("{} ({})", f(r.ratio, 2), mark(r.ratio.map(|x| x <= 1.0))),
    );
    row(&mut out, "all N Ready and operator quiet (s)", &|r| {
        f(r.settle_s, 2)
    });
    row(
        &mut out,
        &format!(
            "operator peak RSS, VmHWM (MiB) at convergence / settled — target <= {rss_target:.0}"
        ),
        &|r| {
            format!(
                "{} / {} ({})",
                f(r.rss_hwm_mib_converged, 1),
                f(r.rss_hwm_mib_settled, 1),
                mark(r.rss_hwm_mib_settled.map(|x| x <= rss_target))
            )
        },
    );
    row(
        &mut out,
        "operator CPU (s) at convergence / settled",
        &|r| format!("{} / {}", f(r.cpu_s_converged, 2), f(r.cpu_s_settled, 2)),
    );
    row(
        &mut out,
        "kube-apiserver / etcd / bench CPU during convergence (s)",
        &|r| {
            format!(
                "{:.1} / {:.1} / {:.1}",
                r.apiserver_cpu_s_converge, r.etcd_cpu_s_converge, r.bench_cpu_s_converge
            )
        },
    );
    row(
        &mut out,
        "machine CPU busy during convergence (% of all cores; steal)",
        &|r| {
            format!(
                "{:.0}% ({:.0}%)",
                r.machine_busy_percent_converge, r.machine_steal_percent_converge
            )
        },
    );
    row(
        &mut out,
        "IdP requests per client (max for one client)",
        &|r| {
            if r.idp_clients == 0 {
                "-".into()
            } else {
                format!(
                    "{:.2} ({})",
                    r.idp_requests as f64 / n as f64,
                    r.idp_max_per_client
                )
            }
        },
    );
    row(
        &mut out,
        "apiserver requests per client, start to convergence",
        &|r| format!("{:.2}", resource_requests(&r.api_converge) / n as f64),
    );
    row(
        &mut out,
        "apiserver requests per client, start to settled",
        &|r| format!("{:.2}", resource_requests(&r.api_settle) / n as f64),
    );
    row(
        &mut out,
        "… by verb (start to settled, per client)",
        &|r| verbs_per_client(&r.api_settle, n),
    );
    row(&mut out, "restart: SIGTERM to exit (s)", &|r| {
        r.restart
            .as_ref()
            .map(|x| {
                format!(
                    "{:.2}{}",
                    x.shutdown_s,
                    if x.shutdown_clean { "" } else { " (killed)" }
                )
            })
            .unwrap_or("-".into())
    });
    row(&mut out, "restart: /readyz 200 (s)", &|r| {
        f(r.restart.as_ref().and_then(|x| x.readyz_s), 2)
    });
    row(&mut out, "restart: reconciles_total >= N (s)", &|r| {
        f(r.restart.as_ref().and_then(|x| x.reconciles_ge_n_s), 2)
    });
    row(
        &mut out,
        "restart: every client reconciled by the new process (s)",
        &|r| f(r.restart.as_ref().and_then(|x| x.all_reconciled_s), 2),
    );
    row(
        &mut out,
        &format!(
            "restart: IdP requests in {}s — target 0",
            cfg.restart_window.as_secs()
        ),
        &|r| {
            r.restart
                .as_ref()
                .map(|x| format!("{} ({})", x.idp_requests, mark(Some(x.idp_requests == 0))))
                .unwrap_or("-".into())
        },
    );
    row(
        &mut out,
        "restart: apiserver requests per client / writes (operator's / all)",
        &|r| {
            r.restart
                .as_ref()
                .map(|x| {
                    format!(
                        "{:.2} / {} / {}",
                        resource_requests(&x.api) / n as f64,
                        x.api_operator_writes,
                        x.api_writes
                    )
                })
                .unwrap_or("-".into())
        },
    );
    row(
        &mut out,
        "restart: peak RSS (MiB) / CPU (s) of the new process",
        &|r| {
            r.restart
                .as_ref()
                .map(|x| format!("{} / {:.2}", f(x.rss_hwm_mib, 1), x.operator_cpu_s))
                .unwrap_or("-".into())
        },
    );
    row(
        &mut out,
        &format!(
            "idle {}s: API writes, operator's / all — target 0",
            cfg.idle_window.as_secs()
        ),
        &|r| {
            r.idle
                .as_ref()
                .map(|x| {
                    format!(
                        "{} / {} ({})",
                        x.api_operator_writes,
                        x.api_writes,
                        mark(Some(x.api_operator_writes == 0.0))
                    )
                })
                .unwrap_or("-".into())
        },
    );
    row(
        &mut out,
        &format!(
            "idle {}s: IdP requests — target 0",
            cfg.idle_window.as_secs()
        ),
        &|r| {
            r.idle
                .as_ref()
                .map(|x| format!("{} ({})", x.idp_requests, mark(Some(x.idp_requests == 0))))
                .unwrap_or("-".into())
        },
    );
    row(
        &mut out,
        &format!(
            "idle {}s: operator / apiserver / etcd CPU (s); RSS (MiB)",
            cfg.idle_window.as_secs()
        ),
        &|r| {
            r.idle
                .as_ref()
                .map(|x| {
                    format!(
                        "{:.2} / {:.2} / {:.2}; {}",
                        x.operator_cpu_s,
                        x.apiserver_cpu_s,
                        x.etcd_cpu_s,
                        f(x.rss_mib, 1)
                    )
                })
                .unwrap_or("-".into())
        },
    );
    for run in &report.runs {
        let _ = writeln!(
            out,
            "\napiserver requests, C/R = {}/{} (all clients; start to settled [mean apiserver latency, ms] | restart window | idle window):",
            run.concurrency, run.max_token_requests
        );
        let keys: std::collections::BTreeSet<&String> = run
            .api_settle
            .keys()
            .chain(run.restart.iter().flat_map(|x| x.api.keys()))
            .chain(run.idle.iter().flat_map(|x| x.api.keys()))
            .filter(|k| !k.starts_with('~'))
            .collect();
        for key in keys {
            let get = |c: Option<&ApiCounts>| {
                c.and_then(|c| c.get(key))
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or("0".into())
            };
            let _ = writeln!(
                out,
                "  {key:<40} {:>8} [{:>6}] | {:>8} | {:>6}",
                get(Some(&run.api_settle)),
                f(latency_ms(&run.api_settle, key), 1),
                get(run.restart.as_ref().map(|x| &x.api)),
                get(run.idle.as_ref().map(|x| &x.api))
            );
        }
        if let Some(e) = &run.error {
            let _ = writeln!(out, "  ERROR: {e}");
        }
    }
    if !report.profile.is_empty() {
        let _ = writeln!(
            out,
            "\nCost of each request kind, alone, sequential (per request):\n"
        );
        let _ = writeln!(
            out,
            "| request | n | wall (ms) | kube-apiserver CPU (ms) | etcd CPU (ms) |\n|---|---|---|---|---|"
        );
        for c in &report.profile {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                c.what, c.requests, c.wall_ms, c.apiserver_cpu_ms, c.etcd_cpu_ms
            );
        }
    }
    if let Some(e) = &report.error {
        let _ = writeln!(out, "\nERROR: {e}");
    }
    out
}

fn main() {
    let cfg = Config::from_env();
    let binary = support::operator_binary();
    assert!(
        binary.exists(),
        "IDV_OPERATOR_BIN {} does not exist; build it with cargo build --release",
        binary.display()
    );
    let report = Arc::new(Mutex::new(Report {
        clients: cfg.clients,
        machine: machine(),
        ..Report::default()
    }));
    eprintln!(
        "bench: N = {}, settings {:?}, deadline {:?}, operator {}",
        cfg.clients,
        cfg.settings,
        cfg.deadline,
        binary.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("idv-bench-")
        .tempdir()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        tokio::time::timeout(cfg.deadline, run(&cfg, dir.path(), report.clone())).await
    });
    // Every child (operator, apiserver, etcd) was dropped, and so killed, with the run's future.
    drop(rt);
    let ok = match outcome {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            report.lock().unwrap().error = Some(e.lines().next().unwrap_or_default().to_string());
            eprintln!("bench: failed: {e}");
            false
        }
        Err(_) => {
            report.lock().unwrap().error = Some(format!(
                "deadline of {:?} exceeded; results are partial",
                cfg.deadline
            ));
            false
        }
    };
    let report = report.lock().unwrap().clone();
    println!("{}", summary(&report, &cfg));
    if let Some(path) = &cfg.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
            .unwrap_or_else(|e| eprintln!("bench: cannot write {path}: {e}"));
    }
    drop(dir);
    if !ok {
        std::process::exit(1);
    }
}
