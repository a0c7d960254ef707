//! Refresh spread: N tokens issued within seconds (as after an outage or a first rollout),
//! then the IdP's request rate over the following refresh cycle, in 10-s bins: a herd shows
//! as one tall bin; jitter should flatten it. A short token lifetime keeps the phase short.

use std::time::{Duration, Instant};

use idv_token_operator::api::IdvClient;
use kube::{Api, api::ApiResource};

use crate::{
    config::DEFAULT_SETTING,
    objects,
    operator::Running,
    phases::{Bench, operator_args},
    report::Spread,
    watches::Settling,
};

const BIN: Duration = Duration::from_secs(10);

pub async fn run(b: &Bench<'_>, lifetime: Duration) -> Result<Spread, String> {
    let (n, (c, r)) = (b.cfg.clients, DEFAULT_SETTING);
    let ns = "bench-spread";
    b.idp.record(&format!("{ns}."), lifetime);
    objects::create_namespace(b.admin, ns).await?;
    let names = objects::names(n);
    objects::apply_keys(b.admin, ns, &names, b.cfg.parallelism).await?;
    let mut operator = Running::start(b.kubeconfig, &operator_args(ns, c, r), &[]);
    let kind = ApiResource::erase::<IdvClient>(&());
    let settling = Settling::start(b.admin, ns, &crate::phases::token_selector(), &kind).await?;
    let clients: Api<IdvClient> = Api::namespaced(b.admin.clone(), ns);
    let objects = names
        .iter()
        .map(|name| objects::idv_client(ns, name, b.endpoint))
        .collect();
    eprintln!("bench: spread: {n} IdvClients, token lifetime {lifetime:?}, operator {c}/{r}");
    objects::create_all(&clients, objects, b.cfg.parallelism, |_| {}).await?;
    let started = Instant::now();
    let deadline = b.cfg.converge_deadline();
    settling
        .until_all(n, |_| {
            (started.elapsed() > deadline)
                .then(|| format!("spread: not all Ready within {deadline:?}"))
        })
        .await?;
    let first = b.idp.timeline(&format!("{ns}."));
    let (Some(&burst_start), Some(&burst_end)) = (first.first(), first.get(n - 1)) else {
        return Err(format!(
            "spread: {} first tokens recorded, {n} expected",
            first.len()
        ));
    };
    // The cycle: one refresh interval (2/3 of the lifetime) after the last first token, plus
    // one bin for the whole-second rounding of refresh times.
    let interval = lifetime * 2 / 3;
    let window = interval + BIN;
    let window_end = burst_end + window;
    eprintln!(
        "bench: spread: burst of {n} in {:.1}s; watching the IdP for {window:?}",
        (burst_end - burst_start).as_secs_f64()
    );
    while Instant::now() < window_end {
        if !operator.inner.process.is_running() {
            return Err("spread: the operator exited".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let times = b.idp.timeline(&format!("{ns}."));
    let bins = bins(&times, burst_end, window);
    let total: usize = bins.iter().sum();
    let mean = total as f64 / bins.len() as f64;
    let peak = bins.iter().copied().max().unwrap_or_default();
    drop(operator);
    Ok(Spread {
        setting: format!("{c}/{r}"),
        clients: n,
        lifetime_s: lifetime.as_secs(),
        interval_s: interval.as_secs(),
        burst_s: (burst_end - burst_start).as_secs_f64(),
        window_s: window.as_secs(),
        requests_in_window: total,
        bins,
        mean_per_bin: mean,
        peak_bin: peak,
        ratio: if mean > 0.0 { peak as f64 / mean } else { 0.0 },
    })
}

/// Requests in each 10-s bin of `[start, start + window)`; the request at `start` itself (the
/// last first token) is not part of the cycle.
fn bins(times: &[Instant], start: Instant, window: Duration) -> Vec<usize> {
    let count = window.as_secs().div_ceil(BIN.as_secs()) as usize;
    let mut bins = vec![0; count];
    for t in times.iter().filter(|t| **t > start) {
        let i = (t.duration_since(start).as_secs() / BIN.as_secs()) as usize;
        if let Some(bin) = bins.get_mut(i) {
            *bin += 1;
        }
    }
    bins
}
