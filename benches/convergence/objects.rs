//! The objects a run applies, and applying them at a fixed parallelism.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use idv_token_operator::{
    api::{CREDENTIAL_LABEL, IdvClient},
    jwk::{self, KeygenAlgorithm},
};
use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

pub async fn create_namespace(admin: &Client, name: &str) -> Result<(), String> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| format!("create namespace {name}: {e}"))?;
    Ok(())
}

/// Delete a finished phase's IdvClients, Secrets and Events, and wait until they are gone.
/// The apiserver's CPU per request grows with the objects it holds (its watch cache, its
/// heap for Go's GC to mark): a phase measured beside the previous phase's objects would pay
/// for them, so every phase starts with the same objects held.
pub async fn remove_all(admin: &Client, ns: &str) -> Result<(), String> {
    let clients: Api<IdvClient> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), ns);
    let (all, delete) = (ListParams::default(), DeleteParams::background());
    let gone = async {
        clients.delete_collection(&delete, &all).await?;
        secrets.delete_collection(&delete, &all).await?;
        events.delete_collection(&delete, &all).await?;
        let one = ListParams::default().limit(1);
        while !clients.list_metadata(&one).await?.items.is_empty()
            || !secrets.list_metadata(&one).await?.items.is_empty()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<(), kube::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(120), gone).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("remove the objects of {ns}: {e}")),
        Err(_) => Err(format!("remove the objects of {ns}: not gone within 120 s")),
    }
}

/// Create, retrying a few times on errors (409: it exists already, fine).
pub async fn create<K>(api: &Api<K>, object: &K) -> Result<(), String>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut attempt = 0;
    loop {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("bench: create failed ({e}); retry {attempt}");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(format!("create {}: {e}", object.name_any())),
        }
    }
}

/// Create objects `parallelism` at a time, as `kubectl apply` of many files would; the
/// elapsed time. `created(i)` runs as each one is stored.
pub async fn create_all<K>(
    api: &Api<K>,
    objects: Vec<K>,
    parallelism: usize,
    created: impl Fn(usize) + Sync,
) -> Result<Duration, String>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let started = Instant::now();
    let created = &created;
    let results: Vec<Result<(), String>> =
        futures::stream::iter(objects.iter().enumerate().map(|(i, o)| async move {
            create(api, o).await?;
            created(i);
            Ok(())
        }))
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(started.elapsed())
}

pub fn generate_keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            serde_json::to_vec(&jwk::generate(KeygenAlgorithm::Es256, 0).expect("ES256 keygen"))
                .unwrap()
        })
        .collect()
}

/// A labelled credential Secret holding one private JWK.
pub fn key_secret(name: &str, jwk: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                CREDENTIAL_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("jwk.json".to_string(), ByteString(jwk))])),
        ..Default::default()
    }
}

/// Key Secrets `<prefix><i>-jwk` for i in `range`, created at the given parallelism.
pub async fn apply_keys(
    admin: &Client,
    ns: &str,
    names: &[String],
    parallelism: usize,
) -> Result<Duration, String> {
    let keys = generate_keys(names.len());
    let secrets = names
        .iter()
        .zip(keys)
        .map(|(name, key)| key_secret(&format!("{name}-jwk"), key))
        .collect();
    create_all(
        &Api::namespaced(admin.clone(), ns),
        secrets,
        parallelism,
        |_| {},
    )
    .await
}

/// An IdvClient `name` with key Secret `<name>-jwk`, client id `<ns>.<name>`.
pub fn idv_client(ns: &str, name: &str, endpoint: &str) -> IdvClient {
    serde_json::from_value(json!({
        "apiVersion": "idv-token-operator.dev/v1alpha1",
        "kind": "IdvClient",
        "metadata": {"name": name},
        "spec": {
            "clientId": format!("{ns}.{name}"),
            "authServer": {"tokenEndpoint": endpoint},
            "privateKey": {"secretRef": {"name": format!("{name}-jwk"), "key": "jwk.json"}},
            "scopes": ["bench_read"],
        },
    }))
    .unwrap()
}

/// `c0`, `c1`, … `c<n-1>`.
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

/// The five keys the operator writes into a token Secret.
pub fn token_secret_data(
    token: &str,
    expires_at: Timestamp,
    scope: &str,
) -> BTreeMap<String, ByteString> {
    [
        ("access_token", token.to_string()),
        ("token_type", "Bearer".to_string()),
        ("expires_at", expires_at.to_string()),
        ("scope", scope.to_string()),
        ("authorization", format!("Bearer {token}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect()
}
