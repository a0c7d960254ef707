//! Wiring of the kube-runtime `Controller`: what is watched, how triggers are filtered,
//! concurrency and shutdown.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource,
    runtime::{
        Controller, WatchStreamExt,
        utils::PredicateConfig,
        controller,
        predicates, reflector,
        watcher::{self, Config as WatcherConfig},
    },
};
use tracing::{debug, info};

use crate::{
    api::{self, IdvClient},
    error::Error,
    reconcile::{self, Context},
};

/// Where and how hard to work.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// IdvClients reconciled at the same time.
    pub concurrency: u16,
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
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
    let force = client.meta().annotations.as_ref().and_then(|a| a.get(api::FORCE_REFRESH_ANNOTATION));
    let generation = predicates::generation(client);
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (generation, force).hash(&mut hasher);
    Some(hasher.finish())
}

/// Run until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    kube: kube::Client,
    options: RunOptions,
    make_context: impl FnOnce(reflector::Store<Secret>) -> Context,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = options.namespace.as_deref();
    // Only the operator's own Secrets are cached, found by label: never every Secret.
    let (secret_reader, secret_writer) = reflector::store();
    let owned_secrets = watcher::watcher(
        api::<Secret>(&kube, namespace),
        WatcherConfig::default().labels(&format!("{}={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE)),
    )
    .default_backoff()
    .reflect(secret_writer)
    .touched_objects();

    let (client_reader, client_writer) = reflector::store();
    let clients = watcher::watcher(api::<IdvClient>(&kube, namespace), WatcherConfig::default())
        .default_backoff()
        .reflect(client_writer)
        .applied_objects()
        .predicate_filter(spec_or_force_refresh, PredicateConfig::default());

    let ctx = Arc::new(make_context(secret_reader));
    info!(namespace = namespace.unwrap_or("(all)"), concurrency = options.concurrency, "controller starting");
    Controller::for_stream(clients, client_reader)
        .owns_stream(owned_secrets)
        .with_config(controller::Config::default().concurrency(options.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result: Result<_, controller::Error<Error, watcher::Error>>| {
            match result {
                Ok((object, _action)) => debug!(object = %object, "reconciled"),
                Err(error) => debug!("controller: {error}"),
            }
            futures::future::ready(())
        })
        .await;
    info!("controller stopped");
}
