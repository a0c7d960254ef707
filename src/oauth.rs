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

/// Keep server-supplied text short, printable, and free of anything we sent.
fn sanitize(text: &str, secrets: &[&str]) -> String {
    // Printable first (a control character inside a secret must not hide it from the
    // redaction), then redact, then cut (a cut before could leave a secret's start in place).
    let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        clean = clean.replace(secret, "[redacted]");
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
    pub body: Vec<u8>,
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
    let token_type = match object.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_string(),
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => t.clone(),
        Some(Value::String(t)) => {
            return Err(TokenError::BadAnswer {
                status,
                what: format!(
                    "token_type {:?}; only Bearer tokens are supported",
                    sanitize(t, sent)
                ),
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
            .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
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
                body.truncate(MAX_BODY_BYTES);
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

/// A short reason without the URL (reqwest's Display includes it, with query strings).
fn transport_what(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the request timed out".into()
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
    fn secrets_do_not_show_in_debug() {
        assert_eq!(
            format!("{:?}", AccessToken::new("secret-token".into())),
            "AccessToken([redacted])"
        );
    }
}
