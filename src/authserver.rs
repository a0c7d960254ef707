//! Which token endpoint to call and which `aud` the client assertion carries.
//!
//! One rule for operator and CLI: ACM presets and issuer mode use the issuer as `aud`;
//! Geosecure presets and tokenEndpoint mode use the token endpoint (Geosecure: lower case, no
//! trailing slash); `assertionAudience` overrides both.

use url::Url;

use crate::api::{AuthServer, Environment};

/// An auth server description that passed validation: either fully known, or an issuer whose
/// token endpoint comes from discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPlan {
    Known(ResolvedServer),
    Discover {
        issuer: Url,
        audience_override: Option<String>,
    },
}

/// Everything needed to ask for a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedServer {
    pub token_endpoint: Url,
    pub assertion_audience: String,
    /// Geosecure wants a `kid` header on every assertion.
    pub always_send_kid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerConfigError {
    #[error("set exactly one of environment, issuer or tokenEndpoint")]
    NotExactlyOne,
    #[error("{field} is not a valid URL")]
    InvalidUrl { field: &'static str },
    #[error("{field} must use https (plain http is allowed only to a loopback host)")]
    InsecureUrl { field: &'static str },
}

const ACM_PRODUCTION_ISSUER: &str = "https://authenticatie.vlaanderen.be/op";
const ACM_TEST_ISSUER: &str = "https://authenticatie-ti.vlaanderen.be/op";
const GEOSECURE_PRODUCTION_TOKEN: &str =
    "https://oauth.vlaanderen.be/authorization/ws/oauth/v2/token";
const GEOSECURE_BETA_TOKEN: &str =
    "https://beta.oauth.vlaanderen.be/authorization/ws/oauth/v2/token";

impl Environment {
    pub const ALL: [Environment; 4] = [
        Environment::AcmProduction,
        Environment::AcmTest,
        Environment::GeosecureProduction,
        Environment::GeosecureBeta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Environment::AcmProduction => "acm-production",
            Environment::AcmTest => "acm-test",
            Environment::GeosecureProduction => "geosecure-production",
            Environment::GeosecureBeta => "geosecure-beta",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Token endpoint and default assertion audience of the preset.
    fn server(self) -> ResolvedServer {
        let acm = |issuer: &str| ResolvedServer {
            token_endpoint: Url::parse(&format!("{issuer}/v1/token")).expect("preset URL"),
            assertion_audience: issuer.to_string(),
            always_send_kid: false,
        };
        let geosecure = |endpoint: &str| ResolvedServer {
            token_endpoint: Url::parse(endpoint).expect("preset URL"),
            assertion_audience: geosecure_audience(endpoint),
            always_send_kid: true,
        };
        match self {
            Environment::AcmProduction => acm(ACM_PRODUCTION_ISSUER),
            Environment::AcmTest => acm(ACM_TEST_ISSUER),
            Environment::GeosecureProduction => geosecure(GEOSECURE_PRODUCTION_TOKEN),
            Environment::GeosecureBeta => geosecure(GEOSECURE_BETA_TOKEN),
        }
    }
}

/// Geosecure: "the URL of the endpoint being called, lower case, without trailing slash".
fn geosecure_audience(endpoint: &str) -> String {
    endpoint.trim_end_matches('/').to_lowercase()
}

/// True when plain http to this URL stays on the machine.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether assertions may be sent to `host`. Patterns: `idp.example` (exactly that host) or
/// `*.example` (any host below it). No patterns: no restriction.
pub fn host_allowed(host: &str, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns
        .iter()
        .map(|p| p.trim().to_ascii_lowercase())
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == pattern,
        })
}

/// Parse a URL that must be https, or http to a loopback host.
pub fn parse_endpoint_url(raw: &str, field: &'static str) -> Result<Url, ServerConfigError> {
    let url = Url::parse(raw).map_err(|_| ServerConfigError::InvalidUrl { field })?;
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(ServerConfigError::InsecureUrl { field }),
        _ => Err(ServerConfigError::InvalidUrl { field }),
    }
}

/// Issuer URL without a trailing slash: the form IDV (and OIDC discovery) compare against.
fn issuer_string(issuer: &Url) -> String {
    issuer.as_str().trim_end_matches('/').to_string()
}

/// Validate the auth server description and decide how to reach it.
pub fn plan(server: &AuthServer) -> Result<ServerPlan, ServerConfigError> {
    let audience_override = server
        .assertion_audience
        .clone()
        .filter(|a| !a.trim().is_empty());
    match (&server.environment, &server.issuer, &server.token_endpoint) {
        (Some(env), None, None) => {
            let mut resolved = env.server();
            if let Some(aud) = audience_override {
                resolved.assertion_audience = aud;
            }
            Ok(ServerPlan::Known(resolved))
        }
        (None, Some(issuer), None) => Ok(ServerPlan::Discover {
            issuer: parse_endpoint_url(issuer, "issuer")?,
            audience_override,
        }),
        (None, None, Some(endpoint)) => {
            let token_endpoint = parse_endpoint_url(endpoint, "tokenEndpoint")?;
            let assertion_audience =
                audience_override.unwrap_or_else(|| token_endpoint.as_str().to_string());
            Ok(ServerPlan::Known(ResolvedServer {
                token_endpoint,
                assertion_audience,
                always_send_kid: false,
            }))
        }
        _ => Err(ServerConfigError::NotExactlyOne),
    }
}

/// Where the discovery document of an issuer lives.
pub fn discovery_url(issuer: &Url) -> Url {
    Url::parse(&format!(
        "{}/.well-known/openid-configuration",
        issuer_string(issuer)
    ))
    .expect("issuer is a URL")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the discovery document is not JSON")]
    NotJson,
    #[error("the discovery document names issuer {found:?}, not {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("the discovery document has no token_endpoint")]
    NoTokenEndpoint,
    #[error("the discovered token_endpoint is not usable: {0}")]
    BadTokenEndpoint(ServerConfigError),
}

/// Finish an issuer-mode plan with the discovery document's answer.
pub fn resolve_discovered(
    issuer: &Url,
    audience_override: Option<String>,
    document: &[u8],
) -> Result<ResolvedServer, DiscoveryError> {
    let doc: serde_json::Value =
        serde_json::from_slice(document).map_err(|_| DiscoveryError::NotJson)?;
    let expected = issuer_string(issuer);
    let found = doc
        .get("issuer")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if found.trim_end_matches('/') != expected {
        return Err(DiscoveryError::IssuerMismatch {
            expected,
            found: found.chars().take(200).collect(),
        });
    }
    let endpoint = doc
        .get("token_endpoint")
        .and_then(|v| v.as_str())
        .ok_or(DiscoveryError::NoTokenEndpoint)?;
    let token_endpoint =
        parse_endpoint_url(endpoint, "token_endpoint").map_err(DiscoveryError::BadTokenEndpoint)?;
    Ok(ResolvedServer {
        token_endpoint,
        assertion_audience: audience_override.unwrap_or(expected),
        always_send_kid: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(
        env: Option<Environment>,
        issuer: Option<&str>,
        endpoint: Option<&str>,
        aud: Option<&str>,
    ) -> AuthServer {
        AuthServer {
            environment: env,
            issuer: issuer.map(str::to_string),
            token_endpoint: endpoint.map(str::to_string),
            assertion_audience: aud.map(str::to_string),
        }
    }

    fn known(plan: ServerPlan) -> ResolvedServer {
        match plan {
            ServerPlan::Known(r) => r,
            other => panic!("expected a known server, got {other:?}"),
        }
    }

    #[test]
    fn presets_and_their_audiences() {
        let cases = [
            (
                Environment::AcmProduction,
                "https://authenticatie.vlaanderen.be/op/v1/token",
                "https://authenticatie.vlaanderen.be/op",
                false,
            ),
            (
                Environment::AcmTest,
                "https://authenticatie-ti.vlaanderen.be/op/v1/token",
                "https://authenticatie-ti.vlaanderen.be/op",
                false,
            ),
            (
                Environment::GeosecureProduction,
                GEOSECURE_PRODUCTION_TOKEN,
                GEOSECURE_PRODUCTION_TOKEN,
                true,
            ),
            (
                Environment::GeosecureBeta,
                GEOSECURE_BETA_TOKEN,
                GEOSECURE_BETA_TOKEN,
                true,
            ),
        ];
        for (env, endpoint, aud, kid) in cases {
            let r = known(plan(&server(Some(env), None, None, None)).unwrap());
            assert_eq!(r.token_endpoint.as_str(), endpoint, "{env:?}");
            assert_eq!(r.assertion_audience, aud, "{env:?}");
            assert_eq!(r.always_send_kid, kid, "{env:?}");
            assert_eq!(Environment::from_name(env.name()), Some(env));
        }
    }

    #[test]
    fn audience_rules_per_mode() {
        let endpoint =
            known(plan(&server(None, None, Some("https://idp.example/token"), None)).unwrap());
        assert_eq!(endpoint.assertion_audience, "https://idp.example/token");
        let overridden = known(
            plan(&server(
                None,
                None,
                Some("https://idp.example/token"),
                Some("urn:x"),
            ))
            .unwrap(),
        );
        assert_eq!(overridden.assertion_audience, "urn:x");
        let preset = known(
            plan(&server(
                Some(Environment::AcmTest),
                None,
                None,
                Some("urn:y"),
            ))
            .unwrap(),
        );
        assert_eq!(preset.assertion_audience, "urn:y");
        let issuer = Url::parse("https://idp.example/op").unwrap();
        assert_eq!(
            plan(&server(None, Some("https://idp.example/op"), None, None)).unwrap(),
            ServerPlan::Discover {
                issuer: issuer.clone(),
                audience_override: None
            }
        );
        let doc = br#"{"issuer":"https://idp.example/op","token_endpoint":"https://idp.example/op/v1/token"}"#;
        let resolved = resolve_discovered(&issuer, None, doc).unwrap();
        assert_eq!(resolved.assertion_audience, "https://idp.example/op");
        assert_eq!(
            resolved.token_endpoint.as_str(),
            "https://idp.example/op/v1/token"
        );
        assert_eq!(
            resolve_discovered(&issuer, Some("urn:z".into()), doc)
                .unwrap()
                .assertion_audience,
            "urn:z"
        );
        assert_eq!(
            discovery_url(&issuer).as_str(),
            "https://idp.example/op/.well-known/openid-configuration"
        );
    }

    #[test]
    fn invalid_server_descriptions() {
        assert_eq!(
            plan(&server(None, None, None, None)),
            Err(ServerConfigError::NotExactlyOne)
        );
        assert_eq!(
            plan(&server(
                Some(Environment::AcmTest),
                Some("https://a"),
                None,
                None
            )),
            Err(ServerConfigError::NotExactlyOne)
        );
        assert_eq!(
            plan(&server(None, None, Some("http://idp.example/token"), None)),
            Err(ServerConfigError::InsecureUrl {
                field: "tokenEndpoint"
            })
        );
        assert_eq!(
            plan(&server(None, Some("not a url"), None, None)),
            Err(ServerConfigError::InvalidUrl { field: "issuer" })
        );
        assert_eq!(
            plan(&server(None, None, Some("ftp://idp.example/token"), None)),
            Err(ServerConfigError::InvalidUrl {
                field: "tokenEndpoint"
            })
        );
        for ok in [
            "http://127.0.0.1:8080/token",
            "http://localhost/token",
            "http://[::1]:9/t",
        ] {
            assert!(plan(&server(None, None, Some(ok), None)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn allowed_hosts() {
        let patterns = vec!["*.vlaanderen.be".to_string(), "127.0.0.1".to_string()];
        assert!(host_allowed("anything", &[]));
        assert!(host_allowed("authenticatie.vlaanderen.be", &patterns));
        assert!(host_allowed("beta.oauth.vlaanderen.be", &patterns));
        assert!(host_allowed("AUTHENTICATIE.vlaanderen.be.", &patterns));
        assert!(host_allowed("127.0.0.1", &patterns));
        assert!(!host_allowed("vlaanderen.be", &patterns));
        assert!(!host_allowed("vlaanderen.be.evil.example", &patterns));
        assert!(!host_allowed("evilvlaanderen.be", &patterns));
        assert!(!host_allowed("127.0.0.2", &patterns));
    }

    #[test]
    fn discovery_errors() {
        let issuer = Url::parse("https://idp.example/op").unwrap();
        assert_eq!(
            resolve_discovered(&issuer, None, b"<html>"),
            Err(DiscoveryError::NotJson)
        );
        assert!(matches!(
            resolve_discovered(
                &issuer,
                None,
                br#"{"issuer":"https://evil.example","token_endpoint":"https://e/t"}"#
            ),
            Err(DiscoveryError::IssuerMismatch { .. })
        ));
        assert_eq!(
            resolve_discovered(&issuer, None, br#"{"issuer":"https://idp.example/op"}"#),
            Err(DiscoveryError::NoTokenEndpoint)
        );
        assert!(matches!(
            resolve_discovered(
                &issuer,
                None,
                br#"{"issuer":"https://idp.example/op","token_endpoint":"http://e.example/t"}"#
            ),
            Err(DiscoveryError::BadTokenEndpoint(_))
        ));
    }
}
