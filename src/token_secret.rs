//! The token Secret both ways: the Secret the operator writes (data, bookkeeping, owner), and
//! what it reads back from one (the record the cache keeps, whose it is). Pure.

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};

use crate::{
    api::{self, IdvClient, secret_keys},
    credential::Credential,
    policy::ObservedToken,
    schedule::TokenTimes,
};

fn sha256_b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, bytes))
}

/// Hash of everything that shapes a token: when it changes, the token is replaced.
/// Includes the force-refresh annotation, so a new value asks for exactly one new token.
pub fn inputs_hash(client: &IdvClient, credential: &Credential) -> String {
    let spec = &client.spec;
    let force = client.annotations().get(api::FORCE_REFRESH_ANNOTATION);
    let inputs = serde_json::json!({
        "clientId": spec.client_id,
        "authServer": spec.auth_server,
        "scopes": spec.scopes,
        "audience": spec.audience,
        "resource": spec.resource,
        "credential": credential.fingerprint(),
        "forceRefresh": force,
    });
    sha256_b64(inputs.to_string().as_bytes())
}

/// The token data as the Secret holds it.
pub struct TokenData {
    pub data: BTreeMap<String, ByteString>,
    pub hash: String,
}

/// Secret data for a token the IdP issued (`granted_scope`: the scope it answered with, if
/// any). `authorization` is ready to use as an HTTP header value.
pub fn token_data(
    access_token: &str,
    granted_scope: Option<&str>,
    expires_at: Timestamp,
    requested_scopes: &[String],
) -> TokenData {
    let scope = granted_scope.map_or_else(|| requested_scopes.join(" "), str::to_string);
    let entries = [
        (secret_keys::ACCESS_TOKEN, access_token.to_string()),
        (secret_keys::TOKEN_TYPE, "Bearer".to_string()),
        (secret_keys::EXPIRES_AT, expires_at.to_string()),
        (secret_keys::SCOPE, scope),
        (secret_keys::AUTHORIZATION, format!("Bearer {access_token}")),
    ];
    let data: BTreeMap<String, ByteString> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
    let hash = data_hash(&data);
    TokenData { data, hash }
}

/// Hash over the token keys, to notice an edited Secret. A one-way hash of a random token.
pub fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut bytes = Vec::new();
    for key in [
        secret_keys::ACCESS_TOKEN,
        secret_keys::TOKEN_TYPE,
        secret_keys::EXPIRES_AT,
        secret_keys::SCOPE,
        secret_keys::AUTHORIZATION,
    ] {
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(0);
        if let Some(value) = data.get(key) {
            bytes.extend_from_slice(&value.0);
        }
        bytes.push(0);
    }
    sha256_b64(&bytes)
}

/// The `data-hash` annotation: a hash over the token data's hash and every bookkeeping
/// annotation the operator trusts (times, inputs), so that editing any of them (say
/// `refresh-at` to 2099) shows as a modified Secret, which is then replaced.
fn seal<'a>(data_hash: &str, bookkeeping: impl Iterator<Item = &'a str>) -> String {
    let mut bytes = data_hash.as_bytes().to_vec();
    for value in bookkeeping {
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
    }
    sha256_b64(&bytes)
}

fn owner_reference(client: &IdvClient) -> OwnerReference {
    let mut owner = client
        .controller_owner_ref(&())
        .expect("an IdvClient from the API has a uid");
    owner.block_owner_deletion = Some(true);
    owner
}

/// The labels and annotations `spec.secret` asks for, without the operator's own keys: the
/// CRD refuses those, and an object stored before it did must neither relabel the Secret nor
/// forge bookkeeping (nor re-apply forever because the Secret never matches).
fn requested_metadata(client: &IdvClient) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let secret = &client.spec.secret;
    let keep = |reserved: fn(&str) -> bool, map: &BTreeMap<String, String>| {
        map.iter()
            .filter(|(k, _)| !reserved(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    (
        keep(api::is_reserved_label, &secret.labels),
        keep(api::is_reserved_annotation, &secret.annotations),
    )
}

/// `SPEC_METADATA_ANNOTATION`'s value for what `spec.secret` asks for now: the keys, sorted.
fn spec_metadata(client: &IdvClient) -> String {
    let (labels, annotations) = requested_metadata(client);
    serde_json::json!({
        "labels": labels.keys().collect::<Vec<_>>(),
        "annotations": annotations.keys().collect::<Vec<_>>(),
    })
    .to_string()
}

/// The token Secret as the operator wants it.
pub fn desired_secret(
    client: &IdvClient,
    data: BTreeMap<String, ByteString>,
    data_hash: &str,
    inputs_hash: &str,
    times: &TokenTimes,
) -> Secret {
    let (mut labels, mut annotations) = requested_metadata(client);
    labels.insert(api::MANAGED_BY_LABEL.into(), api::MANAGED_BY_VALUE.into());
    let bookkeeping = [
        (api::ISSUED_AT_ANNOTATION, times.issued_at.to_string()),
        (api::EXPIRES_AT_ANNOTATION, times.expires_at.to_string()),
        (api::REFRESH_AT_ANNOTATION, times.refresh_at.to_string()),
        (api::INPUTS_HASH_ANNOTATION, inputs_hash.to_string()),
    ];
    let seal = seal(data_hash, bookkeeping.iter().map(|(_, v)| v.as_str()));
    for (key, value) in bookkeeping {
        annotations.insert(key.into(), value);
    }
    annotations.insert(api::DATA_HASH_ANNOTATION.into(), seal);
    annotations.insert(api::SPEC_METADATA_ANNOTATION.into(), spec_metadata(client));
    Secret {
        metadata: ObjectMeta {
            name: Some(client.token_secret_name()),
            namespace: client.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(client)]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The uid of the IdvClient that controls this Secret, if one does.
fn controlling_client(secret: &Secret) -> Option<&str> {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "IdvClient")
        .map(|o| o.uid.as_str())
}

/// Whether the operator may write to this Secret: it is controlled by this IdvClient, and it
/// is the object the operator created for it (its uid is in the IdvClient's status). An owner
/// reference alone can be copied onto a Secret made by anyone.
pub fn is_owned_by(secret: &Secret, client: &IdvClient) -> bool {
    made_for(
        controlling_client(secret),
        secret.metadata.uid.as_deref(),
        secret.metadata.name.as_deref(),
        client,
    )
}

fn made_for(
    owner_uid: Option<&str>,
    secret_uid: Option<&str>,
    secret_name: Option<&str>,
    client: &IdvClient,
) -> bool {
    let Some(client_uid) = client.metadata.uid.as_deref() else {
        return false;
    };
    if owner_uid != Some(client_uid) {
        return false;
    }
    let status = client.status.as_ref();
    match status.and_then(|s| s.secret_uid.as_deref()) {
        Some(recorded) => secret_uid == Some(recorded),
        // A status from before uids were recorded: it reported a token in this Secret.
        None => status.is_some_and(|s| {
            s.expires_at.is_some()
                && secret_name.is_some()
                && s.secret_name.as_deref() == secret_name
        }),
    }
}

/// What the operator keeps of one of its token Secrets: whose it is, what it records, and the
/// labels and annotations a spec may ask for. About 0.3 KB, where the Secret's metadata is
/// ~1.3 KB (10,000 clients: ~10 MiB less), and no token data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSecretRecord {
    pub name: String,
    /// The Secret's own uid: a write based on this record is made conditional on it.
    pub uid: Option<String>,
    /// uid of the controlling IdvClient.
    pub owner_uid: Option<String>,
    pub observed: ObservedToken,
    pub labels: BTreeMap<String, String>,
    /// Without the operator's bookkeeping annotations (`observed` has what they say).
    pub annotations: BTreeMap<String, String>,
    /// The spec's metadata keys when the Secret was written (`SPEC_METADATA_ANNOTATION`).
    pub spec_metadata: Option<String>,
}

const BOOKKEEPING_ANNOTATIONS: [&str; 6] = [
    api::ISSUED_AT_ANNOTATION,
    api::EXPIRES_AT_ANNOTATION,
    api::REFRESH_AT_ANNOTATION,
    api::INPUTS_HASH_ANNOTATION,
    api::DATA_HASH_ANNOTATION,
    api::SPEC_METADATA_ANNOTATION,
];

impl TokenSecretRecord {
    /// The record of a Secret as the API returns it (data included: its hash is checked here,
    /// and the data is not kept).
    pub fn of(secret: &Secret) -> Self {
        let mut annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let spec_metadata = annotations.get(api::SPEC_METADATA_ANNOTATION).cloned();
        annotations.retain(|k, _| !BOOKKEEPING_ANNOTATIONS.contains(&k.as_str()));
        Self {
            name: secret.metadata.name.clone().unwrap_or_default(),
            uid: secret.metadata.uid.clone(),
            owner_uid: controlling_client(secret).map(str::to_string),
            observed: observe(secret),
            labels: secret.metadata.labels.clone().unwrap_or_default(),
            annotations,
            spec_metadata,
        }
    }

    pub fn is_owned_by(&self, client: &IdvClient) -> bool {
        made_for(
            self.owner_uid.as_deref(),
            self.uid.as_deref(),
            Some(&self.name),
            client,
        )
    }

    /// Whether the Secret carries what the spec asks for: every label and annotation it names,
    /// and none that it named when the Secret was written and names no more (a re-apply by the
    /// operator's field manager removes those; others' labels stay).
    pub fn metadata_matches(&self, client: &IdvClient) -> bool {
        let has_all = |have: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
            want.iter().all(|(k, v)| have.get(k) == Some(v))
        };
        let (labels, annotations) = requested_metadata(client);
        has_all(&self.labels, &labels)
            && has_all(&self.annotations, &annotations)
            && self.spec_metadata.as_deref() == Some(spec_metadata(client).as_str())
    }

    /// The label and annotation keys the spec asked for when the Secret was written, asks for
    /// no more, and the Secret still has: to be removed (others' keys are never touched).
    pub fn removed_metadata(&self, client: &IdvClient) -> (Vec<String>, Vec<String>) {
        #[derive(serde::Deserialize, Default)]
        struct Keys {
            labels: Vec<String>,
            annotations: Vec<String>,
        }
        let before: Keys = self
            .spec_metadata
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        let (labels, annotations) = requested_metadata(client);
        let gone = |before: Vec<String>,
                    now: &BTreeMap<String, String>,
                    have: &BTreeMap<String, String>| {
            before
                .into_iter()
                .filter(|k| !now.contains_key(k) && have.contains_key(k))
                .filter(|k| !api::is_reserved_label(k) && !api::is_reserved_annotation(k))
                .collect()
        };
        (
            gone(before.labels, &labels, &self.labels),
            gone(before.annotations, &annotations, &self.annotations),
        )
    }
}

/// `data_hash`, when the data holds a non-empty access token.
fn hash_of_token_data(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?;
    data.get(secret_keys::ACCESS_TOKEN)
        .is_some_and(|t| !t.0.is_empty())
        .then(|| data_hash(data))
}

/// A fingerprint of what the operator writes to a token Secret (type, labels, annotations,
/// data), equal for the desired Secret and for the stored one the watch shows. Lets the watch
/// tell the operator's own writes from anyone else's.
pub fn content_fingerprint(secret: &Secret) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    secret.type_.hash(&mut hasher);
    secret.metadata.labels.hash(&mut hasher);
    secret
        .metadata
        .annotations
        .iter()
        .flatten()
        .for_each(|entry| entry.hash(&mut hasher));
    hash_of_token_data(secret).hash(&mut hasher);
    hasher.finish()
}

/// Read the operator's bookkeeping back from a Secret it owns.
pub fn observe(secret: &Secret) -> ObservedToken {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let time = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.parse::<Timestamp>().ok())
    };
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(api::MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(api::MANAGED_BY_VALUE);
    let bookkeeping = [
        api::ISSUED_AT_ANNOTATION,
        api::EXPIRES_AT_ANNOTATION,
        api::REFRESH_AT_ANNOTATION,
        api::INPUTS_HASH_ANNOTATION,
    ]
    .map(|key| annotations.get(key).map(String::as_str).unwrap_or_default());
    let data_intact = labelled
        && hash_of_token_data(secret).is_some_and(|hash| {
            annotations.get(api::DATA_HASH_ANNOTATION)
                == Some(&seal(&hash, bookkeeping.into_iter()))
        });
    let times = match (
        time(api::ISSUED_AT_ANNOTATION),
        time(api::EXPIRES_AT_ANNOTATION),
        time(api::REFRESH_AT_ANNOTATION),
    ) {
        (Some(issued_at), Some(expires_at), Some(refresh_at)) => Some(TokenTimes {
            issued_at,
            expires_at,
            refresh_at,
        }),
        _ => None,
    };
    ObservedToken {
        inputs_hash: annotations.get(api::INPUTS_HASH_ANNOTATION).cloned(),
        data_intact,
        times,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IdvClientStatus, PrivateKey};
    use crate::schedule::test_clock::{at, times};

    fn client() -> IdvClient {
        let mut c = api::test_client("gipod");
        c.spec.auth_server.token_endpoint = Some("https://idp.example/token".into());
        c.spec.private_key = Some(PrivateKey::default());
        c.spec.scopes = vec!["gipod_read".into()];
        c.spec.secret.labels = [("team".to_string(), "roads".to_string())].into();
        c.metadata.uid = Some("uid-1".into());
        c.metadata.generation = Some(2);
        c
    }

    fn secret() -> Secret {
        let data = token_data("tok", None, at(3600), &["gipod_read".into()]);
        desired_secret(
            &client(),
            data.data,
            &data.hash,
            "inputs",
            &times(0, 3600, 2400),
        )
    }

    /// The client after the operator created `secret()` for it (uid "s-uid").
    fn owning_client() -> IdvClient {
        let mut c = client();
        c.status = Some(IdvClientStatus {
            secret_uid: Some("s-uid".into()),
            ..IdvClientStatus::default()
        });
        c
    }

    fn created_secret() -> Secret {
        let mut s = secret();
        s.metadata.uid = Some("s-uid".into());
        s
    }

    #[test]
    fn only_the_secret_the_operator_created_is_its_own() {
        let s = created_secret();
        assert!(is_owned_by(&s, &owning_client()));
        assert!(TokenSecretRecord::of(&s).is_owned_by(&owning_client()));
        // Same owner reference, another object: made by someone else.
        let mut forged = s.clone();
        forged.metadata.uid = Some("other".into());
        assert!(!is_owned_by(&forged, &owning_client()));
        assert!(!TokenSecretRecord::of(&forged).is_owned_by(&owning_client()));
        // No Secret recorded yet (a new client): nothing existing is adopted.
        assert!(!is_owned_by(&s, &client()));
        // A status written before uids were recorded: the Secret it reported a token in.
        let mut older = client();
        older.status = Some(IdvClientStatus {
            secret_name: Some("gipod-token".into()),
            expires_at: Some(at(3600).to_string()),
            ..IdvClientStatus::default()
        });
        assert!(is_owned_by(&s, &older));
        older.status.as_mut().unwrap().expires_at = None;
        assert!(
            !is_owned_by(&s, &older),
            "a failed first attempt reported no token"
        );
    }

    #[test]
    fn metadata_the_spec_dropped_is_found_and_only_that() {
        let mut c = client(); // asks for label team=roads
        c.spec.secret.annotations = [("a/b".to_string(), "1".to_string())].into();
        let mut written = secret();
        written.metadata =
            desired_secret(&c, Default::default(), "", "inputs", &times(0, 1, 1)).metadata;
        // Someone else's label on the Secret.
        written
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("theirs".into(), "x".into());
        let record = TokenSecretRecord::of(&written);
        assert!(record.metadata_matches(&c));
        let mut dropped = c.clone();
        dropped.spec.secret.labels.clear();
        dropped.spec.secret.annotations.clear();
        assert!(!record.metadata_matches(&dropped), "a removal is a change");
        assert_eq!(
            record.removed_metadata(&dropped),
            (vec!["team".to_string()], vec!["a/b".to_string()])
        );
        assert_eq!(record.removed_metadata(&c), (vec![], vec![]));
    }

    #[test]
    fn edited_bookkeeping_breaks_the_seal() {
        for key in [
            api::ISSUED_AT_ANNOTATION,
            api::EXPIRES_AT_ANNOTATION,
            api::REFRESH_AT_ANNOTATION,
            api::INPUTS_HASH_ANNOTATION,
        ] {
            let mut s = secret();
            s.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(key.into(), "2099-01-01T00:00:00Z".into());
            assert!(!observe(&s).data_intact, "{key} edited");
            assert!(
                !TokenSecretRecord::of(&s).observed.data_intact,
                "{key} edited, as cached"
            );
        }
    }

    #[test]
    fn desired_secret_shape() {
        let s = created_secret();
        let data = s.data.clone().unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text("access_token"), "tok");
        assert_eq!(text("authorization"), "Bearer tok");
        assert_eq!(text("token_type"), "Bearer");
        assert_eq!(text("scope"), "gipod_read");
        assert_eq!(
            text("expires_at"),
            "2027-01-15T08:60:00Z".replace("08:60", "09:00")
        );
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(labels[api::MANAGED_BY_LABEL], api::MANAGED_BY_VALUE);
        assert_eq!(labels["team"], "roads");
        assert_eq!(s.metadata.name.as_deref(), Some("gipod-token"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("IdvClient", "uid-1", Some(true))
        );
        assert!(is_owned_by(&s, &owning_client()));
        let record = TokenSecretRecord::of(&s);
        assert!(record.is_owned_by(&owning_client()));
        assert!(record.metadata_matches(&client()));
        assert_eq!(record.observed, observe(&s));
        assert_eq!(record.observed.times, Some(times(0, 3600, 2400)));
        assert!(
            record.annotations.is_empty(),
            "bookkeeping is in `observed`"
        );
        assert!(
            !format!("{record:?}").contains("tok\""),
            "no token data in the record"
        );
        let mut other = owning_client();
        other.metadata.uid = Some("uid-2".into());
        assert!(!record.is_owned_by(&other) && !is_owned_by(&s, &other));
        other.spec.secret.annotations = [("team".to_string(), "roads".to_string())].into();
        assert!(!record.metadata_matches(&other));
        // The scope the IdP granted, when it names one.
        let granted = token_data("tok", Some("a b"), at(1), &["gipod_read".into()]);
        assert_eq!(granted.data["scope"].0, b"a b");
    }

    #[test]
    fn spec_metadata_cannot_set_the_operators_own_keys() {
        let mut hostile = client();
        hostile
            .spec
            .secret
            .labels
            .insert(api::MANAGED_BY_LABEL.into(), "someone-else".into());
        hostile.spec.secret.annotations = [
            (api::EXPIRES_AT_ANNOTATION, "2099-01-01T00:00:00Z"),
            (api::INPUTS_HASH_ANNOTATION, "forged"),
            ("idv-token-operator.dev/anything", "x"),
            ("team", "roads"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let data = token_data("tok", None, at(3600), &[]);
        let s = desired_secret(
            &hostile,
            data.data,
            &data.hash,
            "inputs",
            &times(0, 3600, 2400),
        );
        let (labels, annotations) = (
            s.metadata.labels.clone().unwrap(),
            s.metadata.annotations.clone().unwrap(),
        );
        assert_eq!(labels[api::MANAGED_BY_LABEL], api::MANAGED_BY_VALUE);
        assert_eq!(
            annotations[api::EXPIRES_AT_ANNOTATION],
            at(3600).to_string()
        );
        assert_eq!(annotations[api::INPUTS_HASH_ANNOTATION], "inputs");
        assert_eq!(annotations["team"], "roads");
        assert!(
            !annotations.contains_key("idv-token-operator.dev/anything"),
            "a reserved key was copied"
        );
        // What was written matches the spec: no re-apply on every reconcile.
        assert!(TokenSecretRecord::of(&s).metadata_matches(&hostile));
    }

    #[test]
    fn observe_round_trips_and_notices_edits() {
        let s = secret();
        let observed = observe(&s);
        assert!(observed.data_intact);
        assert_eq!(observed.inputs_hash.as_deref(), Some("inputs"));
        assert_eq!(observed.times, Some(times(0, 3600, 2400)));
        let mut edited = s.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("access_token".into(), ByteString(b"other".to_vec()));
        assert!(!observe(&edited).data_intact);
        let mut emptied = s.clone();
        emptied
            .data
            .as_mut()
            .unwrap()
            .insert("access_token".into(), ByteString(Vec::new()));
        assert!(!observe(&emptied).data_intact, "an emptied token");
        let mut no_data = s.clone();
        no_data.data = None;
        assert!(!observe(&no_data).data_intact);
        let mut unlabelled = s.clone();
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(api::MANAGED_BY_LABEL);
        assert!(!observe(&unlabelled).data_intact);
        let mut untimed = s;
        untimed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(api::REFRESH_AT_ANNOTATION);
        assert_eq!(observe(&untimed).times, None, "times only when all three");
    }

    #[test]
    fn the_fingerprint_tells_our_write_from_anyone_elses() {
        let s = secret();
        // As stored: server-set fields do not count.
        let mut stored = s.clone();
        stored.metadata.uid = Some("u".into());
        stored.metadata.resource_version = Some("7".into());
        assert_eq!(content_fingerprint(&stored), content_fingerprint(&s));
        let with = |edit: &dyn Fn(&mut Secret)| {
            let mut changed = s.clone();
            edit(&mut changed);
            content_fingerprint(&changed)
        };
        let edits: [&dyn Fn(&mut Secret); 3] = [
            &|s| {
                s.data
                    .as_mut()
                    .unwrap()
                    .insert("access_token".into(), ByteString(b"other".to_vec()));
            },
            &|s| {
                s.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert("team".into(), "bikes".into());
            },
            &|s| {
                s.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(api::REFRESH_AT_ANNOTATION.into(), at(1).to_string());
            },
        ];
        for edit in edits {
            assert_ne!(with(edit), content_fingerprint(&s));
        }
    }
}
