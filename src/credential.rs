//! The client's credential, parsed from the bytes of a Secret key (operator) or a file (CLI):
//! one copy of the rules for both; and the credential Secret `keygen` writes. Pure.

use std::{collections::BTreeMap, fmt, sync::Arc};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use crate::{
    api,
    jwk::{self, KeyError, SigningKey},
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

impl ClientSecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Which credential a client names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A private JWK or JWK Set (private_key_jwt); `key_id` picks a key of a set.
    PrivateKey,
    /// A client secret (client_secret_basic).
    ClientSecret,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the client secret is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// Parse a credential. `version` identifies where a client secret came from (its change is
/// noticed by that, never by a hash of the secret).
pub fn parse(
    kind: Kind,
    bytes: Vec<u8>,
    key_id: Option<&str>,
    version: String,
) -> Result<Credential, CredentialError> {
    match kind {
        Kind::PrivateKey => Ok(Credential::PrivateKey(Arc::new(jwk::parse_signing_key(
            &bytes, key_id,
        )?))),
        Kind::ClientSecret => {
            let text = String::from_utf8(bytes).map_err(|_| CredentialError::NotUtf8)?;
            // A file or `--from-file` Secret usually ends in a newline that is no part of it.
            Ok(Credential::ClientSecret {
                secret: ClientSecretValue::new(text.trim_end_matches(['\r', '\n']).to_string()),
                version,
            })
        }
    }
}

/// Key of the private JWK in a Secret that `keygen --secret-name` writes.
pub const KEY_SECRET_KEY: &str = "jwk.json";

/// A Secret holding a private JWK under `KEY_SECRET_KEY`, labelled so that the operator may
/// read it as a credential (`keygen --secret-name`). `stringData`, so that it reads as JSON.
pub fn credential_secret(name: &str, namespace: Option<&str>, jwk_json: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            labels: Some(BTreeMap::from([(
                api::CREDENTIAL_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            KEY_SECRET_KEY.to_string(),
            jwk_json.to_string(),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_their_own_rules() {
        let secret = parse(
            Kind::ClientSecret,
            b"s3cret\r\n".to_vec(),
            None,
            "v1".into(),
        )
        .unwrap();
        match &secret {
            Credential::ClientSecret { secret, version } => {
                assert_eq!((secret.expose(), version.as_str()), ("s3cret", "v1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{secret:?}").contains("s3cret"), "redacted Debug");
        assert!(matches!(
            parse(Kind::ClientSecret, vec![0xff, 0xfe], None, String::new()),
            Err(CredentialError::NotUtf8)
        ));
        assert!(matches!(
            parse(Kind::PrivateKey, b"s3cret".to_vec(), None, String::new()),
            Err(CredentialError::Key(_))
        ));
        let jwk =
            serde_json::to_vec(&jwk::generate(jwk::KeygenAlgorithm::Es256, 0).unwrap()).unwrap();
        let key = parse(Kind::PrivateKey, jwk, None, String::new()).unwrap();
        assert!(key.key_id().is_some());
    }
}
