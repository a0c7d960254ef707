//! What the proxy sends upstream and back, as pure functions of the messages: the one
//! upstream, refusals (not an open proxy), hop-by-hop headers (RFC 9110 7.6.1), the token in
//! `Authorization`, `Host` and `X-Forwarded-*`.

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version,
    header::{self, AUTHORIZATION, CONNECTION, HOST},
    request, response,
};
use url::Url;

use crate::authserver;

/// The API every request goes to: `https://host[:port][/base-path]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `https://host[:port]`, the prefix of every upstream URI.
    origin: String,
    /// Prepended to every request path (Go's ReverseProxy does the same); no trailing slash.
    base_path: String,
    host: String,
    port: u16,
    /// `Host` sent upstream: the host, and the port unless it is the scheme's default.
    authority: HeaderValue,
}

impl Upstream {
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let url: Url =
            authserver::parse_endpoint_url(text, "--upstream").map_err(|e| e.to_string())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("--upstream must not hold a user name or password".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("--upstream must not have a query or a fragment".into());
        }
        let host = url.host_str().expect("https and loopback URLs have a host");
        let port = url
            .port_or_known_default()
            .expect("http(s) has a default port");
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Upstream {
            origin: format!("{}://{authority}", url.scheme()),
            base_path: url.path().trim_end_matches('/').to_string(),
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
        })
    }

    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether an absolute-form target's authority is this upstream (same host; same port,
    /// or none given: a client with `http_proxy` set writes `http://host/...`).
    fn is_this(&self, authority: &http::uri::Authority) -> bool {
        let host = authority.host().trim_end_matches('.');
        host.eq_ignore_ascii_case(&self.host) && authority.port_u16().is_none_or(|p| p == self.port)
    }
}

/// A request the proxy does not forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Connect,
    OtherHost(String),
    NoPath,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::OtherHost(_) => StatusCode::FORBIDDEN,
            Refusal::NoPath => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Connect => "connect_refused",
            Refusal::OtherHost(_) => "other_host_refused",
            Refusal::NoPath => "bad_request_target",
        }
    }

    pub fn message(&self, upstream: &Upstream) -> String {
        let origin = upstream.origin();
        match self {
            Refusal::Connect => format!(
                "CONNECT is refused: this is not an open proxy; it forwards plain HTTP requests \
                 (GET /path) to {origin} only"
            ),
            Refusal::OtherHost(host) => format!(
                "requests for {host} are refused: this is not an open proxy; it forwards only \
                 to {origin} (send GET /path to the proxy itself)"
            ),
            Refusal::NoPath => format!("the request target must be a path (/...) on {origin}"),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1), plus `Proxy-Connection` (non-standard, still sent)
/// and the proxy credentials, which are meant for a proxy, not for the API.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove the hop-by-hop headers: the fixed ones and those that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where a received request goes upstream, or why it does not: checked before the token is
/// even read.
pub fn target(parts: &request::Parts, upstream: &Upstream) -> Result<Uri, Refusal> {
    if parts.method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    if let Some(authority) = parts.uri.authority()
        && !upstream.is_this(authority)
    {
        // An authority is URI characters only; cut short for the message.
        return Err(Refusal::OtherHost(
            authority.as_str().chars().take(100).collect(),
        ));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .ok_or(Refusal::NoPath)?;
    Uri::try_from(format!("{}{}{path}", upstream.origin, upstream.base_path))
        .map_err(|_| Refusal::NoPath)
}

/// Turn a received request head into the one sent to `target` (from `target()`), with this
/// `Authorization`. `X-Forwarded-For` gets the client's address appended (as Envoy and Go's
/// ReverseProxy do), `X-Forwarded-Proto` is the scheme the client used (`http`),
/// `X-Forwarded-Host` the `Host` it sent; `Host` becomes the upstream's.
pub fn upstream_request(
    parts: &mut request::Parts,
    target: Uri,
    upstream: &Upstream,
    authorization: &HeaderValue,
    client: IpAddr,
) {
    parts.uri = target;
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    let original_host = headers.remove(HOST);
    strip_hop_by_hop(headers);
    headers.remove(AUTHORIZATION);
    headers.insert(AUTHORIZATION, authorization.clone());
    headers.insert(HOST, upstream.authority.clone());

    let client = client.to_canonical().to_string();
    let forwarded_for = match headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
    {
        earlier if earlier.is_empty() => client,
        earlier => format!("{}, {client}", earlier.join(", ")),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// The upstream's answer as the client gets it: without its hop-by-hop headers (hyper frames
/// the body and manages the client connection itself).
pub fn downstream_response(parts: &mut response::Parts) {
    strip_hop_by_hop(&mut parts.headers);
}

/// The `error` parameter of a `WWW-Authenticate: Bearer` challenge (RFC 6750 3), for the
/// 401 hint: a short token, since it is the upstream's text.
pub fn bearer_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let start = v.find("error=\"")? + "error=\"".len();
            let rest = &v[start..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .filter(|e| {
            !e.is_empty()
                && e.len() <= 64
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream::parse("https://api.example.vlaanderen.be").unwrap()
    }

    fn request(raw_uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().uri(raw_uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn rewrite(parts: &mut request::Parts) -> Result<(), Refusal> {
        let upstream = upstream();
        let target = target(parts, &upstream)?;
        upstream_request(
            parts,
            target,
            &upstream,
            &HeaderValue::from_static("Bearer current"),
            "127.0.0.1".parse().unwrap(),
        );
        Ok(())
    }

    fn header<'a>(parts: &'a request::Parts, name: &str) -> Vec<&'a str> {
        parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn upstreams() {
        let parsed = Upstream::parse("https://API.example.be:8443/gipod/").unwrap();
        assert_eq!(parsed.origin(), "https://api.example.be:8443");
        assert_eq!(parsed.base_path, "/gipod");
        assert_eq!(parsed.authority, "api.example.be:8443");
        let default_port = Upstream::parse("https://api.example.be:443").unwrap();
        assert_eq!(default_port.authority, "api.example.be");
        assert_eq!(default_port.endpoint(), "api.example.be:443");
        assert!(Upstream::parse("http://127.0.0.1:9000").is_ok());
        for (bad, why) in [
            ("http://api.example.be", "must use https"),
            ("ftp://api.example.be", "not a valid URL"),
            ("api.example.be", "not a valid URL"),
            ("https://user:pw@api.example.be", "user name or password"),
            ("https://api.example.be/?a=b", "query"),
            ("https://api.example.be/#x", "fragment"),
        ] {
            let error = Upstream::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn the_token_replaces_any_authorization_and_the_host_is_the_upstreams() {
        let mut parts = request(
            "/v1/items?x=1&y=%20",
            &[
                ("host", "127.0.0.1:8181"),
                ("authorization", "Basic c2VjcmV0"),
                ("authorization", "Bearer other"),
                ("accept", "application/json"),
            ],
        );
        rewrite(&mut parts).unwrap();
        assert_eq!(
            parts.uri,
            "https://api.example.vlaanderen.be/v1/items?x=1&y=%20"
        );
        assert_eq!(header(&parts, "authorization"), ["Bearer current"]);
        assert_eq!(header(&parts, "host"), ["api.example.vlaanderen.be"]);
        assert_eq!(header(&parts, "x-forwarded-host"), ["127.0.0.1:8181"]);
        assert_eq!(header(&parts, "x-forwarded-proto"), ["http"]);
        assert_eq!(header(&parts, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(header(&parts, "accept"), ["application/json"]);
        assert_eq!(parts.version, Version::HTTP_11);
    }

    #[test]
    fn a_base_path_is_prepended() {
        let upstream = Upstream::parse("https://api.example.be/gipod").unwrap();
        let mut parts = request("/v1?q", &[]);
        let target = target(&parts, &upstream).unwrap();
        upstream_request(
            &mut parts,
            target,
            &upstream,
            &HeaderValue::from_static("Bearer t"),
            "::1".parse().unwrap(),
        );
        assert_eq!(parts.uri, "https://api.example.be/gipod/v1?q");
        assert_eq!(header(&parts, "x-forwarded-for"), ["::1"]);
        assert!(header(&parts, "x-forwarded-host").is_empty());
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut parts = request(
            "/",
            &[
                ("connection", "keep-alive, x-private, Upgrade"),
                ("keep-alive", "timeout=5"),
                ("x-private", "for the proxy"),
                ("upgrade", "websocket"),
                ("te", "trailers"),
                ("trailer", "x-checksum"),
                ("transfer-encoding", "chunked"),
                ("proxy-authorization", "Basic cHJveHk="),
                ("proxy-connection", "keep-alive"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
                ("x-end-to-end", "kept"),
            ],
        );
        rewrite(&mut parts).unwrap();
        let mut names: Vec<&str> = parts.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "authorization",
                "host",
                "x-end-to-end",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(
            header(&parts, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
        );

        let mut response = http::Response::builder()
            .header("connection", "close, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("proxy-authenticate", "Basic")
            .header("content-type", "application/json")
            .header("www-authenticate", "Bearer")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        downstream_response(&mut response);
        let names: Vec<&str> = response.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "www-authenticate"]);
    }

    #[test]
    fn not_an_open_proxy() {
        let refused = |uri: &str, method: Method| {
            let mut parts = request(uri, &[]);
            parts.method = method;
            rewrite(&mut parts)
        };
        assert_eq!(
            refused("api.example.vlaanderen.be:443", Method::CONNECT),
            Err(Refusal::Connect)
        );
        assert_eq!(
            refused("http://evil.example/steal", Method::GET),
            Err(Refusal::OtherHost("evil.example".into()))
        );
        assert_eq!(
            refused("http://api.example.vlaanderen.be:8080/", Method::GET),
            Err(Refusal::OtherHost("api.example.vlaanderen.be:8080".into()))
        );
        assert_eq!(refused("*", Method::OPTIONS), Err(Refusal::NoPath));
        // The upstream itself in absolute form (a client with http_proxy set): forwarded.
        let mut parts = request("http://API.example.vlaanderen.be/v1?a", &[]);
        rewrite(&mut parts).unwrap();
        assert_eq!(parts.uri, "https://api.example.vlaanderen.be/v1?a");
        let message = Refusal::OtherHost("evil.example".into()).message(&upstream());
        assert!(message.contains("not an open proxy"), "{message}");
    }

    #[test]
    fn bearer_errors() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(value).unwrap(),
            );
            map
        };
        assert_eq!(
            bearer_error(&headers(
                "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"aud\""
            )),
            Some("invalid_token".into())
        );
        assert_eq!(bearer_error(&headers("Bearer realm=\"api\"")), None);
        assert_eq!(bearer_error(&headers("Bearer error=\"<script>\"")), None);
        assert_eq!(bearer_error(&HeaderMap::new()), None);
    }
}
