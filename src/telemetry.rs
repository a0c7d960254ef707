//! Logging setup: `RUST_LOG` filtering, text or JSON lines on stderr.

use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// kube-client logs whole response bodies when one does not parse (`warn!("{text}, {e:?}")`
/// in `kube_client::client`: a Secret, private key included) and when an error body is not a
/// Status (at debug). Only errors of that module are let through, unless `RUST_LOG` names
/// `kube_client` itself: whoever does so is debugging the client on purpose.
const QUIET_KUBE_CLIENT: &str = "kube_client::client=error";

/// The filter for a `RUST_LOG` value (`None`: unset); an invalid value means `info`.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let filter = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if rust_log.is_some_and(|directives| directives.contains("kube_client")) {
        filter
    } else {
        filter.add_directive(QUIET_KUBE_CLIENT.parse().expect("a valid directive"))
    }
}

pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the filter for `rust_log` lets through of kube-client's body lines and of ours.
    fn logged(rust_log: Option<&str>) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = fmt()
            .with_env_filter(filter(rust_log))
            .with_writer(move || writer.clone())
            .json()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // As kube-client logs them (targets are module paths).
            tracing::warn!(target: "kube_client::client", "{{\"kind\":\"SecretList\",\"items\":[BODY-WARN]}}, Error(..)");
            tracing::debug!(target: "kube_client::client", "Unsuccessful data error parse: BODY-DEBUG");
            tracing::error!(target: "kube_client::client::builder", "failed with status 500");
            tracing::info!(target: "idv_token_operator::reconcile", "token issued");
            tracing::warn!(target: "kube_runtime::watcher", "watcher error");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn response_bodies_of_the_kubernetes_client_are_not_logged() {
        for rust_log in [
            None,
            Some("info"),
            Some("warn"),
            Some("debug"),
            Some("trace"),
            Some("not a filter"),
        ] {
            let out = logged(rust_log);
            assert!(!out.contains("BODY"), "{rust_log:?}: {out}");
            assert!(
                out.contains("failed with status 500"),
                "{rust_log:?}: errors stay: {out}"
            );
        }
        let out = logged(Some("info"));
        assert!(
            out.contains("token issued") && out.contains("watcher error"),
            "{out}"
        );
        // Naming kube_client opts in: the operator of the operator is debugging it.
        assert!(logged(Some("info,kube_client=debug")).contains("BODY-DEBUG"));
    }
}
