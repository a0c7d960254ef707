//! `make bench`: what a user waits for when N IdvClients are applied to a running operator
//! (apply → all `Ready=True` with their Secrets), against the bare work done by a plain client
//! (one after the other, and concurrently at the operator's width); what it costs (memory, CPU,
//! apiserver and IdP requests); one more IdvClient while N exist; the refresh spread; what a
//! restart costs; that an idle operator is quiet; optionally External Secrets Operator side by
//! side. See docs/benchmarks.md.
//!
//! Everything runs locally: etcd + kube-apiserver from the test harness (tests/support), and a
//! minimal token endpoint inside this process (fake_idp: the IdP is never the bottleneck).
//!
//! Environment:
//! - `BENCH_CLIENTS` (1000): N.
//! - `BENCH_SETTINGS` ("8/8,8/8,32/32,32/32"): operator settings, `concurrency/max-concurrent-token-requests`
//!   (8/8 is the shipped default).
//! - `BENCH_APPLY_PARALLELISM` (16): parallel creates when applying.
//! - `BENCH_LATENCY_SAMPLES` (50): single applies measured while N exist (0: skip).
//! - `BENCH_SPREAD_LIFETIME_SECS` (240): token lifetime of the refresh-spread phase (0: skip).
//! - `BENCH_PEER` (unset): `eso` runs External Secrets Operator side by side
//!   (benches/peers/build-eso.sh builds it; `BENCH_ESO_DIR` names a folder with it instead).
//! - `BENCH_RESTART_SECS` (60), `BENCH_IDLE_SECS` (60): the restart and idle windows.
//! - `BENCH_DEADLINE_SECS`: the whole run ends by then, whatever happens.
//! - `BENCH_PROFILE` (0): 1 measures the cost of each kind of request the operator makes.
//! - `BENCH_BARE_WATCHES` (0): 1 has the concurrent bare baseline hold a controller's watches too
//!   (its objects, its Secrets), to tell their apiserver cost from the operator's own.
//! - `BENCH_BARE_AS` (`operator`): who the concurrent bare workers write as: the operator's
//!   ServiceAccount, `admin` (a client certificate in system:masters), or `both` (the minimal
//!   work once more as the admin); see `config::BareAs`.
//! - `BENCH_BARE_OBJECTS` (`both`): which concurrent bare baselines each setting measures,
//!   `minimal` (the least a script could write) and/or `operator` (objects shaped like the
//!   operator's beside N key Secrets, a controller's watches held); see `config::BareObjects`.
//! - `BENCH_PHASE_HOOK`: a shell command run for the length of each measured phase
//!   (`$BENCH_PHASE` names it), stopped with SIGINT; e.g. a system-wide `perf record`.
//! - `BENCH_JSON`: also write the results as JSON to this file.
//! - `BENCH_LOG_DIR`: keep each operator process's output there.
//! - `BENCH_OPERATOR_ENV` ("K=V,K=V"): debugging; extra environment for the first operator of
//!   each setting, e.g. heaptrack's `LD_PRELOAD`.
//! - The operator binary: `IDV_OPERATOR_BIN` (an A/B run), else the release build cargo makes
//!   for this bench (see tests/support); `IDV_TEST_OPERATOR_LOG` (`info`): its RUST_LOG.

#[path = "../../tests/support/mod.rs"]
mod support;

mod baseline;
mod config;
mod eso;
mod fake_idp;
mod measure;
mod objects;
mod operator;
mod phases;
mod profile;
mod report;
mod spread;
mod watches;

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use config::Config;
use fake_idp::TokenEndpoint;
use phases::Bench;
use report::{Report, Run};
use support::{ControlPlane, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT};
use tokio::task::JoinHandle;

/// Aborts its task when dropped.
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Record a phase's outcome; its error (first line) stays with its results.
fn record(report: &Mutex<Report>, mut run: Run, result: Result<(), String>) -> Option<String> {
    let error = result.err();
    if let Some(e) = &error {
        eprintln!(
            "bench: {} failed: {e}",
            if run.who.is_empty() {
                "operator run"
            } else {
                &run.who
            }
        );
        run.error = Some(e.lines().next().unwrap_or_default().to_string());
    }
    report.lock().unwrap().runs.push(run);
    error
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
    let operator_identity = support::client_from(&kubeconfig).await;
    let idp = Arc::new(TokenEndpoint::default());
    let (port, _endpoint_task) = fake_idp::start(idp.clone()).await;
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
    let bench = Bench {
        plane: &plane,
        kubeconfig: &kubeconfig,
        admin: &admin,
        operator_identity: &operator_identity,
        cfg,
        endpoint: &endpoint,
        idp: &idp,
    };

    let sequential = baseline::sequential(&admin, cfg, &endpoint, &idp).await?;
    eprintln!(
        "bench: sequential bare baseline {:.2}s ({:.2} ms per client)",
        sequential.seconds, sequential.per_client_ms
    );
    let sequential_s = Some(sequential.seconds);
    report.lock().unwrap().sequential = Some(sequential);

    let mut failed = None;
    for (i, &(c, r)) in cfg.settings.iter().enumerate() {
        let mut run = Run {
            concurrency: c,
            max_token_requests: r,
            ..Run::default()
        };
        let result = phases::setting(&bench, sequential_s, i, &mut run).await;
        failed = record(&report, run, result).or(failed);
    }
    if cfg.peer.is_some() {
        let mut run = Run {
            who: "ESO v0.16.2".into(),
            ..Run::default()
        };
        let result = eso::run(&bench, &plane, &mut run).await;
        failed = record(&report, run, result).or(failed);
    }
    if let Some(lifetime) = cfg.spread_lifetime {
        match spread::run(&bench, lifetime).await {
            Ok(spread) => report.lock().unwrap().spread = Some(spread),
            Err(e) => failed = Some(e),
        }
    }
    let profile_in = report
        .lock()
        .unwrap()
        .runs
        .iter()
        .rev()
        .find(|r| r.error.is_none() && r.who.is_empty())
        .map(|r| r.namespace.clone());
    if cfg.profile
        && let Some(ns) = profile_in
    {
        eprintln!("bench: profiling each request kind in {ns}");
        match profile::run(&admin, &ns, cfg.clients.min(1000)).await {
            Ok(costs) => report.lock().unwrap().profile = costs,
            Err(e) => eprintln!("bench: {e}"),
        }
    }
    report.lock().unwrap().idp_rejected = idp.rejected();
    failed.map_or(Ok(()), Err)
}

/// The commit measured (`git describe --always --dirty`), for the record.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["-C", support::REPO, "describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
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
        commit: commit(),
        machine: measure::machine(),
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
    // Every child (operator, peer, apiserver, etcd) was dropped, and so killed, with the run's future.
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
    println!("{}", report::summary(&report, &cfg));
    if let Some(path) = &cfg.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
            .unwrap_or_else(|e| eprintln!("bench: cannot write {path}: {e}"));
    }
    drop(dir);
    if !ok {
        std::process::exit(1);
    }
}
