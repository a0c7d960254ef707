//! External Secrets Operator side by side (`BENCH_PEER=eso`), on the same control plane and
//! token endpoint: per client a Webhook generator doing client_credentials with a client
//! secret (ESO cannot sign a private_key_jwt assertion) and an ExternalSecret that takes its
//! data from the generator, the form ESO's generator docs show. Equal footing: the first
//! setting's `--concurrency` as ESO's `--concurrent`, one namespace (`--namespace`), secret
//! caching on, client-side rate limits (client-go's QPS 50, burst 100) lifted because the
//! operator has none, the reconcilers this job does not use (cluster stores, push secrets)
//! off. The exact configuration is in docs/benchmarks.md.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    ByteString, api::core::v1::Secret,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, ObjectMeta},
    runtime::wait::{await_condition, conditions},
};
use serde_json::json;

use crate::{
    measure::{self, Scrape},
    objects,
    phases::{self, Bench},
    report::{Restart, Run},
    secs,
    support::{self, ChildGuard, ControlPlane},
    watches::Settling,
};

const VERSION: &str = "v0.16.2";
const NAMESPACE: &str = "bench-eso";
const WARM_UP: &str = "warmup";
/// ESO labels the Secrets it manages so.
const MANAGED: &str = "reconcile.external-secrets.io/managed=true";

fn external_secret_kind() -> ApiResource {
    ApiResource {
        group: "external-secrets.io".into(),
        version: "v1".into(),
        api_version: "external-secrets.io/v1".into(),
        kind: "ExternalSecret".into(),
        plural: "externalsecrets".into(),
    }
}

fn webhook_kind() -> ApiResource {
    ApiResource {
        group: "generators.external-secrets.io".into(),
        version: "v1alpha1".into(),
        api_version: "generators.external-secrets.io/v1alpha1".into(),
        kind: "Webhook".into(),
        plural: "webhooks".into(),
    }
}

/// The folder with `external-secrets` and `crds.yaml` (benches/peers/build-eso.sh: cached,
/// built from the module proxy on first use, `BENCH_ESO_DIR` to bring your own).
async fn assets() -> Result<PathBuf, String> {
    let mut command = Command::new("bash");
    command
        .arg(format!("{}/benches/peers/build-eso.sh", support::REPO))
        .stderr(Stdio::inherit());
    let output = support::run_bounded("build-eso.sh", command, Duration::from_secs(3600)).await;
    if !output.status.success() {
        return Err("benches/peers/build-eso.sh failed".into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .last()
        .ok_or("build-eso.sh printed no folder")?;
    Ok(PathBuf::from(dir.trim()))
}

/// ESO's CRDs, and its identity: a ServiceAccount bound to cluster-admin (the bench measures
/// speed and cost, not ESO's RBAC).
async fn install(plane: &ControlPlane, assets: &Path) -> Result<PathBuf, String> {
    let crds = std::fs::read_to_string(assets.join("crds.yaml"))
        .map_err(|e| format!("ESO crds.yaml: {e}"))?;
    plane.apply_yaml(&crds).await;
    let api: Api<CustomResourceDefinition> = Api::all(plane.admin().await);
    for name in [
        "externalsecrets.external-secrets.io",
        "webhooks.generators.external-secrets.io",
    ] {
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| format!("CRD {name} not established within 60 s"))?
        .map_err(|e| format!("CRD {name}: {e}"))?;
    }
    plane
        .apply_yaml(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: eso-system}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: external-secrets, namespace: eso-system}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bench-external-secrets}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: external-secrets, namespace: eso-system}]\n",
        )
        .await;
    Ok(plane
        .service_account_kubeconfig("eso-system", "external-secrets", "eso-sa.kubeconfig")
        .await)
}

/// The ESO controller process; its output goes to `log`.
struct Eso {
    process: ChildGuard,
    metrics_port: u16,
    log: PathBuf,
}

impl Eso {
    fn start(
        binary: &Path,
        kubeconfig: &Path,
        concurrency: u16,
        log: &Path,
    ) -> Result<Eso, String> {
        let metrics_port = support::free_port();
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        command
            .env("KUBECONFIG", kubeconfig)
            .args(eso_args(concurrency, metrics_port))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        Ok(Eso {
            process: support::spawn("external-secrets", &mut command),
            metrics_port,
            log: log.into(),
        })
    }

    async fn scrape(&self) -> Option<Scrape> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        Some(Scrape(response.text().await.ok()?))
    }

    /// Reconciles of ExternalSecrets (controller-runtime's counter).
    async fn reconciles(&self) -> Option<f64> {
        let scrape = self.scrape().await?;
        Some(scrape.sum_where("controller_runtime_reconcile_total", |l| {
            l.get("controller").is_some_and(|c| c == "externalsecret")
        }))
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The flags ESO runs with (also in docs/benchmarks.md).
pub fn eso_args(concurrency: u16, metrics_port: u16) -> Vec<String> {
    [
        format!("--concurrent={concurrency}"),
        format!("--namespace={NAMESPACE}"),
        "--enable-secrets-caching=true".into(),
        "--enable-managed-secrets-caching=true".into(),
        "--client-qps=10000".into(),
        "--client-burst=10000".into(),
        "--enable-cluster-store-reconciler=false".into(),
        "--enable-cluster-external-secret-reconciler=false".into(),
        "--enable-push-secret-reconciler=false".into(),
        "--enable-cluster-push-secret-reconciler=false".into(),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        "--loglevel=info".into(),
    ]
    .into()
}

/// A client's credential Secret: the client secret the generator's template reads.
fn credential(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-cred")),
            labels: Some(
                [(
                    "external-secrets.io/type".to_string(),
                    "webhook".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            [
                (
                    "client_id".to_string(),
                    ByteString(format!("{NAMESPACE}.{name}").into_bytes()),
                ),
                (
                    "client_secret".to_string(),
                    ByteString(uuid::Uuid::new_v4().simple().to_string().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The Webhook generator and the ExternalSecret of one client.
fn client_objects(name: &str, endpoint: &str) -> (DynamicObject, DynamicObject) {
    let webhook = json!({
        "apiVersion": "generators.external-secrets.io/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {
            "url": endpoint,
            "method": "POST",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            "body": "grant_type=client_credentials&scope=bench_read&client_id={{ .auth.client_id }}&client_secret={{ .auth.client_secret }}",
            "result": {"jsonPath": "$"},
            "secrets": [{"name": "auth", "secretRef": {"name": format!("{name}-cred")}}],
        },
    });
    let external_secret = json!({
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": {
            // The operator's refresh point for a 1-hour token (2/3 of its lifetime).
            "refreshInterval": "40m",
            "target": {
                "name": format!("{name}-token"),
                "template": {"data": {
                    "access_token": "{{ .access_token }}",
                    "authorization": "Bearer {{ .access_token }}",
                    "token_type": "{{ .token_type }}",
                    "scope": "{{ .scope }}",
                }},
            },
            "dataFrom": [{"sourceRef": {"generatorRef": {
                "apiVersion": "generators.external-secrets.io/v1alpha1",
                "kind": "Webhook",
                "name": name,
            }}}],
        },
    });
    (
        serde_json::from_value(webhook).unwrap(),
        serde_json::from_value(external_secret).unwrap(),
    )
}

/// Apply the generator, then the ExternalSecret, of each client, `parallelism` clients at a time.
async fn apply(
    b: &Bench<'_>,
    names: &[String],
    applied_at: &std::sync::Mutex<Vec<Instant>>,
) -> Result<Duration, String> {
    let webhooks: Api<DynamicObject> =
        Api::namespaced_with(b.admin.clone(), NAMESPACE, &webhook_kind());
    let secrets: Api<DynamicObject> =
        Api::namespaced_with(b.admin.clone(), NAMESPACE, &external_secret_kind());
    let started = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter(names.iter().map(|name| {
        let (webhook, external_secret) = client_objects(name, b.endpoint);
        let (webhooks, secrets) = (&webhooks, &secrets);
        async move {
            objects::create(webhooks, &webhook).await?;
            objects::create(secrets, &external_secret).await?;
            applied_at.lock().unwrap().push(Instant::now());
            Ok(())
        }
    }))
    .buffer_unordered(b.cfg.parallelism.max(1))
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(started.elapsed())
}

pub async fn run(b: &Bench<'_>, plane: &ControlPlane, run: &mut Run) -> Result<(), String> {
    let n = b.cfg.clients;
    let concurrency = b
        .cfg
        .settings
        .iter()
        .map(|(c, _)| *c)
        .find(|c| *c == 8)
        .or(b.cfg.settings.first().map(|(c, _)| *c))
        .unwrap_or(8);
    run.concurrency = concurrency;
    run.namespace = NAMESPACE.into();
    run.user_requests = vec!["POST webhooks".into(), "POST externalsecrets".into()];
    let assets = assets().await?;
    let kubeconfig = install(plane, &assets).await?;
    objects::create_namespace(b.admin, NAMESPACE).await?;
    let names = objects::names(n);
    let mut with_warm_up = names.clone();
    with_warm_up.push(WARM_UP.into());
    let credentials = with_warm_up.iter().map(|name| credential(name)).collect();
    run.keys_apply_s = secs(
        objects::create_all(
            &Api::namespaced(b.admin.clone(), NAMESPACE),
            credentials,
            b.cfg.parallelism,
            |_| {},
        )
        .await?,
    );

    let log_dir = std::env::var_os("BENCH_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let _ = std::fs::create_dir_all(&log_dir);
    let binary = assets.join("external-secrets");
    eprintln!(
        "bench: [ESO] starting external-secrets {VERSION}: {}",
        eso_args(concurrency, 0).join(" ")
    );
    let mut eso = Eso::start(
        &binary,
        &kubeconfig,
        concurrency,
        &log_dir.join("eso-first.log"),
    )?;
    let settling = Settling::start(b.admin, NAMESPACE, MANAGED, &external_secret_kind()).await?;
    apply(b, &[WARM_UP.to_string()], &Default::default()).await?;
    let warm_up = Instant::now();
    settling
        .until_all(1, |_| {
            (warm_up.elapsed() > Duration::from_secs(120))
                .then(|| "ESO warm-up: not Ready within 120 s".into())
        })
        .await
        .map_err(|e| format!("{e}; ESO log tail:\n{}", eso.tail()))?;

    let applied_at = std::sync::Mutex::new(Vec::with_capacity(n));
    let apply = apply(b, &names, &applied_at);
    let api_before = phases::clock(b, eso.process.pid(), &settling, n, apply, &applied_at, run)
        .await
        .map_err(|e| format!("{e}; ESO log tail:\n{}", eso.tail()))?;
    phases::settle(
        b,
        eso.process.pid(),
        &settling,
        &api_before,
        async || eso.reconciles().await,
        run,
    )
    .await?;

    // Restart: what a new process costs in requests and IdP calls, over the restart window.
    let (api_before, idp_before) = (measure::apiserver_counts(b.admin).await?, b.idp.total());
    let stopping = Instant::now();
    let clean = eso.process.terminate(Duration::from_secs(30));
    let mut restart = Restart {
        shutdown_s: secs(stopping.elapsed()),
        shutdown_clean: clean,
        ..Restart::default()
    };
    drop(eso);
    let started = Instant::now();
    let mut eso = Eso::start(
        &binary,
        &kubeconfig,
        concurrency,
        &log_dir.join("eso-restarted.log"),
    )?;
    while started.elapsed() < b.cfg.restart_window {
        if !eso.process.is_running() {
            return Err(format!(
                "the restarted ESO exited; log tail:\n{}",
                eso.tail()
            ));
        }
        if restart.all_reconciled_s.is_none()
            && eso.reconciles().await.is_some_and(|k| k >= (n + 1) as f64)
        {
            restart.all_reconciled_s = Some(secs(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    restart.window_s = secs(started.elapsed());
    restart.idp_requests = b.idp.total() - idp_before;
    restart.all_ready_true = settling.ready.count() > n;
    restart.api = measure::diff(&measure::apiserver_counts(b.admin).await?, &api_before);
    restart.api_writes = measure::writes(&restart.api);
    restart.api_operator_writes = measure::controller_writes(&restart.api);
    restart.rss_hwm_mib = measure::vm_mib(eso.process.pid(), "VmHWM:");
    restart.operator_reconciles = eso.reconciles().await;
    run.restart = Some(restart);
    run.idle = Some(phases::idle(b, eso.process.pid()).await?);
    Ok(())
}
