//! One operator setting, phase by phase: the concurrent bare baseline, then the operator
//! (already running) brought N new IdvClients, to all-Ready; settled; single applies while N
//! exist; restart; idle.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use idv_token_operator::api::{IdvClient, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use kube::{Api, Client, api::ApiResource};

use crate::{
    baseline,
    config::{BareAs, Config},
    fake_idp::TokenEndpoint,
    measure::{self, Cpu},
    objects,
    operator::{self, Running},
    report::{Idle, Latency, Restart, Run},
    secs,
    support::{ControlPlane, LOCAL_IDP_HOSTS},
    watches::Settling,
};

/// What every phase needs.
pub struct Bench<'a> {
    pub plane: &'a ControlPlane,
    pub kubeconfig: &'a Path,
    pub admin: &'a Client,
    /// A client with the operator's ServiceAccount token.
    pub operator_identity: &'a Client,
    pub cfg: &'a Config,
    pub endpoint: &'a str,
    pub idp: &'a TokenEndpoint,
}

/// The warm-up IdvClient: proves the operator is working (its caches listed, its connections
/// open) before a clock starts.
const WARM_UP: &str = "warmup";

pub fn operator_args(ns: &str, c: u16, r: usize) -> Vec<String> {
    let mut args: Vec<String> = ["--watch-namespaces", ns, "--concurrency", &c.to_string()]
        .map(String::from)
        .into();
    args.extend(["--max-concurrent-token-requests".into(), r.to_string()]);
    args.extend(LOCAL_IDP_HOSTS.map(String::from));
    args
}

pub fn token_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// Until the operator answers /readyz 200, bounded.
async fn until_ready(operator: &Running, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    while !operator.ready().await {
        if started.elapsed() > within {
            return Err(format!(
                "the operator was not ready within {within:?}:\n{}",
                operator.inner.tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// One setting: fills `run` as it goes (partial results stay when a phase fails). The control
/// plane slows down over a run (it holds more revisions, a bigger heap), so the bare baselines
/// go first for even `position`s and after the operator for odd ones: over repeats of a
/// setting, that drift falls on both sides alike.
pub async fn setting(
    b: &Bench<'_>,
    sequential_s: Option<f64>,
    position: usize,
    run: &mut Run,
) -> Result<(), String> {
    let prefix = format!("bench{position}");
    if position.is_multiple_of(2) {
        bare_baselines(b, &prefix, run).await?;
        operator_run(b, &prefix, sequential_s, run).await?;
    } else {
        operator_run(b, &prefix, sequential_s, run).await?;
        bare_baselines(b, &prefix, run).await?;
    }
    let ratio = |bare: &Option<crate::baseline::Bare>| {
        run.all_ready_s
            .zip(bare.as_ref())
            .map(|(t, bare)| t / bare.seconds)
    };
    (
        run.ratio_concurrent,
        run.ratio_same_objects,
        run.ratio_as_admin,
    ) = (
        ratio(&run.bare),
        ratio(&run.bare_same_objects),
        ratio(&run.bare_as_admin),
    );
    eprintln!(
        "bench: [{}] ratio to the concurrent bare work {} (with the same objects and watches {})",
        run.label(),
        crate::report::f(run.ratio_concurrent, 2),
        crate::report::f(run.ratio_same_objects, 2)
    );
    Ok(())
}

/// The concurrent bare baselines of one setting (`BENCH_BARE_OBJECTS`), each phase's objects
/// removed when it ends.
async fn bare_baselines(b: &Bench<'_>, prefix: &str, run: &mut Run) -> Result<(), String> {
    let (c, r) = (run.concurrency, run.max_token_requests);
    let width = usize::from(c).max(r);
    let bare_ns = format!("{}-bare-c{c}-r{r}", prefix);
    // The operator's identity unless BENCH_BARE_AS=admin; `both` adds the minimal work as
    // the admin.
    let primary = b.cfg.bare_as != BareAs::Admin;
    // (like the operator's objects, as the operator, wanted, namespace suffix, what)
    let phases = [
        (false, primary, b.cfg.bare_objects.minimal(), "", ""),
        (
            true,
            primary,
            b.cfg.bare_objects.operator_shaped(),
            "-same",
            " with the operator's objects and watches",
        ),
        (
            false,
            false,
            b.cfg.bare_as == BareAs::Both,
            "-admin",
            " as the admin",
        ),
    ];
    for (i, (like_operator, as_operator, wanted, suffix, what)) in phases.into_iter().enumerate() {
        if !wanted {
            continue;
        }
        let ns = format!("{bare_ns}{suffix}");
        eprintln!("bench: [{c}/{r}] concurrent bare baseline{what}, {width} workers");
        let bare = baseline::concurrent(b, &ns, width, like_operator, as_operator).await?;
        eprintln!(
            "bench: [{c}/{r}] concurrent bare baseline{what}: {:.2}s",
            bare.seconds
        );
        objects::remove_all(b.admin, &ns).await?;
        // The slots in the order of `phases`.
        let slots = [
            &mut run.bare,
            &mut run.bare_same_objects,
            &mut run.bare_as_admin,
        ];
        *slots.into_iter().nth(i).expect("one slot per phase") = Some(bare);
    }
    Ok(())
}

/// The operator's part of one setting.
async fn operator_run(
    b: &Bench<'_>,
    prefix: &str,
    sequential_s: Option<f64>,
    run: &mut Run,
) -> Result<(), String> {
    let (c, r, n) = (run.concurrency, run.max_token_requests, b.cfg.clients);
    // Namespaces by position, so that a setting may be measured twice in one run.
    let ns = format!("{}-c{c}-r{r}", prefix);
    run.namespace = ns.clone();
    run.user_requests = vec!["POST idvclients".into()];
    objects::create_namespace(b.admin, &ns).await?;
    let names = objects::names(n);
    let samples: Vec<String> = (0..b.cfg.latency_samples)
        .map(|i| format!("single{i}"))
        .collect();
    let mut keys = names.clone();
    keys.extend(samples.iter().cloned());
    keys.push(WARM_UP.into());
    run.keys_apply_s = secs(objects::apply_keys(b.admin, &ns, &keys, b.cfg.parallelism).await?);

    let args = operator_args(&ns, c, r);
    eprintln!("bench: [{c}/{r}] starting the operator: {}", args.join(" "));
    let operator = Running::start(b.kubeconfig, &args, &operator::debugging_env(&ns));
    run.readyz_s = Some(secs(
        until_ready(&operator, Duration::from_secs(120)).await?,
    ));
    let kind = ApiResource::erase::<IdvClient>(&());
    let settling = Settling::start(b.admin, &ns, &token_selector(), &kind).await?;
    let clients: Api<IdvClient> = Api::namespaced(b.admin.clone(), &ns);
    objects::create(&clients, &objects::idv_client(&ns, WARM_UP, b.endpoint)).await?;
    let warm_up = Instant::now();
    settling
        .until_all(1, |_| {
            (warm_up.elapsed() > Duration::from_secs(60))
                .then(|| "warm-up: not Ready within 60 s".into())
        })
        .await?;

    let objects = names
        .iter()
        .map(|name| objects::idv_client(&ns, name, b.endpoint))
        .collect();
    let applied_at = std::sync::Mutex::new(Vec::with_capacity(n));
    let apply = objects::create_all(&clients, objects, b.cfg.parallelism, |_| {
        applied_at.lock().unwrap().push(Instant::now());
    });
    let api_before = clock(b, operator.pid(), &settling, n, apply, &applied_at, run)
        .await
        .map_err(|e| format!("{e}; operator log tail:\n{}", operator.inner.tail(30)))?;
    if let Some(seq) = sequential_s {
        run.ratio_sequential = run.all_ready_s.map(|t| t / seq);
    }
    let reconciles = async || operator.metric("idv_token_operator_reconciles_total").await;
    settle(b, operator.pid(), &settling, &api_before, reconciles, run).await?;
    run.operator_token_requests = operator
        .metric("idv_token_operator_token_requests_total")
        .await;
    if !samples.is_empty() {
        run.latency = Some(latency(b, &settling, &samples, &ns).await?);
    }
    let total = n + samples.len() + 1;
    operator.keep_log(&format!("{ns}-first"));
    let operator = restart(b, operator, &args, &ns, total, &settling, run).await?;
    run.idle = Some(idle(b, operator.pid()).await?);
    operator.keep_log(&format!("{ns}-restarted"));
    drop(operator);
    objects::remove_all(b.admin, &ns).await?;
    Ok(())
}

/// The clock: from the first apply of N objects (`apply`, at the apply parallelism) until the
/// bench's watches see every one `Ready=True` and every Secret; `pid` is the controller's.
/// Returns the apiserver's counts at the clock's start.
pub async fn clock(
    b: &Bench<'_>,
    pid: u32,
    settling: &Settling,
    n: usize,
    apply: impl std::future::Future<Output = Result<Duration, String>>,
    applied_at: &std::sync::Mutex<Vec<Instant>>,
    run: &mut Run,
) -> Result<measure::ApiCounts, String> {
    let ns = run.namespace.clone();
    measure::until_quiet().await;
    let (api_before, idp_before, cpu_before) = (
        measure::apiserver_counts(b.admin).await?,
        b.idp.total(),
        measure::cpu_now(Some(pid)),
    );
    run.loadavg = measure::loadavg();
    eprintln!(
        "bench: [{}] applying {n} objects, {} at a time (load {})",
        run.label(),
        b.cfg.parallelism,
        run.loadavg
    );
    let started = Instant::now();
    let deadline = b.cfg.converge_deadline();
    let hook = measure::PhaseHook::start(&format!(
        "{}-{n}-c{}-r{}",
        if run.who.is_empty() {
            "operator"
        } else {
            &run.who
        },
        run.concurrency,
        run.max_token_requests
    ));
    // The warm-up object is Ready already: n + 1 in all.
    let (applied, done) = tokio::join!(
        apply,
        settling.until_all(n + 1, |_| (started.elapsed() > deadline)
            .then(|| format!("not all Ready within {deadline:?}")))
    );
    hook.stop();
    run.clients_apply_s = secs(applied?);
    done?;
    let cpu = measure::cpu_now(Some(pid)) - cpu_before;
    let api = measure::diff(&measure::apiserver_counts(b.admin).await?, &api_before);
    let since = |at: Instant| secs(at.saturating_duration_since(started));
    let ready = settling.ready.times();
    let (last_ready, last_secret) = settling.finished();
    run.all_ready_s = last_ready.max(last_secret).map(since);
    run.secrets_s = last_secret.map(since);
    run.ready_p50_s = quantile(&ready, 0.5).map(since);
    run.ready_p90_s = quantile(&ready, 0.9).map(since);
    run.timeline = settling.timeline(started, &applied_at.lock().unwrap());
    run.rss_hwm_mib_ready = measure::vm_mib(pid, "VmHWM:");
    run.cpu_s_ready = Some(cpu.operator);
    run.cpu_ready = cpu_row(&cpu);
    run.api_converge = api;
    run.idp_requests = b.idp.total() - idp_before;
    run.idp_max_per_client = b.idp.stats(&format!("{ns}.")).max_per_client;
    run.applied_objects = n;
    eprintln!(
        "bench: [{}] all {n} Ready in {} s (apply took {:.2} s)",
        run.label(),
        crate::report::f(run.all_ready_s, 2),
        run.clients_apply_s,
    );
    Ok(api_before)
}

/// The value at quantile `q` of sorted times (the first of them is the warm-up).
fn quantile(times: &[Instant], q: f64) -> Option<Instant> {
    let times = times.get(1..)?;
    let at = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len().max(1)) - 1;
    times.get(at).copied()
}

fn cpu_row(cpu: &Cpu) -> crate::report::CpuRow {
    crate::report::CpuRow {
        apiserver_s: cpu.apiserver,
        etcd_s: cpu.etcd,
        bench_s: cpu.bench,
        machine_busy_percent: cpu.busy_percent(),
        machine_steal_percent: cpu.steal_percent(),
    }
}

/// After all-Ready: until the controller's reconcile counter (`reconciles`, read from its
/// /metrics) has not moved for 2 s and its Events are written (one per new object: the
/// operator writes them after every status, so they can trail by seconds at N = 10,000);
/// the apiserver's counts since `api_before`.
pub async fn settle(
    b: &Bench<'_>,
    pid: u32,
    settling: &Settling,
    api_before: &measure::ApiCounts,
    reconciles: impl AsyncFn() -> Option<f64>,
    run: &mut Run,
) -> Result<(), String> {
    let deadline = Instant::now() + b.cfg.settle_deadline();
    let (mut last, mut still_since) = (None, Instant::now());
    let mut quiet_at = Instant::now();
    loop {
        let count = reconciles().await;
        if count != last {
            (last, still_since) = (count, Instant::now());
        }
        if still_since.elapsed() >= Duration::from_secs(2) {
            // Events: from the apiserver's counts (a large scrape, so only once quiet).
            let api = measure::diff(&measure::apiserver_counts(b.admin).await?, api_before);
            if api.get("POST events").copied().unwrap_or_default() >= run.applied_objects as f64 {
                break;
            }
            quiet_at = Instant::now();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "settle: not quiet within {:?}",
                b.cfg.settle_deadline()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_at = settling.finished().0.unwrap_or(still_since);
    // Settled: the later of the last reconcile and the last Event.
    let settled_at = still_since.max(quiet_at);
    run.settle_extra_s = Some(secs(settled_at.saturating_duration_since(ready_at)));
    run.rss_hwm_mib_settled = measure::vm_mib(pid, "VmHWM:");
    run.operator_reconciles = last;
    run.api_settle = measure::diff(&measure::apiserver_counts(b.admin).await?, api_before);
    Ok(())
}

async fn latency(
    b: &Bench<'_>,
    settling: &Settling,
    samples: &[String],
    ns: &str,
) -> Result<Latency, String> {
    let clients: Api<IdvClient> = Api::namespaced(b.admin.clone(), ns);
    let mut millis = Vec::new();
    for name in samples {
        let started = Instant::now();
        objects::create(&clients, &objects::idv_client(ns, name, b.endpoint)).await?;
        let deadline = started + Duration::from_secs(30);
        let ready_at = loop {
            if let (Some(ready), Some(_)) = (
                settling.ready.first(name),
                settling.secrets.first(&format!("{name}-token")),
            ) {
                break ready;
            }
            if Instant::now() > deadline {
                return Err(format!("single apply: {name} not Ready within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        millis.push(secs(ready_at.saturating_duration_since(started)) * 1000.0);
    }
    Ok(Latency::of(millis))
}

async fn restart(
    b: &Bench<'_>,
    mut operator: Running,
    args: &[String],
    ns: &str,
    total: usize,
    settling: &Settling,
    run: &mut Run,
) -> Result<Running, String> {
    let (api_before, idp_before) = (measure::apiserver_counts(b.admin).await?, b.idp.total());
    let stopping = Instant::now();
    let clean = operator.inner.process.terminate(Duration::from_secs(30));
    let mut restart = Restart {
        shutdown_s: secs(stopping.elapsed()),
        shutdown_clean: clean,
        ..Restart::default()
    };
    drop(operator);
    let started = Instant::now();
    let restart_at = jiff::Timestamp::now();
    let mut operator = Running::start(b.kubeconfig, args, &[]);
    let pid = operator.pid();
    let cpu_before = measure::cpu_now(Some(pid));
    let deadline = started + b.cfg.restart_deadline();
    loop {
        let elapsed = secs(started.elapsed());
        if restart.readyz_s.is_none() && operator.ready().await {
            restart.readyz_s = Some(elapsed);
        }
        if restart.all_reconciled_s.is_none()
            && operator
                .clients_with_token(ns)
                .await
                .is_some_and(|k| k >= total)
        {
            restart.all_reconciled_s = Some(elapsed);
        }
        if started.elapsed() >= b.cfg.restart_window
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
        tokio::time::sleep(Duration::from_millis(
            if restart.all_reconciled_s.is_some() {
                500
            } else {
                50
            },
        ))
        .await;
    }
    restart.secret_gets = secret_gets(b.plane, ns, restart_at);
    let scrape = operator.scrape().await.ok_or("restart: no /metrics")?;
    restart.operator_reconciles = Some(scrape.sum("idv_token_operator_reconciles_total"));
    restart.operator_token_requests = Some(scrape.sum("idv_token_operator_token_requests_total"));
    restart.window_s = secs(started.elapsed());
    restart.idp_requests = b.idp.total() - idp_before;
    restart.all_ready_true = settling.ready.count() >= total;
    restart.api = measure::diff(&measure::apiserver_counts(b.admin).await?, &api_before);
    restart.api_writes = measure::writes(&restart.api);
    restart.api_operator_writes = measure::controller_writes(&restart.api);
    restart.rss_hwm_mib = measure::vm_mib(pid, "VmHWM:");
    restart.operator_cpu_s = (measure::cpu_now(Some(pid)) - cpu_before).operator;
    eprintln!(
        "bench: [{}/{}] restart: all {total} reconciled after {} s; {} IdP requests",
        run.concurrency,
        run.max_token_requests,
        crate::report::f(restart.all_reconciled_s, 2),
        restart.idp_requests
    );
    run.restart = Some(restart);
    Ok(operator)
}

/// A quiet window: what the controller (`pid`) and the apiserver do meanwhile.
pub async fn idle(b: &Bench<'_>, pid: u32) -> Result<Idle, String> {
    let (api_before, idp_before, cpu_before) = (
        measure::apiserver_counts(b.admin).await?,
        b.idp.total(),
        measure::cpu_now(Some(pid)),
    );
    let started = Instant::now();
    // Idle is the measurement here: nothing to poll for.
    tokio::time::sleep(b.cfg.idle_window).await;
    let cpu = measure::cpu_now(Some(pid)) - cpu_before;
    let api = measure::diff(&measure::apiserver_counts(b.admin).await?, &api_before);
    Ok(Idle {
        seconds: secs(started.elapsed()),
        api_writes: measure::writes(&api),
        api_operator_writes: measure::controller_writes(&api),
        api,
        idp_requests: b.idp.total() - idp_before,
        operator_cpu_s: cpu.operator,
        apiserver_cpu_s: cpu.apiserver,
        etcd_cpu_s: cpu.etcd,
        rss_mib: measure::vm_mib(pid, "VmRSS:"),
    })
}

/// The operator's Secret GETs in `ns` since `since`, from the apiserver's audit log: how many
/// of key Secrets (`-jwk`), of token Secrets (`-token`), of others.
fn secret_gets(plane: &ControlPlane, ns: &str, since: jiff::Timestamp) -> [usize; 3] {
    let mut gets = [0; 3];
    for event in plane.audit_events() {
        if event.stage() != "ResponseComplete"
            || event.verb() != "get"
            || event.resource() != "secrets"
            || event.namespace() != ns
            || event.completed_at() < since
        {
            continue;
        }
        let name = event.name();
        gets[if name.ends_with("-jwk") {
            0
        } else if name.ends_with("-token") {
            1
        } else {
            2
        }] += 1;
    }
    gets
}
