//! What the operator writes: the token Secret and the IdvClient status. Pure.

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
    api::{self, Condition, IdvClient, IdvClientStatus, secret_keys},
    credential::Credential,
    names,
    oauth::TokenAnswer,
    policy::ObservedToken,
    schedule::RefreshPlan,
};

pub const READY: &str = "Ready";
/// kstatus: work for the current generation is in progress (present only while True).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the operator has given up until something changes (present only while True).
pub const STALLED: &str = "Stalled";

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

/// Secret data for a token answer. `authorization` is ready to use as an HTTP header value.
pub fn token_data(
    answer: &TokenAnswer,
    expires_at: Timestamp,
    requested_scopes: &[String],
) -> TokenData {
    let token = answer.access_token.expose();
    let scope = answer
        .scope
        .clone()
        .unwrap_or_else(|| requested_scopes.join(" "));
    let entries = [
        (secret_keys::ACCESS_TOKEN, token.to_string()),
        (secret_keys::TOKEN_TYPE, "Bearer".to_string()),
        (secret_keys::EXPIRES_AT, expires_at.to_string()),
        (secret_keys::SCOPE, scope),
        (secret_keys::AUTHORIZATION, format!("Bearer {token}")),
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

/// Bookkeeping written next to a token.
pub struct TokenTimes {
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub refresh_at: Timestamp,
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
/// ~1.3 KB (10,000 clients: ~10 MiB less).
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

const BOOKKEEPING_ANNOTATIONS: [&str; 7] = [
    api::ISSUED_AT_ANNOTATION,
    api::EXPIRES_AT_ANNOTATION,
    api::REFRESH_AT_ANNOTATION,
    api::INPUTS_HASH_ANNOTATION,
    api::DATA_HASH_ANNOTATION,
    api::SPEC_METADATA_ANNOTATION,
    CACHED_DATA_HASH_ANNOTATION,
];

impl TokenSecretRecord {
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

    /// Whether the Secret carries every label and annotation the spec asks for.
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

/// In memory only, never written: the token Secret cache keeps this hash of a Secret's data
/// instead of the data (no access tokens in the operator's heap, ~2 KiB less per client).
pub const CACHED_DATA_HASH_ANNOTATION: &str = "idv-token-operator.dev/cached-data-hash";

/// Replace a watched token Secret's data by its hash, as the cache keeps it.
pub fn strip_token_data(secret: &mut Secret) {
    // Only this function may set it: one put on the Secret in the API is not to be trusted.
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.remove(CACHED_DATA_HASH_ANNOTATION);
    }
    let Some(data) = secret.data.take() else {
        return;
    };
    if let Some(hash) = hash_of_token_data(&data) {
        secret
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(CACHED_DATA_HASH_ANNOTATION.into(), hash);
    }
}

/// `data_hash`, when the data holds a non-empty access token.
fn hash_of_token_data(data: &BTreeMap<String, ByteString>) -> Option<String> {
    data.get(secret_keys::ACCESS_TOKEN)
        .is_some_and(|t| !t.0.is_empty())
        .then(|| data_hash(data))
}

/// The hash of the token data a Secret holds, whether it carries the data or is a stripped
/// cache copy.
fn observed_data_hash(secret: &Secret) -> Option<String> {
    match &secret.data {
        Some(data) => hash_of_token_data(data),
        None => secret
            .metadata
            .annotations
            .as_ref()?
            .get(CACHED_DATA_HASH_ANNOTATION)
            .cloned(),
    }
}

/// A fingerprint of what the operator writes to a token Secret (type, labels, annotations,
/// data), equal for the desired Secret and for its stripped cache copy. Lets the watch tell the
/// operator's own writes from anyone else's.
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
        .filter(|(k, _)| k.as_str() != CACHED_DATA_HASH_ANNOTATION)
        .for_each(|entry| entry.hash(&mut hasher));
    observed_data_hash(secret).hash(&mut hasher);
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
        && observed_data_hash(secret).is_some_and(|hash| {
            annotations.get(api::DATA_HASH_ANNOTATION)
                == Some(&seal(&hash, bookkeeping.into_iter()))
        });
    ObservedToken {
        inputs_hash: annotations.get(api::INPUTS_HASH_ANNOTATION).cloned(),
        data_intact,
        issued_at: time(api::ISSUED_AT_ANNOTATION),
        expires_at: time(api::EXPIRES_AT_ANNOTATION),
        refresh_at: time(api::REFRESH_AT_ANNOTATION),
    }
}

/// A Ready condition; `lastTransitionTime` stays when the status does not change, so an
/// unchanged outcome writes an identical status (and no new watch event).
pub fn ready_condition(
    previous: Option<&IdvClientStatus>,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    condition(previous, READY, status, reason, message, generation, now)
}

/// A condition of any type; `lastTransitionTime` stays while its status does not change.
pub fn condition(
    previous: Option<&IdvClientStatus>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| crate::schedule::whole_seconds(now).to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// Status while a valid token is in place, derived only from what the Secret records.
pub fn ready_status(
    client: &IdvClient,
    observed: &ObservedToken,
    secret_uid: Option<&str>,
    key_id: Option<&str>,
    plan_note: Option<String>,
    now: Timestamp,
) -> IdvClientStatus {
    let expires = observed
        .expires_at
        .map(|t| t.to_string())
        .unwrap_or_default();
    let refresh = observed
        .refresh_at
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut message = format!("token valid until {expires}; next refresh at {refresh}");
    if let Some(note) = plan_note {
        message.push_str("; ");
        message.push_str(&note);
    }
    let generation = client.metadata.generation;
    IdvClientStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(
            client.status.as_ref(),
            true,
            api::reasons::TOKEN_ISSUED,
            message,
            generation,
            now,
        )],
        expires_at: observed.expires_at.map(|t| t.to_string()),
        refresh_at: observed.refresh_at.map(|t| t.to_string()),
        key_id: key_id.map(str::to_string),
        secret_name: Some(client.token_secret_name()),
        secret_uid: secret_uid.map(str::to_string),
    }
}

/// Status after a failure. Token times and key id stay as they were: they describe the token
/// that is still in the Secret.
pub fn failed_status(
    client: &IdvClient,
    ready: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> IdvClientStatus {
    let previous = client.status.clone().unwrap_or_default();
    let generation = client.metadata.generation;
    IdvClientStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(
            client.status.as_ref(),
            ready,
            reason,
            message,
            generation,
            now,
        )],
        // An invalid name is never recorded: a later rename would try to delete it by name.
        secret_name: Some(client.token_secret_name())
            .filter(|name| names::is_dns1123_subdomain(name))
            .or(previous.secret_name.clone()),
        ..previous
    }
}

/// Where the work for the client's current generation stands, as kstatus (Flux, `kubectl
/// wait`, cli-utils) reads it. `Reconciling` and `Stalled` are "abnormal-true" conditions:
/// present only while True, as Flux's controllers do, so a settled client shows Ready alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing pending: Ready says it all.
    Settled,
    /// Work for this generation is going on or will be retried: `Reconciling=True`.
    Working,
    /// Given up until the IdvClient, its key Secret or its token Secret changes: `Stalled=True`.
    Stalled,
}

impl Progress {
    /// After a failure that makes the client unready: a transient one is retried with
    /// backoff (still working); a configuration error waits for a change.
    pub fn after_failure(transient: bool) -> Self {
        if transient {
            Progress::Working
        } else {
            Progress::Stalled
        }
    }
}

fn is_true(status: &IdvClientStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// `status` with its Reconciling / Stalled conditions set for `progress` (Ready first, then
/// the one of them that is True, if any).
pub fn with_progress(
    mut status: IdvClientStatus,
    previous: Option<&IdvClientStatus>,
    progress: Progress,
    reason: &str,
    message: String,
    now: Timestamp,
) -> IdvClientStatus {
    status
        .conditions
        .retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
    let type_ = match progress {
        Progress::Settled => return status,
        Progress::Working => RECONCILING,
        Progress::Stalled => STALLED,
    };
    let generation = status.observed_generation;
    status.conditions.push(condition(
        previous, type_, "True", reason, message, generation, now,
    ));
    status
}

/// Status after a failure that makes the client unready (`policy::failure_flips_ready`):
/// `failed_status`, plus `Stalled` for a configuration error or `Reconciling` for a transient
/// one, with the same reason and message.
pub fn failure_status(
    client: &IdvClient,
    reason: &str,
    message: String,
    transient: bool,
    now: Timestamp,
) -> IdvClientStatus {
    let status = failed_status(client, false, reason, message.clone(), now);
    let progress = Progress::after_failure(transient);
    with_progress(
        status,
        client.status.as_ref(),
        progress,
        reason,
        message,
        now,
    )
}

/// Status after a transient failure that leaves the client Ready (a valid token is held):
/// unchanged, unless it shows work in progress for this generation (a spec change being
/// applied): then `Reconciling` says what is being retried. `None`: nothing to write.
pub fn retrying_status(
    client: &IdvClient,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Option<IdvClientStatus> {
    let previous = client.status.as_ref()?;
    if !is_true(previous, RECONCILING) || previous.observed_generation != client.metadata.generation
    {
        return None;
    }
    let status = previous.clone();
    Some(with_progress(
        status,
        Some(previous),
        Progress::Working,
        reason,
        message,
        now,
    ))
}

/// The message while a token is requested for the current generation.
pub const ISSUING_MESSAGE: &str =
    "a token is being requested from the authorization server for this generation of the spec";

/// Status while a token request runs. `None` (nothing to write) for a `retry` of inputs whose
/// last attempt failed (the failure's status stays: a Stalled client re-checked every 5 minutes
/// does not flap), when the client is already Ready for its current generation (a routine or
/// forced refresh is nothing to wait for), or already shows this generation's work in progress.
/// Otherwise the current generation with `Reconciling=True`; Ready stays True while a token of
/// an earlier generation is held, else is `Unknown` (as Flux does while progressing).
pub fn fetching_status(client: &IdvClient, retry: bool, now: Timestamp) -> Option<IdvClientStatus> {
    let previous = client.status.clone().unwrap_or_default();
    let generation = client.metadata.generation;
    if retry
        || previous.observed_generation == generation
            && (is_true(&previous, READY) || is_true(&previous, RECONCILING))
    {
        return None;
    }
    let ready = match previous.conditions.iter().find(|c| c.type_ == READY) {
        Some(held) if held.status == "True" => held.clone(),
        _ => condition(
            Some(&previous),
            READY,
            "Unknown",
            api::reasons::ISSUING,
            ISSUING_MESSAGE.into(),
            generation,
            now,
        ),
    };
    let status = IdvClientStatus {
        observed_generation: generation,
        conditions: vec![ready],
        ..previous.clone()
    };
    Some(with_progress(
        status,
        Some(&previous),
        Progress::Working,
        api::reasons::ISSUING,
        ISSUING_MESSAGE.into(),
        now,
    ))
}

/// The note shown when `beforeExpiry` had to be overruled.
pub fn plan_note(plan: &RefreshPlan, before_expiry: Option<&str>) -> Option<String> {
    plan.clamped.then(|| {
        format!(
            "refresh.beforeExpiry {} is not shorter than the token lifetime, so the token is refreshed at 2/3 of its lifetime",
            before_expiry.unwrap_or_default()
        )
    })
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
    use crate::{api::PrivateKey, oauth::AccessToken};

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

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn secret() -> Secret {
        let answer = TokenAnswer {
            access_token: AccessToken::new("tok".into()),
            token_type: "Bearer".into(),
            expires_in: 3600,
            scope: None,
        };
        let data = token_data(&answer, at(3600), &["gipod_read".into()]);
        desired_secret(
            &client(),
            data.data,
            &data.hash,
            "inputs",
            &TokenTimes {
                issued_at: at(0),
                expires_at: at(3600),
                refresh_at: at(2400),
            },
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
        written.metadata = desired_secret(
            &c,
            Default::default(),
            "",
            "inputs",
            &TokenTimes {
                issued_at: at(0),
                expires_at: at(1),
                refresh_at: at(1),
            },
        )
        .metadata;
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
            strip_token_data(&mut s);
            assert!(
                !TokenSecretRecord::of(&s).observed.data_intact,
                "{key} edited, cached"
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
        assert!(TokenSecretRecord::of(&s).metadata_matches(&client()));
        let mut cached = s.clone();
        strip_token_data(&mut cached);
        let record = TokenSecretRecord::of(&cached);
        assert!(record.is_owned_by(&owning_client()));
        assert!(record.metadata_matches(&client()));
        assert_eq!(record.observed, observe(&s));
        assert!(
            record.annotations.is_empty(),
            "bookkeeping is in `observed`"
        );
        let mut other = owning_client();
        other.metadata.uid = Some("uid-2".into());
        assert!(!record.is_owned_by(&other) && !is_owned_by(&s, &other));
        other.spec.secret.annotations = [("team".to_string(), "roads".to_string())].into();
        assert!(!record.metadata_matches(&other));
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
            (CACHED_DATA_HASH_ANNOTATION, "forged"),
            ("idv-token-operator.dev/anything", "x"),
            ("team", "roads"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let data = token_data(
            &TokenAnswer {
                access_token: AccessToken::new("tok".into()),
                token_type: "Bearer".into(),
                expires_in: 3600,
                scope: None,
            },
            at(3600),
            &[],
        );
        let times = TokenTimes {
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at: at(2400),
        };
        let s = desired_secret(&hostile, data.data, &data.hash, "inputs", &times);
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
        for key in [
            CACHED_DATA_HASH_ANNOTATION,
            "idv-token-operator.dev/anything",
        ] {
            assert!(!annotations.contains_key(key), "{key} was copied");
        }
        // What was written matches the spec: no re-apply on every reconcile.
        let mut cached = s.clone();
        strip_token_data(&mut cached);
        assert!(TokenSecretRecord::of(&cached).metadata_matches(&hostile));
    }

    #[test]
    fn observe_round_trips_and_notices_edits() {
        let s = secret();
        let observed = observe(&s);
        assert!(observed.data_intact);
        assert_eq!(observed.inputs_hash.as_deref(), Some("inputs"));
        assert_eq!(
            (observed.expires_at, observed.refresh_at),
            (Some(at(3600)), Some(at(2400)))
        );
        let mut edited = s.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("access_token".into(), ByteString(b"other".to_vec()));
        assert!(!observe(&edited).data_intact);
        let mut unlabelled = s;
        unlabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(api::MANAGED_BY_LABEL);
        assert!(!observe(&unlabelled).data_intact);
    }

    #[test]
    fn stripped_cache_copy_observes_and_fingerprints_like_the_secret() {
        let s = secret();
        let mut cached = s.clone();
        strip_token_data(&mut cached);
        assert!(cached.data.is_none(), "no token data in the cache");
        assert!(!serde_json::to_string(&cached).unwrap().contains("tok\""));
        assert_eq!(observe(&cached), observe(&s));
        assert_eq!(content_fingerprint(&cached), content_fingerprint(&s));

        // Someone else's edit of data, labels or annotations is not our write.
        let with_token = |token: &[u8]| {
            let mut changed = s.clone();
            changed
                .data
                .as_mut()
                .unwrap()
                .insert("access_token".into(), ByteString(token.to_vec()));
            changed
        };
        let mut edited = with_token(b"other");
        strip_token_data(&mut edited);
        assert!(!observe(&edited).data_intact);
        assert_ne!(content_fingerprint(&edited), content_fingerprint(&s));
        let mut relabelled = s.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "bikes".into());
        assert_ne!(content_fingerprint(&relabelled), content_fingerprint(&s));
        let mut annotated = s.clone();
        annotated
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(api::REFRESH_AT_ANNOTATION.into(), at(1).to_string());
        assert_ne!(content_fingerprint(&annotated), content_fingerprint(&s));

        // An emptied token is not intact, stripped or not.
        let mut emptied = with_token(b"");
        assert!(!observe(&emptied).data_intact);
        // Emptied, with a forged cached-hash annotation copied from data-hash: still not intact.
        let mut forged = with_token(b"");
        let hash = forged.metadata.annotations.as_ref().unwrap()[api::DATA_HASH_ANNOTATION].clone();
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(CACHED_DATA_HASH_ANNOTATION.into(), hash);
        forged.data = None;
        strip_token_data(&mut forged);
        assert!(!observe(&forged).data_intact);
        strip_token_data(&mut emptied);
        assert!(!observe(&emptied).data_intact);
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut c = client();
        let first = failed_status(&c, false, "KeySecretNotFound", "m1".into(), at(0));
        c.status = Some(first.clone());
        let second = failed_status(&c, false, "InvalidKey", "m2".into(), at(100));
        assert_eq!(
            second.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        let observed = observe(&secret());
        let ready = ready_status(&c, &observed, None, Some("kid"), None, at(200));
        assert_eq!(
            ready.conditions[0].last_transition_time,
            at(200).to_string()
        );
        c.status = Some(ready.clone());
        assert_eq!(
            ready_status(&c, &observed, None, Some("kid"), None, at(300)),
            ready,
            "same inputs, same status"
        );
    }

    /// kstatus' rules for a custom resource (cli-utils v0.37.2 pkg/kstatus/status: Compute),
    /// enough to name the expectation; tests/operator/gitops.rs checks with the real library.
    fn kstatus(client: &IdvClient) -> &'static str {
        let Some(status) = client.status.as_ref() else {
            return "Current";
        };
        if status
            .observed_generation
            .is_some_and(|g| Some(g) != client.metadata.generation)
        {
            return "InProgress";
        }
        if is_true(status, RECONCILING) {
            return "InProgress";
        }
        if is_true(status, STALLED) {
            return "Failed";
        }
        // Then the Ready condition: anything but True is InProgress.
        match status.conditions.iter().find(|c| c.type_ == READY) {
            Some(ready) if ready.status != "True" => "InProgress",
            _ => "Current",
        }
    }

    /// (type, status, reason) of each condition, in order.
    type Shape = Vec<(String, String, String)>;

    fn shape(status: &IdvClientStatus) -> Shape {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[derive(Clone, Copy, Debug)]
    enum Event {
        /// A token request runs (reconcile's `Outcome::Fetching`).
        Fetching,
        /// The same, retrying inputs whose last attempt failed.
        Retry,
        Issued,
        ConfigError,
        TransientError,
        /// A transient error while a valid token is held (Ready stays).
        TransientWithToken,
        Suspended,
        /// The spec changes: a new generation.
        SpecChange,
    }

    /// Applies `event` as reconcile does; `false` when nothing would be written.
    fn step(c: &mut IdvClient, event: Event, now: Timestamp) -> bool {
        let observed = observe(&secret());
        let next = match event {
            Event::Fetching => fetching_status(c, false, now),
            Event::Retry => fetching_status(c, true, now),
            Event::Issued => Some(ready_status(c, &observed, None, None, None, now)),
            Event::ConfigError => Some(failure_status(c, "InvalidKey", "bad".into(), false, now)),
            Event::TransientError => Some(failure_status(
                c,
                "IdpUnavailable",
                "down".into(),
                true,
                now,
            )),
            Event::TransientWithToken => retrying_status(c, "IdpUnavailable", "down".into(), now),
            Event::Suspended => Some(failure_status(c, "Suspended", "s".into(), false, now)),
            Event::SpecChange => {
                *c.metadata.generation.as_mut().unwrap() += 1;
                return true;
            }
        };
        match next {
            Some(status) if c.status.as_ref() != Some(&status) => {
                c.status = Some(status);
                true
            }
            _ => false,
        }
    }

    #[test]
    fn conditions_follow_kstatus_through_a_clients_life() {
        use Event::*;
        let t = |s: &str, st: &str, r: &str| (s.to_string(), st.to_string(), r.to_string());
        let ready = t(READY, "True", "TokenIssued");
        let issuing = [
            t(READY, "Unknown", "Issuing"),
            t(RECONCILING, "True", "Issuing"),
        ];
        // (event, written?, conditions after, kstatus after)
        let story: Vec<(Event, bool, Shape, &str)> = vec![
            (Fetching, true, issuing.to_vec(), "InProgress"),
            (Fetching, false, issuing.to_vec(), "InProgress"),
            (Issued, true, vec![ready.clone()], "Current"),
            // A routine refresh: nothing to wait for.
            (Fetching, false, vec![ready.clone()], "Current"),
            (TransientWithToken, false, vec![ready.clone()], "Current"),
            (SpecChange, true, vec![ready.clone()], "InProgress"),
            // The token of the older generation is held while the new one is requested.
            (
                Fetching,
                true,
                vec![ready.clone(), t(RECONCILING, "True", "Issuing")],
                "InProgress",
            ),
            (
                TransientWithToken,
                true,
                vec![ready.clone(), t(RECONCILING, "True", "IdpUnavailable")],
                "InProgress",
            ),
            (Issued, true, vec![ready.clone()], "Current"),
            (
                ConfigError,
                true,
                vec![
                    t(READY, "False", "InvalidKey"),
                    t(STALLED, "True", "InvalidKey"),
                ],
                "Failed",
            ),
            (
                ConfigError,
                false,
                vec![
                    t(READY, "False", "InvalidKey"),
                    t(STALLED, "True", "InvalidKey"),
                ],
                "Failed",
            ),
            // The periodic re-check of a configuration error: no flapping.
            (
                Retry,
                false,
                vec![
                    t(READY, "False", "InvalidKey"),
                    t(STALLED, "True", "InvalidKey"),
                ],
                "Failed",
            ),
            // The key was fixed: trying again.
            (Fetching, true, issuing.to_vec(), "InProgress"),
            (
                TransientError,
                true,
                vec![
                    t(READY, "False", "IdpUnavailable"),
                    t(RECONCILING, "True", "IdpUnavailable"),
                ],
                "InProgress",
            ),
            // The retry keeps the failure's message.
            (
                Retry,
                false,
                vec![
                    t(READY, "False", "IdpUnavailable"),
                    t(RECONCILING, "True", "IdpUnavailable"),
                ],
                "InProgress",
            ),
            // Nothing happens until the spec changes: Stalled (kstatus would otherwise wait
            // on Ready=False for ever).
            (
                Suspended,
                true,
                vec![
                    t(READY, "False", "Suspended"),
                    t(STALLED, "True", "Suspended"),
                ],
                "Failed",
            ),
            (
                SpecChange,
                true,
                vec![
                    t(READY, "False", "Suspended"),
                    t(STALLED, "True", "Suspended"),
                ],
                "InProgress",
            ),
            (Fetching, true, issuing.to_vec(), "InProgress"),
            (Issued, true, vec![ready.clone()], "Current"),
        ];
        let mut c = client();
        for (i, (event, written, conditions, expected)) in story.into_iter().enumerate() {
            let did = step(&mut c, event, at(i as i64 * 10));
            let status = c.status.clone().unwrap_or_default();
            assert_eq!(did, written, "step {i} {event:?}: {status:?}");
            assert_eq!(shape(&status), conditions, "step {i} {event:?}");
            assert_eq!(kstatus(&c), expected, "step {i} {event:?}");
            if !matches!(event, SpecChange) {
                assert_eq!(
                    status.observed_generation, c.metadata.generation,
                    "step {i} {event:?}: every write records the generation"
                );
            }
        }
    }

    #[test]
    fn progress_conditions_keep_their_transition_time() {
        let mut c = client();
        c.status = Some(failure_status(&c, "KeyNotFound", "m1".into(), false, at(0)));
        let again = failure_status(&c, "InvalidKey", "m2".into(), false, at(100));
        let stalled = |s: &IdvClientStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == STALLED)
                .unwrap()
                .clone()
        };
        assert_eq!(stalled(&again).last_transition_time, at(0).to_string());
        assert_eq!(stalled(&again).message, "m2");
        // Same outcome, later: the identical status (no rewrite loop).
        c.status = Some(again.clone());
        assert_eq!(
            failure_status(&c, "InvalidKey", "m2".into(), false, at(200)),
            again
        );
        // Stalled -> Reconciling: a new transition.
        let working = failure_status(&c, "IdpUnavailable", "m3".into(), true, at(300));
        let reconciling = working
            .conditions
            .iter()
            .find(|c| c.type_ == RECONCILING)
            .unwrap();
        assert_eq!(reconciling.last_transition_time, at(300).to_string());
        assert_eq!(
            working.conditions[0].last_transition_time,
            at(0).to_string(),
            "Ready stayed False"
        );
    }

    #[test]
    fn an_invalid_secret_name_is_never_recorded_in_status() {
        let mut c = client();
        c.status = Some(failed_status(
            &c,
            false,
            "KeySecretNotFound",
            "m".into(),
            at(0),
        ));
        assert_eq!(
            c.status.as_ref().unwrap().secret_name.as_deref(),
            Some("gipod-token")
        );
        c.spec.secret.name = Some("?watch=true".into());
        let status = failed_status(&c, false, "InvalidSpec", "m".into(), at(1));
        assert_eq!(status.secret_name.as_deref(), Some("gipod-token"));
    }
}
