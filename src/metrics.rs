//! Prometheus metrics. Labels are fixed words (results, reasons) or object names: never
//! error text, never token data.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    api::reasons,
    memory::{ClientKey, ClientMemory},
};

/// The `result` of a token request that brought a token (the others are failure reasons).
pub const TOKEN_REQUEST_SUCCESS: &str = "success";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    namespace: String,
    name: String,
}

impl ClientLabels {
    fn of(client: &ClientKey) -> Self {
        ClientLabels {
            namespace: client.namespace().into(),
            name: client.name().into(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    token_requests: Family<ResultLabel, Counter>,
    token_request_duration: Histogram,
    token_expiry: Family<ClientLabels, Gauge>,
    /// The IdvClients with a `token_expiry` series (a Family cannot list its series).
    clients: std::sync::Mutex<std::collections::HashSet<ClientKey>>,
    reconciles: Counter,
    reconcile_errors: Family<CategoryLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("idv_token_operator");
        let token_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "token_requests",
            "Token requests to the IdP, by result (success or the failure reason)",
            token_requests.clone(),
        );
        // 5 ms .. ~20 s.
        let token_request_duration = Histogram::new(exponential_buckets(0.005, 2.0, 13));
        registry.register(
            "token_request_duration_seconds",
            "Duration of token requests (discovery included)",
            token_request_duration.clone(),
        );
        let token_expiry = Family::<ClientLabels, Gauge>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "When the token in each IdvClient's Secret expires (Unix seconds)",
            token_expiry.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles of IdvClients", reconciles.clone());
        let reconcile_errors = Family::<CategoryLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by category (the condition reason)",
            reconcile_errors.clone(),
        );
        // Every series with a known label set exists from the start, at 0: `rate()` and
        // `increase()` alerts work before the first failure, not only after it.
        for result in std::iter::once(TOKEN_REQUEST_SUCCESS).chain(reasons::TOKEN_REQUEST_FAILURES)
        {
            let _ = token_requests.get_or_create(&ResultLabel {
                result: result.to_string(),
            });
        }
        for category in reasons::ERRORS {
            let _ = reconcile_errors.get_or_create(&CategoryLabel {
                category: category.to_string(),
            });
        }
        Self {
            registry,
            token_requests,
            token_request_duration,
            token_expiry,
            clients: Default::default(),
            reconciles,
            reconcile_errors,
        }
    }
}

impl Metrics {
    pub fn token_request(&self, result: &str, seconds: f64) {
        self.token_requests
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
        self.token_request_duration.observe(seconds);
    }

    pub fn token_expiry(&self, client: &ClientKey, expires_at_unix: i64) {
        self.clients.lock().expect("lock").insert(client.clone());
        self.token_expiry
            .get_or_create(&ClientLabels::of(client))
            .set(expires_at_unix);
    }

    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub fn reconcile_error(&self, category: &str) {
        self.reconcile_errors
            .get_or_create(&CategoryLabel {
                category: category.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl ClientMemory for Metrics {
    /// A deleted IdvClient's series must go, or alerts would fire on it.
    fn forget(&self, client: &ClientKey) {
        self.clients.lock().expect("lock").remove(client);
        self.token_expiry.remove(&ClientLabels::of(client));
    }

    fn retain(&self, keep: &dyn Fn(&ClientKey) -> bool) {
        self.clients.lock().expect("lock").retain(|client| {
            let kept = keep(client);
            if !kept {
                self.token_expiry.remove(&ClientLabels::of(client));
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_clients_gone_meanwhile_are_pruned() {
        let m = Metrics::default();
        m.token_expiry(&ClientKey::new("ns", "kept"), 1);
        m.token_expiry(&ClientKey::new("ns", "gone"), 2);
        m.token_expiry(&ClientKey::new("other", "gone"), 3);
        m.retain(&|client| client.namespace() != "ns" || client.name() == "kept");
        let text = m.render();
        assert!(text.contains("name=\"kept\""));
        assert!(
            text.contains("namespace=\"other\""),
            "another scope is left alone"
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("idv_token_operator_token_expiry_timestamp_seconds{"))
            .count();
        assert_eq!(series, 2, "{text}");
    }

    #[test]
    fn every_known_series_is_exported_at_zero_from_the_start() {
        let text = Metrics::default().render();
        for result in std::iter::once(TOKEN_REQUEST_SUCCESS).chain(reasons::TOKEN_REQUEST_FAILURES)
        {
            let series =
                format!("idv_token_operator_token_requests_total{{result=\"{result}\"}} 0\n");
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
        for category in reasons::ERRORS {
            let series =
                format!("idv_token_operator_reconcile_errors_total{{category=\"{category}\"}} 0\n");
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
        assert!(
            text.contains("idv_token_operator_reconciles_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("idv_token_operator_token_request_duration_seconds_count 0\n"),
            "{text}"
        );
    }

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::default();
        m.token_request("success", 0.02);
        m.token_request("IdpUnavailable", 1.0);
        m.token_expiry(&ClientKey::new("ns", "gipod"), 1_800_000_000);
        m.reconciled();
        m.reconcile_error("InvalidKey");
        let text = m.render();
        for needle in [
            "idv_token_operator_token_requests_total{result=\"success\"} 1",
            "idv_token_operator_token_requests_total{result=\"IdpUnavailable\"} 1",
            "idv_token_operator_token_request_duration_seconds_count 2",
            "idv_token_operator_token_expiry_timestamp_seconds{namespace=\"ns\",name=\"gipod\"} 1800000000",
            "idv_token_operator_reconciles_total 1",
            "idv_token_operator_reconcile_errors_total{category=\"InvalidKey\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        m.forget(&ClientKey::new("ns", "gipod"));
        assert!(!m.render().contains("name=\"gipod\""));
    }
}
