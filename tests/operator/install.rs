//! The install users run: deploy/'s cluster-wide RBAC, the Deployment's arguments, two
//! replicas; and the RBAC rule that owner references need, proven against the admission
//! plugin that enforces it.

use crate::case::*;
use crate::ha::{Replica, secret_writes, start_replica};
use serde::Deserialize;

/// The operator's arguments in deploy/base/deployment.yaml, without the leading `run`.
fn deployment_args() -> Vec<String> {
    let text =
        std::fs::read_to_string(format!("{}/deploy/base/deployment.yaml", support::REPO)).unwrap();
    let deployment: Value = serde_yaml::from_str(&text).unwrap();
    let args: Vec<String> = serde_json::from_value(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
    )
    .unwrap();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    args[1..].to_vec()
}

/// The label selector of a request URI, decoded (empty when there is none).
fn label_selector(uri: &str) -> String {
    reqwest::Url::parse(&format!("https://apiserver{uri}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

pub(crate) async fn the_shipped_install_serves_every_namespace_and_reads_no_other_secret(
    env: &Env,
) {
    let served = [
        create_namespace(env, "install-a").await,
        create_namespace(env, "install-b").await,
        create_namespace(env, "install-c").await,
    ];
    let unrelated = create_namespace(env, "install-unrelated").await;
    let admin = env.plane.admin().await;
    let bystander = Secret {
        metadata: ObjectMeta {
            name: Some("bystander".into()),
            ..Default::default()
        },
        string_data: Some([("password".to_string(), "not-for-the-operator".to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(admin.clone(), &unrelated)
        .create(&PostParams::default(), &bystander)
        .await
        .unwrap();

    // Exactly the Deployment's arguments (cluster-wide: no --watch-namespaces; --leader-elect
    // with the default Lease; JSON logs), two replicas with their own POD_NAME and token, as
    // two pods. Deviations: --allowed-token-hosts 127.0.0.1 (the local IdP; the default is the
    // IDV hosts), the harness's kubeconfig, listen addresses (port 0) and RUST_LOG=debug (a
    // superset of the Deployment's info, for the leak scan).
    let mut args = deployment_args();
    assert!(
        args.contains(&"--leader-elect".to_string())
            && args.windows(2).any(|w| w == ["--log-format", "json"])
            && !args.iter().any(|a| a.starts_with("--watch-namespace")),
        "deploy/base runs {args:?}"
    );
    args.extend(LOCAL_IDP_HOSTS.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replicas = [
        start_replica(env, "idv-token-operator-6d4cf9b7c-x2k8p", &args, &[]).await,
        start_replica(env, "idv-token-operator-6d4cf9b7c-q7n4m", &args, &[]).await,
    ];
    for replica in &replicas {
        replica.wait_for("waiting for leadership").await;
    }
    let leading = tokio::time::timeout(
        WAIT,
        eventually(WAIT, "a replica to lead", || async {
            replicas.iter().position(Replica::leads)
        }),
    )
    .await
    .expect("a replica leads within the wait");
    let [first, second] = replicas;
    let (leader, standby) = if leading == 0 {
        (first, second)
    } else {
        (second, first)
    };

    let mut secrets = Vec::new();
    let mut operator = leader.operator;
    for ns in &served {
        let case = Case::with_operator(env, ns.clone(), operator).await;
        let (_, private) = ready_client(env, &case, "app", None).await;
        secrets.extend(key_material(&private));
        secrets.push(text(
            &case.secrets().get("app-token").await.unwrap(),
            "access_token",
        ));
        case.assert_no_leaks(&secrets).await;
        operator = case.operator;
    }
    assert!(!standby.leads(), "{}", standby.operator.tail(20));

    // JSON logs: every line of both replicas is one JSON object with a level and a message.
    for output in [operator.output(), standby.operator.output()] {
        for secret in &secrets {
            assert!(!output.contains(secret.as_str()), "a secret in a log");
        }
        for line in output.lines().filter(|l| !l.trim().is_empty()) {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(
                entry["level"].is_string() && entry["message"].is_string(),
                "{line}"
            );
        }
    }

    // The apiserver's record of the replicas' Secret requests.
    let events = env.plane.audit_events();
    let ours: Vec<_> = events
        .iter()
        .filter(|e| e.resource() == "secrets")
        .filter(|e| {
            [&leader.credential, &standby.credential].contains(&&e.credential_id().to_string())
        })
        .collect();
    assert!(!ours.is_empty(), "the audit log has the replicas' requests");
    let selectors = [
        format!("{}={}", api::MANAGED_BY_LABEL, api::MANAGED_BY_VALUE),
        format!("{}=true", api::CREDENTIAL_LABEL),
    ];
    for event in &ours {
        assert!(
            event.namespace() != unrelated && event.name() != "bystander",
            "the operator asked for a Secret in {unrelated}: {} {}",
            event.verb(),
            event.uri()
        );
        // Cluster-wide requests select the operator's own Secrets or labelled credentials:
        // the bystander carries neither label, so no answer can hold it.
        if event.namespace().is_empty() {
            assert!(
                matches!(event.verb(), "list" | "watch")
                    && selectors.contains(&label_selector(event.uri())),
                "a cluster-wide Secret request without the operator's selector: {} {}",
                event.verb(),
                event.uri()
            );
        }
    }
    // It did watch cluster-wide, with both selectors.
    for selector in &selectors {
        assert!(
            ours.iter().any(|e| e.namespace().is_empty()
                && e.verb() == "watch"
                && label_selector(e.uri()) == *selector),
            "no cluster-wide watch of Secrets by {selector}"
        );
    }
    // The standby asked for no Secret at all; the leader wrote every token Secret.
    assert!(
        ours.iter().all(|e| e.credential_id() == leader.credential),
        "the standby made Secret requests"
    );
    for ns in &served {
        let writes = secret_writes(&events, ns);
        assert!(
            writes
                .iter()
                .any(|w| w.name() == "app-token" && w.credential_id() == leader.credential),
            "the leader wrote {ns}/app-token"
        );
        assert!(
            writes
                .iter()
                .all(|w| w.credential_id() == leader.credential)
        );
    }

    // Stopped as Kubernetes stops pods: the leader releases the Lease for the next install.
    let mut operator = operator;
    let mut standby = standby.operator;
    assert!(standby.process.terminate(Duration::from_secs(10)));
    assert!(operator.process.terminate(Duration::from_secs(10)));
    assert!(operator.output().contains("leadership released"));
}

pub(crate) async fn owner_references_need_the_finalizers_rule_and_the_shipped_rules_suffice(
    env: &Env,
) {
    let ns = create_namespace(env, "ownerref").await;
    // deploy/rbac.yaml's ClusterRole without the `idvclients/finalizers` rule, bound to a
    // ServiceAccount of its own.
    let account = "idv-token-operator-no-finalizers";
    let rbac = std::fs::read_to_string(format!("{}/deploy/rbac.yaml", support::REPO)).unwrap();
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&rbac)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect();
    let role_with = |keep_finalizers: bool| {
        let mut role = documents
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .unwrap()
            .clone();
        role["metadata"]["name"] = json!(account);
        let rules = role["rules"].as_array_mut().unwrap();
        let before = rules.len();
        if !keep_finalizers {
            rules.retain(|r| !r["resources"].to_string().contains("idvclients/finalizers"));
            assert_eq!(rules.len(), before - 1, "the shipped role has the rule");
        }
        serde_yaml::to_string(&role).unwrap()
    };
    let mut binding = documents
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap()
        .clone();
    binding["metadata"]["name"] = json!(account);
    binding["roleRef"]["name"] = json!(account);
    binding["subjects"][0]["name"] = json!(account);
    env.plane
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {}}}\n---\n{}---\n{}",
            support::OPERATOR_NAMESPACE,
            role_with(false),
            serde_yaml::to_string(&binding).unwrap()
        ))
        .await;
    let kubeconfig = env
        .plane
        .service_account_kubeconfig(
            support::OPERATOR_NAMESPACE,
            account,
            &format!("{account}.kubeconfig"),
        )
        .await;
    let credential = support::credential_id(&kubeconfig);
    let operator = Operator::start(
        &kubeconfig,
        &[
            "--watch-namespace",
            &ns,
            "--min-refresh-interval",
            "2s",
            LOCAL_IDP_HOSTS[0],
            LOCAL_IDP_HOSTS[1],
        ],
    );
    let case = Case::with_operator(env, ns.clone(), operator).await;
    let (client_id, private) = keyed_client(env, &case, "owned", None, None).await;
    // Without the rule the Secret with its owner reference (blockOwnerDeletion) is refused,
    // by admission (RBAC allowed the create itself), and no token is asked for.
    let condition = case.wait_not_ready("owned", "SecretNotWritable").await;
    assert!(
        condition.message.contains("blockOwnerDeletion"),
        "{}",
        condition.message
    );
    assert_eq!(env.idp.stats(&client_id).await.0, 0);
    assert!(
        case.secrets()
            .get_opt("owned-token")
            .await
            .unwrap()
            .is_none()
    );
    let refused = env.plane.audit_events().into_iter().find(|e| {
        e.credential_id() == credential
            && e.resource() == "secrets"
            && e.verb() == "create"
            && e.name() == "owned-token"
            && e.code() == 403
    });
    let refused = refused.expect("the apiserver refused the token Secret");
    assert_eq!(
        refused.0["annotations"]["authorization.k8s.io/decision"], "allow",
        "RBAC allowed the create; the owner reference was refused"
    );

    // With the shipped rules (the same identity), the same client gets its Secret.
    env.plane.apply_yaml(&role_with(true)).await;
    let patch = json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: "rbac-fixed"}}});
    case.clients()
        .patch("owned", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_ready("owned").await;
    let secret = case.secrets().get("owned-token").await.unwrap();
    let owner = &secret.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.block_owner_deletion),
        ("IdvClient", Some(true))
    );
    let mut secrets = key_material(&private);
    secrets.push(text(&secret, "access_token"));
    case.assert_no_leaks(&secrets).await;
}

/// Every IdvClient example (with its key Secret) passes the real apiserver's schema and CEL
/// rules, in a namespace of the test's own.
pub(crate) async fn the_example_clients_pass_the_apiservers_validation(env: &Env) {
    let ns = create_namespace(env, "examples").await;
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{}/examples", support::REPO)).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if path.extension().is_none_or(|e| e != "yaml") || !text.contains("kind: IdvClient") {
            continue;
        }
        let created = dry_run_create(env, &path, &ns, "name").await;
        let names = String::from_utf8_lossy(&created);
        assert!(names.contains("idvclient."), "{}: {names}", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} IdvClient examples found");
}

/// `kubectl create --dry-run=server -o OUTPUT` of the manifest at `path`, every
/// `namespace: X` line naming `ns` instead; fails the test when the apiserver refuses it.
async fn dry_run_create(env: &Env, path: &std::path::Path, ns: &str, output: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let moved: Vec<String> = text
        .lines()
        .map(|line| match line.split_once("namespace: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}namespace: {ns}"),
            _ => line.to_string(),
        })
        .collect();
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(copy.path(), moved.join("\n")).unwrap();
    let mut command = std::process::Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(&env.plane.admin_kubeconfig)
        .args(["create", "--dry-run=server", "-o", output, "-f"])
        .arg(copy.path());
    let created = support::run_bounded(
        "kubectl create --dry-run=server",
        command,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        created.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&created.stderr)
    );
    created.stdout
}

/// The example workloads are what a real apiserver stores (kubectl's server-side dry run, so
/// that YAML is read as kubectl reads it: `defaultMode: 0440` is octal there): the token proxy
/// stays a native sidecar (an init container with `restartPolicy: Always`; an apiserver without
/// the feature would drop the field), and the token Secret is mounted read-only, whole.
pub(crate) async fn the_example_workloads_pass_the_apiservers_validation(env: &Env) {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};
    let ns = create_namespace(env, "examples").await;
    for file in [
        "examples/deployment-mounting-token.yaml",
        "examples/deployment-with-token-proxy.yaml",
    ] {
        let path = std::path::Path::new(support::REPO).join(file);
        let created = dry_run_create(env, &path, &ns, "json").await;
        let stored: Deployment = serde_json::from_slice(&created).unwrap();
        let pod = stored.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .default_mode,
            Some(0o440),
            "{file}"
        );
        let mounts_token = |c: &Container| {
            c.volume_mounts.iter().flatten().any(|m| {
                m.mount_path == "/var/run/idv" && m.read_only == Some(true) && m.sub_path.is_none()
            })
        };
        match &pod.init_containers {
            Some(sidecars) => {
                let proxy = &sidecars[0];
                assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "{file}");
                assert_eq!(proxy.args.as_ref().unwrap()[0], "proxy", "{file}");
                assert!(mounts_token(proxy), "{file}: the proxy mounts the token");
                assert!(
                    proxy.startup_probe.is_some() && proxy.readiness_probe.is_some(),
                    "{file}"
                );
            }
            None => assert!(
                mounts_token(&pod.containers[0]),
                "{file}: the app mounts the token"
            ),
        }
    }
}
