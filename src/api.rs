//! The `IdvClient` custom resource (v1alpha1) and the names the operator writes.
//!
//! Doc comments become the schema descriptions `kubectl explain` shows.

// kube-derive takes several `printcolumn(...)` attributes; clippy mistakes them for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "idv-token-operator.dev";
pub const FIELD_MANAGER: &str = "idv-token-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "idv-token-operator";
/// When the token in the Secret expires (RFC 3339).
pub const EXPIRES_AT_ANNOTATION: &str = "idv-token-operator.dev/expires-at";
/// When the operator will fetch the next token (RFC 3339).
pub const REFRESH_AT_ANNOTATION: &str = "idv-token-operator.dev/refresh-at";
/// When the token was issued (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "idv-token-operator.dev/issued-at";
/// Hash of the spec fields and key that produced the token: a change means a new token.
pub const INPUTS_HASH_ANNOTATION: &str = "idv-token-operator.dev/inputs-hash";
/// Hash of the Secret's token data: tells an edited Secret from the one we wrote.
pub const DATA_HASH_ANNOTATION: &str = "idv-token-operator.dev/data-hash";
/// The keys of the labels and annotations `spec.secret` asked for when the Secret was last
/// written (JSON): one removed from the spec is then removed from the Secret too.
pub const SPEC_METADATA_ANNOTATION: &str = "idv-token-operator.dev/spec-metadata";

/// On the IdvClient: a new value asks for one new token now, whatever the schedule says.
pub const FORCE_REFRESH_ANNOTATION: &str = "idv-token-operator.dev/force-refresh";

/// On a Secret: the operator may read it as a credential (private key or client secret).
pub const CREDENTIAL_LABEL: &str = "idv-token-operator.dev/credential";

/// Whether a Secret's labels allow the operator to read it as a credential.
pub fn is_credential(labels: &BTreeMap<String, String>) -> bool {
    labels.get(CREDENTIAL_LABEL).map(String::as_str) == Some("true")
}

/// The reasons of the Ready condition (and of Events, and the `category` metric label),
/// in one place, as cert-manager exports its own. docs/troubleshooting.md has one section each.
pub mod reasons {
    pub const TOKEN_ISSUED: &str = "TokenIssued";
    /// Ready `Unknown` and Reconciling `True`: a token for the current generation is being
    /// requested (no valid one held for it yet).
    pub const ISSUING: &str = "Issuing";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const KEY_SECRET_NOT_FOUND: &str = "KeySecretNotFound";
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    pub const CREDENTIAL_NOT_LABELLED: &str = "CredentialNotLabelled";
    pub const SECRET_NOT_WRITABLE: &str = "SecretNotWritable";
    pub const INVALID_KEY: &str = "InvalidKey";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const TOKEN_HOST_NOT_ALLOWED: &str = "TokenHostNotAllowed";
    pub const DISCOVERY_FAILED: &str = "DiscoveryFailed";
    pub const TOKEN_REQUEST_REJECTED: &str = "TokenRequestRejected";
    pub const IDP_UNAVAILABLE: &str = "IdpUnavailable";
    pub const INVALID_TOKEN_RESPONSE: &str = "InvalidTokenResponse";
    pub const IDP_UNREACHABLE: &str = "IdpUnreachable";
    pub const KUBERNETES_ERROR: &str = "KubernetesError";
    pub const RECONCILE_TIMED_OUT: &str = "ReconcileTimedOut";

    /// Every reason an `Error` can have: the `category` values of `reconcile_errors_total`,
    /// each exported at 0 from the start.
    pub const ERRORS: [&str; 15] = [
        INVALID_SPEC,
        KEY_SECRET_NOT_FOUND,
        KEY_NOT_FOUND,
        CREDENTIAL_NOT_LABELLED,
        SECRET_NOT_WRITABLE,
        INVALID_KEY,
        SECRET_CONFLICT,
        TOKEN_HOST_NOT_ALLOWED,
        DISCOVERY_FAILED,
        TOKEN_REQUEST_REJECTED,
        IDP_UNAVAILABLE,
        INVALID_TOKEN_RESPONSE,
        IDP_UNREACHABLE,
        KUBERNETES_ERROR,
        RECONCILE_TIMED_OUT,
    ];

    /// The reasons a token request (discovery, signing and the request itself) can fail with:
    /// with `success`, the `result` values of `token_requests_total`, exported at 0 from the start.
    pub const TOKEN_REQUEST_FAILURES: [&str; 8] = [
        INVALID_SPEC,
        TOKEN_HOST_NOT_ALLOWED,
        DISCOVERY_FAILED,
        INVALID_KEY,
        TOKEN_REQUEST_REJECTED,
        IDP_UNAVAILABLE,
        INVALID_TOKEN_RESPONSE,
        IDP_UNREACHABLE,
    ];
}

/// Keys of the token Secret.
pub mod secret_keys {
    pub const ACCESS_TOKEN: &str = "access_token";
    pub const TOKEN_TYPE: &str = "token_type";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const SCOPE: &str = "scope";
    pub const AUTHORIZATION: &str = "authorization";
}

/// An OAuth client of a Flemish government (IDV) authorization server. The operator keeps a
/// Secret next to it holding a valid access token, obtained with the client_credentials grant
/// and a JWT client assertion signed with the client's private key.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "idv-token-operator.dev",
    version = "v1alpha1",
    kind = "IdvClient",
    plural = "idvclients",
    shortname = "idvc",
    namespaced,
    status = "IdvClientStatus",
    derive = "PartialEq",
    doc = "An OAuth client of a Flemish government (IDV) authorization server. The operator keeps a Secret next to it with a fresh access token.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secretName",
        priority = "1"
    ),
    printcolumn(
        name = "Key",
        type_ = "string",
        json_path = ".status.keyId",
        priority = "1"
    ),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(name = "Refresh", type_ = "string", json_path = ".status.refreshAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // The default token Secret name must fit too: 253 - len("-token") = 247.
    validation = Rule::new("(has(self.spec.secret) && has(self.spec.secret.name)) || size(self.metadata.name) <= 247").message("metadata.name is too long for the default token Secret name <metadata.name>-token (at most 253 characters): use at most 247 characters or set spec.secret.name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.privateKey) != has(self.clientSecret)").message("set exactly one of privateKey and clientSecret"))]
pub struct IdvClientSpec {
    /// The OAuth client id, as registered in the Beheerportaal (a GUID for ACM/IDM).
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.trim() != ''").message("clientId must not be empty"))]
    pub client_id: String,

    /// The authorization server that issues the tokens: exactly one of environment, issuer or
    /// tokenEndpoint.
    pub auth_server: AuthServer,

    /// Where the client's private JWK (or JWK Set) is stored: the assertion is signed with it
    /// (private_key_jwt). Exactly one of privateKey and clientSecret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKey>,

    /// Where the client secret is stored, for clients that have no key yet
    /// (client_secret_basic). Exactly one of privateKey and clientSecret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecret>,

    /// Scopes to request; sent space-separated in the `scope` form field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[!#-\\\\[\\\\]-~]+$'))").message("a scope is printable ASCII without spaces, quotes or backslashes"))]
    pub scopes: Vec<String>,

    /// Optional `audience` form field (ACM: the client id of the API the token is for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub audience: Option<String>,

    /// Optional `resource` form field (ACM: a URL the API registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub resource: Option<String>,

    /// The Secret the operator writes the token to.
    #[serde(default)]
    pub secret: TokenSecret,

    /// When to fetch a new token.
    #[serde(default)]
    pub refresh: Refresh,

    /// Stop fetching tokens; the existing token Secret is left as it is.
    #[serde(default)]
    pub suspend: bool,
}

/// Which authorization server to ask. Set exactly one of environment, issuer or tokenEndpoint.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.environment), has(self.issuer), has(self.tokenEndpoint)].filter(x, x).size() == 1").message("set exactly one of environment, issuer or tokenEndpoint"))]
pub struct AuthServer {
    /// A known IDV server: acm-production, acm-test (ACM/IDM), geosecure-production or
    /// geosecure-beta (the legacy Geosecure server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,

    /// An OpenID Connect issuer; the token endpoint is found by discovery
    /// (`<issuer>/.well-known/openid-configuration`). https, or http to a loopback host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_OR_LOOPBACK).message("issuer must be an https URL (http only to a loopback host)"))]
    pub issuer: Option<String>,

    /// The token endpoint URL, used as given. https, or http to a loopback host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(HTTPS_OR_LOOPBACK).message("tokenEndpoint must be an https URL (http only to a loopback host)"))]
    pub token_endpoint: Option<String>,

    /// Override of the client assertion's `aud` claim. Default: the issuer for ACM environments
    /// and issuer mode; the token endpoint for Geosecure and tokenEndpoint mode. Must be an https
    /// URL on the host of the token endpoint the assertion is sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub assertion_audience: Option<String>,
}

/// CEL: https anywhere, plain http only to a loopback host.
const HTTPS_OR_LOOPBACK: &str = "self.matches('^https://[^/?#\\\\s]+') || self.matches('^http://(localhost|127\\\\.[0-9]+\\\\.[0-9]+\\\\.[0-9]+|\\\\[::1\\\\])(:[0-9]+)?([/?#].*)?$')";

/// The known IDV servers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Environment {
    /// ACM/IDM production: https://authenticatie.vlaanderen.be/op
    AcmProduction,
    /// ACM/IDM test and integration (T&I): https://authenticatie-ti.vlaanderen.be/op
    AcmTest,
    /// Geosecure production (legacy): https://oauth.vlaanderen.be
    GeosecureProduction,
    /// Geosecure beta (legacy): https://beta.oauth.vlaanderen.be
    GeosecureBeta,
}

/// The private key the client assertion is signed with.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKey {
    /// A key of a Secret in the IdvClient's own namespace holding a private JWK or a JWK Set (JSON).
    pub secret_ref: SecretKeyRef,
    /// In a JWK Set: the `kid` of the key to sign with. Default: the first private signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_id: Option<String>,
}

/// The client secret (client_secret_basic).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecret {
    /// A key of a Secret in the IdvClient's own namespace holding the client secret.
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret (a DNS-1123 subdomain).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(DNS1123_SUBDOMAIN).message("secretRef.name must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', beginning and ending with a letter or digit"))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(SECRET_DATA_KEY).message("secretRef.key must be a Secret data key: letters, digits, '-', '_' and '.', not '.' or '..'"))]
    pub key: String,
}

/// CEL: a DNS-1123 subdomain (what Kubernetes requires of a Secret name; the length is a
/// `maxLength`). Names go into the apiserver's URLs: `?watch=true` or `a/b` must never pass.
const DNS1123_SUBDOMAIN: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";

/// CEL: a Secret data key, as Kubernetes' `IsConfigMapKey` checks it.
const SECRET_DATA_KEY: &str =
    "self.matches('^[-._a-zA-Z0-9]+$') && self != '.' && !self.startsWith('..')";

/// The Secret holding the token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecret {
    /// Name of the token Secret (a DNS-1123 subdomain). Default: `<metadata.name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(DNS1123_SUBDOMAIN).message("secret.name must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', beginning and ending with a letter or digit"))]
    pub name: Option<String>,
    /// Labels copied onto the token Secret; not the operator's own `app.kubernetes.io/managed-by`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("!('app.kubernetes.io/managed-by' in self)").message("secret.labels may not set app.kubernetes.io/managed-by: the operator finds its Secrets by it"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations copied onto the token Secret; none under `idv-token-operator.dev/` (the
    /// operator's bookkeeping).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('idv-token-operator.dev/'))").message("secret.annotations may not set keys under idv-token-operator.dev/: they are the operator's bookkeeping"))]
    pub annotations: BTreeMap<String, String>,
}

/// Whether a label of `spec.secret.labels` is the operator's own, never copied.
pub fn is_reserved_label(key: &str) -> bool {
    key == MANAGED_BY_LABEL
}

/// Whether an annotation of `spec.secret.annotations` is the operator's bookkeeping, never
/// copied.
pub fn is_reserved_annotation(key: &str) -> bool {
    key.strip_prefix(GROUP)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// When to fetch the next token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Refresh {
    /// Refresh this long before the token expires: a duration (`15m`, `1h30m`, `90s`) or a
    /// share of the token's lifetime (`25%`). Default: at 2/3 of the lifetime, as cert-manager
    /// does. Only ever moves the refresh earlier than that default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$') || self.matches('^[0-9]{1,2}%$')").message("beforeExpiry is a duration like 15m, 1h30m, 90s, or a percentage below 100 like 25%"))]
    pub before_expiry: Option<String>,
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdvClientStatus {
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether a valid token is in the Secret, and if not, why. `Reconciling` (while
    /// a token for the current generation is on its way or a transient failure is retried) and
    /// `Stalled` (a configuration error: nothing happens until something changes), each present
    /// only while True, as kstatus (Flux, `kubectl wait`) reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the current token expires (RFC 3339, whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the operator will fetch the next token (RFC 3339, whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_at: Option<String>,
    /// `kid` (or RFC 7638 thumbprint) of the key that signed the last assertion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Name of the token Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// uid of the token Secret the operator created: only that object is ever written, so a
    /// Secret someone else created under the name (with a copied owner reference) is not adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_uid: Option<String>,
}

/// A condition, as in metav1.Condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A CamelCase reason, fit for alerting.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
    /// When status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl IdvClient {
    /// Name of the token Secret: `spec.secret.name`, else `<metadata.name>-token`.
    pub fn token_secret_name(&self) -> String {
        self.spec.secret.name.clone().unwrap_or_else(|| {
            format!(
                "{}-token",
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }
}

/// Every CRD of the operator, as multi-document YAML (what `crd` prints and `crds/` holds).
pub fn crds_yaml() -> String {
    let crd = serde_yaml::to_string(&IdvClient::crd()).expect("the CRD serialises to YAML");
    format!("---\n{crd}")
}

/// For unit tests: an IdvClient in namespace "ns" with client id "c", otherwise defaults.
#[cfg(test)]
pub(crate) fn test_client(name: &str) -> IdvClient {
    let mut client = IdvClient::new(
        name,
        IdvClientSpec {
            client_id: "c".into(),
            ..IdvClientSpec::default()
        },
    );
    client.metadata.namespace = Some("ns".into());
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_folder_matches_generated_crd() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/idvclients.yaml"))
                .expect("crds/idvclients.yaml exists; regenerate with `make crds`");
        assert_eq!(committed, crds_yaml(), "crds/ is stale: run `make crds`");
    }

    #[test]
    fn crd_has_cel_rules_printer_columns_and_descriptions() {
        let yaml = crds_yaml();
        for needle in [
            "x-kubernetes-validations",
            "set exactly one of environment, issuer or tokenEndpoint",
            "clientId must not be empty",
            "set exactly one of privateKey and clientSecret",
            "jsonPath: .status.expiresAt",
            "name: Expires",
            "name: Refresh",
            "shortNames:",
            "- idvc",
            "status: {}",
            "The OAuth client id",
            "secretRef.name must be a DNS-1123 subdomain",
            "secretRef.key must be a Secret data key",
            "secret.name must be a DNS-1123 subdomain",
            "secret.labels may not set app.kubernetes.io/managed-by",
            "secret.annotations may not set keys under idv-token-operator.dev/",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle:?}");
        }
        // The root rule's literal bound is the one the code checks.
        let bound = format!(
            "size(self.metadata.name) <= {}",
            crate::names::MAX_NAME_WITH_DEFAULT_SECRET
        );
        assert!(yaml.contains(&bound), "CRD lacks {bound:?}");
    }

    #[test]
    fn reserved_keys() {
        assert!(is_reserved_label(MANAGED_BY_LABEL));
        assert!(!is_reserved_label("app.kubernetes.io/name"));
        for key in [
            EXPIRES_AT_ANNOTATION,
            DATA_HASH_ANNOTATION,
            "idv-token-operator.dev/x",
        ] {
            assert!(is_reserved_annotation(key), "{key}");
        }
        for key in [
            "idv-token-operator.dev",
            "idv-token-operator.dev.evil/x",
            "team",
        ] {
            assert!(!is_reserved_annotation(key), "{key}");
        }
    }

    #[test]
    fn every_reason_has_a_troubleshooting_section() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/troubleshooting.md"
        ))
        .unwrap();
        let progress = [reasons::ISSUING, reasons::SUSPENDED];
        for reason in reasons::ERRORS.iter().chain(&progress) {
            assert!(
                doc.contains(&format!("## {reason}\n")),
                "docs/troubleshooting.md has no section for {reason}"
            );
        }
    }

    #[test]
    fn default_secret_name() {
        let mut client = test_client("gipod");
        assert_eq!(client.token_secret_name(), "gipod-token");
        client.spec.secret.name = Some("other".into());
        assert_eq!(client.token_secret_name(), "other");
    }
}
