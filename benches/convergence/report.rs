//! The results (also written as JSON with `BENCH_JSON`) and the Markdown summary.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    baseline::Bare,
    config::Config,
    measure::{self, ApiCounts},
};

#[derive(Debug, Default, Clone, Serialize)]
pub struct CpuRow {
    pub apiserver_s: f64,
    pub etcd_s: f64,
    pub bench_s: f64,
    pub machine_busy_percent: f64,
    pub machine_steal_percent: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut millis: Vec<f64>) -> Latency {
        millis.sort_by(f64::total_cmp);
        let at =
            |q: f64| millis[((millis.len() as f64 * q).ceil() as usize).clamp(1, millis.len()) - 1];
        Latency {
            samples: millis.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Restart {
    pub shutdown_s: f64,
    pub shutdown_clean: bool,
    pub readyz_s: Option<f64>,
    /// Every client has a token again in the new process's view (its expiry series).
    pub all_reconciled_s: Option<f64>,
    pub all_ready_true: bool,
    pub idp_requests: u64,
    pub window_s: f64,
    pub api: ApiCounts,
    pub api_writes: f64,
    pub api_operator_writes: f64,
    /// The operator's Secret GETs (audit log): key Secrets, token Secrets, others.
    pub secret_gets: [usize; 3],
    pub rss_hwm_mib: Option<f64>,
    pub operator_cpu_s: f64,
    pub operator_reconciles: Option<f64>,
    pub operator_token_requests: Option<f64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub api: ApiCounts,
    pub api_writes: f64,
    pub api_operator_writes: f64,
    pub idp_requests: u64,
    pub operator_cpu_s: f64,
    pub apiserver_cpu_s: f64,
    pub etcd_cpu_s: f64,
    pub rss_mib: Option<f64>,
}

/// One column of the table: the operator at one setting, or the peer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Run {
    pub who: String,
    pub concurrency: u16,
    pub max_token_requests: usize,
    pub namespace: String,
    pub loadavg: String,
    /// The minimal concurrent bare work.
    pub bare: Option<Bare>,
    /// The concurrent bare work with the operator's objects and watches.
    pub bare_same_objects: Option<Bare>,
    /// The minimal concurrent bare work written as the admin (`BENCH_BARE_AS=both`).
    pub bare_as_admin: Option<Bare>,
    pub keys_apply_s: f64,
    pub readyz_s: Option<f64>,
    /// The apply of N objects, inside the clock.
    pub clients_apply_s: f64,
    /// The user's own creates in the window ("POST idvclients"...), left out of per-object counts.
    pub user_requests: Vec<String>,
    pub applied_objects: usize,
    pub all_ready_s: Option<f64>,
    pub secrets_s: Option<f64>,
    pub ready_p50_s: Option<f64>,
    pub ready_p90_s: Option<f64>,
    /// `[seconds, applied, Secrets, Ready]` every 0.5 s of the clock (`Settling::timeline`).
    pub timeline: Vec<[f64; 4]>,
    pub ratio_concurrent: Option<f64>,
    pub ratio_same_objects: Option<f64>,
    pub ratio_as_admin: Option<f64>,
    pub ratio_sequential: Option<f64>,
    pub rss_hwm_mib_ready: Option<f64>,
    pub rss_hwm_mib_settled: Option<f64>,
    pub cpu_s_ready: Option<f64>,
    pub cpu_ready: CpuRow,
    pub settle_extra_s: Option<f64>,
    pub idp_requests: u64,
    pub idp_max_per_client: u64,
    pub operator_reconciles: Option<f64>,
    pub operator_token_requests: Option<f64>,
    pub api_converge: ApiCounts,
    pub api_settle: ApiCounts,
    pub latency: Option<Latency>,
    pub restart: Option<Restart>,
    pub idle: Option<Idle>,
    pub error: Option<String>,
}

impl Run {
    pub fn label(&self) -> String {
        match self.who.as_str() {
            "" => format!("C/R = {}/{}", self.concurrency, self.max_token_requests),
            who => format!("{who} (concurrent {})", self.concurrency),
        }
    }

    /// apiserver resource requests per object in a window, the user's own creates left out.
    fn per_object(&self, api: &ApiCounts) -> f64 {
        let user: f64 = self.user_requests.iter().filter_map(|k| api.get(k)).sum();
        (measure::resource_requests(api) - user) / self.applied_objects.max(1) as f64
    }
}

/// The refresh spread: IdP requests over the refresh cycle after N tokens issued at once.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Spread {
    pub setting: String,
    pub clients: usize,
    pub lifetime_s: u64,
    /// The refresh interval the operator aims at (2/3 of the lifetime).
    pub interval_s: u64,
    /// First to last first token.
    pub burst_s: f64,
    pub window_s: u64,
    pub requests_in_window: usize,
    pub bins: Vec<usize>,
    pub mean_per_bin: f64,
    pub peak_bin: usize,
    pub ratio: f64,
}

/// What one kind of apiserver request costs, measured alone and sequentially.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RequestCost {
    pub what: String,
    pub requests: usize,
    pub wall_ms: f64,
    pub apiserver_cpu_ms: f64,
    pub etcd_cpu_ms: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub clients: usize,
    pub commit: String,
    pub machine: BTreeMap<String, String>,
    pub setup_s: BTreeMap<String, f64>,
    pub sequential: Option<Bare>,
    pub runs: Vec<Run>,
    pub spread: Option<Spread>,
    /// Token requests the endpoint refused (a malformed request: should stay 0).
    pub idp_rejected: u64,
    pub profile: Vec<RequestCost>,
    pub error: Option<String>,
}

pub fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

fn verbs_per_object(run: &Run, counts: &ApiCounts) -> String {
    let n = run.applied_objects.max(1) as f64;
    let mut verbs = measure::by_verb(counts);
    for key in &run.user_requests {
        let verb = key.split(' ').next().unwrap_or_default();
        if let (Some(v), Some(user)) = (verbs.get_mut(verb), counts.get(key)) {
            *v -= user;
        }
    }
    verbs
        .iter()
        // Leave out what rounds to nothing (kube-apiserver's own Lease renewal, a relist).
        .filter(|(_, v)| **v / n >= 0.005)
        .map(|(verb, v)| format!("{verb} {:.2}", v / n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Markdown table, one column per run.
struct Table<'a> {
    out: String,
    runs: &'a [Run],
}

impl Table<'_> {
    fn row(&mut self, name: &str, cell: impl Fn(&Run) -> String) {
        let _ = write!(self.out, "| {name} |");
        for run in self.runs {
            let _ = write!(self.out, " {} |", cell(run));
        }
        let _ = writeln!(self.out);
    }
}

fn header(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## idv-token-operator benchmark, N = {} (commit {})\n",
        report.clients, report.commit
    );
    for (k, v) in &report.machine {
        let _ = writeln!(out, "- {k}: {v}");
    }
    for (k, v) in &report.setup_s {
        let _ = writeln!(out, "- setup ({k}): {v:.1} s");
    }
    if let Some(bare) = &report.sequential {
        let _ = writeln!(
            out,
            "- sequential bare baseline: {:.2} s for {} (token request + Secret create, one after the other) = {:.2} ms per client; kube-apiserver CPU {:.1} s; machine {:.0}% busy; load {}",
            bare.seconds,
            report.clients,
            bare.per_client_ms,
            bare.apiserver_cpu_s,
            bare.machine_busy_percent,
            bare.loadavg
        );
    }
    out
}

fn convergence_rows(t: &mut Table, rss_target: f64) {
    t.row("load average at the clock's start", |r| {
        r.loadavg.split(' ').take(3).collect::<Vec<_>>().join(" ")
    });
    t.row("concurrent bare baseline (s; workers)", |r| {
        r.bare
            .as_ref()
            .map(|b| format!("{:.2} ({})", b.seconds, b.width))
            .unwrap_or("-".into())
    });
    t.row(
        "apply → all N Ready=True with Secrets (s) [p50 / p90 Ready]",
        |r| {
            format!(
                "{} [{} / {}]",
                f(r.all_ready_s, 2),
                f(r.ready_p50_s, 2),
                f(r.ready_p90_s, 2)
            )
        },
    );
    t.row(
        "… of which the apply of N objects (s); the N-th Secret (s)",
        |r| format!("{:.2}; {}", r.clients_apply_s, f(r.secrets_s, 2)),
    );
    t.row(
        "**ratio to the concurrent bare work — target <= 1.1**",
        |r| {
            format!(
                "**{}** ({})",
                f(r.ratio_concurrent, 2),
                mark(r.ratio_concurrent.map(|x| x <= 1.1))
            )
        },
    );
    t.row(
        "concurrent bare baseline with the operator's objects and watches (s); ratio to it",
        |r| {
            r.bare_same_objects.as_ref().map_or("-".into(), |b| {
                format!("{:.2}; {}", b.seconds, f(r.ratio_same_objects, 2))
            })
        },
    );
    if t.runs.iter().any(|r| r.bare_as_admin.is_some()) {
        t.row(
            "minimal concurrent bare baseline written as the admin (s); ratio to it",
            |r| {
                r.bare_as_admin.as_ref().map_or("-".into(), |b| {
                    format!("{:.2}; {}", b.seconds, f(r.ratio_as_admin, 2))
                })
            },
        );
    }
    t.row("ratio to the sequential bare work", |r| {
        f(r.ratio_sequential, 2)
    });
    t.row(
        &format!("peak RSS, VmHWM (MiB) at all-Ready / settled — target <= {rss_target:.0}"),
        |r| {
            format!(
                "{} / {} ({})",
                f(r.rss_hwm_mib_ready, 1),
                f(r.rss_hwm_mib_settled, 1),
                mark(r.rss_hwm_mib_settled.map(|x| x <= rss_target))
            )
        },
    );
    t.row(
        "CPU (s) to all-Ready: controller / kube-apiserver / etcd / bench",
        |r| {
            let c = &r.cpu_ready;
            format!(
                "{} / {:.1} / {:.1} / {:.1}",
                f(r.cpu_s_ready, 2),
                c.apiserver_s,
                c.etcd_s,
                c.bench_s
            )
        },
    );
    t.row("machine busy to all-Ready (steal)", |r| {
        format!(
            "{:.0}% ({:.0}%)",
            r.cpu_ready.machine_busy_percent, r.cpu_ready.machine_steal_percent
        )
    });
    t.row("IdP requests per object to all-Ready (most for one)", |r| {
        format!(
            "{:.2} ({})",
            r.idp_requests as f64 / r.applied_objects.max(1) as f64,
            r.idp_max_per_client
        )
    });
    t.row(
        "apiserver requests per object, to all-Ready / to settled (the apply left out)",
        |r| {
            format!(
                "{:.2} / {:.2}",
                r.per_object(&r.api_converge),
                r.per_object(&r.api_settle)
            )
        },
    );
    t.row("… by verb, to settled", |r| {
        verbs_per_object(r, &r.api_settle)
    });
    t.row("reconciles / token requests on /metrics, settled", |r| {
        format!(
            "{} / {}",
            f(r.operator_reconciles, 0),
            f(r.operator_token_requests, 0)
        )
    });
}

fn after_rows(t: &mut Table, cfg: &Config) {
    t.row(&format!("single apply → Ready while N exist, p50 / p99 / max (ms, {} samples) — target <= 250 / 1000", cfg.latency_samples), |r| {
        r.latency
            .as_ref()
            .map(|l| format!("{:.0} / {:.0} / {:.0} ({})", l.p50_ms, l.p99_ms, l.max_ms, mark(Some(l.p50_ms <= 250.0 && l.p99_ms <= 1000.0))))
            .unwrap_or("-".into())
    });
    t.row(
        "restart: SIGTERM to exit / /readyz / every object reconciled (s)",
        |r| {
            r.restart
                .as_ref()
                .map(|x| {
                    format!(
                        "{:.2}{} / {} / {}",
                        x.shutdown_s,
                        if x.shutdown_clean { "" } else { " (killed)" },
                        f(x.readyz_s, 2),
                        f(x.all_reconciled_s, 2)
                    )
                })
                .unwrap_or("-".into())
        },
    );
    t.row(
        &format!(
            "restart: IdP requests in {} s — target 0",
            cfg.restart_window.as_secs()
        ),
        |r| {
            r.restart
                .as_ref()
                .map(|x| format!("{} ({})", x.idp_requests, mark(Some(x.idp_requests == 0))))
                .unwrap_or("-".into())
        },
    );
    t.row(
        "restart: apiserver requests per object — target <= 0.05; Secret GETs (audit log); writes (controller's / all)",
        |r| {
            r.restart
                .as_ref()
                .map(|x| {
                    let per = measure::resource_requests(&x.api) / r.applied_objects.max(1) as f64;
                    let [keys, tokens, other] = x.secret_gets;
                    format!(
                        "{per:.3} ({}); GET key / token / other Secrets {keys} / {tokens} / {other}; {} / {}",
                        mark(Some(per <= 0.05)),
                        x.api_operator_writes,
                        x.api_writes
                    )
                })
                .unwrap_or("-".into())
        },
    );
    t.row(
        "restart: peak RSS (MiB) / CPU (s) of the new process",
        |r| {
            r.restart
                .as_ref()
                .map(|x| format!("{} / {:.2}", f(x.rss_hwm_mib, 1), x.operator_cpu_s))
                .unwrap_or("-".into())
        },
    );
    t.row(
        &format!(
            "idle {} s: writes (controller's / all) — target 0; IdP requests — target 0",
            cfg.idle_window.as_secs()
        ),
        |r| {
            r.idle
                .as_ref()
                .map(|x| {
                    let ok = x.api_operator_writes == 0.0 && x.idp_requests == 0;
                    format!(
                        "{} / {}; {} ({})",
                        x.api_operator_writes,
                        x.api_writes,
                        x.idp_requests,
                        mark(Some(ok))
                    )
                })
                .unwrap_or("-".into())
        },
    );
    t.row("idle: controller CPU (s); RSS (MiB)", |r| {
        r.idle
            .as_ref()
            .map(|x| format!("{:.2}; {}", x.operator_cpu_s, f(x.rss_mib, 1)))
            .unwrap_or("-".into())
    });
}

fn peer_rows(out: &mut String, runs: &[Run]) {
    let Some(peer) = runs.iter().find(|r| !r.who.is_empty()) else {
        return;
    };
    let Some(ours) = runs
        .iter()
        .find(|r| r.who.is_empty() && r.concurrency == peer.concurrency)
    else {
        let _ = writeln!(
            out,
            "\n(no operator run at concurrency {} to compare the peer with)",
            peer.concurrency
        );
        return;
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let time = ratio(ours.all_ready_s, peer.all_ready_s);
    let rss = ratio(ours.rss_hwm_mib_settled, peer.rss_hwm_mib_settled);
    let (req_ours, req_peer) = (
        ours.per_object(&ours.api_settle),
        peer.per_object(&peer.api_settle),
    );
    let restart = ours
        .restart
        .as_ref()
        .map(|x| measure::resource_requests(&x.api) / ours.applied_objects.max(1) as f64);
    let _ = writeln!(
        out,
        "\nSide by side, {} vs {}:\n",
        ours.label(),
        peer.label()
    );
    let _ = writeln!(out, "| | target | result |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| time to all-Ready, ours / peer | <= 0.7 | {} ({}) |",
        f(time, 2),
        mark(time.map(|x| x <= 0.7))
    );
    let _ = writeln!(
        out,
        "| peak RSS, ours / peer | <= 0.3 | {} ({}) |",
        f(rss, 2),
        mark(rss.map(|x| x <= 0.3))
    );
    let _ = writeln!(
        out,
        "| apiserver requests per object to settled, ours vs peer | <= peer | {req_ours:.2} vs {req_peer:.2} ({}) |",
        mark(Some(req_ours <= req_peer + 0.005))
    );
    let _ = writeln!(
        out,
        "| restart requests per object, ours | <= 0.05 | {} ({}) |",
        f(restart, 3),
        mark(restart.map(|x| x <= 0.05))
    );
}

fn spread_rows(out: &mut String, spread: &Spread) {
    let _ = writeln!(
        out,
        "\nRefresh spread ({}, {} clients, token lifetime {} s, refresh interval {} s): burst of first tokens {:.1} s; {} IdP requests in the {} s after it; 10-s bins: {:?}; peak {} vs mean {:.1} = **{:.2}x** — target <= 2 ({})",
        spread.setting,
        spread.clients,
        spread.lifetime_s,
        spread.interval_s,
        spread.burst_s,
        spread.requests_in_window,
        spread.window_s,
        spread.bins,
        spread.peak_bin,
        spread.mean_per_bin,
        spread.ratio,
        mark(Some(spread.ratio <= 2.0))
    );
}

fn api_detail(out: &mut String, run: &Run) {
    let _ = writeln!(
        out,
        "\napiserver requests, {} (start to settled [mean apiserver latency, ms] | restart window | idle window):",
        run.label()
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
            "  {key:<44} {:>8} [{:>6}] | {:>8} | {:>6}",
            get(Some(&run.api_settle)),
            f(measure::latency_ms(&run.api_settle, key), 1),
            get(run.restart.as_ref().map(|x| &x.api)),
            get(run.idle.as_ref().map(|x| &x.api))
        );
    }
    if let Some(e) = &run.error {
        let _ = writeln!(out, "  ERROR: {e}");
    }
}

fn profile_rows(out: &mut String, profile: &[RequestCost]) {
    if profile.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nCost of each request kind, alone, sequential (per request):\n"
    );
    let _ = writeln!(
        out,
        "| request | n | wall (ms) | kube-apiserver CPU (ms) | etcd CPU (ms) |\n|---|---|---|---|---|"
    );
    for c in profile {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            c.what, c.requests, c.wall_ms, c.apiserver_cpu_ms, c.etcd_cpu_ms
        );
    }
}

pub fn summary(report: &Report, cfg: &Config) -> String {
    let rss_target = if report.clients <= 1000 { 64.0 } else { 100.0 };
    let mut out = header(report);
    let mut table = Table {
        out: String::new(),
        runs: &report.runs,
    };
    let _ = write!(table.out, "\n| |");
    for run in &report.runs {
        let _ = write!(table.out, " {} |", run.label());
    }
    let _ = writeln!(table.out, "\n|---|{}", "---|".repeat(report.runs.len()));
    convergence_rows(&mut table, rss_target);
    after_rows(&mut table, cfg);
    out.push_str(&table.out);
    peer_rows(&mut out, &report.runs);
    if let Some(spread) = &report.spread {
        spread_rows(&mut out, spread);
    }
    for run in &report.runs {
        api_detail(&mut out, run);
    }
    profile_rows(&mut out, &report.profile);
    let _ = writeln!(
        out,
        "\nToken requests the endpoint refused: {}",
        report.idp_rejected
    );
    if let Some(e) = &report.error {
        let _ = writeln!(out, "\nERROR: {e}");
    }
    out
}
