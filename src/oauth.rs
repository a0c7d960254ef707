//! The token request: form building and answer parsing (pure), and the HTTP call (I/O).

use std::{fmt, time::Duration};

use serde_json::Value;
use url::Url;

use crate::assertion::Assertion;

pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Answers larger than this are not read further: a token answer is a few KiB at most.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// A lifetime above a year is not believable for an access token.
const MAX_EXPIRES_IN: u64 = 366 * 24 * 3600;
/// Assumed lifetime when the server does not say (RFC 6749 makes expires_in optional).
pub const DEFAULT_EXPIRES_IN: u64 = 300;

/// What to ask for, apart from the client's credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenParams {
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
}

/// The form of a client_credentials request authenticated with a JWT assertion.
pub fn token_form(params: &TokenParams, assertion: &Assertion) -> Vec<(&'static str, String)> {
    let mut form = token_form_without_assertion(params);
    form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_string()));
    form.push(("client_assertion", assertion.expose().to_string()));
    form
}

/// The form of a client_credentials request authenticated with client_secret_basic
/// (the credentials travel in the Authorization header, see `basic_authorization`).
pub fn token_form_without_assertion(params: &TokenParams) -> Vec<(&'static str, String)> {
    let mut form = vec![("grant_type", "client_credentials".to_string())];
    if !params.scopes.is_empty() {
        form.push(("scope", params.scopes.join(" ")));
    }
    if let Some(audience) = &params.audience {
        form.push(("audience", audience.clone()));
    }
    if let Some(resource) = &params.resource {
        form.push(("resource", resource.clone()));
    }
    form
}

/// RFC 6749 section 2.3.1: both parts form-urlencoded, then base64 of `id:secret`.
pub fn basic_authorization(client_id: &str, secret: &str) -> String {
    use base64::Engine;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// An access token. Never parsed, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// A successful token answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAnswer {
    pub access_token: AccessToken,
    /// As the server spelled it (normally `Bearer`).
    pub token_type: String,
    /// Seconds; `DEFAULT_EXPIRES_IN` when the server sent none.
    pub expires_in: u64,
    /// The granted scope, when the server says.
    pub scope: Option<String>,
}

/// Why a token request did not give a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// An RFC 6749 section 5.2 error answer.
    #[error("the token endpoint refused the request (HTTP {status}): {code}{}", describe(.description))]
    Refused {
        status: u16,
        code: String,
        description: Option<String>,
        retry_after: Option<u64>,
    },
    /// 5xx or 429 without an OAuth error body.
    #[error("the token endpoint is unavailable (HTTP {status}{}){}", content_note(.content_type), retry_note(.retry_after))]
    Unavailable {
        status: u16,
        content_type: Option<String>,
        retry_after: Option<u64>,
    },
    /// An answer that is not a usable token response.
    #[error("the token endpoint answered HTTP {status} with {what}")]
    BadAnswer { status: u16, what: String },
    /// No answer: connection refused, DNS, TLS, timeout, redirect.
    #[error("cannot reach the token endpoint at {host}: {what}")]
    Transport {
        host: String,
        what: String,
        timeout: bool,
    },
}

fn describe(description: &Option<String>) -> String {
    description
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

fn content_note(content_type: &Option<String>) -> String {
    content_type
        .as_ref()
        .map(|c| format!(", {} body", c.split(';').next().unwrap_or_default().trim()))
        .unwrap_or_default()
}

fn retry_note(retry_after: &Option<u64>) -> String {
    retry_after
        .map(|s| format!("; it asks to retry after {s}s"))
        .unwrap_or_default()
}

impl TokenError {
    /// RFC 6749 codes that mean the configuration is wrong; everything else may pass.
    pub fn is_configuration_error(&self) -> bool {
        match self {
            TokenError::Refused { code, status, .. } => {
                !matches!(
                    code.as_str(),
                    "temporarily_unavailable" | "server_error" | "slow_down"
                ) && *status < 500
                    && *status != 429
            }
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            TokenError::Refused { retry_after, .. }
            | TokenError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Every spelling in which a value we sent may come back in a server's text: as sent, form
/// encoded (how it travels in a request body), and for a `Basic` header value also its base64
/// payload and the decoded `id:secret` pair. Longest first, so that a longer form is replaced
/// whole before a shorter one inside it. Values under 8 characters are left alone (redacting
/// them would blank out ordinary words).
pub fn redaction_forms(sent: &[&str]) -> Vec<String> {
    let form_encoded = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
    let mut forms: Vec<String> = Vec::new();
    for value in sent {
        let mut spellings = vec![value.to_string(), form_encoded(value)];
        if let Some(payload) = value.strip_prefix("Basic ") {
            use base64::Engine;
            spellings.push(payload.to_string());
            spellings.push(payload.trim_end_matches('=').to_string());
            if let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(payload)
                && let Ok(pair) = String::from_utf8(pair)
            {
                // The pair as encoded (RFC 6749 2.3.1 form-encodes both halves), and decoded.
                let decoded: String = url::form_urlencoded::parse(format!("x={pair}").as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .next()
                    .unwrap_or_default();
                spellings.push(pair);
                spellings.push(decoded);
            }
        }
        for spelling in spellings {
            // Percent-encoding may come back with a space as %20 rather than '+'.
            let with_percent_space = spelling.replace('+', "%20");
            forms.push(spelling);
            forms.push(with_percent_space);
        }
    }
    // The text is cleaned of control characters before redaction: clean the forms alike.
    let mut forms: Vec<String> = forms
        .into_iter()
        .map(|f| f.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|f| f.len() >= 8)
        .collect();
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// `text` with each occurrence of `needle` replaced, ignoring ASCII case (percent-encoding
/// hex digits may come back in either case; redacting a little more is harmless).
fn redact_ignoring_ascii_case(text: &str, needle: &str) -> String {
    let (haystack, wanted) = (text.to_ascii_lowercase(), needle.to_ascii_lowercase());
    // ASCII lower-casing keeps every byte offset, so offsets in `haystack` are offsets in `text`.
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = haystack[rest..].find(&wanted) {
        out.push_str(&text[rest..rest + found]);
        out.push_str("[redacted]");
        rest += found + wanted.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// Keep server-supplied text short, printable, and free of anything we sent (`sent`: the
/// values as sent, see `redaction_forms`).
fn sanitize(text: &str, sent: &[&str]) -> String {
    // Printable first (a control character inside a secret must not hide it from the
    // redaction), then redact, then cut (a cut before could leave a secret's start in place).
    let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
    for form in redaction_forms(sent) {
        clean = redact_ignoring_ascii_case(&clean, &form);
    }
    clean.chars().take(300).collect()
}

/// `expires_in` as a JSON number or a numeric string (Geosecure sends strings).
fn parse_expires_in(value: Option<&Value>) -> Result<u64, String> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| "expires_in that is not a number".to_string())?;
    if seconds <= 0 {
        return Err(format!(
            "expires_in {seconds}, which is not a positive lifetime"
        ));
    }
    let seconds = seconds as u64;
    if seconds > MAX_EXPIRES_IN {
        return Err(format!(
            "expires_in {seconds}, longer than a year, which is not believable"
        ));
    }
    Ok(seconds)
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        let essence = c
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    })
}

/// The parts of an HTTP answer that matter.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<u64>,
    /// At most `MAX_BODY_BYTES + 1` bytes: one byte more than the limit says it was cut.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The body was longer than `MAX_BODY_BYTES` and was not read to its end.
    pub fn is_oversized(&self) -> bool {
        self.body.len() > MAX_BODY_BYTES
    }
}

/// RFC 6750 section 2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// The error names the position and kind of the first bad character, never the token.
pub fn check_b64token(token: &str) -> Result<(), String> {
    let body = token.trim_end_matches('=');
    if body.is_empty() {
        return Err("an access_token that is only padding, not an RFC 6750 token".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    match body.chars().enumerate().find(|(_, c)| !allowed(*c)) {
        None => Ok(()),
        Some((index, c)) => {
            let kind = match c {
                '\r' | '\n' => "a line break",
                '\0' => "a NUL",
                ' ' | '\t' => "white space",
                '"' | '\'' => "a quote",
                '=' => "an '=' before the end",
                c if c.is_control() => "a control character",
                c if !c.is_ascii() => "a non-ASCII character",
                _ => "a character outside A-Z a-z 0-9 - . _ ~ + /",
            };
            Err(format!(
                "an access_token that is not an RFC 6750 token ({kind} at character {} of {}); it is not stored",
                index + 1,
                token.chars().count()
            ))
        }
    }
}

/// Turn an HTTP answer into a token or an error. `sent` are values we sent (the assertion),
/// scrubbed from any text we quote back.
pub fn parse_token_answer(answer: &HttpAnswer, sent: &[&str]) -> Result<TokenAnswer, TokenError> {
    let status = answer.status;
    let body: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let object = body.as_ref().and_then(Value::as_object);
    // An OAuth error object, whatever the status (some servers send errors with 200).
    if let Some(code) = object.and_then(|o| o.get("error")).and_then(Value::as_str) {
        let description = object
            .and_then(|o| o.get("error_description"))
            .and_then(Value::as_str)
            .map(|d| sanitize(d, sent));
        return Err(TokenError::Refused {
            status,
            code: sanitize(code, sent),
            description,
            retry_after: answer.retry_after,
        });
    }
    if status == 429 || status >= 500 {
        return Err(TokenError::Unavailable {
            status,
            content_type: answer.content_type.as_deref().map(|c| sanitize(c, sent)),
            retry_after: answer.retry_after,
        });
    }
    if answer.is_oversized() {
        return Err(TokenError::BadAnswer {
            status,
            what: format!(
                "a body larger than {} KiB, too large for a token response",
                MAX_BODY_BYTES / 1024
            ),
        });
    }
    let Some(object) = object else {
        let what = if answer.body.is_empty() {
            "an empty body".to_string()
        } else if is_json(answer.content_type.as_deref()) && body.is_some() {
            "JSON that is not an object".to_string()
        } else {
            let kind = answer
                .content_type
                .as_deref()
                .map(|c| sanitize(c, sent))
                .unwrap_or_else(|| "no content type".into());
            let html = String::from_utf8_lossy(&answer.body[..answer.body.len().min(512)])
                .to_ascii_lowercase()
                .contains("<html");
            format!(
                "a non-JSON body ({}{kind}), not a token response",
                if html { "HTML, " } else { "" }
            )
        };
        return Err(TokenError::BadAnswer { status, what });
    };
    if !(200..300).contains(&status) {
        return Err(TokenError::BadAnswer {
            status,
            what: "a JSON body without an OAuth error code".into(),
        });
    }
    let access_token = match object.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            return Err(TokenError::BadAnswer {
                status,
                what: "JSON without an access_token".into(),
            });
        }
    };
    // The token goes into an HTTP header value (`authorization`): only RFC 6750 characters.
    if let Err(what) = check_b64token(&access_token) {
        return Err(TokenError::BadAnswer { status, what });
    }
    let token_type = match object.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_string(),
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => t.clone(),
        Some(Value::String(t)) => {
            // A type name is quoted; anything else (it might be the token, or hold a value we
            // sent) is only described.
            let name_like = !t.is_empty()
                && t.len() <= 20
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && sanitize(t, sent) == *t;
            let described = if name_like {
                format!("token_type {t:?}")
            } else {
                format!("a token_type of {} characters", t.chars().count())
            };
            return Err(TokenError::BadAnswer {
                status,
                what: format!("{described}; only Bearer tokens are supported"),
            });
        }
        Some(_) => {
            return Err(TokenError::BadAnswer {
                status,
                what: "a token_type that is not a string".into(),
            });
        }
    };
    let expires_in = parse_expires_in(object.get("expires_in"))
        .map_err(|what| TokenError::BadAnswer { status, what })?;
    let scope = object
        .get("scope")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(TokenAnswer {
        access_token: AccessToken::new(access_token),
        token_type,
        expires_in,
        scope,
    })
}

/// `Retry-After` in seconds (the HTTP-date form is rare on token endpoints and is ignored).
pub fn parse_retry_after(value: Option<&str>) -> Option<u64> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.min(3600))
}

/// One shared HTTP client for every token and discovery request.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    pub fn new(timeout: Duration, ca_bundle_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_bundle_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("invalid CA bundle: {e}"))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirected token request would carry the assertion somewhere unchecked.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idv-token-operator/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| client_build_error(&e))?;
        Ok(Self { client })
    }

    /// POST a form and read the answer.
    pub async fn post_form(
        &self,
        url: &Url,
        form: &[(&'static str, String)],
        authorization: Option<&str>,
    ) -> Result<HttpAnswer, TokenError> {
        let mut request = self
            .client
            .post(url.clone())
            .header("accept", "application/json")
            .form(form);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        self.send(url, request).await
    }

    /// GET a document (discovery).
    pub async fn get(&self, url: &Url) -> Result<HttpAnswer, TokenError> {
        self.send(
            url,
            self.client
                .get(url.clone())
                .header("accept", "application/json"),
        )
        .await
    }

    async fn send(
        &self,
        url: &Url,
        request: reqwest::RequestBuilder,
    ) -> Result<HttpAnswer, TokenError> {
        let host = url.host_str().unwrap_or("?").to_string();
        let transport = |e: reqwest::Error| TokenError::Transport {
            host: host.clone(),
            what: transport_what(&e),
            timeout: e.is_timeout(),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            return Err(TokenError::Transport {
                host: host.clone(),
                what: format!(
                    "it answered with a redirect (HTTP {status}); redirects are not followed"
                ),
                timeout: false,
            });
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let retry_after = parse_retry_after(header("retry-after").as_deref());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY_BYTES {
                // Keep one byte over the limit: `HttpAnswer::is_oversized` tells from it.
                body.truncate(MAX_BODY_BYTES + 1);
                break;
            }
        }
        Ok(HttpAnswer {
            status,
            content_type,
            retry_after,
            body,
        })
    }
}

/// Why the HTTP client could not be built; reqwest's own Display is only "builder error".
fn client_build_error(error: &reqwest::Error) -> String {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    // rustls-platform-verifier's words when the trust store gave no certificate at all.
    if detail.contains("No CA certificates were loaded") {
        "no CA certificates to verify IdPs with: the system trust store (SSL_CERT_FILE and \
         SSL_CERT_DIR when set, else the distribution's files such as \
         /etc/ssl/certs/ca-certificates.crt) holds none, and no --ca-bundle was given"
            .into()
    } else {
        format!("cannot create the HTTP client: {detail}")
    }
}

/// A short reason without the URL (reqwest's Display includes it, with query strings).
fn transport_what(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the request timed out".into()
    } else if let Some(reason) = tls_failure(e) {
        format!("TLS handshake failed: {reason}")
    } else if e.is_connect() {
        let mut source = std::error::Error::source(e);
        let mut detail = String::from("connection failed");
        while let Some(s) = source {
            detail = format!("connection failed ({s})");
            source = s.source();
        }
        detail
    } else if e.is_redirect() {
        "it answered with a redirect; redirects are not followed".into()
    } else if e.is_body() || e.is_decode() {
        "the answer broke off".into()
    } else {
        "the request failed".into()
    }
}

/// Why a TLS handshake failed, when a rustls error is among `error`'s sources (reqwest ->
/// hyper -> io::Error -> io::Error -> rustls::Error). An io::Error's `source()` skips the
/// error it wraps, so the walk steps into it with `get_ref` instead.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    // Bounded: a chain that loops (a buggy `source`) cannot hang a reconcile.
    for _ in 0..16 {
        let current = next?;
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(describe_tls(tls));
        }
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

/// A rustls error in words: what is wrong and, where it helps, what to do. The server's
/// certificate is public, but its names are the server's text: printable and cut short.
pub fn describe_tls(error: &rustls::Error) -> String {
    use rustls::{CertificateError as Cert, Error as Tls};
    let time = |t: &rustls::pki_types::UnixTime| {
        jiff::Timestamp::from_second(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
            .map(|t| t.to_string())
            .unwrap_or_else(|_| format!("{} (UNIX time)", t.as_secs()))
    };
    match error {
        Tls::InvalidCertificate(certificate) => match certificate {
            Cert::UnknownIssuer => "the server's certificate is not trusted: no trusted CA signed it \
                 (for a private CA: --ca-bundle, or the system trust store)"
                .into(),
            Cert::BadSignature => {
                "the server's certificate is not trusted: its signature does not verify".into()
            }
            Cert::NotValidForName => "the server's certificate is for another host".into(),
            Cert::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "the server's certificate is for another host: it names {}, not {}",
                certificate_names(presented),
                printable(expected.to_str().as_ref(), 64)
            ),
            Cert::Expired => "the server's certificate expired".into(),
            Cert::ExpiredContext { not_after, .. } => {
                format!("the server's certificate expired at {}", time(not_after))
            }
            Cert::NotValidYet => {
                "the server's certificate is not valid yet (check the clocks)".into()
            }
            Cert::NotValidYetContext { not_before, .. } => format!(
                "the server's certificate is not valid before {} (check the clocks)",
                time(not_before)
            ),
            Cert::Revoked => "the server's certificate is revoked".into(),
            Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => {
                "the server's certificate is not meant for a TLS server (extended key usage)".into()
            }
            Cert::BadEncoding => "the server's certificate cannot be parsed".into(),
            other => format!(
                "the server's certificate was rejected ({})",
                printable(&other.to_string(), 200)
            ),
        },
        Tls::InvalidMessage(_)
        | Tls::InappropriateMessage { .. }
        | Tls::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS on this port (plain HTTP? then the URL starts with http://)"
                .into()
        }
        Tls::AlertReceived(alert) => {
            format!("the server ended the handshake (TLS alert {alert:?})")
        }
        Tls::PeerIncompatible(why) => {
            format!("the server offers no TLS version or cipher suite in common ({why:?})")
        }
        Tls::NoCertificatesPresented => "the server presented no certificate".into(),
        other => format!("TLS error: {}", printable(&other.to_string(), 200)),
    }
}

/// The subject names rustls quotes (`DnsName("a.example")`, `IpAddress(10.0.0.1)`), readable.
fn certificate_names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no host at all".into();
    }
    let readable = |name: &String| {
        let plain = name
            .strip_prefix("DnsName(\"")
            .and_then(|n| n.strip_suffix("\")"))
            .or_else(|| {
                name.strip_prefix("IpAddress(")
                    .and_then(|n| n.strip_suffix(')'))
            })
            .unwrap_or(name);
        printable(plain, 64)
    };
    const SHOWN: usize = 4;
    let mut names: Vec<String> = presented.iter().take(SHOWN).map(readable).collect();
    if presented.len() > SHOWN {
        names.push(format!("{} more", presented.len() - SHOWN));
    }
    names.join(", ")
}

/// At most `max` characters, without control characters.
fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: &str, body: &str) -> HttpAnswer {
        HttpAnswer {
            status,
            content_type: Some(content_type.into()),
            retry_after: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn form_fields() {
        let params = TokenParams {
            scopes: vec!["gipod_read".into(), "gipod_write".into()],
            audience: Some("api-client".into()),
            resource: Some("https://api.example".into()),
        };
        let form = token_form(&params, &Assertion::for_tests("a.b.c"));
        assert_eq!(
            form,
            vec![
                ("grant_type", "client_credentials".to_string()),
                ("scope", "gipod_read gipod_write".into()),
                ("audience", "api-client".into()),
                ("resource", "https://api.example".into()),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE.into()),
                ("client_assertion", "a.b.c".into()),
            ]
        );
        let minimal = token_form(&TokenParams::default(), &Assertion::for_tests("x"));
        assert_eq!(
            minimal.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["grant_type", "client_assertion_type", "client_assertion"]
        );
    }

    #[test]
    fn client_secret_basic() {
        // RFC 6749 2.3.1: form-urlencode, then base64.
        assert_eq!(
            basic_authorization("my client", "p@ss:word"),
            "Basic bXkrY2xpZW50OnAlNDBzcyUzQXdvcmQ="
        );
        let form = token_form_without_assertion(&TokenParams {
            scopes: vec!["a".into()],
            ..TokenParams::default()
        });
        assert_eq!(
            form,
            vec![
                ("grant_type", "client_credentials".to_string()),
                ("scope", "a".into())
            ]
        );
    }

    #[test]
    fn successful_answers() {
        let cases = [
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#,
                3600,
                None,
            ),
            (
                r#"{"access_token":"t","token_type":"bearer","expires_in":"14556","scope":"a b"}"#,
                14556,
                Some("a b"),
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer"}"#,
                DEFAULT_EXPIRES_IN,
                None,
            ),
            (r#"{"access_token":"t","expires_in":59.9}"#, 59, None),
        ];
        for (body, expires_in, scope) in cases {
            let parsed = parse_token_answer(&answer(200, "application/json", body), &[]).unwrap();
            assert_eq!(parsed.access_token.expose(), "t");
            assert_eq!(parsed.expires_in, expires_in, "{body}");
            assert_eq!(parsed.scope.as_deref(), scope);
        }
    }

    #[test]
    fn failing_answers() {
        let html = "<html><body>Bad gateway</body></html>";
        let cases: Vec<(HttpAnswer, &str)> = vec![
            (
                answer(400, "application/json", r#"{"error":"invalid_request"}"#),
                "refused the request (HTTP 400): invalid_request",
            ),
            (
                answer(
                    401,
                    "application/json",
                    r#"{"error":"invalid_client","error_description":"bad sig"}"#,
                ),
                "(HTTP 401): invalid_client (bad sig)",
            ),
            (
                answer(200, "application/json", r#"{"error":"invalid_scope"}"#),
                "(HTTP 200): invalid_scope",
            ),
            (
                answer(502, "text/html", html),
                "unavailable (HTTP 502, text/html body)",
            ),
            (
                answer(200, "text/html", html),
                "HTTP 200 with a non-JSON body (HTML, text/html)",
            ),
            (
                answer(200, "application/json", r#"{"token_type":"Bearer"}"#),
                "JSON without an access_token",
            ),
            (
                answer(
                    200,
                    "application/json",
                    r#"{"access_token":"t","token_type":"mac"}"#,
                ),
                "token_type \"mac\"",
            ),
            (
                answer(
                    200,
                    "application/json",
                    r#"{"access_token":"t","expires_in":-5}"#,
                ),
                "expires_in -5",
            ),
            (
                answer(
                    200,
                    "application/json",
                    r#"{"access_token":"t","expires_in":99999999999}"#,
                ),
                "longer than a year",
            ),
            (
                answer(
                    200,
                    "application/json",
                    r#"{"access_token":"t","expires_in":"soon"}"#,
                ),
                "not a number",
            ),
            (answer(200, "application/json", ""), "an empty body"),
            (
                answer(200, "application/json", "[1]"),
                "JSON that is not an object",
            ),
            (
                answer(404, "application/json", "{}"),
                "HTTP 404 with a JSON body without an OAuth error code",
            ),
        ];
        for (input, expected) in cases {
            let message = parse_token_answer(&input, &[]).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        let mut limited = answer(429, "text/plain", "slow down");
        limited.retry_after = parse_retry_after(Some("7"));
        let error = parse_token_answer(&limited, &[]).unwrap_err();
        assert_eq!(error.retry_after(), Some(7));
        assert!(!error.is_configuration_error());
    }

    #[test]
    fn error_classes() {
        let refused = |status: u16, code: &str| {
            parse_token_answer(
                &answer(
                    status,
                    "application/json",
                    &format!(r#"{{"error":"{code}"}}"#),
                ),
                &[],
            )
            .unwrap_err()
        };
        for code in [
            "invalid_client",
            "unauthorized_client",
            "invalid_scope",
            "invalid_grant",
            "invalid_request",
        ] {
            assert!(refused(400, code).is_configuration_error(), "{code}");
        }
        assert!(!refused(503, "temporarily_unavailable").is_configuration_error());
        assert!(!refused(500, "server_error").is_configuration_error());
    }

    #[test]
    fn quoted_server_text_never_repeats_what_we_sent() {
        let assertion = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJjIn0.c2lnbmF0dXJl";
        let body = format!(
            r#"{{"error":"invalid_client","error_description":"assertion {assertion} rejected"}}"#
        );
        let message = parse_token_answer(&answer(401, "application/json", &body), &[assertion])
            .unwrap_err()
            .to_string();
        assert!(!message.contains(assertion));
        assert!(message.contains("[redacted]"));
    }

    #[test]
    fn an_echoed_request_is_redacted_in_every_form() {
        let (client_id, secret) = ("client-7", "p@ss w0rd:&=/+é~");
        let header = basic_authorization(client_id, secret);
        let payload = header.strip_prefix("Basic ").unwrap().to_string();
        let form_encoded: String =
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let pair = format!("client-7:{form_encoded}");
        let echoes = [
            format!("Authorization: {header}"),
            format!("credentials {payload} rejected"),
            format!("credentials {} rejected", payload.trim_end_matches('=')),
            format!("user {pair}"),
            format!("user client-7:{secret}"),
            format!("body client_secret={form_encoded}&grant_type=client_credentials"),
            format!("body client_secret={}", form_encoded.to_ascii_lowercase()),
            format!("body client_secret={}", form_encoded.replace('+', "%20")),
            format!("raw {secret}"),
        ];
        for echo in &echoes {
            let body = serde_json::json!({"error": "invalid_client", "error_description": echo});
            let error = parse_token_answer(
                &answer(401, "application/json", &body.to_string()),
                &[secret, &header],
            )
            .unwrap_err();
            let message = error.to_string();
            for form in [&header, &payload, &pair, &form_encoded, &secret.to_string()] {
                assert!(!message.contains(form.as_str()), "{echo:?} -> {message:?}");
            }
            assert!(message.contains("[redacted]"), "{message}");
            assert!(message.contains("invalid_client"), "{message}");
            assert!(error.is_configuration_error());
        }
        // An assertion in an echoed form body.
        let assertion = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJjIn0.c2ln-bmF0_dXJl";
        let body = serde_json::json!({"error": "invalid_request", "error_description":
            format!("grant_type=client_credentials&client_assertion={assertion}")});
        let message = parse_token_answer(
            &answer(400, "application/json", &body.to_string()),
            &[assertion],
        )
        .unwrap_err()
        .to_string();
        assert!(
            !message.contains(assertion) && message.contains("[redacted]"),
            "{message}"
        );
    }

    #[test]
    fn redaction_forms_are_longest_first_and_skip_short_values() {
        let forms = redaction_forms(&["a b+c/d=e", "short"]);
        assert!(forms.contains(&"a b+c/d=e".to_string()));
        assert!(forms.contains(&"a+b%2Bc%2Fd%3De".to_string()));
        assert!(forms.contains(&"a%20b%2Bc%2Fd%3De".to_string()));
        assert!(!forms.iter().any(|f| f == "short"));
        assert!(forms.windows(2).all(|w| w[0].len() >= w[1].len()));
    }

    #[test]
    fn tokens_are_rfc6750_b64tokens() {
        for good in ["t", "abc.DEF-123_~+/", "YWJj==", "eyJ.eyJ.sig"] {
            assert_eq!(check_b64token(good), Ok(()), "{good:?}");
        }
        for (bad, kind) in [
            (
                "abcdefgh\r\nX-Injected: 1",
                "a line break at character 9 of 23",
            ),
            ("abcdefgh\0", "a NUL"),
            ("abc defgh", "white space at character 4"),
            ("abc\"defgh", "a quote"),
            ("abc=def", "an '=' before the end"),
            ("abcé", "a non-ASCII character"),
            ("abc,def", "a character outside"),
            ("===", "only padding"),
        ] {
            let message = check_b64token(bad).unwrap_err();
            assert!(message.contains(kind), "{bad:?}: {message}");
            let body = serde_json::json!({"access_token": bad, "token_type": "Bearer"});
            let error =
                parse_token_answer(&answer(200, "application/json", &body.to_string()), &[])
                    .unwrap_err();
            assert!(matches!(error, TokenError::BadAnswer { .. }), "{bad:?}");
            let message = error.to_string();
            assert!(message.contains("RFC 6750"), "{message}");
            // The message does not quote the token, not even the part before the bad character.
            assert!(!message.contains("abc"), "{message}");
        }
    }

    #[test]
    fn an_unusual_token_type_is_quoted_only_when_it_looks_like_a_type_name() {
        let message = |token_type: &str| {
            let body = serde_json::json!({"access_token": "t", "token_type": token_type});
            parse_token_answer(&answer(200, "application/json", &body.to_string()), &[])
                .unwrap_err()
                .to_string()
        };
        assert!(message("DPoP").contains("token_type \"DPoP\"; only Bearer"));
        let odd = message("Bearer abcdefgh-the-token");
        assert!(
            !odd.contains("abcdefgh") && odd.contains("a token_type of 25 characters"),
            "{odd}"
        );
        assert!(!message("Bearer\r\n").contains("\"Bearer"));
    }

    #[test]
    fn an_oversized_body_is_too_large_not_non_json() {
        let mut big = answer(200, "application/json", "");
        big.body = vec![b' '; MAX_BODY_BYTES + 1];
        big.body[..2].copy_from_slice(b"{\"");
        let message = parse_token_answer(&big, &[]).unwrap_err().to_string();
        assert!(message.contains("larger than 256 KiB"), "{message}");
        assert!(!message.contains("non-JSON"), "{message}");
        // Exactly at the limit it is an ordinary (here: non-JSON) body.
        big.body.truncate(MAX_BODY_BYTES);
        assert!(!big.is_oversized());
        assert!(
            parse_token_answer(&big, &[])
                .unwrap_err()
                .to_string()
                .contains("non-JSON")
        );
        // A 5xx stays "unavailable", whatever its size.
        let mut down = answer(503, "text/html", "");
        down.body = vec![b'x'; MAX_BODY_BYTES + 1];
        assert!(matches!(
            parse_token_answer(&down, &[]),
            Err(TokenError::Unavailable { .. })
        ));
    }

    #[test]
    fn a_ca_bundle_is_checked_when_the_client_is_built() {
        let ca = rcgen::generate_simple_self_signed(vec!["idp.internal".to_string()]).unwrap();
        assert!(HttpClient::new(Duration::from_secs(1), Some(ca.cert.pem().as_bytes())).is_ok());
        let error = HttpClient::new(
            Duration::from_secs(1),
            Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
        )
        .err();
        assert!(error.is_some_and(|e| e.contains("invalid CA bundle")));
    }

    #[test]
    fn tls_failures_are_named_from_the_rustls_error() {
        use rustls::{CertificateError as Cert, Error as Tls, pki_types::UnixTime};
        let at = |s: u64| UnixTime::since_unix_epoch(Duration::from_secs(s));
        let cases: Vec<(Tls, &str)> = vec![
            (Cert::UnknownIssuer.into(), "certificate is not trusted"),
            (Cert::BadSignature.into(), "certificate is not trusted"),
            (
                Cert::NotValidForName.into(),
                "certificate is for another host",
            ),
            (
                Cert::NotValidForNameContext {
                    expected: "127.0.0.1".try_into().unwrap(),
                    presented: vec![
                        "DnsName(\"idp.example\")".into(),
                        "IpAddress(10.0.0.1)".into(),
                    ],
                }
                .into(),
                "for another host: it names idp.example, 10.0.0.1, not 127.0.0.1",
            ),
            (
                Cert::ExpiredContext {
                    time: at(1_600_000_000),
                    not_after: at(1_577_836_800),
                }
                .into(),
                "certificate expired at 2020-01-01T00:00:00Z",
            ),
            (Cert::Expired.into(), "certificate expired"),
            (
                Cert::NotValidYetContext {
                    time: at(1_577_836_800),
                    not_before: at(1_600_000_000),
                }
                .into(),
                "not valid before 2020-09-13T12:26:40Z (check the clocks)",
            ),
            (Cert::Revoked.into(), "revoked"),
            (Cert::InvalidPurpose.into(), "not meant for a TLS server"),
            (
                Tls::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "does not speak TLS",
            ),
            (
                Tls::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                "TLS alert HandshakeFailure",
            ),
            (Tls::NoCertificatesPresented, "presented no certificate"),
        ];
        for (error, expected) in cases {
            let reason = describe_tls(&error);
            assert!(reason.contains(expected), "{error:?}: {reason:?}");
        }
        // A hostile certificate's names: printable, few, short.
        let presented: Vec<String> = (0..9)
            .map(|i| format!("DnsName(\"host{i}\\r\\n{}\")", "x".repeat(100)))
            .collect();
        let reason = describe_tls(
            &Cert::NotValidForNameContext {
                expected: "127.0.0.1".try_into().unwrap(),
                presented,
            }
            .into(),
        );
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.contains("5 more") && reason.len() < 400, "{reason}");
    }

    #[test]
    fn the_tls_reason_is_found_wherever_the_chain_hides_it() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let tls = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = || std::io::Error::new(std::io::ErrorKind::InvalidData, tls());
        // As is; inside an io::Error (whose `source()` skips it); an io::Error further down.
        assert!(tls_failure(&tls()).is_some());
        assert!(tls_failure(&io()).is_some());
        assert!(tls_failure(&Outer(io())).is_some());
        let nested = std::io::Error::other(Outer(io()));
        assert!(tls_failure(&nested).unwrap().contains("not trusted"));
        // Not TLS at all.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_failure(&Outer(refused)), None);
    }

    /// Certificates for the TLS tests: a trusted CA and leaves that are wrong in one way each.
    struct TestPki {
        ca_pem: String,
        good: (String, String),
        untrusted: (String, String),
        wrong_host: (String, String),
        expired: (String, String),
    }

    fn test_pki() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let (trusted, other) = (ca("trusted test CA"), ca("untrusted test CA"));
        let leaf = |names: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2019, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 1, 1);
            }
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        TestPki {
            ca_pem: trusted.pem(),
            good: leaf(&["127.0.0.1"], &trusted, false),
            untrusted: leaf(&["127.0.0.1"], &other, false),
            wrong_host: leaf(&["idp.example"], &trusted, false),
            expired: leaf(&["127.0.0.1"], &trusted, true),
        }
    }

    /// A TLS server on 127.0.0.1 with this certificate, answering every request with a token.
    async fn tls_server((cert, key): &(String, String)) -> Url {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("https://{}/token", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut request = [0u8; 4096];
                    let _ = tls.read(&mut request).await;
                    let body = r#"{"access_token":"t","token_type":"Bearer"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn tls_failures_through_reqwest_name_their_reason() {
        let pki = test_pki();
        let client = HttpClient::new(Duration::from_secs(5), Some(pki.ca_pem.as_bytes())).unwrap();
        let good = client.get(&tls_server(&pki.good).await).await.unwrap();
        assert_eq!(good.status, 200);
        for (cert, expected) in [
            (&pki.untrusted, "the server's certificate is not trusted"),
            (
                &pki.wrong_host,
                "the server's certificate is for another host: it names idp.example, not 127.0.0.1",
            ),
            (
                &pki.expired,
                "the server's certificate expired at 2020-01-01T00:00:00Z",
            ),
        ] {
            let url = tls_server(cert).await;
            let error = client.get(&url).await.unwrap_err();
            assert!(
                matches!(&error, TokenError::Transport { timeout: false, .. }),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains(
                    "cannot reach the token endpoint at 127.0.0.1: TLS handshake failed: "
                ) && message.contains(expected),
                "{message}"
            );
        }
        // Without the CA, the good certificate is not trusted either.
        let plain = HttpClient::new(Duration::from_secs(5), None).unwrap();
        let message = plain
            .get(&tls_server(&pki.good).await)
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains("not trusted"), "{message}");
    }

    #[tokio::test]
    async fn https_to_a_plain_http_port_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("https://{}/token", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut hello = [0u8; 4096];
                let _ = socket.read(&mut hello).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let client = HttpClient::new(Duration::from_secs(5), None).unwrap();
        let message = client.get(&url).await.unwrap_err().to_string();
        assert!(message.contains("does not speak TLS"), "{message}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        assert_eq!(
            format!("{:?}", AccessToken::new("secret-token".into())),
            "AccessToken([redacted])"
        );
    }
}
