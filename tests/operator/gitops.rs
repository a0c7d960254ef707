//! GitOps tools judge the IdvClients this operator produced, with their own code: cli-utils'
//! kstatus (what Flux's `wait` / `healthChecks` and `kubectl wait`-style tools use) and the
//! Argo CD health check and `refresh` action of deploy/argocd/, run in gopher-lua with the
//! libraries Argo CD gives argocd-cm scripts (tests/tools/gitops-check).

use std::{path::PathBuf, process::Stdio};

use kube::api::{ApiResource, DynamicObject};
use tokio::{io::AsyncWriteExt, sync::OnceCell};

use crate::case::*;

const LUA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/argocd/idv-token-operator.dev/IdvClient"
);

/// The gitops-check binary: $IDV_GITOPS_CHECK, else built (once, cached) by its build script.
async fn tool() -> &'static PathBuf {
    static TOOL: OnceCell<PathBuf> = OnceCell::const_new();
    TOOL.get_or_init(|| async {
        if let Ok(path) = std::env::var("IDV_GITOPS_CHECK")
            && std::path::Path::new(&path).is_file()
        {
            return PathBuf::from(path);
        }
        let mut build = tokio::process::Command::new("bash");
        build
            .arg(format!(
                "{}/tests/tools/gitops-check/build.sh",
                support::REPO
            ))
            // Its progress shows while it builds (cold: one to two minutes).
            .stderr(Stdio::inherit())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(150), build.output())
            .await
            .expect("tests/tools/gitops-check/build.sh did not finish within 150 s")
            .expect("run tests/tools/gitops-check/build.sh");
        assert!(output.status.success(), "building gitops-check failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("the script prints the path")
                .trim(),
        )
    })
    .await
}

/// `gitops-check ARGS` with `object` on stdin: its JSON answer.
async fn check(args: &[&str], object: &Value) -> Value {
    let mut child = tokio::process::Command::new(tool().await)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start gitops-check");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(object).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("gitops-check {args:?} did not finish within 30 s"))
        .unwrap();
    assert!(
        output.status.success(),
        "gitops-check {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn kstatus(object: &Value) -> (String, String) {
    let answer = check(&["kstatus"], object).await;
    (
        answer["status"].as_str().unwrap().to_string(),
        answer["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Argo CD's health of `object`: (status, message).
async fn argocd_health(object: &Value) -> (String, String) {
    let answer = check(&["health", &format!("{LUA}/health.lua")], object).await;
    (
        answer["status"].as_str().unwrap().to_string(),
        answer["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// The IdvClients API as JSON objects, exactly as the apiserver serves them.
fn raw_clients(case: &Case) -> Api<DynamicObject> {
    Api::namespaced_with(
        case.admin.clone(),
        &case.ns,
        &ApiResource::erase::<IdvClient>(&()),
    )
}

async fn live(case: &Case, name: &str) -> Value {
    serde_json::to_value(raw_clients(case).get(name).await.unwrap()).unwrap()
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The message of condition `type_` (which must be there).
fn message(object: &Value, type_: &str) -> String {
    let condition = condition(object, type_).unwrap_or_else(|| panic!("no {type_}: {object:#}"));
    condition["message"].as_str().unwrap().to_string()
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

/// Wait until IdvClient `name`, as served, satisfies `check`; returns that very object.
async fn wait_live(case: &Case, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, &format!("{name}: {what}"), || async {
        let object = live(case, name).await;
        check(&object).then_some(object)
    })
    .await
}

/// Every state the operator puts an IdvClient in, as kstatus and Argo CD see it: Current and
/// Healthy with a token; InProgress and Progressing right after a spec change (observedGeneration
/// lags), while the first token is on its way, and while a transient failure is retried (with a
/// valid token of the earlier generation held, too); Failed and Degraded, with the condition's
/// message, for a broken key; Argo CD's Suspended for a suspended client. The `refresh`
/// action's merge patch, applied as Argo CD applies it, brings exactly one new token.
pub(crate) async fn gitops_tools_read_every_state_of_an_idvclient(env: &Env) {
    // Long enough that the hanging first request is seen, whatever the machine's load.
    let case = Case::new(env, "gitops", &["--token-request-timeout", "30s"]).await;
    let (slow_id, slow_key) =
        keyed_client(env, &case, "slow", None, Some(json!({"mode": "hang"}))).await;
    let (_, flaky_key) = keyed_client(
        env,
        &case,
        "flaky",
        None,
        Some(json!({"mode": "respond", "status": 503})),
    )
    .await;
    case.put_secret("broken-jwk", &[("jwk.json", b"not a JWK")])
        .await;
    case.put_client(
        "broken",
        json!({
            "clientId": "broken-client",
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "broken-jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let (gipod_id, gipod_key) = ready_client(env, &case, "gipod", None).await;
    case.put_client(
        "paused",
        json!({
            "clientId": gipod_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "gipod-jwk", "key": "jwk.json"}},
            "suspend": true,
        }),
    )
    .await;

    // The first token of `slow` hangs at the IdP: Ready Unknown, Reconciling.
    let slow = wait_live(&case, "slow", "Reconciling=True (Issuing)", |o| {
        condition(o, "Reconciling")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "Issuing")
    })
    .await;
    assert_eq!(condition(&slow, "Ready").unwrap()["status"], "Unknown");
    assert_eq!(
        slow["status"]["observedGeneration"],
        slow["metadata"]["generation"]
    );
    let issuing = message(&slow, "Reconciling");
    assert_eq!(kstatus(&slow).await, ("InProgress".into(), issuing.clone()));
    assert_eq!(argocd_health(&slow).await, ("Progressing".into(), issuing));
    assert_eq!(env.idp.stats(&slow_id).await.1, 0, "no token yet");

    // A transient failure without a token: retried, so in progress, not failed.
    case.wait_not_ready("flaky", "IdpUnavailable").await;
    let flaky = live(&case, "flaky").await;
    let failure = message(&flaky, "Ready");
    assert!(failure.contains("next attempt at"), "{failure}");
    assert_eq!(kstatus(&flaky).await.0, "InProgress");
    assert_eq!(argocd_health(&flaky).await, ("Progressing".into(), failure));

    // A broken key: given up until something changes.
    case.wait_not_ready("broken", "InvalidKey").await;
    let broken = live(&case, "broken").await;
    assert!(is_true(&broken, "Stalled"), "{broken:#}");
    let stalled = message(&broken, "Ready");
    assert!(stalled.contains("unusable"), "{stalled}");
    assert_eq!(kstatus(&broken).await, ("Failed".into(), stalled.clone()));
    assert_eq!(argocd_health(&broken).await, ("Degraded".into(), stalled));

    // Suspended: nothing happens until the spec changes (kstatus would otherwise wait on
    // Ready=False for ever); Argo CD has a word for it; no refresh to offer.
    case.wait_not_ready("paused", "Suspended").await;
    let paused = live(&case, "paused").await;
    assert_eq!(kstatus(&paused).await.0, "Failed");
    assert_eq!(argocd_health(&paused).await.0, "Suspended");
    let actions = check(
        &["discovery", &format!("{LUA}/actions/discovery.lua")],
        &paused,
    )
    .await;
    assert_eq!(actions, json!({"refresh": {"disabled": true}}));

    // Issued: Current and Healthy, with the Ready message.
    let gipod = live(&case, "gipod").await;
    let ready_message = message(&gipod, "Ready");
    assert!(
        ready_message.starts_with("token valid until"),
        "{ready_message}"
    );
    assert_eq!(kstatus(&gipod).await.0, "Current");
    assert_eq!(
        argocd_health(&gipod).await,
        ("Healthy".into(), ready_message)
    );
    let actions = check(
        &["discovery", &format!("{LUA}/actions/discovery.lua")],
        &gipod,
    )
    .await;
    assert_eq!(actions, json!({"refresh": {"disabled": false}}));

    // A spec change while the IdP fails: the apiserver's answer to the change itself has the
    // new generation and the old status.
    env.idp
        .fault(json!({"client_id": gipod_id, "mode": "respond", "status": 503}))
        .await;
    let changed = raw_clients(&case)
        .patch(
            "gipod",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scopes": ["gitops"]}})),
        )
        .await
        .unwrap();
    let changed = serde_json::to_value(changed).unwrap();
    let generation = changed["metadata"]["generation"].as_i64().unwrap();
    assert_eq!(
        changed["status"]["observedGeneration"].as_i64(),
        Some(generation - 1)
    );
    assert_eq!(kstatus(&changed).await.0, "InProgress");
    let (health, lag) = argocd_health(&changed).await;
    assert_eq!(health, "Progressing");
    assert!(
        lag.contains(&format!("observe generation {generation}")),
        "{lag}"
    );
    // The operator saw the change; the token of the earlier generation stays, the new one is
    // retried: Ready True, Reconciling True.
    let retrying = wait_live(&case, "gipod", "the new generation being retried", |o| {
        o["status"]["observedGeneration"] == generation
            && condition(o, "Reconciling").is_some_and(|c| c["reason"] == "IdpUnavailable")
    })
    .await;
    assert!(is_true(&retrying, "Ready"), "{retrying:#}");
    let reconciling = message(&retrying, "Reconciling");
    assert!(
        reconciling.contains("the current token stays"),
        "{reconciling}"
    );
    assert_eq!(
        kstatus(&retrying).await,
        ("InProgress".into(), reconciling.clone())
    );
    assert_eq!(
        argocd_health(&retrying).await,
        ("Progressing".into(), reconciling)
    );
    env.idp
        .fault(json!({"client_id": gipod_id, "mode": "none"}))
        .await;
    let settled = wait_live(&case, "gipod", "Ready for the new generation", |o| {
        o["status"]["observedGeneration"] == generation
            && is_true(o, "Ready")
            && condition(o, "Reconciling").is_none()
    })
    .await;
    assert_eq!(kstatus(&settled).await.0, "Current");
    assert_eq!(argocd_health(&settled).await.0, "Healthy");
    // The kubectl wait lines of docs/gitops.md.
    let generation = generation.to_string();
    for args in [
        vec!["--for=condition=Ready", "idvclient/gipod"],
        vec!["--for=condition=Stalled", "idvclient/broken"],
        vec![
            &format!("--for=jsonpath={{.status.observedGeneration}}={generation}"),
            "idvclient/gipod",
        ],
    ] {
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&env.plane.admin_kubeconfig)
            .args(["wait", "-n", &case.ns, "--timeout=20s"])
            .args(&args);
        let what = format!("kubectl wait {}", args.join(" "));
        let output = support::run_bounded(&what, command, Duration::from_secs(40)).await;
        assert!(
            output.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // The refresh action, applied as Argo CD does: the merge patch from the live object to the
    // script's result.
    let token = text(
        &case.secrets().get("gipod-token").await.unwrap(),
        "access_token",
    );
    let issued = env.idp.stats(&gipod_id).await.1;
    let action = check(
        &["action", &format!("{LUA}/actions/refresh/action.lua")],
        &settled,
    )
    .await;
    let patch = &action["mergePatch"];
    let stamp = patch["metadata"]["annotations"][api::FORCE_REFRESH_ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("the action sets no force-refresh: {action:#}"));
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    assert_eq!(
        patch,
        &json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: stamp}}}),
        "the action changes nothing else"
    );
    raw_clients(&case)
        .patch("gipod", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    case.wait_secret("gipod-token", "a new token after the refresh action", |s| {
        text(s, "access_token") != token
    })
    .await;
    assert_eq!(
        env.idp.stats(&gipod_id).await.1,
        issued + 1,
        "one new token"
    );
    let refreshed = wait_live(&case, "gipod", "Ready after the refresh", |o| {
        is_true(o, "Ready") && condition(o, "Reconciling").is_none()
    })
    .await;
    assert_eq!(argocd_health(&refreshed).await.0, "Healthy");

    env.idp
        .fault(json!({"client_id": slow_id, "mode": "none"}))
        .await;
    case.assert_no_leaks(
        &[
            key_material(&slow_key),
            key_material(&flaky_key),
            key_material(&gipod_key),
        ]
        .concat(),
    )
    .await;
}
