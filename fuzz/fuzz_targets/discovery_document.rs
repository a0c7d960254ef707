//! Bytes → issuer, audience override and discovery document → `authserver::resolve_discovered`.
//!
//! Input layout (what the seeds in corpus/discovery_document use), split at the first two
//! newlines:
//!   line 1    the issuer as written in `spec.authServer.issuer`
//!   line 2    `spec.authServer.assertionAudience` (empty = none)
//!   the rest  the discovery document the issuer serves
//!
//! Checks: no panic in `parse_endpoint_url`, `discovery_url` or `resolve_discovered`; a
//! resolved server has an https (or loopback http) token endpoint, and its audience is the
//! override or the issuer without a trailing slash, which the document must have named.

#![no_main]

use idv_token_operator::authserver;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (Some(issuer), Some(audience), Some(document)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let issuer = String::from_utf8_lossy(issuer);
    let audience = Some(String::from_utf8_lossy(audience).into_owned()).filter(|a| !a.is_empty());
    let Ok(issuer) = authserver::parse_endpoint_url(&issuer, "issuer") else {
        return;
    };
    let discovery = authserver::discovery_url(&issuer);
    assert!(
        discovery
            .as_str()
            .ends_with("/.well-known/openid-configuration"),
        "{discovery}"
    );
    if let Ok(resolved) = authserver::resolve_discovered(&issuer, audience.clone(), document) {
        let endpoint = &resolved.token_endpoint;
        assert!(
            endpoint.scheme() == "https"
                || (endpoint.scheme() == "http" && authserver::is_loopback(endpoint)),
            "unsafe token endpoint {endpoint}"
        );
        let expected = issuer.as_str().trim_end_matches('/').to_string();
        let named = serde_json::from_slice::<Value>(document)
            .ok()
            .and_then(|d| d.get("issuer")?.as_str().map(str::to_string));
        assert_eq!(
            named.as_deref().map(|n| n.trim_end_matches('/')),
            Some(expected.as_str())
        );
        assert_eq!(resolved.assertion_audience, audience.unwrap_or(expected));
        assert!(!resolved.always_send_kid);
    }
});
