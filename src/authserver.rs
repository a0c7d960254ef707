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
    #[error(
        "assertionAudience must be an https URL on {expected_host:?}, the host of the token endpoint the assertion is sent to"
    )]
    AudienceElsewhere { expected_host: String },
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

/// Where credentials (assertions, client secrets) may be sent: the `--allowed-token-hosts`
/// policy. Checked for the issuer, the discovered and the configured token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// The `token` command: its user holds the key, so any host, loopback included.
    Unrestricted,
    /// Only hosts one of these patterns admits.
    Only(Vec<HostPattern>),
}

/// One entry of `--allowed-token-hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `idp.example`, `127.0.0.1`, `[::1]`: exactly that host, any port.
    Exact(url::Host<String>),
    /// `*.example.org`: any host below it (not `example.org` itself).
    Below(String),
    /// `*`: any host.
    Any,
}

impl HostPolicy {
    /// The default: the hosts of the presets, i.e. the IDV servers.
    pub fn idv_hosts() -> Self {
        let mut patterns: Vec<HostPattern> = Vec::new();
        for env in Environment::ALL {
            let host =
                HostPattern::Exact(host_of(&env.server().token_endpoint).expect("preset host"));
            if !patterns.contains(&host) {
                patterns.push(host);
            }
        }
        HostPolicy::Only(patterns)
    }

    /// The policy of `--allowed-token-hosts`: none given means the IDV hosts.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Self::idv_hosts());
        }
        let parsed = patterns
            .iter()
            .map(|p| HostPattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(HostPolicy::Only(parsed))
    }

    /// Whether credentials may be sent to this URL's host.
    pub fn allows(&self, url: &Url) -> bool {
        let patterns = match self {
            HostPolicy::Unrestricted => return true,
            HostPolicy::Only(patterns) => patterns,
        };
        let Some(host) = host_of(url) else {
            return false;
        };
        // Loopback and link-local hosts (the node itself, cloud metadata endpoints) only when
        // named: a pattern meant for "any IdP" must not reach services beside the operator.
        let local = is_local_host(&host);
        patterns.iter().any(|pattern| match (pattern, &host) {
            (HostPattern::Exact(exact), _) => *exact == host,
            (HostPattern::Below(suffix), url::Host::Domain(domain)) => {
                !local
                    && domain
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
            (HostPattern::Below(_), _) => false,
            (HostPattern::Any, _) => !local,
        })
    }
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self::idv_hosts()
    }
}

impl std::fmt::Display for HostPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPolicy::Unrestricted => f.write_str("any host"),
            HostPolicy::Only(patterns) => {
                for (i, pattern) in patterns.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    match pattern {
                        HostPattern::Exact(host) => write!(f, "{host}")?,
                        HostPattern::Below(suffix) => write!(f, "*.{suffix}")?,
                        HostPattern::Any => f.write_str("*")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl HostPattern {
    /// `host`, `*.domain` or `*`; no ports, paths or other wildcards.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = |why: &str| Err(format!("invalid host pattern {text:?}: {why}"));
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        let (below, host) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if host.is_empty() {
            return invalid("empty");
        }
        if host.contains('*') {
            return invalid("a wildcard is allowed only as `*` or a leading `*.`");
        }
        // A bare IPv6 address, as people write it on the command line.
        let parsed = match host.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => url::Host::Ipv6(ip),
            Err(_) => match url::Host::parse(host) {
                Ok(parsed) => normalized(parsed),
                Err(_) => return invalid("not a host name or IP address (no port, no path)"),
            },
        };
        match (below, parsed) {
            (false, host) => Ok(HostPattern::Exact(host)),
            (true, url::Host::Domain(domain)) if !domain.is_empty() => {
                Ok(HostPattern::Below(domain))
            }
            (true, _) => invalid("`*.` must be followed by a domain name"),
        }
    }
}

/// A URL's host as patterns compare it: lower case (url does that), no trailing dot.
fn host_of(url: &Url) -> Option<url::Host<String>> {
    url.host().map(|host| normalized(host.to_owned()))
}

fn normalized(host: url::Host<String>) -> url::Host<String> {
    match host {
        url::Host::Domain(domain) => {
            url::Host::Domain(domain.trim_end_matches('.').to_ascii_lowercase())
        }
        ip => ip,
    }
}

/// Loopback, unspecified ("this host") and link-local addresses, and `localhost` names.
fn is_local_host(host: &url::Host<String>) -> bool {
    fn v4(ip: std::net::Ipv4Addr) -> bool {
        ip.is_loopback() || ip.is_link_local() || ip.octets()[0] == 0
    }
    match host {
        url::Host::Domain(domain) => domain == "localhost" || domain.ends_with(".localhost"),
        url::Host::Ipv4(ip) => v4(*ip),
        url::Host::Ipv6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4().is_some_and(v4)
        }
    }
}

/// Whether a host-check refusal is about a host that only a literal pattern admits.
pub fn is_local_url(url: &Url) -> bool {
    host_of(url).is_some_and(|host| is_local_host(&host))
}

/// An `assertionAudience` must name the server the assertion is sent to, so that a signed
/// assertion is only ever valid where it goes (a user who may name someone else's key must not
/// get an assertion for the real IdP sent to a host of their choice).
pub fn check_assertion_audience(
    audience: &str,
    token_endpoint: &Url,
) -> Result<(), ServerConfigError> {
    let expected = host_of(token_endpoint);
    let same_host = parse_endpoint_url(audience, "assertionAudience")
        .ok()
        .is_some_and(|aud| host_of(&aud) == expected);
    if same_host {
        Ok(())
    } else {
        Err(ServerConfigError::AudienceElsewhere {
            expected_host: expected.map(|h| h.to_string()).unwrap_or_default(),
        })
    }
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

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn host_policies() {
        let idp = "*.vlaanderen.be,idp.example,127.0.0.1";
        // (patterns, URL, allowed)
        let cases: &[(&str, &str, bool)] = &[
            // The default: the preset hosts and nothing else.
            ("", "https://authenticatie.vlaanderen.be/op", true),
            (
                "",
                "https://authenticatie-ti.vlaanderen.be/op/v1/token",
                true,
            ),
            (
                "",
                "https://oauth.vlaanderen.be/authorization/ws/oauth/v2/token",
                true,
            ),
            ("", "https://beta.oauth.vlaanderen.be/x", true),
            ("", "https://AUTHENTICATIE.vlaanderen.be./op", true),
            ("", "https://authenticatie.vlaanderen.be:8443/op", true),
            ("", "https://other.vlaanderen.be/op", false),
            ("", "https://idp.example/token", false),
            ("", "http://127.0.0.1:9/token", false),
            // Exact hosts and subdomains.
            (idp, "https://authenticatie.vlaanderen.be/op", true),
            (idp, "https://beta.oauth.vlaanderen.be/t", true),
            (idp, "https://IDP.example./t", true),
            (idp, "http://127.0.0.1:1234/t", true),
            (idp, "https://vlaanderen.be/t", false),
            (idp, "https://evilvlaanderen.be/t", false),
            (idp, "https://vlaanderen.be.evil.example/t", false),
            (idp, "https://x.idp.example/t", false),
            (idp, "http://127.0.0.2/t", false),
            (idp, "http://localhost/t", false),
            (idp, "http://[::1]/t", false),
            // An IP is one host however it is spelled in the URL (url normalizes it).
            (idp, "http://2130706433/t", true),
            (idp, "http://0x7f.0.0.1/t", true),
            // `*`: any host, but not loopback, "this host" or link-local (metadata endpoints).
            ("*", "https://idp.example/t", true),
            ("*", "https://10.0.0.5/t", true),
            ("*", "https://[2001:db8::1]/t", true),
            ("*", "http://127.0.0.1/t", false),
            ("*", "http://127.1.2.3/t", false),
            ("*", "http://localhost/t", false),
            ("*", "http://LocalHost./t", false),
            ("*", "https://idp.localhost/t", false),
            ("*", "http://[::1]/t", false),
            ("*", "https://[::ffff:127.0.0.1]/t", false),
            ("*", "https://0.0.0.0/t", false),
            ("*", "https://[::]/t", false),
            ("*", "https://169.254.169.254/latest/meta-data", false),
            ("*", "https://[fe80::1]/t", false),
            ("*", "https://[febf::1]/t", false),
            ("*", "https://[fec0::1]/t", true),
            // Only the literal name admits them, and only that spelling.
            ("*,127.0.0.1", "http://127.0.0.1/t", true),
            ("*,127.0.0.1", "http://localhost/t", false),
            ("*,127.0.0.1", "https://[::ffff:127.0.0.1]/t", false),
            ("localhost", "http://localhost:8080/t", true),
            ("LOCALHOST.", "http://localhost/t", true),
            ("::1", "http://[::1]:8080/t", true),
            ("[::1]", "http://[::1]/t", true),
            ("169.254.169.254", "https://169.254.169.254/t", true),
            ("*.localhost", "http://idp.localhost/t", false),
            ("idp.localhost", "http://idp.localhost/t", true),
        ];
        for (patterns, target, allowed) in cases {
            let list: Vec<&str> = if patterns.is_empty() {
                vec![]
            } else {
                patterns.split(',').collect()
            };
            let policy = HostPolicy::from_patterns(&list).unwrap();
            assert_eq!(
                policy.allows(&url(target)),
                *allowed,
                "{patterns:?} and {target}"
            );
            assert!(HostPolicy::Unrestricted.allows(&url(target)), "{target}");
        }
    }

    #[test]
    fn host_patterns_parse_or_say_why_not() {
        for bad in [
            "",
            " ",
            "*.",
            "**",
            "*.*.example",
            "idp.*",
            "a*.example",
            "idp.example:443",
            "https://idp.example",
            "idp.example/token",
            "*.127.0.0.1",
            "*.[::1]",
        ] {
            let error = HostPattern::parse(bad).expect_err(bad);
            assert!(error.contains("invalid host pattern"), "{error}");
        }
        assert_eq!(HostPattern::parse(" * "), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("*.Example.ORG."),
            Ok(HostPattern::Below("example.org".into()))
        );
        assert!(HostPolicy::from_patterns(&["idp.example", ""]).is_err());
    }

    #[test]
    fn the_effective_policy_reads_as_flag_values() {
        assert_eq!(
            HostPolicy::from_patterns::<&str>(&[]).unwrap().to_string(),
            "authenticatie.vlaanderen.be,authenticatie-ti.vlaanderen.be,oauth.vlaanderen.be,beta.oauth.vlaanderen.be"
        );
        assert_eq!(HostPolicy::default(), HostPolicy::idv_hosts());
        let policy =
            HostPolicy::from_patterns(&["*", "*.Idp.example", "::1", "127.0.0.1"]).unwrap();
        assert_eq!(policy.to_string(), "*,*.idp.example,[::1],127.0.0.1");
        assert_eq!(HostPolicy::Unrestricted.to_string(), "any host");
    }

    #[test]
    fn an_assertion_audience_names_the_host_it_is_sent_to() {
        let acm = url("https://authenticatie.vlaanderen.be/op/v1/token");
        let local = url("http://127.0.0.1:8080/token");
        // (audience, token endpoint, accepted)
        let cases: &[(&str, &Url, bool)] = &[
            ("https://authenticatie.vlaanderen.be/op", &acm, true),
            ("https://AUTHENTICATIE.vlaanderen.be./op/", &acm, true),
            ("https://authenticatie.vlaanderen.be:444/x", &acm, true),
            ("https://authenticatie-ti.vlaanderen.be/op", &acm, false),
            ("https://evil.example/op", &acm, false),
            ("http://authenticatie.vlaanderen.be/op", &acm, false),
            ("urn:acm", &acm, false),
            ("authenticatie.vlaanderen.be", &acm, false),
            ("", &acm, false),
            ("http://127.0.0.1:8080", &local, true),
            ("http://127.0.0.1:9999/op", &local, true),
            ("https://authenticatie.vlaanderen.be/op", &local, false),
            ("http://localhost:8080", &local, false),
        ];
        for (audience, endpoint, accepted) in cases {
            let result = check_assertion_audience(audience, endpoint);
            assert_eq!(result.is_ok(), *accepted, "{audience:?} to {endpoint}");
            if let Err(error) = result {
                let expected = endpoint.host_str().unwrap();
                assert!(
                    error.to_string().contains(&format!("{expected:?}")),
                    "{error}"
                );
            }
        }
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
