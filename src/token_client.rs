//! Getting one token: resolve the server (discovery, cached), sign a fresh assertion, POST,
//! parse. Shared by the operator and the `token` command.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use uuid::Uuid;

use crate::{
    assertion,
    authserver::{
        HostPolicy, ResolvedServer, ServerPlan, check_assertion_audience, discovery_url,
        is_local_url, resolve_discovered,
    },
    error::Error,
    oauth::{
        HttpClient, TokenAnswer, TokenError, TokenParams, basic_authorization, parse_token_answer,
        token_form, token_form_without_assertion,
    },
};

pub use crate::credential::{ClientSecretValue, Credential};

/// How long a discovered token endpoint is trusted before asking again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

pub struct TokenClient {
    http: HttpClient,
    host_policy: HostPolicy,
    any_assertion_audience: bool,
    discovered: Mutex<HashMap<ServerPlanKey, (ResolvedServer, Instant)>>,
}

/// How the token client talks to IdPs.
#[derive(Debug, Clone, Default)]
pub struct TokenClientOptions {
    pub timeout: Duration,
    /// Hosts assertions and client secrets may be sent to; default: the IDV hosts.
    pub host_policy: HostPolicy,
    /// Let `assertionAudience` name any server (the `token` command: its user holds the key).
    /// Otherwise it must be on the host the assertion is sent to.
    pub any_assertion_audience: bool,
    /// Extra CA certificates (PEM) for private IdPs, trusted besides the system roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
}

type ServerPlanKey = (String, Option<String>);

impl TokenClient {
    pub fn new(options: TokenClientOptions) -> Result<Self, String> {
        Ok(Self {
            http: HttpClient::new(options.timeout, options.ca_bundle_pem.as_deref())?,
            host_policy: options.host_policy,
            any_assertion_audience: options.any_assertion_audience,
            discovered: Mutex::new(HashMap::new()),
        })
    }

    fn check_host(&self, url: &url::Url) -> Result<(), Error> {
        if self.host_policy.allows(url) {
            Ok(())
        } else {
            Err(Error::HostNotAllowed {
                host: url.host_str().unwrap_or_default().to_string(),
                local: is_local_url(url),
            })
        }
    }

    fn check_audience(&self, server: &ResolvedServer) -> Result<(), Error> {
        if self.any_assertion_audience {
            return Ok(());
        }
        check_assertion_audience(&server.assertion_audience, &server.token_endpoint)
            .map_err(Error::ServerConfig)
    }

    /// The token endpoint and assertion audience for a plan, asking the issuer when needed.
    pub async fn resolve(&self, plan: &ServerPlan) -> Result<ResolvedServer, Error> {
        let (issuer, audience_override) = match plan {
            // The default audiences of known servers are on the token endpoint's host.
            ServerPlan::Known(resolved) => {
                self.check_audience(resolved)?;
                return Ok(resolved.clone());
            }
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
        // Without an override the audience is the issuer, which may live on another host.
        if audience_override.is_some() {
            self.check_audience(&resolved)?;
        }
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
                let authorization = basic_authorization(client_id, secret.expose());
                let form = token_form_without_assertion(params);
                let answer = self
                    .http
                    .post_form(&server.token_endpoint, &form, Some(&authorization))
                    .await
                    .map_err(token_error)?;
                // The secret, and the header value that carries it (base64 of `id:secret`).
                parse_token_answer(&answer, &[secret.expose(), &authorization]).map_err(token_error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use url::Url;

    use super::*;

    fn client(patterns: &[&str]) -> TokenClient {
        TokenClient::new(TokenClientOptions {
            timeout: Duration::from_secs(5),
            host_policy: HostPolicy::from_patterns(patterns).unwrap(),
            ..TokenClientOptions::default()
        })
        .unwrap()
    }

    fn known(endpoint: &str, audience: &str) -> ServerPlan {
        ServerPlan::Known(ResolvedServer {
            token_endpoint: Url::parse(endpoint).unwrap(),
            assertion_audience: audience.into(),
            always_send_kid: false,
        })
    }

    /// Serves one discovery document on 127.0.0.1; returns the issuer.
    async fn discovery_server(token_endpoint: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/op", listener.local_addr().unwrap());
        let body =
            serde_json::json!({"issuer": issuer, "token_endpoint": token_endpoint}).to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        issuer
    }

    fn discover(issuer: &str, audience: Option<&str>) -> ServerPlan {
        ServerPlan::Discover {
            issuer: Url::parse(issuer).unwrap(),
            audience_override: audience.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn an_audience_on_another_host_is_an_invalid_spec() {
        let tokens = client(&["127.0.0.1"]);
        let foreign = known(
            "http://127.0.0.1:9/token",
            "https://authenticatie.vlaanderen.be/op",
        );
        let error = tokens.resolve(&foreign).await.unwrap_err();
        assert_eq!(error.reason(), "InvalidSpec");
        assert!(!error.is_transient());
        assert!(error.to_string().contains("\"127.0.0.1\""), "{error}");
        let home = known("http://127.0.0.1:9/token", "http://127.0.0.1:9");
        assert!(tokens.resolve(&home).await.is_ok());
        // The `token` command: its user holds the key and may name any audience.
        let cli = TokenClient::new(TokenClientOptions {
            host_policy: HostPolicy::Unrestricted,
            any_assertion_audience: true,
            ..TokenClientOptions::default()
        })
        .unwrap();
        assert!(cli.resolve(&foreign).await.is_ok());
    }

    #[tokio::test]
    async fn discovery_results_pass_the_host_policy_and_the_audience_rule() {
        let tokens = client(&["127.0.0.1"]);
        // The issuer is checked before anything is asked of it.
        let error = tokens
            .resolve(&discover("https://idp.example/op", None))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "TokenHostNotAllowed");

        let elsewhere = discovery_server("http://localhost:9/token").await;
        let error = tokens
            .resolve(&discover(&elsewhere, None))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "TokenHostNotAllowed");
        let message = error.to_string();
        assert!(
            message.contains("\"localhost\"") && message.contains("names it"),
            "{message}"
        );

        let issuer = discovery_server("http://127.0.0.1:9/token").await;
        let resolved = tokens.resolve(&discover(&issuer, None)).await.unwrap();
        assert_eq!(resolved.assertion_audience, issuer);
        assert!(
            tokens
                .resolve(&discover(&issuer, Some(&issuer)))
                .await
                .is_ok()
        );
        // Checked after discovery, against the discovered token endpoint.
        let error = tokens
            .resolve(&discover(
                &issuer,
                Some("https://authenticatie.vlaanderen.be/op"),
            ))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "InvalidSpec");
        assert!(error.to_string().contains("\"127.0.0.1\""), "{error}");
    }

    #[tokio::test]
    async fn credentials_go_only_to_allowed_hosts() {
        let tokens = client(&["*"]);
        let key = Credential::ClientSecret {
            secret: ClientSecretValue::new("s3cr3t".into()),
            version: String::new(),
        };
        let server = ResolvedServer {
            token_endpoint: Url::parse("http://127.0.0.1:9/token").unwrap(),
            assertion_audience: "http://127.0.0.1".into(),
            always_send_kid: false,
        };
        let error = tokens
            .request_token(
                "c",
                &server,
                &TokenParams::default(),
                &key,
                Timestamp::now(),
            )
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "TokenHostNotAllowed");
        assert!(
            error.to_string().contains("`*` does not include it"),
            "{error}"
        );
    }
}
