//! The bench's knobs, from the environment (see docs/benchmarks.md).

use std::time::Duration;

pub struct Config {
    pub clients: usize,
    /// Operator settings to measure: (`--concurrency`, `--max-concurrent-token-requests`).
    pub settings: Vec<(u16, usize)>,
    /// Parallel creates when applying key Secrets and IdvClients (the "user" applying them).
    pub parallelism: usize,
    pub restart_window: Duration,
    pub idle_window: Duration,
    pub deadline: Duration,
    /// Single applies measured while N IdvClients exist (0: skip).
    pub latency_samples: usize,
    /// Token lifetime of the refresh-spread phase (None: skip the phase).
    pub spread_lifetime: Option<Duration>,
    /// `eso`: External Secrets Operator side by side.
    pub peer: Option<String>,
    pub profile: bool,
    /// The concurrent bare baseline also holds the watches a controller holds (its objects,
    /// its Secrets): what an operator cannot avoid, apart from what it does.
    pub bare_watches: bool,
    /// Who the concurrent bare workers write as.
    pub bare_as: BareAs,
    /// Which concurrent bare baselines each setting measures.
    pub bare_objects: BareObjects,
    pub json: Option<String>,
}

/// Who the concurrent bare workers write as: the operator's ServiceAccount (what the operator
/// pays: token authentication, RBAC, the owner-reference permission check, the audit policy
/// that logs its Secret requests) or the admin (a client certificate in `system:masters`,
/// none of those). `Both`: as the operator, and the minimal work once more as the admin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BareAs {
    Operator,
    Admin,
    Both,
}

/// The concurrent bare baselines: `Minimal` writes the least a script could (the issue's
/// baseline); `Operator` writes objects shaped like the operator's (bookkeeping annotations,
/// owner reference, the status's extra fields) beside N key Secrets, and holds a controller's
/// watches: the same stored and watched work without a controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BareObjects {
    Minimal,
    Operator,
    Both,
}

impl BareObjects {
    pub fn minimal(self) -> bool {
        self != BareObjects::Operator
    }

    pub fn operator_shaped(self) -> bool {
        self != BareObjects::Minimal
    }
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not valid")),
        _ => default,
    }
}

/// `C/R,C/R…`; `none` measures no operator setting (e.g. only the refresh spread).
fn parse_settings(text: &str) -> Vec<(u16, usize)> {
    if text.trim() == "none" {
        return Vec::new();
    }
    text.split(',')
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
        .collect()
}

/// The operator's shipped defaults (`run --help`): `--concurrency 8`, 8 token requests.
pub const DEFAULT_SETTING: (u16, usize) = (8, 8);

impl Config {
    pub fn from_env() -> Config {
        let clients: usize = env_or("BENCH_CLIENTS", 1000);
        assert!(clients > 0, "BENCH_CLIENTS must be positive");
        let peer = std::env::var("BENCH_PEER")
            .ok()
            .filter(|p| !p.trim().is_empty());
        if let Some(peer) = &peer {
            assert!(peer == "eso", "BENCH_PEER={peer:?}: the only peer is eso");
        }
        let spread_secs: u64 = env_or("BENCH_SPREAD_LIFETIME_SECS", 240);
        let latency_samples = env_or("BENCH_LATENCY_SAMPLES", 50);
        let settings = parse_settings(&env_or("BENCH_SETTINGS", "8/8,8/8,32/32,32/32".to_string()));
        // Each phase has its own deadline; this one bounds the whole run whatever happens.
        let phases = settings.len() as u64 + u64::from(peer.is_some()) + 2;
        let deadline = Duration::from_secs(env_or(
            "BENCH_DEADLINE_SECS",
            300 * phases + spread_secs + (clients as u64 * 6 * phases) / 100,
        ));
        Config {
            clients,
            settings,
            parallelism: env_or("BENCH_APPLY_PARALLELISM", 16),
            restart_window: Duration::from_secs(env_or("BENCH_RESTART_SECS", 60)),
            idle_window: Duration::from_secs(env_or("BENCH_IDLE_SECS", 60)),
            deadline,
            latency_samples,
            spread_lifetime: (spread_secs > 0).then(|| Duration::from_secs(spread_secs)),
            peer,
            profile: env_or("BENCH_PROFILE", 0) == 1,
            bare_watches: env_or("BENCH_BARE_WATCHES", 0) == 1,
            bare_as: match env_or("BENCH_BARE_AS", "operator".to_string()).as_str() {
                "operator" => BareAs::Operator,
                "admin" => BareAs::Admin,
                "both" => BareAs::Both,
                other => panic!("BENCH_BARE_AS={other:?}: operator, admin or both"),
            },
            bare_objects: match env_or("BENCH_BARE_OBJECTS", "both".to_string()).as_str() {
                "minimal" => BareObjects::Minimal,
                "operator" => BareObjects::Operator,
                "both" => BareObjects::Both,
                other => panic!("BENCH_BARE_OBJECTS={other:?}: minimal, operator or both"),
            },
            json: std::env::var("BENCH_JSON").ok().filter(|s| !s.is_empty()),
        }
    }

    /// Time allowed from the first apply until all N are Ready with their Secrets.
    pub fn converge_deadline(&self) -> Duration {
        Duration::from_secs(60 + (self.clients as u64 * 6) / 100)
    }

    /// Time allowed after all-Ready for the operator to go quiet.
    pub fn settle_deadline(&self) -> Duration {
        Duration::from_secs(60 + self.clients as u64 / 100)
    }

    /// Time allowed after a restart for every IdvClient to be reconciled again.
    pub fn restart_deadline(&self) -> Duration {
        self.restart_window
            .max(Duration::from_secs(30 + self.clients as u64 / 50))
    }
}
