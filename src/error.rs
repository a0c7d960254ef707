//! One error type for everything a reconcile or the CLI can run into. Its `reason()` names
//! the status condition reason and the metric label; messages never carry secrets.

use crate::{
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

    #[error(
        "the token endpoint host {host:?} is not in the operator's --allowed-token-hosts; assertions are sent only to allowed hosts"
    )]
    HostNotAllowed { host: String },

    #[error("Kubernetes API error: {0}")]
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

fn token_message(source: &TokenError, client_id: &str, key_id: &Option<String>) -> String {
    match (source, key_id) {
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
    /// CamelCase reason for conditions and events; also the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) | Error::ServerConfig(_) => "InvalidSpec",
            Error::KeySecretNotFound { .. } => "KeySecretNotFound",
            Error::KeyNotInSecret { .. } => "KeyNotFound",
            Error::InvalidKey { .. } | Error::Sign(_) => "InvalidKey",
            Error::SecretConflict { .. } => "SecretConflict",
            Error::HostNotAllowed { .. } => "TokenHostNotAllowed",
            Error::Discovery { .. } | Error::DiscoveryTransport { .. } => "DiscoveryFailed",
            Error::Token { source, .. } => match source {
                TokenError::Refused { .. } if source.is_configuration_error() => {
                    "TokenRequestRejected"
                }
                TokenError::Refused { .. } | TokenError::Unavailable { .. } => "IdpUnavailable",
                TokenError::BadAnswer { .. } => "InvalidTokenResponse",
                TokenError::Transport { .. } => "IdpUnreachable",
            },
            Error::Kube(_) => "KubernetesError",
            Error::ReconcileTimeout { .. } => "ReconcileTimedOut",
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
