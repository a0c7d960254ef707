//! Getting one token: resolve the server (discovery, cached), sign a fresh assertion, POST,
//! parse. Shared by the operator and the `token` command.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use uuid::Uuid;

use crate::{
    assertion,
    authserver::{ResolvedServer, ServerPlan, discovery_url, resolve_discovered},
    error::Error,
    jwk::SigningKey,
    oauth::{
        HttpClient, TokenAnswer, TokenError, TokenParams, basic_authorization, parse_token_answer,
        token_form, token_form_without_assertion,
    },
};

/// How the client proves who it is.
#[derive(Clone, Debug)]
pub enum Credential {
    /// private_key_jwt: a signed assertion per request.
    PrivateKey(Arc<SigningKey>),
    /// client_secret_basic. `version` identifies the Secret's content without hashing the
    /// secret itself (a weak secret's hash could be guessed).
    ClientSecret {
        secret: ClientSecretValue,
        version: String,
    },
}

impl Credential {
    /// What error messages and status call this credential.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Credential::PrivateKey(key) => Some(key.key_id()),
            Credential::ClientSecret { .. } => None,
        }
    }

    /// Changes when the credential changes: part of the token's inputs hash.
    pub fn fingerprint(&self) -> String {
        match self {
            Credential::PrivateKey(key) => format!(
                "key:{}:{}:{:?}",
                key.thumbprint,
                key.kid.as_deref().unwrap_or_default(),
                key.algorithm
            ),
            Credential::ClientSecret { version, .. } => format!("secret:{version}"),
        }
    }
}

/// A client secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ClientSecretValue(String);

impl ClientSecretValue {
    pub fn new(secret: String) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for ClientSecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecretValue([redacted])")
    }
}

/// How long a discovered token endpoint is trusted before asking again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

pub struct TokenClient {
    http: HttpClient,
    allowed_hosts: Vec<String>,
    discovered: Mutex<HashMap<ServerPlanKey, (ResolvedServer, Instant)>>,
}

/// How the token client talks to IdPs.
#[derive(Debug, Clone, Default)]
pub struct TokenClientOptions {
    pub timeout: Duration,
    /// Host patterns assertions may be sent to (see `authserver::host_allowed`); empty: any.
    pub allowed_hosts: Vec<String>,
    /// Extra CA certificates (PEM) for private IdPs, trusted besides the system roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
}

type ServerPlanKey = (String, Option<String>);

impl TokenClient {
    pub fn new(options: TokenClientOptions) -> Result<Self, String> {
        Ok(Self {
            http: HttpClient::new(options.timeout, options.ca_bundle_pem.as_deref())?,
            allowed_hosts: options.allowed_hosts,
            discovered: Mutex::new(HashMap::new()),
        })
    }

    fn check_host(&self, url: &url::Url) -> Result<(), Error> {
        let host = url.host_str().unwrap_or_default();
        if crate::authserver::host_allowed(host, &self.allowed_hosts) {
            Ok(())
        } else {
            Err(Error::HostNotAllowed {
                host: host.to_string(),
            })
        }
    }

    /// The token endpoint and assertion audience for a plan, asking the issuer when needed.
    pub async fn resolve(&self, plan: &ServerPlan) -> Result<ResolvedServer, Error> {
        let (issuer, audience_override) = match plan {
            ServerPlan::Known(resolved) => return Ok(resolved.clone()),
            ServerPlan::Discover {
                issuer,
                audience_override,
            } => (issuer, audience_override),
        };
        let key = (issuer.to_string(), audience_override.clone());
        if let Some((resolved, at)) = self.discovered.lock().expect("lock").get(&key)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(resolved.clone());
        }
        let issuer_text = issuer.as_str().trim_end_matches('/').to_string();
        self.check_host(issuer)?;
        let answer = self
            .http
            .get(&discovery_url(issuer))
            .await
            .map_err(|source| Error::DiscoveryTransport {
                issuer: issuer_text.clone(),
                source,
            })?;
        if !(200..300).contains(&answer.status) || answer.is_oversized() {
            let what = if answer.is_oversized() {
                "a body too large for a discovery document"
            } else {
                "no discovery document"
            };
            return Err(Error::DiscoveryTransport {
                issuer: issuer_text,
                source: TokenError::BadAnswer {
                    status: answer.status,
                    what: what.into(),
                },
            });
        }
        let resolved = resolve_discovered(issuer, audience_override.clone(), &answer.body)
            .map_err(|source| Error::Discovery {
                issuer: issuer_text,
                source,
            })?;
        self.check_host(&resolved.token_endpoint)?;
        self.discovered
            .lock()
            .expect("lock")
            .insert(key, (resolved.clone(), Instant::now()));
        Ok(resolved)
    }

    /// Forget a discovered endpoint (after it failed), so the next attempt asks again.
    pub fn forget(&self, plan: &ServerPlan) {
        if let ServerPlan::Discover {
            issuer,
            audience_override,
        } = plan
        {
            self.discovered
                .lock()
                .expect("lock")
                .remove(&(issuer.to_string(), audience_override.clone()));
        }
    }

    /// Ask for a token, with a freshly signed assertion or the client secret.
    pub async fn request_token(
        &self,
        client_id: &str,
        server: &ResolvedServer,
        params: &TokenParams,
        credential: &Credential,
        now: Timestamp,
    ) -> Result<TokenAnswer, Error> {
        self.check_host(&server.token_endpoint)?;
        let token_error = |source| Error::Token {
            source,
            client_id: client_id.to_string(),
            key_id: credential.key_id().map(str::to_string),
        };
        match credential {
            Credential::PrivateKey(key) => {
                let claims =
                    assertion::claims(client_id, &server.assertion_audience, now, Uuid::new_v4());
                let signed = assertion::sign(&claims, key, server.always_send_kid)?;
                let form = token_form(params, &signed);
                let answer = self
                    .http
                    .post_form(&server.token_endpoint, &form, None)
                    .await
                    .map_err(token_error)?;
                // What went over the wire and could be echoed back: the assertion (its form
                // encoding is derived by `redaction_forms`).
                parse_token_answer(&answer, &[signed.expose()]).map_err(token_error)
            }
            Credential::ClientSecret { secret, .. } => {
                let authorization = basic_authorization(client_id, &secret.0);
                let form = token_form_without_assertion(params);
                let answer = self
                    .http
                    .post_form(&server.token_endpoint, &form, Some(&authorization))
                    .await
                    .map_err(token_error)?;
                // The secret, and the header value that carries it (base64 of `id:secret`).
                parse_token_answer(&answer, &[&secret.0, &authorization]).map_err(token_error)
            }
        }
    }
}
