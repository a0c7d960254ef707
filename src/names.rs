//! Names that reach the apiserver's URLs. Pure.
//!
//! A Secret name goes into the request path as written: `?watch=true` would turn a GET of
//! one Secret into a never-ending watch, `?x=1` into a LIST of every Secret. The CRD refuses
//! such names; `validate` refuses them again before any API call, for objects stored before
//! the CRD did (and for apiservers that skip CEL).

use crate::api::IdvClient;

/// Longest Secret name (and data key) Kubernetes accepts.
pub const MAX_NAME_LENGTH: usize = 253;

/// What `<metadata.name>-token` appends to the IdvClient's name.
pub const DEFAULT_SECRET_SUFFIX: &str = "-token";

/// Longest IdvClient name whose default token Secret name still fits.
pub const MAX_NAME_WITH_DEFAULT_SECRET: usize = MAX_NAME_LENGTH - DEFAULT_SECRET_SUFFIX.len();

/// A DNS-1123 subdomain (what Kubernetes requires of a Secret's name): at most 253
/// characters, dot-separated labels of lower-case letters, digits and inner hyphens.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    name.len() <= MAX_NAME_LENGTH && name.split('.').all(label_ok)
}

/// A key of a Secret's data (Kubernetes' `IsConfigMapKey`): letters, digits, `-`, `_`, `.`,
/// at most 253 characters, and neither `.`, `..` nor beginning with `..`.
pub fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_NAME_LENGTH
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && !key.starts_with("..")
}

const SUBDOMAIN_RULE: &str = "a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.', beginning and ending with a letter or digit";

/// Every Secret name and key the IdvClient makes the operator use: the error says which is
/// invalid. The message names the field, never the value (hostile input stays out of status
/// and logs).
pub fn validate(client: &IdvClient) -> Result<(), String> {
    let spec = &client.spec;
    let refs = [
        (
            "privateKey",
            spec.private_key.as_ref().map(|k| &k.secret_ref),
        ),
        (
            "clientSecret",
            spec.client_secret.as_ref().map(|s| &s.secret_ref),
        ),
    ];
    for (field, reference) in refs {
        let Some(reference) = reference else { continue };
        if !is_dns1123_subdomain(&reference.name) {
            return Err(format!(
                "spec.{field}.secretRef.name must be {SUBDOMAIN_RULE}"
            ));
        }
        if !is_secret_key(&reference.key) {
            return Err(format!(
                "spec.{field}.secretRef.key must be a Secret data key: at most 253 letters, digits, '-', '_' and '.', not '.' or '..'"
            ));
        }
    }
    match &spec.secret.name {
        Some(name) if !is_dns1123_subdomain(name) => {
            Err(format!("spec.secret.name must be {SUBDOMAIN_RULE}"))
        }
        Some(_) => Ok(()),
        None if !is_dns1123_subdomain(&client.token_secret_name()) => Err(format!(
            "the default token Secret name <metadata.name>{DEFAULT_SECRET_SUFFIX} is longer than {MAX_NAME_LENGTH} characters; set spec.secret.name or use a name of at most {MAX_NAME_WITH_DEFAULT_SECRET} characters"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClientSecret, PrivateKey, SecretKeyRef, test_client};

    #[test]
    fn subdomains() {
        let long = |n: usize| "a".repeat(n);
        for (name, ok) in [
            ("gipod-jwk", true),
            ("a", true),
            ("0", true),
            ("a.b-c.d", true),
            ("x1-2.y", true),
            (&long(253), true),
            (&long(254), false),
            ("", false),
            ("?x=1", false),
            ("?watch=true", false),
            ("a/b", false),
            ("..", false),
            (".", false),
            ("a..b", false),
            (".a", false),
            ("a.", false),
            ("-a", false),
            ("a-", false),
            ("a.-b", false),
            ("Upper", false),
            ("a_b", false),
            ("a b", false),
            ("a%2Fb", false),
            ("a\nb", false),
            ("é", false),
        ] {
            assert_eq!(is_dns1123_subdomain(name), ok, "{name:?}");
        }
    }

    #[test]
    fn secret_keys() {
        for (key, ok) in [
            ("jwk.json", true),
            ("client_secret", true),
            ("A-b.C_d", true),
            (".hidden", true),
            ("a..b", true),
            (&"k".repeat(253), true),
            (&"k".repeat(254), false),
            ("", false),
            (".", false),
            ("..", false),
            ("..data", false),
            ("a/b", false),
            ("?x=1", false),
            ("a b", false),
            ("ü", false),
        ] {
            assert_eq!(is_secret_key(key), ok, "{key:?}");
        }
    }

    fn reference(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn validate_checks_every_name_the_operator_uses() {
        let with_key = |name: &str, key: &str| {
            let mut c = test_client("gipod");
            c.spec.private_key = Some(PrivateKey {
                secret_ref: reference(name, key),
                key_id: None,
            });
            c
        };
        let with_client_secret = |name: &str, key: &str| {
            let mut c = test_client("gipod");
            c.spec.client_secret = Some(ClientSecret {
                secret_ref: reference(name, key),
            });
            c
        };
        let with_secret_name = |name: &str| {
            let mut c = with_key("k", "jwk.json");
            c.spec.secret.name = Some(name.into());
            c
        };
        let with_client_name = |name: &str| {
            let mut c = with_key("k", "jwk.json");
            c.metadata.name = Some(name.into());
            c
        };
        let field = |c: &IdvClient| validate(c).err();
        for (client, expected) in [
            (with_key("k", "jwk.json"), None),
            (with_client_secret("s", "secret"), None),
            (with_secret_name("a.b"), None),
            (with_client_name(&"n".repeat(247)), None),
            (
                with_key("?x=1", "jwk.json"),
                Some("spec.privateKey.secretRef.name"),
            ),
            (
                with_key("?watch=true", "k"),
                Some("spec.privateKey.secretRef.name"),
            ),
            (with_key("k", "a/b"), Some("spec.privateKey.secretRef.key")),
            (with_key("k", ".."), Some("spec.privateKey.secretRef.key")),
            (
                with_client_secret("a/b", "k"),
                Some("spec.clientSecret.secretRef.name"),
            ),
            (
                with_client_secret("s", ""),
                Some("spec.clientSecret.secretRef.key"),
            ),
            (with_secret_name(".."), Some("spec.secret.name")),
            (with_secret_name("Upper"), Some("spec.secret.name")),
            (with_secret_name(&"s".repeat(254)), Some("spec.secret.name")),
            (
                with_client_name(&"n".repeat(248)),
                Some("<metadata.name>-token"),
            ),
            // A valid spec.secret.name makes the length of metadata.name irrelevant.
            (
                {
                    let mut c = with_client_name(&"n".repeat(253));
                    c.spec.secret.name = Some("short".into());
                    c
                },
                None,
            ),
        ] {
            let message = field(&client);
            match (expected, &message) {
                (None, None) => {}
                (Some(needle), Some(message)) => {
                    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                    // The message never quotes the value (hostile input stays out of status).
                    assert!(!message.contains("?x=1") && !message.contains("nnnnnnnnnn"));
                }
                _ => panic!("{:?}: expected {expected:?}, got {message:?}", client.spec),
            }
        }
    }
}
