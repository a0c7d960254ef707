//! The JWT client assertion (RFC 7523) that authenticates the client at the token endpoint.
//!
//! Pure: the clock and the `jti` are parameters.

use std::fmt;

use jiff::Timestamp;
use jsonwebtoken::Header;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jwk::SigningKey;

/// Assertion lifetime. IDV allows at most 10 minutes; 5 leaves room for clock skew.
pub const LIFETIME_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

/// Claims for one token request: `iss` = `sub` = client id, a fresh `jti`.
pub fn claims(client_id: &str, audience: &str, now: Timestamp, jti: Uuid) -> Claims {
    let iat = now.as_second();
    Claims {
        iss: client_id.to_string(),
        sub: client_id.to_string(),
        aud: audience.to_string(),
        jti: jti.to_string(),
        iat,
        exp: iat + LIFETIME_SECONDS,
    }
}

/// A signed assertion. Its `Debug` and `Display` never show it.
pub struct Assertion(String);

impl Assertion {
    pub fn expose(&self) -> &str {
        &self.0
    }
    #[cfg(test)]
    pub(crate) fn for_tests(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Assertion([redacted])")
    }
}

/// The header: the key's algorithm, `typ: JWT`, and `kid` when the key has one. When the
/// server wants a `kid` always (Geosecure): the certificate's SHA-1 thumbprint for an X.509
/// based key, else the RFC 7638 thumbprint.
pub fn header(key: &SigningKey, always_send_kid: bool) -> Header {
    let mut header = Header::new(key.algorithm);
    header.typ = Some("JWT".into());
    header.kid = match (&key.kid, always_send_kid) {
        (Some(kid), _) => Some(kid.clone()),
        (None, true) => Some(
            key.certificate_thumbprint
                .clone()
                .unwrap_or_else(|| key.thumbprint.clone()),
        ),
        (None, false) => None,
    };
    header
}

#[derive(Debug, thiserror::Error)]
#[error("signing the client assertion failed: {0}")]
pub struct SignError(String);

pub fn sign(
    claims: &Claims,
    key: &SigningKey,
    always_send_kid: bool,
) -> Result<Assertion, SignError> {
    jsonwebtoken::encode(&header(key, always_send_kid), claims, key.encoding_key())
        .map(Assertion)
        // The library's message describes the failure kind; it never includes key bytes.
        .map_err(|e| SignError(format!("{:?}", e.kind())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::{KeygenAlgorithm, generate, parse_signing_key, public_jwk};
    use jsonwebtoken::{DecodingKey, Validation, jwk::Jwk};

    fn decode_with(
        jwk: &serde_json::Map<String, serde_json::Value>,
        token: &str,
        aud: &str,
    ) -> Claims {
        let public: Jwk =
            serde_json::from_value(serde_json::Value::Object(public_jwk(jwk))).unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[aud]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_jwk(&public).unwrap(), &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn claims_follow_the_idv_rules() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let jti = Uuid::new_v4();
        let c = claims(
            "3f2b6c1e-0000-4000-8000-000000000001",
            "https://authenticatie-ti.vlaanderen.be/op",
            now,
            jti,
        );
        assert_eq!(c.iss, c.sub);
        assert_eq!(c.iss, "3f2b6c1e-0000-4000-8000-000000000001");
        assert_eq!(c.aud, "https://authenticatie-ti.vlaanderen.be/op");
        assert_eq!(c.iat, 1_800_000_000);
        assert_eq!(c.exp - c.iat, 300);
        assert_eq!(c.jti, jti.to_string());
    }

    #[test]
    fn signed_assertions_verify_with_the_public_key_for_every_algorithm() {
        for alg in [
            KeygenAlgorithm::Rs256,
            KeygenAlgorithm::Ps256,
            KeygenAlgorithm::Es256,
            KeygenAlgorithm::Es384,
        ] {
            let jwk = generate(alg, 2048).unwrap();
            let key = parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None).unwrap();
            let c = claims(
                "client",
                "https://idp.example/token",
                Timestamp::now(),
                Uuid::new_v4(),
            );
            let assertion = sign(&c, &key, false).unwrap();
            assert_eq!(
                decode_with(&jwk, assertion.expose(), "https://idp.example/token"),
                c
            );
            let header = jsonwebtoken::decode_header(assertion.expose()).unwrap();
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            assert_eq!(header.kid, key.kid);
            assert_eq!(format!("{assertion:?}"), "Assertion([redacted])");
        }
    }

    #[test]
    fn kid_header_only_when_known_or_required() {
        let mut jwk = generate(KeygenAlgorithm::Es256, 0).unwrap();
        jwk.remove("kid");
        let key = parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None).unwrap();
        assert_eq!(header(&key, false).kid, None);
        assert_eq!(
            header(&key, true).kid.as_deref(),
            Some(key.thumbprint.as_str())
        );
    }

    #[test]
    fn every_request_gets_a_new_jti() {
        let now = Timestamp::now();
        let jtis: std::collections::HashSet<String> = (0..100)
            .map(|_| claims("c", "a", now, Uuid::new_v4()).jti)
            .collect();
        assert_eq!(jtis.len(), 100);
    }
}
