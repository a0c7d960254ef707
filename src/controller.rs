//! Wiring of the kube-runtime `Controller`s: what is watched, how triggers are filtered,
//! concurrency and shutdown. One controller per watched namespace (or one for all), sharing
//! one context: HTTP client, key cache, backoff state, metrics.

use std::{future::Future, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt, controller, predicates,
        reflector::{self, ObjectRef, Store},
        utils::{PredicateConfig, ResetTimerBackoff},
        watcher::{self, Config as WatcherConfig},
    },
};
use tracing::{debug, info, warn};

use crate::{
    api::{self, IdvClient},
    caches::{Caches, CredentialSecrets, OwnWrites, ScopeCaches, TokenSecrets},
    error::Error,
    events::EventType,
    liveness::Progress,
    reconcile::{self, Context},
    schedule,
};

/// Where and how hard to work.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only these namespaces; all namespaces when empty.
    pub namespaces: Vec<String>,
    /// IdvClients reconciled at the same time (per watched namespace).
    pub concurrency: u16,
    /// Longest one reconcile may run (see `reconcile_deadline`).
    pub reconcile_deadline: Duration,
    /// Reports the loop's progress to `/healthz`.
    pub progress: Arc<Progress>,
}

/// Connecting to the apiserver: a TCP and TLS handshake, normally milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest silence while waiting for an apiserver answer, and longest a request body may take
/// to send. A GET, create or apply answers in milliseconds; the apiserver gives up on its own
/// after 60 s (`--request-timeout`), but a Secret name that turned the GET into a watch, or a
/// stalled connection, would otherwise wait forever.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The watches' server-side timeout (kube-runtime's default, 290 s) plus a margin: an idle watch
/// is ended by the apiserver (or kube-runtime's idle timeout at 295 s), never by the read
/// timeout, which only catches a dead connection.
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(290 + 40);

/// What the apiserver calls of one reconcile may take together: a handful of calls in
/// sequence, each normally milliseconds (`API_CALL_TIMEOUT` bounds any single one).
const API_CALLS_BUDGET: Duration = Duration::from_secs(15);

/// The longest one reconcile may hold a worker: the discovery and the token request (each
/// bounded by the token request timeout) plus the apiserver calls. Past it, the reconcile is
/// dropped and retried with backoff; with the defaults (10 s) that is 35 s.
pub fn reconcile_deadline(token_request_timeout: Duration) -> Duration {
    token_request_timeout.saturating_mul(2) + API_CALLS_BUDGET
}

/// After a shutdown request, how long in-flight reconciles may finish before they are dropped.
/// With the 5 s for the status writer and 5 s for the final flush, shutdown stays under the
/// kubelet's default 30 s grace period.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(15);

/// The two Kubernetes clients: `calls` for everything a reconcile, the status and Event writer
/// and leader election do (every call has a deadline); `watches` for the long-running watches.
pub struct KubeClients {
    pub calls: kube::Client,
    pub watches: kube::Client,
}

pub fn kube_clients(config: kube::Config) -> Result<KubeClients, kube::Error> {
    Ok(KubeClients {
        calls: client_with_timeouts(&config, API_CALL_TIMEOUT)?,
        watches: client_with_timeouts(&config, WATCH_READ_TIMEOUT)?,
    })
}

/// kube's defaults have no read timeout at all: one silent answer holds its caller forever.
fn client_with_timeouts(
    config: &kube::Config,
    read: Duration,
) -> Result<kube::Client, kube::Error> {
    let mut config = config.clone();
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(read);
    config.write_timeout = Some(API_CALL_TIMEOUT);
    // Count the read timeout from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    kube::Client::try_from(config)
}

/// One reconcile under its deadline, counted in flight for `/healthz`.
async fn bounded_reconcile(
    client: Arc<IdvClient>,
    ctx: Arc<Context>,
    deadline: Duration,
    progress: Arc<Progress>,
) -> Result<controller::Action, Error> {
    let _in_flight = progress.begin(std::time::Instant::now());
    let result = within(deadline, reconcile::reconcile(client.clone(), ctx.clone())).await;
    if !matches!(result, Err(Error::ReconcileTimeout { .. })) {
        ctx.reconcile_ended(&client, false);
    }
    result
}

/// `work`, or `ReconcileTimeout` once `deadline` has passed (the work is dropped).
async fn within<T>(
    deadline: Duration,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or(Err(Error::ReconcileTimeout {
            seconds: deadline.as_secs(),
        }))
}

/// A timed-out reconcile is transient: retried with backoff, logged and reported as an Event
/// (what is known of it is its name and the deadline: nothing secret). Other errors go to
/// `reconcile::error_policy`.
fn error_policy(client: Arc<IdvClient>, error: &Error, ctx: Arc<Context>) -> controller::Action {
    if !matches!(error, Error::ReconcileTimeout { .. }) {
        return reconcile::error_policy(client, error, ctx);
    }
    let failures = ctx.reconcile_ended(&client, true);
    let delay = schedule::backoff(error.class(), failures, false, None, rand::random::<f64>());
    ctx.metrics.reconcile_error(error.reason());
    warn!(
        namespace = client.namespace().unwrap_or_default(),
        name = client.name_any(),
        reason = error.reason(),
        retry_in_seconds = delay.as_secs(),
        "{error}"
    );
    ctx.writeback.event(
        &client,
        EventType::Warning,
        error.reason(),
        format!("{error}; next attempt in {} s", delay.as_secs()),
    );
    controller::Action::requeue(delay)
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Trigger on spec changes and on a new force-refresh value; not on status writes (ours),
/// which would otherwise re-run every reconcile that wrote status.
fn spec_or_force_refresh(client: &IdvClient) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let force = client.annotations().get(api::FORCE_REFRESH_ANNOTATION);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (predicates::generation(client), force).hash(&mut hasher);
    Some(hasher.finish())
}

/// IdvClients that read their credential from this Secret.
fn clients_using(secret: &Secret, clients: &Store<IdvClient>) -> Vec<ObjectRef<IdvClient>> {
    let (name, namespace) = (secret.name_any(), secret.namespace());
    clients
        .state()
        .iter()
        .filter(|c| c.namespace() == namespace)
        .filter(|c| {
            let key = c.spec.private_key.as_ref().map(|k| &k.secret_ref.name);
            let secret = c.spec.client_secret.as_ref().map(|s| &s.secret_ref.name);
            key == Some(&name) || secret == Some(&name)
        })
        .map(|c| ObjectRef::from_obj(&**c))
        .collect()
}

/// Watch reconnect backoff: 0.5 s doubling to 10 s (kube's default goes to 30 s), reset
/// after a minute without errors, so that an apiserver restart costs seconds, not half a minute.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    backoff(Duration::from_millis(500), Duration::from_secs(10))
}

fn backoff(min: Duration, max: Duration) -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(builder.into(), Duration::from_secs(60))
}

/// The Secret watches of one scope (a namespace, or all), built before the shared context.
struct SecretWatches {
    namespace: Option<String>,
    owned_secrets: futures::stream::BoxStream<'static, Result<Secret, watcher::Error>>,
    other_secrets: futures::stream::BoxStream<'static, Result<Secret, watcher::Error>>,
}

/// The Secret watches of one scope, and the caches they fill.
fn secret_watches(
    kube: &kube::Client,
    namespace: Option<String>,
    own_writes: &Arc<OwnWrites>,
    readiness: &Readiness,
) -> (ScopeCaches, SecretWatches) {
    let watch = |labels: String| {
        let api = api::<Secret>(kube, namespace.as_deref());
        watcher::watcher(api, WatcherConfig::default().labels(&labels)).backoff(watch_backoff())
    };
    // Only the operator's own Secrets are cached, found by label: never every Secret.
    let token_secrets = Arc::new(TokenSecrets::default());
    let owned_secrets = token_secrets
        .clone()
        .follow(
            watch(format!(
                "{}={}",
                api::MANAGED_BY_LABEL,
                api::MANAGED_BY_VALUE
            )),
            own_writes.clone(),
        )
        .inspect(readiness.watch())
        .touched_objects()
        .boxed();
    // Secrets labelled as credentials, to notice a changed key at once and to read it without
    // asking the API (also after a restart). Unlabelled Secrets are neither watched nor read.
    let credentials = Arc::new(CredentialSecrets::default());
    let other_secrets = credentials
        .clone()
        .follow(watch(format!("{}=true", api::CREDENTIAL_LABEL)))
        .touched_objects()
        .boxed();
    let caches = ScopeCaches {
        namespace: namespace.clone(),
        token_secrets,
        credentials,
    };
    let watches = SecretWatches {
        namespace,
        owned_secrets,
        other_secrets,
    };
    (caches, watches)
}

/// IdvClients as cached: no managedFields (nothing here reads them, and at 10,000 objects they
/// would be most of the operator's memory), and no copy of the spec in kubectl's
/// `last-applied-configuration`.
fn slim_client(client: &mut IdvClient) {
    client.meta_mut().managed_fields = None;
    if let Some(annotations) = client.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Calls `ready` once every registered watch has listed its objects once. kube's
/// `Store::wait_until_ready` wakes only one waiter, and the controller is one already.
#[derive(Clone)]
struct Readiness {
    remaining: Arc<std::sync::atomic::AtomicUsize>,
    ready: Arc<dyn Fn() + Send + Sync>,
}

impl Readiness {
    fn new(watches: usize, ready: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            remaining: Arc::new(watches.into()),
            ready: Arc::new(ready),
        }
    }

    /// A callback for one watch's event stream.
    fn watch<K>(&self) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + Send + 'static {
        let (remaining, ready, mut seen) = (self.remaining.clone(), self.ready.clone(), false);
        move |event| {
            if !seen && matches!(event, Ok(watcher::Event::InitDone)) {
                seen = true;
                if remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    ready();
                }
            }
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// The controller of one scope: its IdvClient watch (which also tells `Context` what to
/// forget), the Secret watches, the finished token requests, and the reconciles.
fn scope_controller<Shutdown: Future<Output = ()> + Send + Sync + 'static>(
    kube: &kube::Client,
    ctx: &Arc<Context>,
    scope: SecretWatches,
    options: &RunOptions,
    readiness: &Readiness,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + use<Shutdown> {
    let namespace = scope.namespace.as_deref();
    let (client_store, client_writer) = reflector::store();
    let (memory, listed, scope_name) = (ctx.clone(), client_store.clone(), scope.namespace.clone());
    let clients = watcher::watcher(api::<IdvClient>(kube, namespace), WatcherConfig::default())
        .backoff(watch_backoff())
        .modify(slim_client)
        .reflect(client_writer)
        .inspect(readiness.watch())
        .inspect(move |event| {
            if let Ok(event) = event {
                memory.follow_clients(scope_name.as_deref(), &listed, event);
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_force_refresh, PredicateConfig::default());
    let controller = Controller::for_stream(clients, client_store);
    let lookup = controller.store();
    // A finished token request reconciles its client again (to store the token).
    let fetched = ctx
        .fetcher
        .subscribe(scope.namespace.clone())
        .map(|key| key.object_ref());
    info!(
        namespace = namespace.unwrap_or("(all)"),
        concurrency = options.concurrency,
        "controller starting"
    );
    let (progress, deadline) = (options.progress.clone(), options.reconcile_deadline);
    controller
        .owns_stream(scope.owned_secrets)
        .watches_stream(scope.other_secrets, move |secret| {
            clients_using(&secret, &lookup)
        })
        .reconcile_on(fetched)
        .with_config(controller::Config::default().concurrency(options.concurrency))
        // The controller pauses all triggers after an error of any of its watches; keep that
        // pause short (the watches back off on their own), or errors of four watches add up.
        .trigger_backoff(backoff(Duration::from_millis(100), Duration::from_secs(1)))
        .graceful_shutdown_on(shutdown)
        .run(
            move |client, ctx| bounded_reconcile(client, ctx, deadline, progress.clone()),
            error_policy,
            ctx.clone(),
        )
        .for_each(
            |result: Result<_, controller::Error<Error, watcher::Error>>| {
                match result {
                    Ok((object, _action)) => debug!(object = %object, "reconciled"),
                    Err(error) => debug!("controller: {error}"),
                }
                futures::future::ready(())
            },
        )
}

/// Run until `shutdown` resolves; in-flight reconciles finish first. `ready` is called once
/// every watch has listed its objects.
pub async fn run(
    kube: kube::Client,
    options: RunOptions,
    make_context: impl FnOnce(Caches) -> Context,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ready: impl Fn() + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    // Per scope: the IdvClient watch and the token Secret watch must have listed.
    let readiness = Readiness::new(2 * scopes.len(), ready);
    let own_writes = Arc::new(OwnWrites::default());
    let (scope_caches, watches): (Vec<ScopeCaches>, Vec<SecretWatches>) = scopes
        .into_iter()
        .map(|namespace| secret_watches(&kube, namespace, &own_writes, &readiness))
        .unzip();
    let ctx = Arc::new(make_context(Caches {
        scopes: scope_caches,
        own_writes,
        parsed_keys: Default::default(),
        writable: Default::default(),
    }));

    // One shutdown signal, shared by every controller.
    let shutdown = shutdown.shared();
    // Spawned, not polled by the caller's thread: a reconcile then runs on the runtime's
    // workers beside the HTTP connections it waits on, instead of waking them across threads.
    let controllers: Vec<_> = watches
        .into_iter()
        .map(|scope| {
            tokio::spawn(scope_controller(
                &kube,
                &ctx,
                scope,
                &options,
                &readiness,
                shutdown.clone(),
            ))
        })
        .collect();
    // Dropping this future (a lost Lease) stops them at once, as when they were polled here.
    let stop_controllers = AbortOnDrop(controllers.iter().map(|c| c.abort_handle()).collect());
    let writeback = ctx.clone();
    let writer = tokio::spawn(async move { writeback.writeback.run().await });
    options.progress.loop_started(options.reconcile_deadline);
    // In-flight reconciles may finish after a shutdown request, but not for ever.
    let drain_ended = async {
        shutdown.clone().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    tokio::select! {
        ended = futures::future::try_join_all(controllers) => {
            // A panic in a controller ends the process, as it did when polled here.
            if let Err(ended) = ended
                && ended.is_panic()
            {
                std::panic::resume_unwind(ended.into_panic());
            }
        }
        _ = drain_ended => {
            warn!(
                "reconciles still running {} s after the shutdown request; stopping them",
                SHUTDOWN_DRAIN.as_secs()
            );
            drop(stop_controllers);
        }
    }
    options.progress.loop_stopped();
    // Let the writer finish the batch it is writing (not abort it half-way), then flush.
    ctx.writeback.stop();
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        tracing::warn!("status writer still busy after 5 s");
    }
    // Statuses of the last reconciles, so that a restart finds them written.
    ctx.writeback.flush(Duration::from_secs(5)).await;
    info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconcile_deadline_covers_discovery_token_request_and_api_calls() {
        assert_eq!(
            reconcile_deadline(Duration::from_secs(10)),
            Duration::from_secs(35)
        );
        // A shutdown drains for less than the kubelet's default grace period (30 s), with the
        // status writer's 5 s and the final flush's 5 s.
        assert!(SHUTDOWN_DRAIN + Duration::from_secs(10) < Duration::from_secs(30));
        assert!(WATCH_READ_TIMEOUT > Duration::from_secs(295));
    }

    #[tokio::test]
    async fn work_past_its_deadline_is_a_transient_timeout() {
        let stuck = within(
            Duration::from_millis(20),
            futures::future::pending::<Result<(), Error>>(),
        )
        .await
        .unwrap_err();
        assert!(matches!(stuck, Error::ReconcileTimeout { .. }), "{stuck}");
        assert!(stuck.is_transient());
        assert!(
            within(Duration::from_secs(5), async { Ok::<_, Error>(7) })
                .await
                .is_ok_and(|v| v == 7)
        );
    }

    /// An apiserver that accepts connections but never answers (what a `?watch=true` Secret
    /// name, or a stalled connection, looked like to a reconcile).
    async fn silent_apiserver() -> kube::Config {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        kube::Config::new(url.parse().unwrap())
    }

    #[tokio::test]
    async fn a_silent_apiserver_fails_the_call_instead_of_holding_it() {
        let config = silent_apiserver().await;
        let client = client_with_timeouts(&config, Duration::from_millis(300)).unwrap();
        let secrets: Api<Secret> = Api::namespaced(client, "ns");
        let answer = tokio::time::timeout(Duration::from_secs(10), secrets.get_opt("k")).await;
        assert!(
            matches!(answer, Ok(Err(_))),
            "the call must fail by its read timeout, not hang: {answer:?}"
        );
    }
}
