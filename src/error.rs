//! One error type for everything a reconcile or the CLI can run into. Its `reason()` names
//! the status condition reason and the metric label; messages never carry secrets.

use crate::{
    api::reasons,
    assertion::SignError,
    authserver::{DiscoveryError, ServerConfigError},
    jwk::KeyError,
    oauth::TokenError,
    schedule::FailureClass,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    #[error("invalid authServer: {0}")]
    ServerConfig(#[from] ServerConfigError),

    #[error("the Secret {name:?} does not exist in this namespace")]
    KeySecretNotFound { name: String },

    #[error(
        "the Secret {name:?} is not labelled {label}=true, so the operator does not read it as a credential; label it (kubectl label secret {name} {label}=true) if it holds this client's key or secret",
        label = crate::api::CREDENTIAL_LABEL
    )]
    CredentialNotLabelled { name: String },

    #[error("the Secret {name:?} has no key {key:?} (or it is empty)")]
    KeyNotInSecret { name: String, key: String },

    #[error("the key in Secret {name:?} (key {key:?}) is unusable: {source}")]
    InvalidKey {
        name: String,
        key: String,
        source: KeyError,
    },

    #[error("{0}")]
    Sign(#[from] SignError),

    #[error(
        "a Secret named {name:?} already exists and is not managed by this IdvClient; it is left untouched (choose another spec.secret.name or remove that Secret)"
    )]
    SecretConflict { name: String },

    #[error("OIDC discovery for issuer {issuer} failed: {source}")]
    Discovery {
        issuer: String,
        source: DiscoveryError,
    },

    #[error("OIDC discovery for issuer {issuer} failed: {}", discovery_cause(.source))]
    DiscoveryTransport { issuer: String, source: TokenError },

    /// The token endpoint said no or did not answer usefully.
    #[error("{}", token_message(.source, .client_id, .key_id))]
    Token {
        source: TokenError,
        client_id: String,
        key_id: Option<String>,
    },

    /// The apiserver refuses the token Secret for a reason that retrying will not fix.
    #[error(
        "the token Secret {name:?} cannot be written (HTTP {code}: {message}); no token is requested until that is fixed"
    )]
    SecretNotWritable {
        name: String,
        code: u16,
        message: String,
    },

    #[error(
        "the host {host:?} is not in the operator's --allowed-token-hosts (default: the IDV hosts); assertions and client secrets are sent only to allowed hosts{}",
        if *.local { "; a loopback or link-local host is allowed only when the list names it (`*` does not include it)" } else { "" }
    )]
    HostNotAllowed { host: String, local: bool },

    #[error("Kubernetes API error: {}", kube_message(.0))]
    Kube(#[from] kube::Error),

    /// The reconcile did not finish within its deadline (an apiserver or IdP call hung).
    #[error(
        "the reconcile did not finish within {seconds} s and was stopped; it is retried with backoff"
    )]
    ReconcileTimeout { seconds: u64 },
}

fn discovery_cause(source: &TokenError) -> String {
    match source {
        TokenError::Transport { host, what, .. } => format!("cannot reach {host}: {what}"),
        TokenError::BadAnswer { status, what } => {
            format!("the issuer answered HTTP {status} with {what}")
        }
        other => other.to_string(),
    }
}

/// A Kubernetes client error for status, events and logs: the apiserver's code, reason and
/// message, never a Debug dump of its `Status` (kube's own Display adds one).
pub fn kube_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let message: String = status
                .message
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
            match (status.code, status.reason.is_empty()) {
                (0, true) => message,
                (0, false) => format!("{}: {message}", status.reason),
                (code, true) => format!("HTTP {code}: {message}"),
                (code, false) => format!("HTTP {code} {}: {message}", status.reason),
            }
        }
        // serde_json's message may quote a piece of the answer (a Secret's data): position only.
        kube::Error::SerdeError(e) => format!(
            "cannot read the apiserver's answer (line {}, column {})",
            e.line(),
            e.column()
        ),
        other => other.to_string(),
    }
}

/// Whether a server's error description is about the assertion's `aud` (Ory Hydra / fosite:
/// "Claim 'audience' from 'client_assertion' must match ..."; Okta: "The audience claim ...").
fn names_audience(description: &str) -> bool {
    description
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word.eq_ignore_ascii_case("aud") || word.eq_ignore_ascii_case("audience"))
}

fn token_message(source: &TokenError, client_id: &str, key_id: &Option<String>) -> String {
    match (source, key_id) {
        (
            TokenError::Refused {
                code,
                description: Some(description),
                ..
            },
            Some(_),
        ) if code == "invalid_client" && names_audience(description) => format!(
            "{source}; the server does not accept the assertion's audience (aud): set \
             spec.authServer.assertionAudience to the value it expects, often its token endpoint \
             URL (docs/idv.md lists which servers want which aud)"
        ),
        (TokenError::Refused { code, .. }, None) if code == "invalid_client" => {
            format!(
                "{source}; check the client secret and that client {client_id:?} and the authorization server are right"
            )
        }
        (TokenError::Refused { code, .. }, Some(key_id)) if code == "invalid_client" => format!(
            "{source}; check that the public key with kid {key_id:?} is registered for client {client_id:?} \
             and that the client id and authorization server are right"
        ),
        (TokenError::Refused { code, .. }, _) if code == "unauthorized_client" => {
            format!(
                "{source}; client {client_id:?} may not use the client_credentials grant or these scopes"
            )
        }
        (TokenError::Refused { code, .. }, _) if code == "invalid_scope" => {
            format!("{source}; request only scopes granted to client {client_id:?}")
        }
        (other, _) => other.to_string(),
    }
}

impl Error {
    /// A refused write of the token Secret: permanent refusals (forbidden, invalid, quota,
    /// namespace terminating) are configuration errors; the rest may pass on a retry.
    pub fn from_secret_write(name: &str, error: kube::Error) -> Error {
        match &error {
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 404 | 422) => {
                Error::SecretNotWritable {
                    name: name.to_string(),
                    code: status.code,
                    message: status.message.chars().take(300).collect(),
                }
            }
            _ => Error::Kube(error),
        }
    }

    /// CamelCase reason for conditions and events; also the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) | Error::ServerConfig(_) => reasons::INVALID_SPEC,
            Error::KeySecretNotFound { .. } => reasons::KEY_SECRET_NOT_FOUND,
            Error::KeyNotInSecret { .. } => reasons::KEY_NOT_FOUND,
            Error::CredentialNotLabelled { .. } => reasons::CREDENTIAL_NOT_LABELLED,
            Error::SecretNotWritable { .. } => reasons::SECRET_NOT_WRITABLE,
            Error::InvalidKey { .. } | Error::Sign(_) => reasons::INVALID_KEY,
            Error::SecretConflict { .. } => reasons::SECRET_CONFLICT,
            Error::HostNotAllowed { .. } => reasons::TOKEN_HOST_NOT_ALLOWED,
            Error::Discovery { .. } | Error::DiscoveryTransport { .. } => reasons::DISCOVERY_FAILED,
            Error::Token { source, .. } => match source {
                TokenError::Refused { .. } if source.is_configuration_error() => {
                    reasons::TOKEN_REQUEST_REJECTED
                }
                TokenError::Refused { .. } | TokenError::Unavailable { .. } => {
                    reasons::IDP_UNAVAILABLE
                }
                TokenError::BadAnswer { .. } => reasons::INVALID_TOKEN_RESPONSE,
                TokenError::Transport { .. } => reasons::IDP_UNREACHABLE,
            },
            Error::Kube(_) => reasons::KUBERNETES_ERROR,
            Error::ReconcileTimeout { .. } => reasons::RECONCILE_TIMED_OUT,
        }
    }

    pub fn class(&self) -> FailureClass {
        match self {
            Error::Token { source, .. } if source.is_configuration_error() => {
                FailureClass::Configuration
            }
            Error::Token { .. }
            | Error::Discovery { .. }
            | Error::DiscoveryTransport { .. }
            | Error::Kube(_)
            | Error::ReconcileTimeout { .. } => FailureClass::Transient,
            _ => FailureClass::Configuration,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == FailureClass::Transient
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Token { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_client_names_client_and_key() {
        let e = Error::Token {
            source: TokenError::Refused {
                status: 401,
                code: "invalid_client".into(),
                description: None,
                retry_after: None,
            },
            client_id: "c-1".into(),
            key_id: Some("k-1".into()),
        };
        let message = e.to_string();
        assert!(
            message.contains("\"c-1\"")
                && message.contains("\"k-1\"")
                && message.contains("registered"),
            "{message}"
        );
        assert_eq!(e.reason(), "TokenRequestRejected");
        assert!(!e.is_transient());
    }

    fn refused(code: &str, description: &str) -> TokenError {
        TokenError::Refused {
            status: 401,
            code: code.into(),
            description: Some(description.into()),
            retry_after: None,
        }
    }

    #[test]
    fn an_audience_complaint_points_at_assertion_audience_not_at_the_key() {
        for description in [
            // Ory Hydra / fosite 2.x
            "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method). Claim 'audience' from 'client_assertion' must match the authorization server's token endpoint 'https://idp.example/oauth2/token'.",
            // Okta
            "The audience claim for client_assertion must be the endpoint invoked for the request.",
            "invalid aud",
            "JWT aud mismatch",
        ] {
            let e = Error::Token {
                source: refused("invalid_client", description),
                client_id: "c-1".into(),
                key_id: Some("k-1".into()),
            };
            let message = e.to_string();
            assert!(
                message.contains("spec.authServer.assertionAudience"),
                "{message}"
            );
            assert!(!message.contains("registered"), "{message}");
            assert_eq!(e.reason(), "TokenRequestRejected");
        }
        // Words that merely contain the letters are not about the audience.
        for description in [
            "client authentication failed",
            "audit log id 7",
            "fraud check",
        ] {
            let message = Error::Token {
                source: refused("invalid_client", description),
                client_id: "c-1".into(),
                key_id: Some("k-1".into()),
            }
            .to_string();
            assert!(message.contains("registered"), "{message}");
            assert!(!message.contains("assertionAudience"), "{message}");
        }
        // A client secret has no assertion: no audience hint.
        let message = Error::Token {
            source: refused("invalid_client", "bad audience"),
            client_id: "c-1".into(),
            key_id: None,
        }
        .to_string();
        assert!(message.contains("check the client secret"), "{message}");
    }

    #[test]
    fn kubernetes_errors_give_code_reason_and_message_only() {
        let status = kube::core::Status {
            code: 422,
            reason: "Invalid".into(),
            message: "Secret \"x\" is invalid: metadata.name: Invalid value".into(),
            ..kube::core::Status::failure("", "")
        };
        let e = Error::Kube(kube::Error::Api(Box::new(status)));
        let message = e.to_string();
        assert_eq!(
            message,
            "Kubernetes API error: HTTP 422 Invalid: Secret \"x\" is invalid: metadata.name: Invalid value"
        );
        assert!(
            !message.contains("Status {") && !message.contains("code:"),
            "{message}"
        );
        assert_eq!(e.reason(), "KubernetesError");
        // serde_json quotes pieces of what it could not read: only the position is kept.
        let serde = serde_json::from_str::<u64>("\"c2VjcmV0LWRhdGE=\"").unwrap_err();
        let message = Error::Kube(kube::Error::SerdeError(serde)).to_string();
        assert!(!message.contains("c2VjcmV0LWRhdGE="), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    /// The metric label lists of `api::reasons` are exactly what errors can say: none missing
    /// (its series would appear only after the first failure), none dead.
    #[test]
    fn the_metric_label_lists_name_every_reason() {
        use crate::authserver::{DiscoveryError, ServerConfigError};
        use std::collections::BTreeSet;
        let token = |source| Error::Token {
            source,
            client_id: "c".into(),
            key_id: Some("k".into()),
        };
        let transport = || TokenError::Transport {
            host: "h".into(),
            what: "w".into(),
            timeout: false,
        };
        // What the background token request (discovery, signing, the request) can end with.
        let request = vec![
            Error::ServerConfig(ServerConfigError::NotExactlyOne),
            Error::HostNotAllowed {
                host: "h".into(),
                local: false,
            },
            Error::Discovery {
                issuer: "i".into(),
                source: DiscoveryError::NotJson,
            },
            Error::DiscoveryTransport {
                issuer: "i".into(),
                source: transport(),
            },
            token(refused("invalid_client", "x")),
            token(refused("temporarily_unavailable", "x")),
            token(TokenError::Unavailable {
                status: 503,
                content_type: None,
                retry_after: None,
            }),
            token(TokenError::BadAnswer {
                status: 200,
                what: "w".into(),
            }),
            token(transport()),
        ];
        let others = vec![
            Error::InvalidSpec("x".into()),
            Error::KeySecretNotFound { name: "s".into() },
            Error::CredentialNotLabelled { name: "s".into() },
            Error::KeyNotInSecret {
                name: "s".into(),
                key: "k".into(),
            },
            Error::InvalidKey {
                name: "s".into(),
                key: "k".into(),
                source: KeyError::EmptySet,
            },
            Error::SecretConflict { name: "s".into() },
            Error::SecretNotWritable {
                name: "s".into(),
                code: 403,
                message: "m".into(),
            },
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure(
                "", "",
            )))),
            Error::ReconcileTimeout { seconds: 1 },
        ];
        let reasons = |errors: &[Error]| -> BTreeSet<&'static str> {
            errors.iter().map(Error::reason).collect()
        };
        // Error::Sign (its field is private to assertion.rs) shares InvalidKey's arm.
        let mut from_requests = reasons(&request);
        from_requests.insert(reasons::INVALID_KEY);
        assert_eq!(
            from_requests,
            reasons::TOKEN_REQUEST_FAILURES.into_iter().collect()
        );
        let mut all = reasons(&others);
        all.extend(&from_requests);
        assert_eq!(all, reasons::ERRORS.into_iter().collect());
    }

    #[test]
    fn classes() {
        let unavailable = Error::Token {
            source: TokenError::Unavailable {
                status: 503,
                content_type: None,
                retry_after: Some(3),
            },
            client_id: "c".into(),
            key_id: Some("k".into()),
        };
        assert!(unavailable.is_transient());
        assert_eq!(unavailable.retry_after(), Some(3));
        assert_eq!(unavailable.reason(), "IdpUnavailable");
        assert!(!Error::KeySecretNotFound { name: "x".into() }.is_transient());
        assert!(!Error::SecretConflict { name: "x".into() }.is_transient());
        let timeout = Error::ReconcileTimeout { seconds: 35 };
        assert!(timeout.is_transient());
        assert_eq!(timeout.reason(), "ReconcileTimedOut");
    }
}
