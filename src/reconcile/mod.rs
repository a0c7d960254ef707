//! The one place that composes, for one IdvClient: dereference (what is there: I/O) ->
//! decide (`policy::decide`: pure) -> apply (fetch, write: I/O) -> status. The shared
//! `Context` and its per-IdvClient memory live here too.

mod apply;
mod dereference;

use std::{collections::HashSet, sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{controller::Action, reflector::Store, watcher},
};
use tracing::warn;

use self::{apply::Outcome, dereference::Known};
use crate::{
    api::IdvClient,
    backoff::Failures,
    caches::Caches,
    error::Error,
    events::{EventPublisher, EventType},
    fetcher::{self, Fetcher},
    memory::{ClientKey, ClientMemory},
    metrics::Metrics,
    policy::{self, FailureFacts},
    status,
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

/// What every reconcile shares: one home per concern.
pub struct Context {
    /// Calls to the apiserver (each with a deadline).
    kube: kube::Client,
    /// Calls to the IdPs: discovery and token requests.
    tokens: Arc<TokenClient>,
    /// Token requests, in the background, under per-host and global limits.
    pub(crate) fetcher: Arc<Fetcher>,
    /// What the watches saw, the writes they have yet to show, the parsed credentials.
    caches: Caches,
    /// Failed attempts and timed-out reconciles, per IdvClient.
    failures: Failures,
    /// Status and Event writes, behind the token work.
    pub(crate) writeback: Arc<Writeback>,
    pub(crate) metrics: Arc<Metrics>,
    settings: Settings,
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
            fetcher: Arc::new(Fetcher::new(global, fetcher::per_host_slots(global))),
            caches,
            failures: Failures::default(),
            writeback: Arc::new(Writeback::new(kube, events, settings.writeback_parallelism)),
            metrics,
            settings,
        }
    }

    /// Every memory kept per IdvClient: forgotten together, pruned together.
    fn memories(&self) -> [&dyn ClientMemory; 4] {
        [
            &self.failures,
            &*self.fetcher,
            &*self.writeback,
            &*self.metrics,
        ]
    }

    /// Forget a deleted IdvClient: its failures, token request, queued writes, metric series
    /// and parsed key (another client of the same key parses it again).
    pub fn forget(&self, client: &IdvClient) {
        let key = ClientKey::of(client);
        for memory in self.memories() {
            memory.forget(&key);
        }
        self.caches.parsed_keys.forget(client);
    }

    /// After a (re)list of the IdvClients of `scope` (a namespace, or all): forget every
    /// IdvClient of that scope that is not in `live`, also those whose Delete event was missed
    /// while the watch was down.
    pub fn prune(&self, scope: Option<&str>, live: &[Arc<IdvClient>]) {
        let alive: HashSet<ClientKey> = live.iter().map(|c| ClientKey::of(c)).collect();
        let keep =
            |key: &ClientKey| scope.is_some_and(|s| s != key.namespace()) || alive.contains(key);
        for memory in self.memories() {
            memory.retain(&keep);
        }
        // Parsed keys are shared by the clients that name them: kept while one does.
        self.caches.parsed_keys.retain(scope, live);
    }

    /// What the IdvClient watch of `scope` saw (`clients` is its store), for the memory kept
    /// per IdvClient.
    pub fn follow_clients(
        &self,
        scope: Option<&str>,
        clients: &Store<IdvClient>,
        event: &watcher::Event<IdvClient>,
    ) {
        match event {
            watcher::Event::Apply(client) => self.writeback.observed(client),
            watcher::Event::Delete(client) => self.forget(client),
            // A (re)list is complete: whatever was deleted while the watch was down sent no
            // Delete event; forget it now.
            watcher::Event::InitDone => self.prune(scope, &clients.state()),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// A reconcile ended: how many in a row ran out of time (0: this one finished in time).
    pub fn reconcile_ended(&self, client: &IdvClient, timed_out: bool) -> u32 {
        let key = ClientKey::of(client);
        if timed_out {
            self.failures.timed_out(&key)
        } else {
            self.failures.finished_in_time(&key);
            0
        }
    }
}

/// How long a reconcile waits for the Secret watches' first list before it asks the apiserver.
const SECRET_WATCHES_LISTED: Duration = Duration::from_secs(5);

/// One IdvClient: dereference (what is there) -> decide (pure) -> apply (fetch, write) ->
/// status.
pub async fn reconcile(client: Arc<IdvClient>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The IdvClient watch can list before the Secret watches: a reconcile then would GET each
    // key and token Secret (a restart cost 0.8 requests per client instead of 0.03). They list
    // within a second or so; wait for them, bounded (after that, asking is the fallback).
    let namespace = client.namespace().unwrap_or_default();
    let _ =
        tokio::time::timeout(SECRET_WATCHES_LISTED, ctx.caches.secrets_listed(&namespace)).await;
    let now = Timestamp::now();
    ctx.metrics.reconciled();
    // Decide on the newest status known: one still queued for writing, else the cached one.
    let client = ctx.writeback.with_latest_status(client);
    if client.spec.suspend {
        ctx.writeback
            .set_status(&client, status::suspended(&client, now));
        return Ok(Action::await_change());
    }
    let key = ClientKey::of(&client);
    // Dereference (I/O): what is there.
    let observed = match dereference::observe(&client, &ctx, &key).await {
        Ok(observed) => observed,
        Err(error) => return Ok(failed(&client, &ctx, error, &Known::of(&client), now)),
    };
    let known = observed.known(&client);
    // Decide (pure): a plan from what is there, the spec, the clock and a jitter.
    let facts = observed.facts(
        &client,
        ctx.settings.min_refresh_interval,
        now,
        rand::random(),
    );
    let plan = policy::decide(&facts);
    // Apply (I/O): fetch, write; then the status.
    match apply::apply(&client, &ctx, &key, observed, plan, now).await {
        Ok(Outcome::Ready(ready)) => {
            ctx.failures.clear(&key);
            ctx.metrics
                .token_expiry(&key, ready.times.expires_at.as_second());
            apply::remove_renamed_secret(&client, &ctx).await?;
            let status = status::ready_status(
                &client,
                &ready.times,
                ready.secret_uid.as_deref(),
                ready.key_id.as_deref(),
                ready.clamped,
                now,
            );
            ctx.writeback.set_status(&client, status);
            Ok(Action::requeue(until(now, ready.times.refresh_at)))
        }
        Ok(Outcome::Fetching { retry }) => {
            // kstatus: Reconciling while a token for this generation is on its way.
            // Held a moment unless the client is new: the token usually comes first, and its
            // status replaces this one.
            if let Some(status) = status::fetching_status(&client, retry, now) {
                ctx.writeback
                    .set_progress_status(&client, status, std::time::Instant::now());
            }
            // Only if the wake-up were lost: a request ends within its timeout.
            Ok(Action::requeue(
                ctx.settings.token_request_timeout * 2 + Duration::from_secs(30),
            ))
        }
        Ok(Outcome::HeldBack { until: at }) => Ok(Action::requeue(until(now, at))),
        Err(error) => Ok(failed(&client, &ctx, error, &known, now)),
    }
}

/// Delay from `now` to `at`, at least a second (never a zero requeue).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::from_secs(at.duration_since(now).as_secs().max(1) as u64)
}

/// A failed attempt: remember it, say so (log, Event, and the status unless a valid token
/// makes the failure moot for now), and come back after the backoff.
fn failed(
    client: &IdvClient,
    ctx: &Context,
    error: Error,
    known: &Known,
    now: Timestamp,
) -> Action {
    ctx.metrics.reconcile_error(error.reason());
    let key = ClientKey::of(client);
    let after = policy::after_failure(&FailureFacts {
        class: error.class(),
        transient: error.is_transient(),
        retry_after: error.retry_after().map(Duration::from_secs),
        token: known.token.as_ref(),
        failures_before: ctx.failures.in_a_row(&key, &known.inputs),
        now,
        jitter: rand::random(),
    });
    ctx.failures
        .record(key, &known.inputs, after.count, after.not_before);
    warn!(
        namespace = client.namespace().unwrap_or_default(),
        name = client.name_any(),
        reason = error.reason(),
        transient = error.is_transient(),
        retry_in_seconds = after.delay.as_secs(),
        "token refresh failed: {error}"
    );
    let message = status::failure_message(&error, &after);
    ctx.writeback
        .event(client, EventType::Warning, error.reason(), message.clone());
    if after.flips_ready {
        let status =
            status::failure_status(client, error.reason(), message, error.is_transient(), now);
        ctx.writeback.set_status(client, status);
    } else if let Some(status) = status::retrying_status(client, error.reason(), message, now) {
        ctx.writeback.set_status(client, status);
    }
    Action::requeue(after.delay)
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
