//! Dereference: what is there for one IdvClient. The spec checked, the token Secret's record,
//! the credential, the token request and the failure memory; read from the caches, and from
//! the API only where they cannot answer. Decides nothing.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::Context;
use crate::{
    api::{self, IdvClient},
    authserver::{self, ServerPlan},
    caches::{self, CachedCredential},
    credential::{self, Credential},
    error::Error,
    memory::ClientKey,
    names,
    policy::{self, FetchState, Lookup, ObservedToken, RefreshRules, SecretFacts},
    schedule::{self, BeforeExpiry},
    token_secret::{self, TokenSecretRecord},
};

/// What the spec says, checked before anything is read.
pub struct Spec {
    pub namespace: String,
    pub server: ServerPlan,
    pub before_expiry: Option<BeforeExpiry>,
}

/// A credential that can be used, and the hash of every input of a token made with it.
pub struct Usable {
    pub credential: Credential,
    pub inputs_hash: String,
}

/// What is there for one IdvClient.
pub struct Observed {
    pub spec: Spec,
    /// The Secret of the token Secret's name: the operator's record of it.
    pub token_secret: Option<TokenSecretRecord>,
    pub credential: Result<Usable, Error>,
    /// The token request for these inputs.
    pub fetch: FetchState,
    /// From the failure memory: no new request with these inputs before this.
    pub not_before: Option<Timestamp>,
    /// The last attempt failed.
    pub failed_last: bool,
    /// A Secret create in the namespace succeeded then, and no Secret write there failed since.
    pub namespace_writable_at: Option<Timestamp>,
    /// What a failure now is remembered with (`Known::inputs`).
    inputs: String,
}

/// What a failure is remembered and reported with: the inputs it happened with (generation,
/// force-refresh value, the key Secret's version as far as it was read) and the token the
/// Secret records, if it was read.
pub struct Known {
    pub inputs: String,
    pub token: Option<ObservedToken>,
}

impl Known {
    /// Before anything was read.
    pub fn of(client: &IdvClient) -> Self {
        Known {
            inputs: failure_inputs(client),
            token: None,
        }
    }
}

impl Observed {
    /// What a failure of this attempt is remembered and reported with. Someone else's Secret
    /// of the token Secret's name holds no token of ours.
    pub fn known(&self, client: &IdvClient) -> Known {
        Known {
            inputs: self.inputs.clone(),
            token: self
                .token_secret
                .as_ref()
                .filter(|record| record.is_owned_by(client))
                .map(|record| record.observed.clone()),
        }
    }

    /// The facts `policy::decide` takes.
    pub fn facts<'a>(
        &'a self,
        client: &IdvClient,
        min_refresh_interval: std::time::Duration,
        now: Timestamp,
        jitter: f64,
    ) -> policy::Facts<'a> {
        policy::Facts {
            secret: self.token_secret.as_ref().map(|record| SecretFacts {
                token: &record.observed,
                owned: record.is_owned_by(client),
                metadata_matches: record.metadata_matches(client),
            }),
            inputs_hash: self
                .credential
                .as_ref()
                .ok()
                .map(|usable| usable.inputs_hash.as_str()),
            fetch: self.fetch,
            not_before: self.not_before,
            failed_last: self.failed_last,
            namespace_writable_at: self.namespace_writable_at,
            rules: RefreshRules {
                before_expiry: self.spec.before_expiry,
                min_interval: min_refresh_interval,
            },
            now,
            jitter,
        }
    }
}

/// Generation and force-refresh value: the inputs a failure is remembered with, before the
/// key Secret's version is known.
fn failure_inputs(client: &IdvClient) -> String {
    let force = client
        .annotations()
        .get(api::FORCE_REFRESH_ANNOTATION)
        .map(String::as_str)
        .unwrap_or_default();
    format!(
        "{}/{force}/",
        client.metadata.generation.unwrap_or_default()
    )
}

/// Read what is there. An error here (an invalid spec, the API failing) is the attempt's
/// failure; the credential's is kept in `Observed` (a conflict is reported before it).
pub async fn observe(
    client: &IdvClient,
    ctx: &Context,
    key: &ClientKey,
) -> Result<Observed, Error> {
    let spec = check_spec(client)?;
    let token_secret = token_secret(client, ctx, &spec.namespace).await?;
    let mut inputs = failure_inputs(client);
    let credential =
        load_credential(client, ctx, &spec.namespace)
            .await
            .map(|(credential, version)| {
                inputs.push_str(&version);
                Usable {
                    inputs_hash: token_secret::inputs_hash(client, &credential),
                    credential,
                }
            });
    let (fetch, not_before) = match &credential {
        Ok(usable) => (
            ctx.fetcher.state(key, &usable.inputs_hash),
            ctx.failures.not_before(key, &inputs),
        ),
        Err(_) => (FetchState::Idle, None),
    };
    let namespace_writable_at = ctx.caches.writable.proven_at(&spec.namespace);
    Ok(Observed {
        spec,
        token_secret,
        credential,
        fetch,
        not_before,
        failed_last: ctx.failures.failed_last(key),
        namespace_writable_at,
        inputs,
    })
}

/// Validate what needs no I/O first. Names go into API URLs: none is used before it is known
/// to be a name.
fn check_spec(client: &IdvClient) -> Result<Spec, Error> {
    names::validate(client).map_err(Error::InvalidSpec)?;
    let namespace = client
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("the IdvClient has no namespace".into()))?;
    if client.spec.client_id.trim().is_empty() {
        return Err(Error::InvalidSpec("clientId must not be empty".into()));
    }
    let server = authserver::plan(&client.spec.auth_server)?;
    let before_expiry = client
        .spec
        .refresh
        .before_expiry
        .as_deref()
        .map(schedule::parse_before_expiry)
        .transpose()
        .map_err(Error::InvalidSpec)?;
    Ok(Spec {
        namespace,
        server,
        before_expiry,
    })
}

/// The record of the Secret of the token Secret's name: from the cache where it can answer.
async fn token_secret(
    client: &IdvClient,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<TokenSecretRecord>, Error> {
    let name = client.token_secret_name();
    match ctx.caches.token_secret(namespace, &name) {
        Lookup::Known(record) => Ok(record),
        Lookup::Ask => {
            let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), namespace);
            Ok(secrets
                .get_opt(&name)
                .await?
                .map(|secret| TokenSecretRecord::of(&secret)))
        }
    }
}

/// Read the credential (private key or client secret); reuse a parsed key while its Secret is
/// unchanged. Returns it with the Secret's resourceVersion.
async fn load_credential(
    client: &IdvClient,
    ctx: &Context,
    namespace: &str,
) -> Result<(Credential, String), Error> {
    let (reference, key_id) = match (&client.spec.private_key, &client.spec.client_secret) {
        (Some(private_key), None) => (&private_key.secret_ref, private_key.key_id.clone()),
        (None, Some(client_secret)) => (&client_secret.secret_ref, None),
        _ => {
            return Err(Error::InvalidSpec(
                "set exactly one of privateKey and clientSecret".into(),
            ));
        }
    };
    let parsed = &ctx.caches.parsed_keys;
    let reference_key = caches::credential_reference(client).expect("a credential reference");
    // A parsed key is reused while its Secret's resourceVersion stays the same.
    let cached = |version: &str| parsed.get(reference_key, version);
    // The watch of labelled Secrets knows the Secret's version: a key parsed from that version
    // is reused without reading the Secret again.
    // The version alone decides whether the parsed key is still good (no copy of the data).
    if let Some(version) = ctx.caches.credential_version(namespace, &reference.name)
        && let Some(key) = cached(&version)
    {
        return Ok((key, version));
    }
    let watched = ctx.caches.credential(namespace, &reference.name);
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), namespace);
    let not_found = || Error::KeySecretNotFound {
        name: reference.name.clone(),
    };
    let not_labelled = || Error::CredentialNotLabelled {
        name: reference.name.clone(),
    };
    let secret = match watched {
        // The watch of labelled Secrets has it, data included: no need to ask.
        Some(watched) => watched,
        None => {
            // Not among the labelled Secrets the watch has seen: look at its labels before
            // reading its data, so that an unlabelled Secret's content never reaches the operator.
            let meta = secrets
                .get_metadata_opt(&reference.name)
                .await?
                .ok_or_else(not_found)?;
            if !api::is_credential(meta.labels()) {
                return Err(not_labelled());
            }
            let secret = secrets
                .get_opt(&reference.name)
                .await?
                .ok_or_else(not_found)?;
            if !api::is_credential(secret.labels()) {
                return Err(not_labelled());
            }
            CachedCredential {
                version: secret.resource_version().unwrap_or_default(),
                uid: secret.metadata.uid.clone().unwrap_or_default(),
                data: secret.data.unwrap_or_default(),
            }
        }
    };
    let version = secret.version.clone();
    if let Some(key) = cached(&version) {
        return Ok((key, version));
    }
    let bytes = secret
        .data
        .get(&reference.key)
        .map(|b| b.0.clone())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::KeyNotInSecret {
            name: reference.name.clone(),
            key: reference.key.clone(),
        })?;
    let kind = if client.spec.client_secret.is_some() {
        credential::Kind::ClientSecret
    } else {
        credential::Kind::PrivateKey
    };
    let uid = &secret.uid;
    let key = credential::parse(kind, bytes, key_id.as_deref(), format!("{uid}/{version}"))
        .map_err(|error| match error {
            credential::CredentialError::NotUtf8 => Error::InvalidSpec(format!(
                "the client secret in Secret {:?} is not UTF-8",
                reference.name
            )),
            credential::CredentialError::Key(source) => Error::InvalidKey {
                name: reference.name.clone(),
                key: reference.key.clone(),
                source,
            },
        })?;
    // Replaces the key parsed from an older version of the Secret.
    parsed.insert(reference_key, namespace, &version, &key);
    Ok((key, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::IdvClientStatus, schedule::TokenTimes};

    #[test]
    fn a_failure_counts_only_a_token_of_ours() {
        let mut client = api::test_client("gipod");
        client.metadata.uid = Some("client-uid".into());
        client.spec.auth_server.token_endpoint = Some("https://idp.example/token".into());
        client.status = Some(IdvClientStatus {
            secret_uid: Some("ours".into()),
            ..IdvClientStatus::default()
        });
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let times = TokenTimes {
            issued_at: at,
            expires_at: at,
            refresh_at: at,
        };
        let data = token_secret::token_data("t", None, at, &[]);
        let mut secret =
            token_secret::desired_secret(&client, data.data, &data.hash, "inputs", &times);
        let mut observed = |uid: &str| {
            secret.metadata.uid = Some(uid.into());
            Observed {
                spec: check_spec(&client).unwrap(),
                token_secret: Some(TokenSecretRecord::of(&secret)),
                credential: Err(Error::InvalidSpec("no key".into())),
                fetch: FetchState::Idle,
                not_before: None,
                failed_last: false,
                namespace_writable_at: None,
                inputs: "1//v".into(),
            }
        };
        let ours = observed("ours").known(&client);
        assert_eq!(ours.inputs, "1//v");
        assert!(ours.token.is_some_and(|t| t.data_intact));
        // Same owner reference and bookkeeping, another object: not ours.
        assert!(observed("theirs").known(&client).token.is_none());
        assert_eq!(Known::of(&client).inputs, "0//", "before the key is read");
    }
}
