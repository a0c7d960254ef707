//! Wiring of the kube-runtime `Controller`s: what is watched, how triggers are filtered,
//! concurrency and shutdown. One controller per watched namespace (or one for all), sharing
//! one context: HTTP client, key cache, backoff state, metrics.

use std::{future::Future, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller, predicates,
        reflector::{self, ObjectRef, Store},
        utils::{PredicateConfig, ResetTimerBackoff},
        watcher::{self, Config as WatcherConfig},
    },
};
use tracing::{debug, info};

use crate::{
    api::{self, IdvClient},
    caches::{Caches, OwnWrites, ScopeCaches, SecretVersions, TokenSecrets},
    error::Error,
    reconcile::{self, Context},
    resources,
};

/// Where and how hard to work.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only these namespaces; all namespaces when empty.
    pub namespaces: Vec<String>,
    /// IdvClients reconciled at the same time (per watched namespace).
    pub concurrency: u16,
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
fn clients_using(
    secret: &PartialObjectMeta<Secret>,
    clients: &Store<IdvClient>,
) -> Vec<ObjectRef<IdvClient>> {
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
    other_secrets:
        futures::stream::BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>>,
}

/// Cached objects carry no managedFields: nothing here reads them, and at 10,000 objects they
/// would be most of the operator's memory.
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// IdvClients as cached: no managedFields, and no copy of the spec in kubectl's
/// `last-applied-configuration`.
fn slim_client(client: &mut IdvClient) {
    drop_managed_fields(client);
    if let Some(annotations) = client.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Token Secrets as cached: no managedFields, and the hash of the data instead of the data.
fn slim_token_secret(secret: &mut Secret) {
    drop_managed_fields(secret);
    resources::strip_token_data(secret);
}

/// Credential Secrets' metadata: only what is used (name, namespace, resourceVersion).
/// Annotations in particular go: `kubectl apply` leaves the whole Secret, private key
/// included, in `last-applied-configuration`.
fn keep_identity_only(secret: &mut PartialObjectMeta<Secret>) {
    let meta = secret.meta_mut();
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    };
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
    let ours = format!("{}={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE);
    let credentials = format!("{}=true", api::CREDENTIAL_LABEL);
    let (scope_caches, watches): (Vec<ScopeCaches>, Vec<SecretWatches>) = scopes
        .into_iter()
        .map(|namespace| {
            // Only the operator's own Secrets are cached, found by label: never every Secret.
            let token_secrets = Arc::new(TokenSecrets::default());
            let records = token_secrets.clone();
            let echoes = own_writes.clone();
            let owned_secrets = watcher::watcher(
                api::<Secret>(&kube, namespace.as_deref()),
                WatcherConfig::default().labels(&ours),
            )
            .backoff(watch_backoff())
            .modify(slim_token_secret)
            .inspect(move |event| {
                if let Ok(event) = event {
                    records.apply(event);
                }
            })
            .inspect(readiness.watch())
            // The cache takes every event; the controller only what it did not write itself.
            .filter(move |event| {
                let echo = match event {
                    Ok(watcher::Event::Apply(s)) => echoes.is_echo(s),
                    Ok(watcher::Event::InitApply(s) | watcher::Event::Delete(s)) => {
                        echoes.forget(s);
                        false
                    }
                    _ => false,
                };
                futures::future::ready(!echo)
            })
            .touched_objects()
            .boxed();
            // Secrets labelled as credentials: metadata only (never data), to notice a changed
            // key at once and to know its resourceVersion without asking the API. Unlabelled
            // Secrets are neither watched nor read.
            let credential_secrets = Arc::new(SecretVersions::default());
            let versions = credential_secrets.clone();
            let other_secrets_stream = watcher::watcher(
                api::<PartialObjectMeta<Secret>>(&kube, namespace.as_deref()),
                WatcherConfig::default().labels(&credentials),
            )
            .backoff(watch_backoff())
            .modify(keep_identity_only)
            .inspect(move |event| {
                if let Ok(event) = event {
                    versions.apply(event);
                }
            })
            .touched_objects()
            .boxed();
            (
                ScopeCaches {
                    namespace: namespace.clone(),
                    token_secrets,
                    credentials: credential_secrets,
                },
                SecretWatches {
                    namespace,
                    owned_secrets,
                    other_secrets: other_secrets_stream,
                },
            )
        })
        .unzip();
    let ctx = Arc::new(make_context(Caches {
        scopes: scope_caches,
        own_writes,
    }));

    // One shutdown signal, shared by every controller.
    let shutdown = shutdown.shared();
    let mut controllers = Vec::new();
    for scope in watches {
        let namespace = scope.namespace.as_deref();
        let (client_store, client_writer) = reflector::store();
        let seen = ctx.clone();
        let clients =
            watcher::watcher(api::<IdvClient>(&kube, namespace), WatcherConfig::default())
                .backoff(watch_backoff())
                .modify(slim_client)
                .reflect(client_writer)
                .inspect(readiness.watch())
                .inspect(move |event| match event {
                    Ok(watcher::Event::Apply(client)) => seen.writeback.observed(client),
                    Ok(watcher::Event::Delete(client)) => seen.forget(client),
                    _ => {}
                })
                .applied_objects()
                .predicate_filter(spec_or_force_refresh, PredicateConfig::default());
        let controller = Controller::for_stream(clients, client_store.clone());
        let lookup = controller.store();
        // A finished token request reconciles its client again (to store the token).
        let fetched = ctx.fetcher.subscribe(scope.namespace.clone());
        info!(
            namespace = namespace.unwrap_or("(all)"),
            concurrency = options.concurrency,
            "controller starting"
        );
        let run = controller
            .owns_stream(scope.owned_secrets)
            .watches_stream(scope.other_secrets, move |secret| {
                clients_using(&secret, &lookup)
            })
            .reconcile_on(fetched)
            .with_config(controller::Config::default().concurrency(options.concurrency))
            // The controller pauses all triggers after an error of any of its watches; keep that
            // pause short (the watches back off on their own), or errors of four watches add up.
            .trigger_backoff(backoff(Duration::from_millis(100), Duration::from_secs(1)))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
            .for_each(
                |result: Result<_, controller::Error<Error, watcher::Error>>| {
                    match result {
                        Ok((object, _action)) => debug!(object = %object, "reconciled"),
                        Err(error) => debug!("controller: {error}"),
                    }
                    futures::future::ready(())
                },
            );
        controllers.push(run);
    }
    let writeback = ctx.clone();
    let writer = tokio::spawn(async move { writeback.writeback.run().await });
    futures::future::join_all(controllers).await;
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
