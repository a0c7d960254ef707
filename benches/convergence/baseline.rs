//! What the operator is compared with: the bare work done by a plain client.
//!
//! - sequential: per client, one token request with a freshly signed assertion and one Secret
//!   create, one client after the other (the simplest correct script; unchanged since session 1).
//! - concurrent: the same work plus the status write, by `width` workers, fed by the same
//!   applier the operator run uses (IdvClients created `parallelism` at a time); its clock
//!   starts at the first apply and stops, like the operator's, when the bench's watches see
//!   every IdvClient `Ready=True` and every Secret.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use idv_token_operator::{
    api::{self, FIELD_MANAGER, IdvClient},
    assertion, jwk,
    oauth::CLIENT_ASSERTION_TYPE,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ApiResource, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    config::Config,
    fake_idp::TokenEndpoint,
    measure::{self, ApiCounts},
    objects, secs,
    watches::Settling,
};

#[derive(Debug, Default, Clone, Serialize)]
pub struct Bare {
    pub width: usize,
    pub seconds: f64,
    pub per_client_ms: f64,
    pub idp_requests: u64,
    /// apiserver requests in the window (resource requests only).
    pub api_requests: f64,
    pub api: ApiCounts,
    pub apiserver_cpu_s: f64,
    pub etcd_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub machine_busy_percent: f64,
    pub loadavg: String,
    /// `[seconds, applied, Secrets, Ready]` every 0.5 s (concurrent only).
    pub timeline: Vec<[f64; 4]>,
}

/// The label the bare Secrets carry (the watch that stops the clock selects on it).
const BARE_SELECTOR: &str = "app.kubernetes.io/managed-by=bench-bare";

/// The bare client: keep-alive HTTP to the token endpoint.
struct BareClient {
    http: reqwest::Client,
    endpoint: String,
}

impl BareClient {
    async fn new(endpoint: &str) -> Result<BareClient, String> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        // Warm up the connection outside the clock.
        let _ = http.get(endpoint).send().await;
        Ok(BareClient {
            http,
            endpoint: endpoint.into(),
        })
    }

    /// Parse the key, sign an assertion, ask for a token: (token, expires_at).
    async fn token(
        &self,
        client_id: &str,
        key_bytes: &[u8],
    ) -> Result<(String, Timestamp), String> {
        let key = jwk::parse_signing_key(key_bytes, None).map_err(|e| e.to_string())?;
        let claims = assertion::claims(
            client_id,
            &self.endpoint,
            Timestamp::now(),
            uuid::Uuid::new_v4(),
        );
        let signed = assertion::sign(&claims, &key, false).map_err(|e| e.to_string())?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "bench_read"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", signed.expose()),
        ];
        let issued = Timestamp::now();
        let answer: Value = self
            .http
            .post(&self.endpoint)
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("bare token request: {e}"))?
            .json()
            .await
            .map_err(|e| format!("bare token answer: {e}"))?;
        let token = answer["access_token"]
            .as_str()
            .ok_or("bare: no access_token in the answer")?;
        let lifetime =
            jiff::SignedDuration::from_secs(answer["expires_in"].as_i64().unwrap_or(300));
        Ok((token.to_string(), issued + lifetime))
    }
}

/// `like_operator`: with the operator's bookkeeping annotations and owner reference (values of
/// the same shapes and sizes), to tell the cost of those bytes from the cost of the work.
fn bare_secret(name: &str, token: &str, expires_at: Timestamp, like_operator: bool) -> Secret {
    let (annotations, owner_references) = if like_operator {
        let now = Timestamp::now().to_string();
        let hash = "q".repeat(43);
        let annotations = [
            (api::ISSUED_AT_ANNOTATION, now.clone()),
            (api::EXPIRES_AT_ANNOTATION, expires_at.to_string()),
            (api::REFRESH_AT_ANNOTATION, now),
            (api::INPUTS_HASH_ANNOTATION, hash.clone()),
            (api::DATA_HASH_ANNOTATION, hash),
            (
                api::SPEC_METADATA_ANNOTATION,
                r#"{"annotations":[],"labels":[]}"#.into(),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let owner = json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient", "name": name,
            "uid": uuid::Uuid::new_v4().to_string(), "controller": true, "blockOwnerDeletion": true,
        });
        (
            Some(BTreeMap::from(annotations)),
            Some(vec![
                serde_json::from_value(owner).expect("an owner reference"),
            ]),
        )
    } else {
        (None, None)
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-token")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "bench-bare".to_string(),
            )])),
            annotations,
            owner_references,
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(objects::token_secret_data(token, expires_at, "bench_read")),
        ..Default::default()
    }
}

/// A Ready status as the operator writes it (server-side apply of the status subresource).
fn ready_status(name: &str, expires_at: Timestamp, like_operator: bool) -> Value {
    let mut status = json!({
        "apiVersion": "idv-token-operator.dev/v1alpha1",
        "kind": "IdvClient",
        "status": {
            "observedGeneration": 1,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "TokenIssued",
                "message": format!("token valid until {expires_at}"),
                "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "observedGeneration": 1,
            }],
            "expiresAt": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "secretName": format!("{name}-token"),
        },
    });
    if like_operator {
        status["status"]["refreshAt"] =
            json!(Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        status["status"]["keyId"] = json!("q".repeat(43));
        status["status"]["secretUid"] = json!(uuid::Uuid::new_v4().to_string());
    }
    status
}

/// Measure `work` between two apiserver and CPU readings.
async fn measured(
    admin: &Client,
    idp: &TokenEndpoint,
    n: usize,
    width: usize,
    phase: &str,
    work: impl std::future::Future<Output = Result<Duration, String>>,
) -> Result<Bare, String> {
    measure::until_quiet().await;
    let (idp_before, api_before, cpu_before) = (
        idp.total(),
        measure::apiserver_counts(admin).await?,
        measure::cpu_now(None),
    );
    let loadavg = measure::loadavg();
    let hook = measure::PhaseHook::start(phase);
    let elapsed = work.await;
    hook.stop();
    let elapsed = elapsed?;
    let cpu = measure::cpu_now(None) - cpu_before;
    let api = measure::diff(&measure::apiserver_counts(admin).await?, &api_before);
    Ok(Bare {
        width,
        seconds: secs(elapsed),
        per_client_ms: secs(elapsed) * 1000.0 / n as f64,
        idp_requests: idp.total() - idp_before,
        api_requests: measure::resource_requests(&api),
        api,
        apiserver_cpu_s: cpu.apiserver,
        etcd_cpu_s: cpu.etcd,
        bench_cpu_s: cpu.bench,
        machine_busy_percent: cpu.busy_percent(),
        loadavg,
        timeline: Vec::new(),
    })
}

/// One client after the other: token request + Secret create.
pub async fn sequential(
    admin: &Client,
    cfg: &Config,
    endpoint: &str,
    idp: &TokenEndpoint,
) -> Result<Bare, String> {
    let ns = "bench-bare";
    objects::create_namespace(admin, ns).await?;
    let keys = objects::generate_keys(cfg.clients);
    let bare = BareClient::new(endpoint).await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let _ = secrets.get_opt("warm-up").await;
    let sequential = measured(admin, idp, cfg.clients, 1, "bare-sequential", async {
        let started = Instant::now();
        for (i, key) in keys.iter().enumerate() {
            let name = format!("c{i}");
            let (token, expires_at) = bare.token(&format!("{ns}.{name}"), key).await?;
            secrets
                .create(
                    &PostParams::default(),
                    &bare_secret(&name, &token, expires_at, false),
                )
                .await
                .map_err(|e| format!("bare: create Secret: {e}"))?;
        }
        Ok(started.elapsed())
    })
    .await?;
    objects::remove_all(admin, ns).await?;
    Ok(sequential)
}

/// `width` workers doing token request + Secret create + status write for each IdvClient as
/// the applier creates it.
pub async fn concurrent(
    b: &crate::phases::Bench<'_>,
    ns: &str,
    width: usize,
    like_operator: bool,
    as_operator: bool,
) -> Result<Bare, String> {
    let (admin, cfg, endpoint, idp) = (b.admin, b.cfg, b.endpoint, b.idp);
    let worker = if as_operator {
        b.operator_identity
    } else {
        admin
    };
    let n = cfg.clients;
    objects::create_namespace(admin, ns).await?;
    let names = objects::names(n);
    let keys = objects::generate_keys(n);
    let bare = BareClient::new(endpoint).await?;
    // The user applies IdvClients and key Secrets; the workers write as `worker`.
    let user: Api<IdvClient> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(worker.clone(), ns);
    let clients: Api<IdvClient> = Api::namespaced(worker.clone(), ns);
    if like_operator {
        // The operator's namespace holds its N key Secrets too (this script reads the keys
        // from memory).
        let stored = names
            .iter()
            .zip(&keys)
            .map(|(name, key)| objects::key_secret(&format!("{name}-jwk"), key.clone()))
            .collect();
        let keys_api = Api::namespaced(admin.clone(), ns);
        objects::create_all(&keys_api, stored, cfg.parallelism, |_| {}).await?;
    }
    let _ = secrets.get_opt("warm-up").await;
    // First uses cost the apiserver more (the CRD's schema for server-side apply, CEL):
    // one IdvClient created and its status written before the clock, as the operator's
    // warm-up client does.
    objects::create(&user, &objects::idv_client(ns, "warmup", endpoint)).await?;
    clients
        .patch_status(
            "warmup",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(ready_status("warmup", Timestamp::now(), like_operator)),
        )
        .await
        .map_err(|e| format!("bare: warm-up status: {e}"))?;
    secrets
        .create(
            &PostParams::default(),
            &bare_secret("warmup", "warm-up", Timestamp::now(), like_operator),
        )
        .await
        .map_err(|e| format!("bare: warm-up Secret: {e}"))?;
    let settling = Settling::start(
        admin,
        ns,
        BARE_SELECTOR,
        &ApiResource::erase::<IdvClient>(&()),
    )
    .await?;
    let _controller_watches = if cfg.bare_watches || like_operator {
        let kind = ApiResource::erase::<IdvClient>(&());
        Some(Settling::start(worker, ns, BARE_SELECTOR, &kind).await?)
    } else {
        None
    };
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let one = |i: usize| {
        let (name, key, bare, secrets, clients, apply) =
            (&names[i], &keys[i], &bare, &secrets, &clients, &apply);
        async move {
            let (token, expires_at) = bare.token(&format!("{ns}.{name}"), key).await?;
            secrets
                .create(
                    &PostParams::default(),
                    &bare_secret(name, &token, expires_at, like_operator),
                )
                .await
                .map_err(|e| format!("bare: create Secret: {e}"))?;
            clients
                .patch_status(
                    name,
                    apply,
                    &Patch::Apply(ready_status(name, expires_at, like_operator)),
                )
                .await
                .map_err(|e| format!("bare: status: {e}"))?;
            Ok::<(), String>(())
        }
    };
    let objects: Vec<IdvClient> = names
        .iter()
        .map(|name| objects::idv_client(ns, name, endpoint))
        .collect();
    let deadline = cfg.converge_deadline();
    let phase = format!(
        "bare-{n}-w{width}{}",
        if like_operator { "-same-objects" } else { "" }
    );
    let started = std::sync::OnceLock::new();
    let applied_at = std::sync::Mutex::new(Vec::with_capacity(n));
    let mut bare = measured(admin, idp, n, width, &phase, async {
        let started = *started.get_or_init(Instant::now);
        let (created, applied) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let applied_at = &applied_at;
        // `move`: the sender goes with the applier, which ends the workers' stream.
        let applier = objects::create_all(&user, objects, cfg.parallelism, move |i| {
            applied_at.lock().unwrap().push(Instant::now());
            let _ = created.send(i);
        });
        let workers = tokio_stream_of(applied)
            .map(one)
            .buffer_unordered(width)
            .collect::<Vec<_>>();
        let (applied, worked) = tokio::join!(applier, workers);
        applied?;
        worked.into_iter().collect::<Result<Vec<()>, String>>()?;
        settling
            .until_all(n + 1, |_| {
                (started.elapsed() > deadline)
                    .then(|| format!("bare: not done within {deadline:?}"))
            })
            .await?;
        let (ready, secret) = settling.finished();
        Ok(ready.max(secret).map_or(started.elapsed(), |at| {
            at.saturating_duration_since(started)
        }))
    })
    .await?;
    if let Some(&started) = started.get() {
        bare.timeline = settling.timeline(started, &applied_at.lock().unwrap());
    }
    Ok(bare)
}

/// The receiving end of a channel as a stream (ends when every sender is gone).
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
