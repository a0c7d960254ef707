//! An operator process under measurement: started with the bench's arguments, read through
//! its /metrics and /readyz.

use std::path::Path;

use crate::{measure::Scrape, support::Operator};

pub struct Running {
    pub inner: Operator,
    metrics_port: u16,
    health_port: u16,
}

impl Running {
    /// `extra_env`: debugging (`BENCH_OPERATOR_ENV`).
    pub fn start(kubeconfig: &Path, args: &[String], extra_env: &[(String, String)]) -> Running {
        // info: one line per token, none per reconcile (counts come from /metrics).
        let log = std::env::var("IDV_TEST_OPERATOR_LOG").unwrap_or_else(|_| "info".into());
        let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", log.as_str())];
        env.extend(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let inner = Operator::start_with_env(kubeconfig, &args, &env);
        // The harness waits (blocking, up to 10 s) for the operator to log its ports.
        let (metrics_port, health_port) =
            tokio::task::block_in_place(|| (inner.metrics_port(), inner.health_port()));
        Running {
            inner,
            metrics_port,
            health_port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.process.pid()
    }

    pub async fn scrape(&self) -> Option<Scrape> {
        match self.inner.get(self.metrics_port, "/metrics").await? {
            (200, body) => Some(Scrape(body)),
            _ => None,
        }
    }

    /// A sum on /metrics (None while it does not answer).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        Some(self.scrape().await?.sum(name))
    }

    /// IdvClients of `ns` this process has seen with a valid token: one expiry series each.
    pub async fn clients_with_token(&self, ns: &str) -> Option<usize> {
        let scrape = self.scrape().await?;
        Some(
            scrape.series_where("idv_token_operator_token_expiry_timestamp_seconds", |l| {
                l.get("namespace").is_some_and(|v| v == ns)
            }),
        )
    }

    pub async fn ready(&self) -> bool {
        matches!(
            self.inner.get(self.health_port, "/readyz").await,
            Some((200, _))
        )
    }

    /// With `BENCH_LOG_DIR`, keep the output as `<dir>/<name>.log`.
    pub fn keep_log(&self, name: &str) {
        if let Some(dir) = std::env::var_os("BENCH_LOG_DIR") {
            let path = Path::new(&dir).join(format!("{name}.log"));
            let _ = std::fs::create_dir_all(&dir);
            if let Err(e) = std::fs::write(&path, self.inner.output()) {
                eprintln!("bench: cannot write {}: {e}", path.display());
            }
        }
    }
}

/// Debugging aid: `BENCH_OPERATOR_ENV="K=V,K=V"` adds variables to the environment of the
/// first operator process of each setting ("{ns}" in a value becomes its namespace), e.g. to
/// run it under heaptrack's preload library.
pub fn debugging_env(ns: &str) -> Vec<(String, String)> {
    let Ok(spec) = std::env::var("BENCH_OPERATOR_ENV") else {
        return Vec::new();
    };
    spec.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.replace("{ns}", ns)))
        .collect()
}
