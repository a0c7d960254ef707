//! The one place that composes: read the IdvClient's inputs, decide, fetch a token when
//! needed, write the Secret and the status.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use tracing::{info, warn};

use crate::{
    api::{self, IdvClient, IdvClientStatus},
    authserver::{self, ServerPlan},
    backoff::Failures,
    caches::{CachedCredential, Caches, OwnWrites},
    credential::{self, Credential},
    error::Error,
    events::{EventPublisher, EventType},
    fetcher::{self, ClientKey, Fetched, Fetcher, Poll},
    metrics::Metrics,
    names,
    oauth::TokenParams,
    policy::{self, Decision, Facts, FetchState, ObservedToken, Step},
    resources::{self, TokenSecretRecord, TokenTimes},
    schedule::{self, BeforeExpiry},
    token_client::TokenClient,
    writeback::Writeback,
};

/// Tunables of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Never refresh sooner than this after a token was issued.
    pub min_refresh_interval: Duration,
    /// Status and Event writes at the same time while no token work is going on.
    pub writeback_parallelism: usize,
    /// Timeout of one token (or discovery) request.
    pub token_request_timeout: Duration,
}

pub struct Context {
    pub kube: kube::Client,
    pub tokens: Arc<TokenClient>,
    caches: Caches,
    pub metrics: Arc<Metrics>,
    pub writeback: Arc<Writeback>,
    /// Token requests, in the background, under per-host and global limits.
    pub fetcher: Arc<Fetcher>,
    pub settings: Settings,
    /// Parsed credentials by (namespace, Secret, key, kind, keyId), each with the Secret's
    /// resourceVersion it was parsed from: a new version replaces the old one in place.
    keys: Mutex<HashMap<u64, ParsedCredential>>,
    failures: Failures,
}

/// A parsed credential in `Context::keys`, with the namespace and the resourceVersion of the
/// Secret it was parsed from.
struct ParsedCredential {
    namespace: String,
    version: String,
    credential: Credential,
}

impl Context {
    pub fn new(
        kube: kube::Client,
        tokens: TokenClient,
        caches: Caches,
        max_concurrent_token_requests: usize,
        settings: Settings,
        metrics: Arc<Metrics>,
        events: EventPublisher,
    ) -> Self {
        let global = max_concurrent_token_requests.max(1);
        Self {
            kube: kube.clone(),
            tokens: Arc::new(tokens),
            caches,
            metrics,
            writeback: Arc::new(Writeback::new(
                kube.clone(),
                events,
                settings.writeback_parallelism,
            )),
            fetcher: Arc::new(Fetcher::new(global, fetcher::per_host_slots(global))),
            settings,
            keys: Mutex::new(HashMap::new()),
            failures: Failures::default(),
        }
    }

    /// Forget a deleted IdvClient: its backoff state, queued writes, parsed key (another client
    /// of the same key parses it again) and metric series.
    pub fn forget(&self, client: &IdvClient) {
        let (namespace, name) = (client.namespace().unwrap_or_default(), client.name_any());
        let key = ObjectRef::new(&name).within(&namespace);
        self.failures.clear(&key);
        self.fetcher.forget(&key);
        if let Some(key) = key_cache_key(client) {
            self.keys.lock().expect("lock").remove(&key);
        }
        self.writeback.forget(&namespace, &name);
        self.metrics.forget_client(&namespace, &name);
    }

    /// After a (re)list of the IdvClients of `scope` (a namespace, or all): forget every
    /// IdvClient of that scope that is not in `live`, also those whose Delete event was missed
    /// while the watch was down. The one place where per-IdvClient memory is pruned besides
    /// `forget`.
    pub fn prune(&self, scope: Option<&str>, live: &[Arc<IdvClient>]) {
        let in_scope = |namespace: &str| scope.is_none_or(|s| s == namespace);
        let alive: std::collections::HashSet<ClientKey> =
            live.iter().map(|c| ObjectRef::from_obj(&**c)).collect();
        let keep = |key: &ClientKey| {
            !in_scope(key.namespace.as_deref().unwrap_or_default()) || alive.contains(key)
        };
        let keep_named = |namespace: &str, name: &str| {
            !in_scope(namespace) || alive.contains(&ObjectRef::new(name).within(namespace))
        };
        self.failures.retain(keep);
        self.fetcher.retain(keep);
        self.writeback.retain(keep_named);
        self.metrics.retain_clients(keep_named);
        // Parsed keys are shared by the clients that name them: keep those still named.
        let named: std::collections::HashSet<u64> =
            live.iter().filter_map(|c| key_cache_key(c)).collect();
        self.keys
            .lock()
            .expect("lock")
            .retain(|key, parsed| named.contains(key) || !in_scope(&parsed.namespace));
    }

    /// Queue an Event on the IdvClient; failing to publish never fails a reconcile.
    fn event(&self, client: &IdvClient, type_: EventType, reason: &'static str, note: String) {
        self.writeback.event(client, type_, reason, note);
    }
}

/// What one attempt learned, kept for the failure path.
#[derive(Default)]
struct Seen {
    /// Fingerprint of the inputs: generation, force-refresh value, key Secret version.
    inputs: String,
    observed: Option<ObservedToken>,
}

enum Outcome {
    /// A valid token is in place; recheck at `next`.
    Ready {
        status: IdvClientStatus,
        next: Timestamp,
    },
    /// A retry is due later; nothing changed.
    HeldBack { until: Timestamp },
    /// A token request is running in the background; its end reconciles the client again.
    Fetching,
}

pub async fn reconcile(client: Arc<IdvClient>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = Timestamp::now();
    ctx.metrics.reconciled();
    // Decide on the newest status known: one still queued for writing, else the cached one.
    let latest = ctx.writeback.latest_status(&client);
    let client = if latest != client.status {
        let mut newer = (*client).clone();
        newer.status = latest;
        Arc::new(newer)
    } else {
        client
    };
    if client.spec.suspend {
        // Stalled: nothing happens until the spec changes (kstatus: Failed, not a wait
        // for ever on Ready=False).
        let status = resources::failure_status(
            &client,
            api::reasons::SUSPENDED,
            "spec.suspend is true: no tokens are fetched; the token Secret is left as it is".into(),
            false,
            now,
        );
        ctx.writeback.set_status(&client, status);
        return Ok(Action::await_change());
    }
    let mut seen = Seen::default();
    match attempt(&client, &ctx, now, &mut seen).await {
        Ok(Outcome::Fetching) => {
            // kstatus: Reconciling while a token for this generation is on its way.
            let key = ObjectRef::from_obj(&*client);
            let retry = ctx.failures.not_before(&key, &seen.inputs).is_some();
            if let Some(status) = resources::fetching_status(&client, retry, now) {
                ctx.writeback.set_status(&client, status);
            }
            // Only if the wake-up were lost: a request ends within its timeout.
            Ok(Action::requeue(
                ctx.settings.token_request_timeout * 2 + Duration::from_secs(30),
            ))
        }
        Ok(Outcome::Ready { status, next }) => {
            ctx.failures.clear(&ObjectRef::from_obj(&*client));
            if let Some(expires) = status
                .expires_at
                .as_deref()
                .and_then(|e| e.parse::<Timestamp>().ok())
            {
                ctx.metrics.token_expiry(
                    &client.namespace().unwrap_or_default(),
                    &client.name_any(),
                    expires.as_second(),
                );
            }
            remove_renamed_secret(&client, &ctx, &status).await?;
            ctx.writeback.set_status(&client, status);
            Ok(Action::requeue(until(now, next)))
        }
        Ok(Outcome::HeldBack { until: at }) => Ok(Action::requeue(until(now, at))),
        Err(error) => handle_failure(&client, &ctx, now, seen, error).await,
    }
}

/// Delay from `now` to `at`, at least a second (never a zero requeue).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::from_secs(at.duration_since(now).as_secs().max(1) as u64)
}

async fn handle_failure(
    client: &IdvClient,
    ctx: &Context,
    now: Timestamp,
    seen: Seen,
    error: Error,
) -> Result<Action, Error> {
    ctx.metrics.reconcile_error(error.reason());
    let valid_until = seen
        .observed
        .as_ref()
        .filter(|o| o.is_valid_at(now))
        .and_then(|o| o.expires_at);
    let holds_valid_token = valid_until.is_some();
    let retry_after = error.retry_after().map(Duration::from_secs);
    let jitter = rand::random::<f64>();
    let delay = ctx
        .failures
        .record(ObjectRef::from_obj(client), &seen.inputs, now, |count| {
            let backoff =
                schedule::backoff(error.class(), count, holds_valid_token, retry_after, jitter);
            policy::retry_delay(backoff, valid_until, now)
        });
    let retry_at = schedule::whole_seconds(now + SignedDuration::from_secs(delay.as_secs() as i64));
    warn!(
        namespace = client.namespace().unwrap_or_default(),
        name = client.name_any(),
        reason = error.reason(),
        transient = error.is_transient(),
        retry_in_seconds = delay.as_secs(),
        "token refresh failed: {error}"
    );
    let mut message = format!("{error}; next attempt at {retry_at}");
    if let Some(expires) = valid_until {
        message.push_str(&format!(
            "; the current token stays in the Secret until it expires at {expires}"
        ));
    } else if let Some(expired) = seen
        .observed
        .as_ref()
        .filter(|o| o.data_intact)
        .and_then(|o| o.expires_at)
    {
        message.push_str(&format!("; the token in the Secret expired at {expired}"));
    }
    ctx.event(client, EventType::Warning, error.reason(), message.clone());
    if policy::failure_flips_ready(error.is_transient(), holds_valid_token) {
        let status =
            resources::failure_status(client, error.reason(), message, error.is_transient(), now);
        ctx.writeback.set_status(client, status);
    } else if let Some(status) = resources::retrying_status(client, error.reason(), message, now) {
        ctx.writeback.set_status(client, status);
    }
    Ok(Action::requeue(delay))
}

async fn attempt(
    client: &IdvClient,
    ctx: &Arc<Context>,
    now: Timestamp,
    seen: &mut Seen,
) -> Result<Outcome, Error> {
    // Names go into API URLs: none is used before it is known to be a name.
    names::validate(client)?;
    let namespace = client
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("the IdvClient has no namespace".into()))?;
    let force = client
        .annotations()
        .get(api::FORCE_REFRESH_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    seen.inputs = format!(
        "{}/{force}/",
        client.metadata.generation.unwrap_or_default()
    );

    // Validate what needs no I/O first.
    if client.spec.client_id.trim().is_empty() {
        return Err(Error::InvalidSpec("clientId must not be empty".into()));
    }
    let plan = authserver::plan(&client.spec.auth_server)?;
    let before_expiry: Option<BeforeExpiry> = client
        .spec
        .refresh
        .before_expiry
        .as_deref()
        .map(schedule::parse_before_expiry)
        .transpose()
        .map_err(Error::InvalidSpec)?;

    // The token Secret, if any, must be ours.
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secret_name = client.token_secret_name();
    let in_flight = ctx.caches.own_writes.in_flight(&namespace, &secret_name);
    let existing = match ctx.caches.token_secret(&namespace, &secret_name) {
        // Unless the watch has yet to show a write of ours: then the record is stale.
        Some(cached) if !in_flight => Some(cached),
        // Not among the operator's Secrets. Someone else's of that name is found by the dry
        // run before a token is requested.
        None if !in_flight && ctx.caches.token_secrets_listed(&namespace) => None,
        // Ours just written, or the watch has not listed yet: ask.
        _ => secrets
            .get_opt(&secret_name)
            .await?
            .map(|secret| TokenSecretRecord::of(&secret)),
    };
    if let Some(record) = &existing
        && !record.is_owned_by(client)
    {
        return Err(Error::SecretConflict { name: secret_name });
    }
    seen.observed = existing.as_ref().map(|record| record.observed.clone());

    let (key, key_version) = load_credential(client, ctx, &namespace).await?;
    seen.inputs.push_str(&key_version);
    let inputs_hash = resources::inputs_hash(client, &key);

    let decision = policy::decide(&inputs_hash, seen.observed.as_ref(), now);
    let client_key = ObjectRef::from_obj(client);
    // The request's outcome is taken only when a token is wanted.
    // Held until this reconcile has stored the token (status writes narrow meanwhile).
    let mut _hold: fetcher::Hold = None;
    let (fetch, outcome) = match decision {
        Decision::Wait { .. } => {
            ctx.fetcher.discard_outcome(&client_key);
            (FetchState::Idle, None)
        }
        Decision::Refresh(_) => match ctx.fetcher.poll(&client_key, &inputs_hash) {
            Poll::Idle => (FetchState::Idle, None),
            Poll::Running => (FetchState::Running, None),
            Poll::Done(Ok(fetched), held) if fetched.is_worth_storing_at(now) => {
                _hold = held;
                (FetchState::Answered, Some(Ok(fetched)))
            }
            Poll::Done(Ok(_), _) => (FetchState::Stale, None),
            Poll::Done(Err(error), _) => (FetchState::Failed, Some(Err(error))),
        },
    };
    let step = policy::next_step(&Facts {
        decision,
        fetch,
        not_before: ctx.failures.not_before(&client_key, &seen.inputs),
        secret_exists: existing.is_some(),
        metadata_matches: existing.as_ref().is_none_or(|r| r.metadata_matches(client)),
        now,
    });
    match step {
        Step::Keep {
            until,
            repair_metadata,
        } => {
            let secret = existing.expect("a kept token implies an observed Secret");
            let observed = seen.observed.clone().expect("observed with the Secret");
            if repair_metadata {
                // The cache holds no token data: read it.
                let current = secrets
                    .get_opt(&secret_name)
                    .await?
                    .filter(|s| resources::is_owned_by(s, client));
                if let Some(current) = current
                    && let Some(data) = current.data.clone()
                {
                    // Keys the spec no longer asks for: set at creation, so not removed by
                    // the apply below (creation is not an apply).
                    let (labels, annotations) =
                        TokenSecretRecord::of(&current).removed_metadata(client);
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
                            .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(|e| Error::from_secret_write(&secret_name, e))?;
                    }
                    let mut desired = resources::desired_secret(
                        client,
                        data.clone(),
                        &resources::data_hash(&data),
                        &inputs_hash,
                        &times_of(&observed),
                    );
                    desired.metadata.uid = current.metadata.uid;
                    apply_secret(&secrets, &desired, &ctx.caches.own_writes).await?;
                }
            }
            let note = clamp_note(client, &observed, before_expiry, ctx);
            Ok(Outcome::Ready {
                status: resources::ready_status(
                    client,
                    &observed,
                    secret.uid.as_deref(),
                    key.key_id(),
                    note,
                    now,
                ),
                next: until,
            })
        }
        Step::AwaitFetch => Ok(Outcome::Fetching),
        Step::HoldBack { until } => Ok(Outcome::HeldBack { until }),
        Step::StartFetch { dry_run } => {
            if dry_run {
                check_creatable(&secrets, client, &inputs_hash, now).await?;
            }
            start_fetch(ctx, client, client_key, inputs_hash, &plan, key);
            Ok(Outcome::Fetching)
        }
        Step::ReportFailure => match outcome {
            Some(Err(error)) => Err(error),
            _ => unreachable!("a failed request has its error"),
        },
        Step::Store => {
            let (Some(Ok(fetched)), Decision::Refresh(reason)) = (outcome, decision) else {
                unreachable!("an answered request has its token, and a token was wanted")
            };
            let issued_at = schedule::whole_seconds(fetched.requested_at);
            let answer = &fetched.answer;
            let expires_at = issued_at + SignedDuration::from_secs(answer.expires_in as i64);
            let refresh = schedule::refresh_at(
                issued_at,
                expires_at,
                before_expiry,
                ctx.settings.min_refresh_interval,
                rand::random::<f64>(),
            );
            let times = TokenTimes {
                issued_at,
                expires_at,
                refresh_at: refresh.refresh_at,
            };
            let data = resources::token_data(answer, expires_at, &client.spec.scopes);
            let mut desired =
                resources::desired_secret(client, data.data, &data.hash, &inputs_hash, &times);
            let own_writes = &ctx.caches.own_writes;
            let written = match &existing {
                Some(record) => {
                    // Only the Secret the decision was made on (not a new one of the same name).
                    desired.metadata.uid = record.uid.clone();
                    apply_secret(&secrets, &desired, own_writes).await
                }
                None => create_or_reclaim_secret(&secrets, &desired, client, own_writes).await,
            };
            let secret_uid = match written {
                Ok(uid) => uid,
                Err(error) => {
                    // The IdP gave a token; store it on the next attempt instead of asking again.
                    ctx.fetcher.keep(client_key, inputs_hash, fetched);
                    return Err(error);
                }
            };
            info!(
                namespace,
                name = client.name_any(),
                secret = secret_name,
                key_id = key.key_id().unwrap_or("(client secret)"),
                expires_at = %expires_at,
                refresh_at = %refresh.refresh_at,
                why = reason.describe(),
                "token issued"
            );
            let recovered = ctx.failures.failed_last(&client_key);
            if policy::token_is_news(reason, recovered) {
                ctx.event(
                    client,
                    EventType::Normal,
                    api::reasons::TOKEN_ISSUED,
                    format!(
                        "token issued ({}) with key {}; expires at {expires_at}, refresh at {}",
                        reason.describe(),
                        key.key_id().unwrap_or("(client secret)"),
                        refresh.refresh_at
                    ),
                );
            }
            let observed = resources::observe(&desired);
            let note = resources::plan_note(&refresh, client.spec.refresh.before_expiry.as_deref());
            Ok(Outcome::Ready {
                status: resources::ready_status(
                    client,
                    &observed,
                    secret_uid.as_deref(),
                    key.key_id(),
                    note,
                    now,
                ),
                next: refresh.refresh_at,
            })
        }
    }
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
    let probe = resources::desired_secret(client, Default::default(), "", inputs_hash, &times);
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
                Some(found) if resources::is_owned_by(&found, client) => Ok(()),
                None => Ok(()),
                Some(_) => Err(Error::SecretConflict { name }),
            }
        }
        Err(error) => Err(Error::from_secret_write(&name, error)),
    }
}

fn times_of(observed: &ObservedToken) -> TokenTimes {
    TokenTimes {
        issued_at: observed
            .issued_at
            .or(observed.expires_at)
            .unwrap_or_default(),
        expires_at: observed.expires_at.unwrap_or_default(),
        refresh_at: observed.refresh_at.unwrap_or_default(),
    }
}

/// Recompute whether `beforeExpiry` was overruled, from what the Secret records, so that a
/// restarted operator shows the same status.
fn clamp_note(
    client: &IdvClient,
    observed: &ObservedToken,
    before: Option<BeforeExpiry>,
    ctx: &Context,
) -> Option<String> {
    let (issued, expires) = (observed.issued_at?, observed.expires_at?);
    let plan = schedule::refresh_at(
        issued,
        expires,
        before,
        ctx.settings.min_refresh_interval,
        0.0,
    );
    resources::plan_note(&plan, client.spec.refresh.before_expiry.as_deref())
}

/// Where the parsed credential of this IdvClient is kept in `Context::keys`: by namespace,
/// Secret, key, kind and keyId.
fn key_cache_key(client: &IdvClient) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    // The kind belongs in the key: the same bytes are a client secret to one client and an
    // unparseable key to another.
    let (reference, kind, key_id) = match (&client.spec.private_key, &client.spec.client_secret) {
        (Some(private_key), _) => (
            &private_key.secret_ref,
            "private-key",
            private_key.key_id.as_ref(),
        ),
        (None, Some(client_secret)) => (&client_secret.secret_ref, "client-secret", None),
        (None, None) => return None,
    };
    let namespace = client.metadata.namespace.as_deref().unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (namespace, &reference.name, &reference.key, kind, key_id).hash(&mut hasher);
    Some(hasher.finish())
}

/// Read the credential (private key or client secret); reuse a parsed key while its Secret is
/// unchanged.
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
    let cache_key = key_cache_key(client).expect("a credential reference");
    // A parsed key is reused while its Secret's resourceVersion stays the same.
    let cached = |version: &str| {
        ctx.keys
            .lock()
            .expect("lock")
            .get(&cache_key)
            .filter(|parsed| parsed.version == version)
            .map(|parsed| parsed.credential.clone())
    };
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
    ctx.keys.lock().expect("lock").insert(
        cache_key,
        ParsedCredential {
            namespace: namespace.to_string(),
            version: version.clone(),
            credential: key.clone(),
        },
    );
    Ok((key, version))
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
                Some(found) if resources::is_owned_by(&found, client) => {
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
async fn remove_renamed_secret(
    client: &IdvClient,
    ctx: &Context,
    status: &IdvClientStatus,
) -> Result<(), Error> {
    let Some(old) = client
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
    else {
        return Ok(());
    };
    // The status is the operator's record, but not only the operator can write it: a name
    // that is no Secret name never reaches a URL.
    if Some(old) == status.secret_name.as_deref() || !crate::names::is_dns1123_subdomain(old) {
        return Ok(());
    }
    let namespace = client.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    if let Some(secret) = secrets.get_opt(old).await?
        && resources::is_owned_by(&secret, client)
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

/// Called when `reconcile` itself returns an error (only API failures removing a renamed Secret).
pub fn error_policy(client: Arc<IdvClient>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(
        namespace = client.namespace().unwrap_or_default(),
        name = client.name_any(),
        reason = error.reason(),
        "reconcile failed: {error}"
    );
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PrivateKey, SecretKeyRef};

    fn client(name: &str, secret: &str, key_id: Option<&str>) -> IdvClient {
        let mut c = api::test_client(name);
        c.spec.private_key = Some(PrivateKey {
            secret_ref: SecretKeyRef {
                name: secret.into(),
                key: "jwk.json".into(),
            },
            key_id: key_id.map(str::to_string),
        });
        c
    }

    #[test]
    fn the_key_cache_is_keyed_by_what_is_read_not_by_who_reads_it() {
        let key = |c: &IdvClient| key_cache_key(c).unwrap();
        assert_eq!(
            key(&client("a", "jwk", None)),
            key(&client("b", "jwk", None))
        );
        assert_ne!(
            key(&client("a", "jwk", None)),
            key(&client("a", "jwk", Some("k1")))
        );
        assert_ne!(
            key(&client("a", "jwk", None)),
            key(&client("a", "other", None))
        );
        let mut elsewhere = client("a", "jwk", None);
        elsewhere.metadata.namespace = Some("ns2".into());
        assert_ne!(key(&client("a", "jwk", None)), key(&elsewhere));
    }
}
