//! The proxy's Prometheus metrics. Labels are status codes and fixed words, never header
//! values or paths.

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    code: u16,
    /// `upstream` (the API's answer) or `proxy` (the proxy's own: refusals, no token, 502/504).
    origin: &'static str,
}

pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Histogram,
    upstream_unauthorized: Counter,
    upstream_connections: Counter,
    token_expires_in: Gauge,
    token_usable: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("idv_token_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by status code and origin (upstream: the API's answer; proxy: the proxy's own)",
            requests.clone(),
        );
        // 0.5 ms .. ~16 s.
        let upstream_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers (connecting included)",
            upstream_duration.clone(),
        );
        let upstream_unauthorized = Counter::default();
        registry.register(
            "upstream_unauthorized",
            "Upstream 401 answers to requests with the current token (a token for another audience, or without a needed scope)",
            upstream_unauthorized.clone(),
        );
        let upstream_connections = Counter::default();
        registry.register(
            "upstream_connections",
            "Connections opened to the upstream (kept alive and reused: this grows slowly)",
            upstream_connections.clone(),
        );
        let token_expires_in = Gauge::default();
        registry.register(
            "token_expires_in_seconds",
            "Seconds until the token in the token directory expires (negative: expired; 0 while there is none)",
            token_expires_in.clone(),
        );
        let token_usable = Gauge::default();
        registry.register(
            "token_usable",
            "1 while the token directory holds a token that has not expired, else 0 (requests get 503)",
            token_usable.clone(),
        );
        Self {
            registry,
            requests,
            upstream_duration,
            upstream_unauthorized,
            upstream_connections,
            token_expires_in,
            token_usable,
        }
    }
}

impl ProxyMetrics {
    pub fn answered(&self, code: u16, from_upstream: bool) {
        let origin = if from_upstream { "upstream" } else { "proxy" };
        self.requests
            .get_or_create(&RequestLabels { code, origin })
            .inc();
    }

    pub fn upstream_answered(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    pub fn unauthorized(&self) {
        self.upstream_unauthorized.inc();
    }

    pub fn connection_opened(&self) {
        self.upstream_connections.inc();
    }

    /// The exposition, with the token gauges for `expires_in` (`None`: no token).
    pub fn render(&self, expires_in: Option<i64>, usable: bool) -> String {
        self.token_expires_in.set(expires_in.unwrap_or(0));
        self.token_usable.set(i64::from(usable));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = ProxyMetrics::default();
        m.answered(200, true);
        m.answered(200, true);
        m.answered(503, false);
        m.upstream_answered(0.002);
        m.unauthorized();
        m.connection_opened();
        let text = m.render(Some(1200), true);
        for needle in [
            "idv_token_proxy_requests_total{code=\"200\",origin=\"upstream\"} 2",
            "idv_token_proxy_requests_total{code=\"503\",origin=\"proxy\"} 1",
            "idv_token_proxy_upstream_duration_seconds_count 1",
            "idv_token_proxy_upstream_unauthorized_total 1",
            "idv_token_proxy_upstream_connections_total 1",
            "idv_token_proxy_token_expires_in_seconds 1200",
            "idv_token_proxy_token_usable 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let text = m.render(None, false);
        assert!(text.contains("idv_token_proxy_token_usable 0"), "{text}");
    }
}
