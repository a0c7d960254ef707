//! `BENCH_PROFILE=1`: the cost of each kind of request the operator makes, measured alone,
//! one request after the other, against the IdvClients of a finished run (its operator
//! stopped): wall time, kube-apiserver and etcd CPU per request.

use std::{collections::BTreeMap, time::Instant};

use idv_token_operator::api::{FIELD_MANAGER, IdvClient};
use jiff::Timestamp;
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{measure, objects, report::RequestCost, secs};

const KINDS: [&str; 7] = [
    "GET secrets (the key Secret)",
    "GET secrets (absent: 404)",
    "POST secrets (token Secret, ownerReference)",
    "POST events (events.k8s.io/v1)",
    "APPLY idvclients/status, unchanged",
    "APPLY idvclients/status, changed",
    "PATCH idvclients/status (merge), changed",
];

struct Apis {
    ns: String,
    secrets: Api<Secret>,
    events: Api<Event>,
    clients: Api<IdvClient>,
}

fn status_body(c: &IdvClient, suffix: &str) -> Value {
    let mut status = c.status.clone().unwrap_or_default();
    for condition in &mut status.conditions {
        condition.message.push_str(suffix);
    }
    json!({"apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient", "status": status})
}

fn profile_secret(c: &IdvClient) -> Secret {
    let mut owner = kube::Resource::controller_owner_ref(c, &()).expect("uid");
    owner.block_owner_deletion = Some(true);
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{}-profile", c.name_any())),
            labels: Some(BTreeMap::from([(
                "bench".to_string(),
                "profile".to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(objects::token_secret_data(
            &uuid::Uuid::new_v4().to_string(),
            Timestamp::now(),
            "bench_read",
        )),
        ..Default::default()
    }
}

fn profile_event(c: &IdvClient, ns: &str, i: usize) -> Event {
    let name = c.name_any();
    let now = Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}.profile{i}")},
        "eventTime": now,
        "type": "Normal",
        "reason": "TokenIssued",
        "action": "Reconcile",
        "note": "token issued with key k; expires at t, refresh at r",
        "reportingController": "idv-token-operator",
        "reportingInstance": "bench",
        "regarding": {"apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient", "name": name, "namespace": ns, "uid": c.metadata.uid},
    }))
    .expect("an Event")
}

/// One request of kind `kind` about client `c`.
async fn request(apis: &Apis, kind: usize, c: &IdvClient, i: usize) -> Result<(), kube::Error> {
    let name = c.name_any();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    match kind {
        0 => apis.secrets.get(&format!("{name}-jwk")).await.map(|_| ()),
        1 => apis
            .secrets
            .get_opt(&format!("{name}-absent"))
            .await
            .map(|_| ()),
        2 => apis
            .secrets
            .create(&PostParams::default(), &profile_secret(c))
            .await
            .map(|_| ()),
        3 => apis
            .events
            .create(&PostParams::default(), &profile_event(c, &apis.ns, i))
            .await
            .map(|_| ()),
        4 => apis
            .clients
            .patch_status(&name, &apply, &Patch::Apply(status_body(c, "")))
            .await
            .map(|_| ()),
        5 => apis
            .clients
            .patch_status(&name, &apply, &Patch::Apply(status_body(c, " (profile)")))
            .await
            .map(|_| ()),
        _ => {
            let body = json!({"status": status_body(c, " (merge)")["status"]});
            apis.clients
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
                .await
                .map(|_| ())
        }
    }
}

pub async fn run(admin: &Client, ns: &str, count: usize) -> Result<Vec<RequestCost>, String> {
    let apis = Apis {
        ns: ns.into(),
        secrets: Api::namespaced(admin.clone(), ns),
        events: Api::namespaced(admin.clone(), ns),
        clients: Api::namespaced(admin.clone(), ns),
    };
    let clients: Vec<IdvClient> = apis
        .clients
        .list(&Default::default())
        .await
        .map_err(|e| format!("profile: list IdvClients: {e}"))?
        .items
        .into_iter()
        .filter(|c| c.status.is_some() && c.name_any().starts_with('c'))
        .take(count)
        .collect();
    if clients.is_empty() {
        return Err("profile: no IdvClient with a status".into());
    }
    let n = clients.len();
    let mut costs = Vec::new();
    for (kind, what) in KINDS.iter().enumerate() {
        let (before, started) = (measure::cpu_now(None), Instant::now());
        for (i, c) in clients.iter().enumerate() {
            request(&apis, kind, c, i)
                .await
                .map_err(|e| format!("profile: {what}: {e}"))?;
        }
        let (cpu, wall) = (measure::cpu_now(None) - before, started.elapsed());
        let cost = RequestCost {
            what: what.to_string(),
            requests: n,
            wall_ms: secs(wall) * 1000.0 / n as f64,
            apiserver_cpu_ms: cpu.apiserver * 1000.0 / n as f64,
            etcd_cpu_ms: cpu.etcd * 1000.0 / n as f64,
        };
        eprintln!(
            "bench: profile: {what}: {:.2} ms wall, {:.2} ms apiserver CPU per request",
            cost.wall_ms, cost.apiserver_cpu_ms
        );
        costs.push(cost);
    }
    Ok(costs)
}
