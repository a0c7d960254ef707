//! Apply: carry out a plan. Starts the token request, writes the token Secret (and removes
//! the one under an old name); decides nothing beyond what a refused write means.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use tracing::info;

use super::{
    Context,
    dereference::{Observed, Usable},
};
use crate::{
    api::{self, IdvClient},
    authserver::ServerPlan,
    caches::OwnWrites,
    credential::Credential,
    error::Error,
    events::EventType,
    fetcher::{self, Fetched},
    memory::ClientKey,
    names,
    oauth::TokenParams,
    policy::{Plan, RefreshReason},
    schedule::TokenTimes,
    token_secret::{self, TokenSecretRecord},
};

/// What became of a plan.
pub enum Outcome {
    /// A valid token is in the Secret.
    Ready(Ready),
    /// A retry is due later; nothing changed.
    HeldBack { until: Timestamp },
    /// A token request is running in the background; its end reconciles the client again.
    /// `retry`: of inputs whose last attempt failed.
    Fetching { retry: bool },
}

/// The token in the Secret, as the status reports it.
pub struct Ready {
    pub times: TokenTimes,
    pub secret_uid: Option<String>,
    pub key_id: Option<String>,
    /// `beforeExpiry` was overruled for it.
    pub clamped: bool,
}

pub async fn apply(
    client: &IdvClient,
    ctx: &Arc<Context>,
    key: &ClientKey,
    observed: Observed,
    plan: Plan,
    now: Timestamp,
) -> Result<Outcome, Error> {
    if plan == Plan::Conflict {
        return Err(Error::SecretConflict {
            name: client.token_secret_name(),
        });
    }
    let fetching = Outcome::Fetching {
        retry: observed.not_before.is_some(),
    };
    // `Plan::Unusable` comes with the credential's error.
    let Usable {
        credential,
        inputs_hash,
    } = observed.credential?;
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &observed.spec.namespace);
    let record = observed.token_secret;
    let key_id = credential.key_id().map(str::to_string);
    match plan {
        Plan::Conflict | Plan::Unusable => unreachable!("returned above"),
        Plan::Keep {
            times,
            repair_metadata,
            clamped,
        } => {
            ctx.fetcher.discard_outcome(key);
            if repair_metadata {
                repair(
                    &secrets,
                    client,
                    &inputs_hash,
                    &times,
                    &ctx.caches.own_writes,
                )
                .await?;
            }
            Ok(Outcome::Ready(Ready {
                times,
                secret_uid: record.and_then(|r| r.uid),
                key_id,
                clamped,
            }))
        }
        Plan::AwaitFetch => Ok(fetching),
        Plan::HoldBack { until } => {
            ctx.fetcher.discard_outcome(key);
            Ok(Outcome::HeldBack { until })
        }
        Plan::StartFetch { dry_run } => {
            if dry_run {
                let writable = &ctx.caches.writable;
                check_creatable(&secrets, client, &inputs_hash, now)
                    .await
                    .inspect_err(|_| writable.write_failed(&observed.spec.namespace))?;
                writable.created(&observed.spec.namespace, now);
            }
            start_fetch(
                ctx,
                client,
                key.clone(),
                inputs_hash,
                &observed.spec.server,
                credential,
            );
            Ok(fetching)
        }
        Plan::ReportFailure => match ctx.fetcher.take(key, &inputs_hash) {
            Some((Err(error), _)) => Err(error),
            // Taken meanwhile (the IdvClient was deleted): nothing to report.
            _ => Ok(fetching),
        },
        Plan::Store {
            reason,
            times,
            clamped,
            announce,
        } => {
            let (fetched, _hold) = match ctx.fetcher.take(key, &inputs_hash) {
                Some((Ok(fetched), hold)) => (fetched, hold),
                Some((Err(error), _)) => return Err(error),
                None => return Ok(fetching),
            };
            // `_hold` (status writes narrowed) lasts until the token is stored.
            let token = Token {
                fetched,
                reason,
                times,
                announce,
                key_id: key_id.as_deref(),
            };
            let writable = &ctx.caches.writable;
            let secret_uid = store(
                &secrets,
                client,
                ctx,
                key,
                record.as_ref(),
                inputs_hash,
                token,
            )
            .await
            .inspect_err(|_| writable.write_failed(&observed.spec.namespace))?;
            if record.is_none() {
                writable.created(&observed.spec.namespace, now);
            }
            Ok(Outcome::Ready(Ready {
                times,
                secret_uid,
                key_id,
                clamped,
            }))
        }
    }
}

/// A token to store, and what to say about it.
struct Token<'a> {
    fetched: Fetched,
    reason: RefreshReason,
    times: TokenTimes,
    announce: bool,
    key_id: Option<&'a str>,
}

/// Write the new token into the Secret the decision was made on (or create it). A token that
/// cannot be stored is kept for the next attempt instead of asking the IdP again. Returns the
/// Secret's uid.
async fn store(
    secrets: &Api<Secret>,
    client: &IdvClient,
    ctx: &Context,
    key: &ClientKey,
    record: Option<&TokenSecretRecord>,
    inputs_hash: String,
    token: Token<'_>,
) -> Result<Option<String>, Error> {
    let Token {
        fetched,
        reason,
        times,
        announce,
        key_id,
    } = token;
    let answer = &fetched.answer;
    let data = token_secret::token_data(
        answer.access_token.expose(),
        answer.scope.as_deref(),
        times.expires_at,
        &client.spec.scopes,
    );
    let mut desired =
        token_secret::desired_secret(client, data.data, &data.hash, &inputs_hash, &times);
    let own_writes = &ctx.caches.own_writes;
    let written = match record {
        Some(record) => {
            // Only the Secret the decision was made on (not a new one of the same name).
            desired.metadata.uid = record.uid.clone();
            apply_secret(secrets, &desired, own_writes).await
        }
        None => create_or_reclaim_secret(secrets, &desired, client, own_writes).await,
    };
    let secret_uid = match written {
        Ok(uid) => uid,
        Err(error) => {
            // The IdP gave a token; store it on the next attempt instead of asking again.
            ctx.fetcher.keep(key.clone(), inputs_hash, fetched);
            return Err(error);
        }
    };
    let key_id = key_id.unwrap_or("(client secret)");
    info!(
        namespace = client.namespace().unwrap_or_default(),
        name = client.name_any(),
        secret = client.token_secret_name(),
        key_id,
        expires_at = %times.expires_at,
        refresh_at = %times.refresh_at,
        why = reason.describe(),
        "token issued"
    );
    if announce {
        ctx.writeback.event(
            client,
            EventType::Normal,
            api::reasons::TOKEN_ISSUED,
            format!(
                "token issued ({}) with key {key_id}; expires at {}, refresh at {}",
                reason.describe(),
                times.expires_at,
                times.refresh_at
            ),
        );
    }
    Ok(secret_uid)
}

/// Re-apply the labels and annotations the spec asks for to the Secret, with the same token
/// and bookkeeping; remove those it asks for no more.
async fn repair(
    secrets: &Api<Secret>,
    client: &IdvClient,
    inputs_hash: &str,
    times: &TokenTimes,
    own_writes: &OwnWrites,
) -> Result<(), Error> {
    let name = client.token_secret_name();
    // The cache holds no token data: read it.
    let current = secrets
        .get_opt(&name)
        .await?
        .filter(|s| token_secret::is_owned_by(s, client));
    let Some(current) = current else {
        return Ok(());
    };
    let Some(data) = current.data.clone() else {
        return Ok(());
    };
    // Keys the spec no longer asks for: set at creation, so not removed by the apply below
    // (creation is not an apply).
    let (labels, annotations) = TokenSecretRecord::of(&current).removed_metadata(client);
    if !labels.is_empty() || !annotations.is_empty() {
        let nulls = |keys: Vec<String>| {
            keys.into_iter()
                .map(|k| (k, serde_json::Value::Null))
                .collect::<serde_json::Map<_, _>>()
        };
        let patch = serde_json::json!({"metadata": {
            "uid": current.metadata.uid,
            "labels": nulls(labels),
            "annotations": nulls(annotations),
        }});
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::from_secret_write(&name, e))?;
    }
    let mut desired = token_secret::desired_secret(
        client,
        data.clone(),
        &token_secret::data_hash(&data),
        inputs_hash,
        times,
    );
    desired.metadata.uid = current.metadata.uid;
    apply_secret(secrets, &desired, own_writes).await?;
    Ok(())
}

/// Start the token request in the background (discovery included): it holds no reconcile
/// worker, and a slow host delays only its own clients.
fn start_fetch(
    ctx: &Arc<Context>,
    client: &IdvClient,
    client_key: ClientKey,
    inputs_hash: String,
    plan: &ServerPlan,
    credential: Credential,
) {
    let host = match plan {
        ServerPlan::Known(server) => server.token_endpoint.origin().ascii_serialization(),
        ServerPlan::Discover { issuer, .. } => issuer.origin().ascii_serialization(),
    };
    let params = TokenParams {
        scopes: client.spec.scopes.clone(),
        audience: client.spec.audience.clone(),
        resource: client.spec.resource.clone(),
    };
    let client_id = client.spec.client_id.clone();
    let (plan, tokens, metrics) = (plan.clone(), ctx.tokens.clone(), ctx.metrics.clone());
    let request = async move {
        let started = std::time::Instant::now();
        let requested_at = Timestamp::now();
        let result = async {
            let server = tokens
                .resolve(&plan)
                .await
                .inspect_err(|_| tokens.forget(&plan))?;
            tokens
                .request_token(&client_id, &server, &params, &credential, requested_at)
                .await
        }
        .await;
        let outcome = result
            .as_ref()
            .map(|_| crate::metrics::TOKEN_REQUEST_SUCCESS)
            .unwrap_or_else(|e| e.reason());
        metrics.token_request(outcome, started.elapsed().as_secs_f64());
        result.map(|answer| Fetched {
            requested_at,
            answer,
            kept: false,
        })
    };
    // Status and Event writes narrow from the request's start until its token is stored: on
    // a busy apiserver they would slow the next tokens down.
    let hold: fetcher::Hold = Some(Box::new(ctx.writeback.token_work()));
    ctx.fetcher
        .start(client_key, inputs_hash, &host, hold, request);
}

/// Before the first token for a Secret that does not exist yet: would creating it succeed?
/// A server-side dry run answers for name, quota, namespace and RBAC at once. A Secret of that
/// name that is ours after all (its label was removed) is reclaimed when the token is stored.
async fn check_creatable(
    secrets: &Api<Secret>,
    client: &IdvClient,
    inputs_hash: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let times = TokenTimes {
        issued_at: now,
        expires_at: now,
        refresh_at: now,
    };
    let probe = token_secret::desired_secret(client, Default::default(), "", inputs_hash, &times);
    let name = client.token_secret_name();
    let params = PostParams {
        dry_run: true,
        field_manager: Some(api::FIELD_MANAGER.into()),
    };
    match secrets.create(&params, &probe).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            match secrets.get_opt(&name).await? {
                // Ours (relabelled), or deleted in between: creatable.
                Some(found) if token_secret::is_owned_by(&found, client) => Ok(()),
                None => Ok(()),
                Some(_) => Err(Error::SecretConflict { name }),
            }
        }
        Err(error) => Err(Error::from_secret_write(&name, error)),
    }
}

/// Create the token Secret. If one of that name exists, write it only when it is ours (its
/// managed-by label was removed); anyone else's is left alone.
async fn create_or_reclaim_secret(
    secrets: &Api<Secret>,
    desired: &Secret,
    client: &IdvClient,
    own_writes: &OwnWrites,
) -> Result<Option<String>, Error> {
    let name = desired
        .metadata
        .name
        .clone()
        .expect("desired Secret has a name");
    own_writes.expect(desired);
    match secrets
        .create(
            &PostParams {
                field_manager: Some(api::FIELD_MANAGER.into()),
                ..PostParams::default()
            },
            desired,
        )
        .await
    {
        Ok(created) => Ok(created.metadata.uid),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            match secrets.get_opt(&name).await? {
                Some(found) if token_secret::is_owned_by(&found, client) => {
                    let mut desired = desired.clone();
                    desired.metadata.uid = found.metadata.uid;
                    apply_secret(secrets, &desired, own_writes).await
                }
                _ => Err(Error::SecretConflict { name }),
            }
        }
        Err(e) => Err(Error::from_secret_write(&name, e)),
    }
}

/// Server-side apply of the token Secret; its uid (when set) makes the write conditional on
/// that very object. Returns the written Secret's uid.
async fn apply_secret(
    secrets: &Api<Secret>,
    desired: &Secret,
    own_writes: &OwnWrites,
) -> Result<Option<String>, Error> {
    own_writes.expect(desired);
    let mut body = desired.clone();
    body.metadata.managed_fields = None;
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": body.metadata,
        "type": body.type_,
        "data": body.data,
    });
    let name = desired
        .metadata
        .name
        .as_deref()
        .expect("desired Secret has a name");
    let written = secrets
        .patch(
            name,
            &PatchParams::apply(api::FIELD_MANAGER).force(),
            &Patch::Apply(value),
        )
        .await
        .map_err(|e| Error::from_secret_write(name, e))?;
    Ok(written.metadata.uid)
}

/// After `spec.secret.name` changed, delete the Secret under the old name (only if ours).
pub async fn remove_renamed_secret(client: &IdvClient, ctx: &Context) -> Result<(), Error> {
    let Some(old) = client
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
    else {
        return Ok(());
    };
    // The status is the operator's record, but not only the operator can write it: a name
    // that is no Secret name never reaches a URL.
    if old == client.token_secret_name() || !names::is_dns1123_subdomain(old) {
        return Ok(());
    }
    let namespace = client.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    if let Some(secret) = secrets.get_opt(old).await?
        && token_secret::is_owned_by(&secret, client)
    {
        let precondition = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        secrets.delete(old, &precondition).await?;
        info!(
            namespace,
            name = client.name_any(),
            secret = old,
            "removed the token Secret under its old name"
        );
    }
    Ok(())
}
