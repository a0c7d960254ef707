//! Private JWKs: parse a key or a JWK Set, pick the signing key, compute its RFC 7638
//! thumbprint, and turn it into a `jsonwebtoken::EncodingKey`.
//!
//! Pure: no I/O. Error messages name fields, never their values.

use std::fmt;

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        RsaKeyPair,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use pkcs1::der::{Decode, Encode};
use serde_json::{Map, Value};

/// Smallest RSA modulus we sign with; IDV's own generator makes 4096-bit keys.
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("the key is not valid JSON ({0})")]
    NotJson(String),
    #[error("the key is JSON but not a JWK object or JWK Set")]
    NotAJwk,
    #[error("the JWK Set holds no keys")]
    EmptySet,
    #[error("the JWK is a public key (no \"d\" member); the Secret must hold the private JWK")]
    PublicOnly,
    #[error("the JWK Set holds no private signing key")]
    NoPrivateSigningKey,
    #[error("no key with kid \"{0}\" in the JWK Set")]
    KeyIdNotFound(String),
    #[error("the key with kid \"{0}\" is not a private signing key")]
    KeyIdNotPrivate(String),
    /// The value as `shown`: quoted when registered, else only described.
    #[error("unsupported key type (kty) {0}; use RSA or EC")]
    UnsupportedKty(String),
    #[error("unsupported EC curve {0}; use P-256 or P-384")]
    UnsupportedCurve(String),
    #[error("algorithm {alg} does not fit a {kind} key")]
    AlgorithmMismatch { alg: String, kind: String },
    #[error("the JWK is marked for encryption (use \"enc\"), not signing")]
    NotForSigning,
    #[error("the JWK lacks the \"{0}\" member")]
    MissingMember(&'static str),
    #[error("the JWK member \"{0}\" is not valid base64url")]
    BadMember(&'static str),
    #[error("the RSA JWK lacks the CRT members (p, q, dp, dq, qi) needed for signing")]
    MissingCrtMembers,
    #[error("the RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    RsaTooSmall(usize),
    #[error("unsupported RSA size {0} bits; use 2048, 3072, 4096 or 8192")]
    UnsupportedRsaSize(usize),
    #[error("the key's members are inconsistent; the crypto library rejected it ({0})")]
    Rejected(String),
}

/// The parsed private key, ready for signing. Its `Debug` shows no key material.
#[derive(Clone)]
pub struct SigningKey {
    /// `kid` from the JWK, when it has one.
    pub kid: Option<String>,
    /// RFC 7638 SHA-256 thumbprint (base64url): the key id to show when the JWK has no `kid`.
    pub thumbprint: String,
    /// For a JWK built from an X.509 certificate: the certificate's SHA-1 thumbprint
    /// (base64url), from `x5t` or computed from `x5c`. Geosecure expects it as `kid`.
    pub certificate_thumbprint: Option<String>,
    pub algorithm: Algorithm,
    encoding_key: EncodingKey,
}

impl SigningKey {
    /// The id shown in status and logs: the JWK's `kid`, else its thumbprint.
    pub fn key_id(&self) -> &str {
        self.kid.as_deref().unwrap_or(&self.thumbprint)
    }
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding_key
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("thumbprint", &self.thumbprint)
            .field("certificate_thumbprint", &self.certificate_thumbprint)
            .field("algorithm", &self.algorithm)
            .field("encoding_key", &"[redacted]")
            .finish()
    }
}

/// Parse a private JWK or a JWK Set. In a set, `key_id` picks the key; without it, the
/// first private signing key is taken.
pub fn parse_signing_key(bytes: &[u8], key_id: Option<&str>) -> Result<SigningKey, KeyError> {
    let value: Value = serde_json::from_slice(bytes)
        // serde_json's syntax errors carry a position only, never the input.
        .map_err(|e| KeyError::NotJson(format!("line {}, column {}", e.line(), e.column())))?;
    let object = value.as_object().ok_or(KeyError::NotAJwk)?;
    let jwk = match object.get("keys") {
        Some(keys) => pick_from_set(keys.as_array().ok_or(KeyError::NotAJwk)?, key_id)?,
        None => {
            if let Some(wanted) = key_id
                && object.get("kid").and_then(Value::as_str) != Some(wanted)
            {
                return Err(KeyError::KeyIdNotFound(wanted.to_string()));
            }
            object
        }
    };
    signing_key_from_jwk(jwk)
}

fn is_private_signing_key(jwk: &Map<String, Value>) -> bool {
    jwk.contains_key("d") && jwk.get("use").and_then(Value::as_str) != Some("enc")
}

fn pick_from_set<'a>(
    keys: &'a [Value],
    key_id: Option<&str>,
) -> Result<&'a Map<String, Value>, KeyError> {
    let objects: Vec<&Map<String, Value>> = keys.iter().filter_map(Value::as_object).collect();
    if objects.is_empty() {
        return Err(KeyError::EmptySet);
    }
    match key_id {
        Some(wanted) => {
            let with_kid: Vec<&Map<String, Value>> = objects
                .into_iter()
                .filter(|k| k.get("kid").and_then(Value::as_str) == Some(wanted))
                .collect();
            if with_kid.is_empty() {
                return Err(KeyError::KeyIdNotFound(wanted.to_string()));
            }
            // A set may list a key's public copy too: take the private one.
            with_kid
                .into_iter()
                .find(|k| is_private_signing_key(k))
                .ok_or_else(|| KeyError::KeyIdNotPrivate(wanted.to_string()))
        }
        None => objects
            .into_iter()
            .find(|k| is_private_signing_key(k))
            .ok_or(KeyError::NoPrivateSigningKey),
    }
}

/// Registered `kty` values (RFC 7518 section 6.1, RFC 8037).
const KNOWN_KTY: [&str; 4] = ["RSA", "EC", "oct", "OKP"];
/// Registered `crv` values (RFC 7518 section 6.2.1.1, RFC 8037).
const KNOWN_CRV: [&str; 7] = [
    "P-256", "P-384", "P-521", "Ed25519", "Ed448", "X25519", "X448",
];
/// Registered `alg` values (RFC 7518 sections 3.1 and 4.1, RFC 8037).
const KNOWN_ALG: [&str; 37] = [
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "none",
    "EdDSA",
    "RSA1_5",
    "RSA-OAEP",
    "RSA-OAEP-256",
    "A128KW",
    "A192KW",
    "A256KW",
    "dir",
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
    "A128GCMKW",
    "A192GCMKW",
    "A256GCMKW",
    "PBES2-HS256+A128KW",
    "PBES2-HS384+A192KW",
    "PBES2-HS512+A256KW",
    "A128CBC-HS256",
    "A192CBC-HS384",
    "A256CBC-HS512",
    "A128GCM",
    "A192GCM",
    "A256GCM",
];
/// Registered `use` values (RFC 7517 section 4.2).
const KNOWN_USE: [&str; 2] = ["sig", "enc"];

/// A member value for an error message: quoted only when it is a registered value of that
/// member (`"oct"`, `"P-521"`, `"HS256"`); anything else could be key material put in the
/// wrong member (a 16-character `kty` may be a secret), so it is described, not shown.
fn shown(member: &str, value: &str) -> String {
    let known: &[&str] = match member {
        "kty" => &KNOWN_KTY,
        "crv" => &KNOWN_CRV,
        "alg" => &KNOWN_ALG,
        "use" => &KNOWN_USE,
        _ => &[],
    };
    if known.contains(&value) {
        format!("\"{value}\"")
    } else {
        format!(
            "(an unregistered value of {} characters, not shown)",
            value.chars().count()
        )
    }
}

fn text<'a>(jwk: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, KeyError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or(KeyError::MissingMember(name))
}

fn bytes(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let encoded = text(jwk, name)?;
    // Some generators pad base64url; the JWK spec says they must not, so accept both.
    URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| KeyError::BadMember(name))
}

fn signing_key_from_jwk(jwk: &Map<String, Value>) -> Result<SigningKey, KeyError> {
    if jwk.get("use").and_then(Value::as_str) == Some("enc") {
        return Err(KeyError::NotForSigning);
    }
    let kty = text(jwk, "kty")?;
    let alg = jwk.get("alg").and_then(Value::as_str);
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
    let thumbprint = thumbprint(jwk)?;
    let certificate_thumbprint = certificate_thumbprint(jwk)?;
    if !jwk.contains_key("d") {
        return Err(KeyError::PublicOnly);
    }
    let (algorithm, encoding_key) = match kty {
        "RSA" => rsa_key(jwk, alg)?,
        "EC" => ec_key(jwk, alg)?,
        other => return Err(KeyError::UnsupportedKty(shown("kty", other))),
    };
    Ok(SigningKey {
        kid,
        thumbprint,
        certificate_thumbprint,
        algorithm,
        encoding_key,
    })
}

/// `x5t` as given, or the SHA-1 of the first `x5c` certificate (standard base64 DER).
fn certificate_thumbprint(jwk: &Map<String, Value>) -> Result<Option<String>, KeyError> {
    if let Some(x5t) = jwk.get("x5t").and_then(Value::as_str) {
        return Ok(Some(x5t.to_string()));
    }
    let Some(first) = jwk
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|chain| chain.first())
    else {
        return Ok(None);
    };
    let der = first
        .as_str()
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .ok_or(KeyError::BadMember("x5c"))?;
    Ok(Some(URL_SAFE_NO_PAD.encode(digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        &der,
    ))))
}

fn rsa_key(
    jwk: &Map<String, Value>,
    alg: Option<&str>,
) -> Result<(Algorithm, EncodingKey), KeyError> {
    let algorithm = match alg {
        None | Some("RS256") => Algorithm::RS256,
        Some("RS384") => Algorithm::RS384,
        Some("RS512") => Algorithm::RS512,
        Some("PS256") => Algorithm::PS256,
        Some("PS384") => Algorithm::PS384,
        Some("PS512") => Algorithm::PS512,
        Some(other) => {
            return Err(KeyError::AlgorithmMismatch {
                alg: shown("alg", other),
                kind: "RSA".into(),
            });
        }
    };
    let n = bytes(jwk, "n")?;
    let e = bytes(jwk, "e")?;
    let d = bytes(jwk, "d")?;
    let crt = ["p", "q", "dp", "dq", "qi"];
    if crt.iter().any(|m| !jwk.contains_key(*m)) {
        return Err(KeyError::MissingCrtMembers);
    }
    let (p, q, dp, dq, qi) = (
        bytes(jwk, "p")?,
        bytes(jwk, "q")?,
        bytes(jwk, "dp")?,
        bytes(jwk, "dq")?,
        bytes(jwk, "qi")?,
    );
    let der = pkcs1::RsaPrivateKey {
        modulus: uint(&n, "n")?,
        public_exponent: uint(&e, "e")?,
        private_exponent: uint(&d, "d")?,
        prime1: uint(&p, "p")?,
        prime2: uint(&q, "q")?,
        exponent1: uint(&dp, "dp")?,
        exponent2: uint(&dq, "dq")?,
        coefficient: uint(&qi, "qi")?,
        other_prime_infos: None,
    }
    .to_der()
    .map_err(|e| KeyError::Rejected(e.kind().to_string()))?;
    // Let the crypto library check that the members fit together before we ever sign.
    let pair = RsaKeyPair::from_der(&der).map_err(|e| KeyError::Rejected(e.to_string()))?;
    let bits = pair.public_modulus_len() * 8;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::RsaTooSmall(bits));
    }
    Ok((algorithm, EncodingKey::from_rsa_der(&der)))
}

fn ec_key(
    jwk: &Map<String, Value>,
    alg: Option<&str>,
) -> Result<(Algorithm, EncodingKey), KeyError> {
    let crv = text(jwk, "crv")?;
    let (algorithm, signing, coordinate_len) = match crv {
        "P-256" => (Algorithm::ES256, &ECDSA_P256_SHA256_FIXED_SIGNING, 32),
        "P-384" => (Algorithm::ES384, &ECDSA_P384_SHA384_FIXED_SIGNING, 48),
        other => return Err(KeyError::UnsupportedCurve(shown("crv", other))),
    };
    if let Some(alg) = alg
        && alg != format!("{algorithm:?}")
    {
        return Err(KeyError::AlgorithmMismatch {
            alg: shown("alg", alg),
            kind: format!("EC {crv}"),
        });
    }
    let (x, y, d) = (bytes(jwk, "x")?, bytes(jwk, "y")?, bytes(jwk, "d")?);
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(KeyError::BadMember("x"));
    }
    let mut public = Vec::with_capacity(1 + 2 * coordinate_len);
    public.push(0x04);
    public.extend_from_slice(&x);
    public.extend_from_slice(&y);
    let pair = EcdsaKeyPair::from_private_key_and_public_key(signing, &d, &public)
        .map_err(|e| KeyError::Rejected(e.to_string()))?;
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| KeyError::Rejected("cannot encode as PKCS#8".into()))?;
    Ok((algorithm, EncodingKey::from_ec_der(pkcs8.as_ref())))
}

fn uint<'a>(bytes: &'a [u8], name: &'static str) -> Result<pkcs1::UintRef<'a>, KeyError> {
    pkcs1::UintRef::new(bytes).map_err(|_| KeyError::BadMember(name))
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the required public members.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, KeyError> {
    let kty = text(jwk, "kty")?;
    // Members in lexicographic order, no whitespace, as RFC 7638 section 3 prescribes.
    let canonical = match kty {
        "RSA" => serde_json::json!({"e": text(jwk, "e")?, "kty": "RSA", "n": text(jwk, "n")?}),
        "EC" => {
            serde_json::json!({"crv": text(jwk, "crv")?, "kty": "EC", "x": text(jwk, "x")?, "y": text(jwk, "y")?})
        }
        other => return Err(KeyError::UnsupportedKty(shown("kty", other))),
    };
    // serde_json's Map is a BTreeMap here (no preserve_order feature), so keys come out sorted.
    let json = serde_json::to_string(&canonical).expect("a JSON value serialises");
    Ok(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, json.as_bytes())))
}

/// Algorithms `keygen` can make keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeygenAlgorithm {
    Rs256,
    Ps256,
    Es256,
    Es384,
}

impl KeygenAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }
}

/// Generate a private JWK (with `kid` = RFC 7638 thumbprint, `use` = sig, `alg`).
/// `rsa_bits` is 2048, 3072 or 4096.
pub fn generate(alg: KeygenAlgorithm, rsa_bits: usize) -> Result<Map<String, Value>, KeyError> {
    let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
    let mut jwk = Map::new();
    match alg {
        KeygenAlgorithm::Rs256 | KeygenAlgorithm::Ps256 => {
            let size = match rsa_bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                8192 => KeySize::Rsa8192,
                other => return Err(KeyError::UnsupportedRsaSize(other)),
            };
            let pair = RsaKeyPair::generate(size)
                .map_err(|_| KeyError::Rejected("RSA key generation failed".into()))?;
            let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| KeyError::Rejected("cannot encode as PKCS#8".into()))?;
            let info = pkcs8::PrivateKeyInfo::from_der(pkcs8.as_ref())
                .map_err(|e| KeyError::Rejected(e.kind().to_string()))?;
            let rsa = pkcs1::RsaPrivateKey::from_der(info.private_key)
                .map_err(|e| KeyError::Rejected(e.kind().to_string()))?;
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("n".into(), b64(rsa.modulus.as_bytes()));
            jwk.insert("e".into(), b64(rsa.public_exponent.as_bytes()));
            jwk.insert("d".into(), b64(rsa.private_exponent.as_bytes()));
            jwk.insert("p".into(), b64(rsa.prime1.as_bytes()));
            jwk.insert("q".into(), b64(rsa.prime2.as_bytes()));
            jwk.insert("dp".into(), b64(rsa.exponent1.as_bytes()));
            jwk.insert("dq".into(), b64(rsa.exponent2.as_bytes()));
            jwk.insert("qi".into(), b64(rsa.coefficient.as_bytes()));
        }
        KeygenAlgorithm::Es256 | KeygenAlgorithm::Es384 => {
            let (signing, crv, len) = if alg == KeygenAlgorithm::Es256 {
                (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
            } else {
                (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
            };
            let pair = EcdsaKeyPair::generate(signing)
                .map_err(|_| KeyError::Rejected("EC key generation failed".into()))?;
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| KeyError::Rejected("cannot encode as PKCS#8".into()))?;
            let info = pkcs8::PrivateKeyInfo::from_der(pkcs8.as_ref())
                .map_err(|e| KeyError::Rejected(e.kind().to_string()))?;
            let ec = sec1::EcPrivateKey::from_der(info.private_key)
                .map_err(|e| KeyError::Rejected(e.kind().to_string()))?;
            let public = pair.public_key().as_ref();
            // Uncompressed point: 0x04 || x || y.
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), crv.into());
            jwk.insert("x".into(), b64(&public[1..1 + len]));
            jwk.insert("y".into(), b64(&public[1 + len..]));
            jwk.insert("d".into(), b64(ec.private_key));
        }
    }
    let kid = thumbprint(&jwk)?;
    jwk.insert("kid".into(), kid.into());
    jwk.insert("use".into(), "sig".into());
    jwk.insert("alg".into(), alg.name().into());
    Ok(jwk)
}

/// The public half of a JWK: only the members a verifier needs (what the portal wants).
pub fn public_jwk(private: &Map<String, Value>) -> Map<String, Value> {
    const PUBLIC: [&str; 9] = ["kty", "kid", "use", "alg", "n", "e", "crv", "x", "y"];
    private
        .iter()
        .filter(|(k, _)| PUBLIC.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rfc7638_thumbprint_vector() {
        // RFC 7638 section 3.1.
        let jwk = obj(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }));
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_parse_back_with_their_algorithm_and_thumbprint_kid() {
        for (alg, expected) in [
            (KeygenAlgorithm::Rs256, Algorithm::RS256),
            (KeygenAlgorithm::Ps256, Algorithm::PS256),
            (KeygenAlgorithm::Es256, Algorithm::ES256),
            (KeygenAlgorithm::Es384, Algorithm::ES384),
        ] {
            let jwk = generate(alg, 2048).unwrap();
            let key = parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None).unwrap();
            assert_eq!(key.algorithm, expected);
            assert_eq!(key.kid.as_deref(), Some(key.thumbprint.as_str()));
            let public = public_jwk(&jwk);
            assert!(!public.contains_key("d") && !public.contains_key("p"));
            assert_eq!(thumbprint(&public).unwrap(), key.thumbprint);
        }
    }

    #[test]
    fn certificate_thumbprint_from_x5t_or_x5c() {
        let mut jwk = generate(KeygenAlgorithm::Es256, 0).unwrap();
        assert_eq!(
            parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None)
                .unwrap()
                .certificate_thumbprint,
            None
        );
        // SHA-1 of the bytes "abc" is a9993e364706816aba3e25717850c26c9cd0d89d.
        jwk.insert("x5c".into(), serde_json::json!(["YWJj"]));
        let key = parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None).unwrap();
        assert_eq!(
            key.certificate_thumbprint.as_deref(),
            Some("qZk-NkcGgWq6PiVxeFDCbJzQ2J0")
        );
        jwk.insert("x5t".into(), "given".into());
        let key = parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None).unwrap();
        assert_eq!(key.certificate_thumbprint.as_deref(), Some("given"));
    }

    #[test]
    fn debug_output_hides_key_material() {
        let jwk = generate(KeygenAlgorithm::Es256, 0).unwrap();
        let d = jwk["d"].as_str().unwrap().to_string();
        let key = parse_signing_key(&serde_json::to_vec(&jwk).unwrap(), None).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("[redacted]"));
        assert!(!debug.contains(&d));
    }

    #[test]
    fn jwk_set_picks_by_kid_or_first_private_key() {
        let a = generate(KeygenAlgorithm::Es256, 0).unwrap();
        let b = generate(KeygenAlgorithm::Es256, 0).unwrap();
        let public_only = public_jwk(&generate(KeygenAlgorithm::Es256, 0).unwrap());
        let set = serde_json::to_vec(&serde_json::json!({"keys": [public_only, a, b]})).unwrap();
        let first = parse_signing_key(&set, None).unwrap();
        assert_eq!(first.kid.as_deref(), a["kid"].as_str());
        let chosen = parse_signing_key(&set, b["kid"].as_str()).unwrap();
        assert_eq!(chosen.kid.as_deref(), b["kid"].as_str());
        assert_eq!(
            parse_signing_key(&set, Some("nope")).unwrap_err(),
            KeyError::KeyIdNotFound("nope".into())
        );
    }

    #[test]
    fn only_registered_member_values_are_quoted() {
        let ec = generate(KeygenAlgorithm::Es256, 0).unwrap();
        let rsa = generate(KeygenAlgorithm::Rs256, 2048).unwrap();
        let message = |jwk: &Map<String, Value>, member: &str, value: &str| {
            let mut j = jwk.clone();
            j.insert(member.into(), value.into());
            parse_signing_key(&serde_json::to_vec(&j).unwrap(), None)
                .unwrap_err()
                .to_string()
        };
        // Registered values are public words: quoted, so the user sees what is wrong.
        for (jwk, member, value) in [
            (&ec, "kty", "OKP"),
            (&ec, "crv", "Ed25519"),
            (&ec, "alg", "HS256"),
            (&rsa, "alg", "EdDSA"),
        ] {
            let text = message(jwk, member, value);
            assert!(text.contains(&format!("\"{value}\"")), "{member}: {text}");
        }
        // Anything else may be a secret put in the wrong member: its length only. Short
        // identifier-like values were quoted before; a 16-character kty could be a password.
        for (jwk, member, value) in [
            (&ec, "kty", "Zm9vYmFyYmF6cXV4"),
            (&ec, "kty", "rsa"),
            (&ec, "crv", "P-999"),
            (&ec, "crv", "hunter2hunter2"),
            (&ec, "alg", "XS256"),
            (&rsa, "alg", "s3cr3t.pass-w0rd"),
        ] {
            let text = message(jwk, member, value);
            assert!(!text.contains(value), "{member}: {text}");
            assert!(
                text.contains(&format!("{} characters, not shown", value.len())),
                "{member}: {text}"
            );
        }
    }

    #[test]
    fn bad_keys_give_clear_errors_without_key_material() {
        let rsa = generate(KeygenAlgorithm::Rs256, 2048).unwrap();
        let ec = generate(KeygenAlgorithm::Es256, 0).unwrap();
        let without = |jwk: &Map<String, Value>, drop: &str| {
            let mut j = jwk.clone();
            j.remove(drop);
            Value::Object(j)
        };
        let with = |jwk: &Map<String, Value>, k: &str, v: Value| {
            let mut j = jwk.clone();
            j.insert(k.into(), v);
            Value::Object(j)
        };
        let mut swapped = ec.clone();
        swapped.insert(
            "d".into(),
            generate(KeygenAlgorithm::Es256, 0).unwrap()["d"].clone(),
        );
        let cases: Vec<(Vec<u8>, KeyError)> = vec![
            (
                b"not json".to_vec(),
                KeyError::NotJson("line 1, column 2".into()),
            ),
            (b"[1,2]".to_vec(), KeyError::NotAJwk),
            (br#"{"keys": []}"#.to_vec(), KeyError::EmptySet),
            (
                serde_json::to_vec(&public_jwk(&rsa)).unwrap(),
                KeyError::PublicOnly,
            ),
            (
                serde_json::to_vec(&with(&ec, "kty", "oct".into())).unwrap(),
                KeyError::UnsupportedKty("\"oct\"".into()),
            ),
            (
                serde_json::to_vec(&with(&ec, "crv", "P-521".into())).unwrap(),
                KeyError::UnsupportedCurve("\"P-521\"".into()),
            ),
            (
                serde_json::to_vec(&with(&ec, "alg", "RS256".into())).unwrap(),
                KeyError::AlgorithmMismatch {
                    alg: "\"RS256\"".into(),
                    kind: "EC P-256".into(),
                },
            ),
            (
                serde_json::to_vec(&with(&rsa, "alg", "ES256".into())).unwrap(),
                KeyError::AlgorithmMismatch {
                    alg: "\"ES256\"".into(),
                    kind: "RSA".into(),
                },
            ),
            (
                serde_json::to_vec(&without(&rsa, "qi")).unwrap(),
                KeyError::MissingCrtMembers,
            ),
            (
                serde_json::to_vec(&without(&rsa, "n")).unwrap(),
                KeyError::MissingMember("n"),
            ),
            (
                serde_json::to_vec(&with(&ec, "d", "!!".into())).unwrap(),
                KeyError::BadMember("d"),
            ),
            (
                serde_json::to_vec(&with(&ec, "use", "enc".into())).unwrap(),
                KeyError::NotForSigning,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_signing_key(&input, None).unwrap_err(), expected);
        }
        let err = parse_signing_key(&serde_json::to_vec(&swapped).unwrap(), None).unwrap_err();
        assert!(matches!(err, KeyError::Rejected(_)), "{err:?}");
        let message = err.to_string();
        for secret in ["d", "p", "q"]
            .iter()
            .filter_map(|m| rsa.get(*m).and_then(Value::as_str))
        {
            assert!(!message.contains(secret));
        }
    }
}
