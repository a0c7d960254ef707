//! Running the operator: the CRD, probes and metrics, HA, namespaces, install, apiserver trouble.

use crate::case::*;

pub(crate) async fn the_crd_rejects_invalid_specs(env: &Env) {
    let case = Case::new(env, "schema", &[]).await;
    let base = json!({
        "clientId": "c",
        "authServer": {"tokenEndpoint": "https://idp.example/token"},
        "privateKey": {"secretRef": {"name": "k", "key": "jwk.json"}},
    });
    let with = |path: &[&str], value: Value| {
        let mut spec = base.clone();
        let mut target = &mut spec;
        for p in &path[..path.len() - 1] {
            target = &mut target[*p];
        }
        target[path[path.len() - 1]] = value;
        spec
    };
    let cases = [
        (
            with(&["authServer", "issuer"], json!("https://idp.example")),
            "exactly one of environment, issuer or tokenEndpoint",
        ),
        (
            with(&["authServer"], json!({})),
            "exactly one of environment, issuer or tokenEndpoint",
        ),
        (
            with(
                &["authServer", "tokenEndpoint"],
                json!("http://idp.example/token"),
            ),
            "must be an https URL",
        ),
        (
            with(&["clientId"], json!("  ")),
            "clientId must not be empty",
        ),
        (
            with(&["scopes"], json!(["has space"])),
            "a scope is printable ASCII",
        ),
        (
            with(&["refresh"], json!({"beforeExpiry": "soon"})),
            "beforeExpiry is a duration",
        ),
        (
            with(&["authServer"], json!({"environment": "acm-nowhere"})),
            "Unsupported value",
        ),
        (
            with(
                &["clientSecret"],
                json!({"secretRef": {"name": "s", "key": "k"}}),
            ),
            "exactly one of privateKey and clientSecret",
        ),
        (
            with(&["privateKey"], Value::Null),
            "exactly one of privateKey and clientSecret",
        ),
        // Names are not paths: each of these reached the apiserver URL as written.
        (
            with(&["privateKey", "secretRef", "name"], json!("?x=1")),
            "secretRef.name must be a DNS-1123 subdomain",
        ),
        (
            with(&["privateKey", "secretRef", "name"], json!("?watch=true")),
            "secretRef.name must be a DNS-1123 subdomain",
        ),
        (
            with(&["privateKey", "secretRef", "name"], json!("Upper")),
            "secretRef.name must be a DNS-1123 subdomain",
        ),
        (
            {
                let mut spec = with(&["privateKey"], Value::Null);
                spec["clientSecret"] = json!({"secretRef": {"name": "a/b", "key": "k"}});
                spec
            },
            "secretRef.name must be a DNS-1123 subdomain",
        ),
        (
            with(&["privateKey", "secretRef", "key"], json!("a/b")),
            "secretRef.key must be a Secret data key",
        ),
        (
            with(&["privateKey", "secretRef", "key"], json!("..")),
            "secretRef.key must be a Secret data key",
        ),
        (
            with(&["secret"], json!({"name": ".."})),
            "secret.name must be a DNS-1123 subdomain",
        ),
        (
            with(&["secret"], json!({"name": "?watch=true"})),
            "secret.name must be a DNS-1123 subdomain",
        ),
        (
            with(&["secret"], json!({"name": "Gipod-Token"})),
            "secret.name must be a DNS-1123 subdomain",
        ),
        (with(&["secret"], json!({"name": "a".repeat(254)})), "253"),
        (
            with(&["privateKey", "secretRef", "name"], json!("k".repeat(254))),
            "253",
        ),
        // The operator's own label and bookkeeping annotations are not the spec's to set.
        (
            with(
                &["secret"],
                json!({"labels": {"app.kubernetes.io/managed-by": "someone-else"}}),
            ),
            "secret.labels may not set app.kubernetes.io/managed-by",
        ),
        (
            with(
                &["secret"],
                json!({"annotations": {"idv-token-operator.dev/expires-at": "2099-01-01T00:00:00Z"}}),
            ),
            "secret.annotations may not set keys under idv-token-operator.dev/",
        ),
    ];
    // Untyped, so that values the Rust types would refuse reach the apiserver.
    let resource = kube::api::ApiResource::erase::<IdvClient>(&());
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(case.admin.clone(), &case.ns, &resource);
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec,
        }))
        .unwrap();
        let error = raw
            .create(&PostParams::default(), &object)
            .await
            .expect_err(expected);
        assert!(
            error.to_string().contains(expected),
            "{error} lacks {expected:?}"
        );
    }
    // The default token Secret name `<metadata.name>-token` must fit 253 characters.
    let named = |name: String, spec: Value| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    };
    let error = raw
        .create(
            &PostParams::default(),
            &named("n".repeat(248), base.clone()),
        )
        .await
        .expect_err("a name too long for <name>-token");
    assert!(
        error
            .to_string()
            .contains("too long for the default token Secret name"),
        "{error}"
    );
    for (name, spec) in [
        ("n".repeat(247), base.clone()),
        ("m".repeat(253), with(&["secret"], json!({"name": "short"}))),
    ] {
        raw.create(&PostParams::default(), &named(name, spec))
            .await
            .expect("the token Secret name fits");
    }
    let good: IdvClient = serde_json::from_value(json!({
        "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
        "metadata": {"name": "good"}, "spec": with(&["authServer", "tokenEndpoint"], json!("http://127.0.0.1:9/token")),
    }))
    .unwrap();
    case.clients()
        .create(&PostParams::default(), &good)
        .await
        .expect("http to loopback is allowed");
}

pub(crate) async fn metrics_probes_and_events(env: &Env) {
    let case = Case::new(env, "observe", &["--log-format", "json"]).await;
    // A fresh operator exports every series with a known label set, at 0: alerts on `rate()`
    // work before the first failure.
    let op = &case.operator;
    let fresh = eventually(WAIT, "/metrics of the fresh operator", || async {
        op.get(op.metrics_port(), "/metrics")
            .await
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    })
    .await;
    let results = std::iter::once(idv_token_operator::metrics::TOKEN_REQUEST_SUCCESS)
        .chain(api::reasons::TOKEN_REQUEST_FAILURES);
    let zeros =
        results
            .map(|r| format!("idv_token_operator_token_requests_total{{result=\"{r}\"}} 0"))
            .chain(api::reasons::ERRORS.iter().map(|c| {
                format!("idv_token_operator_reconcile_errors_total{{category=\"{c}\"}} 0")
            }))
            .chain(["idv_token_operator_reconciles_total 0".to_string()]);
    for series in zeros {
        assert!(
            fresh.lines().any(|line| line == series),
            "{series} missing from a fresh operator's /metrics:\n{fresh}"
        );
    }
    let (_, private) = ready_client(env, &case, "good", None).await;
    // JSON logs: every line an object; one line per token issued, with who and until when.
    let output = case.operator.output();
    let lines: Vec<Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let issued = lines
        .iter()
        .find(|l| l["message"] == json!("token issued"))
        .expect("a 'token issued' line");
    assert_eq!(issued["namespace"], json!(case.ns));
    assert_eq!(issued["name"], json!("good"));
    assert_eq!(issued["key_id"], private["kid"]);
    assert!(issued["expires_at"].as_str().is_some());
    case.put_client(
        "broken",
        json!({
            "clientId": "c",
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "absent", "key": "jwk.json"}},
        }),
    )
    .await;
    case.wait_not_ready("broken", "KeySecretNotFound").await;

    let op = &case.operator;
    let metrics = eventually(
        WAIT,
        "metrics with the issued token and the error",
        || async {
            let (status, body) = op.get(op.metrics_port(), "/metrics").await?;
            (status == 200
                && body.contains("idv_token_operator_token_requests_total{result=\"success\"} 1")
                && body.contains(
                    "idv_token_operator_reconcile_errors_total{category=\"KeySecretNotFound\"}",
                ))
            .then_some(body)
        },
    )
    .await;
    let gauge = format!(
        "idv_token_operator_token_expiry_timestamp_seconds{{namespace=\"{}\",name=\"good\"}}",
        case.ns
    );
    assert!(metrics.contains(&gauge), "{metrics}");
    assert!(metrics.contains("idv_token_operator_token_request_duration_seconds_bucket"));
    assert!(metrics.contains("idv_token_operator_reconciles_total"));
    // Liveness: ok while the loop runs and reconciles finish (here: after two of them).
    assert_eq!(
        op.get(op.health_port(), "/healthz").await,
        Some((200, "ok\n".to_string())),
        "healthz on {} (metrics {}):\n{}",
        op.health_port(),
        op.metrics_port(),
        op.tail(5)
    );
    eventually(
        WAIT,
        "/readyz to answer 200 once the watches have synced",
        || async { (op.get(op.health_port(), "/readyz").await?.0 == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        op.get(op.health_port(), "/metrics").await.map(|r| r.0),
        Some(404)
    );

    let events = eventually(
        WAIT,
        "a TokenIssued and a KeySecretNotFound event",
        || async {
            let events = case.events().await;
            let has = |name: &str, type_: &str, reason: &str| {
                events.iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.type_.as_deref() == Some(type_)
                        && e.reason.as_deref() == Some(reason)
                })
            };
            (has("good", "Normal", "TokenIssued") && has("broken", "Warning", "KeySecretNotFound"))
                .then_some(events)
        },
    )
    .await;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("KeySecretNotFound"))
        .unwrap();
    assert!(
        warning
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("next attempt at"),
        "{warning:?}"
    );
    let token = text(
        &case.secrets().get("good-token").await.unwrap(),
        "access_token",
    );
    let mut secrets = key_material(&private);
    secrets.push(token);
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn a_standby_takes_over_from_a_dead_leader(env: &Env) {
    let mut case = Case::new(env, "ha", &[]).await;
    let lease = format!("lease-{}", case.ns);
    // A lease as long as the default: a leader on a loaded 2-core machine renews in time.
    let lease_duration = Duration::from_secs(15);
    let ha = [
        "--leader-elect",
        "--leader-election-id",
        &lease,
        "--leader-election-lease-duration",
        "15s",
        "--leader-election-retry-period",
        "1s",
    ];
    // Replace the plain operator with two electing replicas.
    case.operator.process.kill();
    case.replace_operator(Case::start_operator(env, &case.ns, &ha))
        .await;
    eventually(WAIT, "the first replica to lead", || async {
        case.operator
            .output()
            .contains("leadership acquired")
            .then_some(())
    })
    .await;
    let second = Case::start_operator(env, &case.ns, &ha);
    eventually(WAIT, "the second replica to stand by", || async {
        second
            .output()
            .contains("waiting for leadership")
            .then_some(())
    })
    .await;
    let (_, before_key) = ready_client(env, &case, "before", None).await;
    assert!(
        !second.output().contains("leadership acquired"),
        "only one leader"
    );
    assert_eq!(
        second
            .get(second.health_port(), "/readyz")
            .await
            .map(|r| r.0),
        Some(200),
        "a standby is ready"
    );

    case.scrape_metrics().await;
    case.operator.process.kill(); // SIGKILL: no release, the lease must expire
    let killed_at = Instant::now();
    case.replace_operator(second).await;
    let (_, after_key) = ready_client(env, &case, "after", None).await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover < lease_duration + Duration::from_secs(10),
        "takeover took {takeover:?}"
    );

    // SIGTERM releases the lease: a new replica leads at once, well within the lease duration.
    let third = Case::start_operator(env, &case.ns, &ha);
    eventually(WAIT, "the third replica to stand by", || async {
        third
            .output()
            .contains("waiting for leadership")
            .then_some(())
    })
    .await;
    let terminated_at = Instant::now();
    assert!(case.terminate_operator().await, "SIGTERM stops the leader");
    assert!(
        case.operator.output().contains("leadership released"),
        "{}",
        case.operator.tail(10)
    );
    eventually(WAIT, "the third replica to lead", || async {
        third.output().contains("leadership acquired").then_some(())
    })
    .await;
    let handover = terminated_at.elapsed();
    assert!(
        handover < lease_duration / 2,
        "handover after release took {handover:?}: as long as waiting for the lease to expire"
    );
    case.replace_operator(third).await;
    case.assert_no_leaks(&[key_material(&before_key), key_material(&after_key)].concat())
        .await;
}

pub(crate) async fn one_operator_serves_several_namespaces_and_no_others(env: &Env) {
    let (a, b, c) = (
        create_namespace(env, "multi-a").await,
        create_namespace(env, "multi-b").await,
        create_namespace(env, "multi-c").await,
    );
    let operator = Operator::start(
        &env.plane.operator_kubeconfig,
        &[
            "--watch-namespaces",
            &format!("{a},{b}"),
            "--min-refresh-interval",
            "2s",
            LOCAL_IDP_HOSTS[0],
            LOCAL_IDP_HOSTS[1],
        ],
    );
    let in_a = Case::with_operator(env, a, operator).await;
    ready_client(env, &in_a, "x", None).await;
    let in_b = in_a.move_to(b.clone());
    ready_client(env, &in_b, "y", None).await;
    let in_c = in_b.move_to(c.clone());
    let (client_id, z_key) = keyed_client(env, &in_c, "z", None, None).await;
    // A later event: a client created in a watched namespace after z gets its token, while z,
    // outside, is not touched.
    let in_b = in_c.move_to(b);
    let (_, w_key) = ready_client(env, &in_b, "w", None).await;
    let in_c = in_b.move_to(c.clone());
    assert!(
        in_c.clients().get("z").await.unwrap().status.is_none(),
        "a namespace outside --watch-namespaces was touched"
    );
    assert!(in_c.secrets().get_opt("z-token").await.unwrap().is_none());
    assert_eq!(env.idp.stats(&client_id).await.0, 0);
    assert!(
        !in_c.operator.output().contains(&c),
        "the operator never mentions the unwatched namespace"
    );
    in_c.assert_no_leaks(&[key_material(&z_key), key_material(&w_key)].concat())
        .await;
}

pub(crate) async fn namespaced_mode_touches_only_its_namespaces(env: &Env) {
    let (a, b, c) = (
        create_namespace(env, "team-a").await,
        create_namespace(env, "team-b").await,
        create_namespace(env, "team-c").await,
    );
    // deploy/namespaced/roles.yaml for namespaces a and b, bound to a ServiceAccount that has no
    // cluster-wide rights at all.
    let account = "idv-token-operator-namespaced";
    env.plane
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {}}}\n",
            support::OPERATOR_NAMESPACE
        ))
        .await;
    let roles = std::fs::read_to_string(format!("{}/deploy/namespaced/roles.yaml", support::REPO))
        .unwrap()
        .replace("namespace: team-a", &format!("namespace: {a}"))
        .replace("namespace: team-b", &format!("namespace: {b}"))
        .replace(
            "  - kind: ServiceAccount\n    name: idv-token-operator\n",
            &format!("  - kind: ServiceAccount\n    name: {account}\n"),
        );
    env.plane.apply_yaml(&roles).await;
    let kubeconfig = env
        .plane
        .service_account_kubeconfig(
            support::OPERATOR_NAMESPACE,
            account,
            &format!("{account}.kubeconfig"),
        )
        .await;

    let operator = Operator::start(
        &kubeconfig,
        &[
            "--watch-namespaces",
            &format!("{a},{b}"),
            LOCAL_IDP_HOSTS[0],
            LOCAL_IDP_HOSTS[1],
        ],
    );
    let in_a = Case::with_operator(env, a.clone(), operator).await;
    let (_, x_key) = ready_client(env, &in_a, "x", None).await;
    let in_b = in_a.move_to(b);
    let (_, y_key) = ready_client(env, &in_b, "y", None).await;
    let output = in_b.operator.output().to_lowercase();
    assert!(
        // Not a bare "403": resourceVersions in logged URLs contain it by chance.
        !output.contains("forbidden") && !output.contains("code: 403"),
        "permission errors in namespaced mode:\n{}",
        in_b.operator.tail(20)
    );

    // The identity itself cannot reach into another namespace...
    let restricted = support::client_from(&kubeconfig).await;
    let elsewhere: Api<Secret> = Api::namespaced(restricted.clone(), &c);
    match elsewhere.list(&Default::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("listing Secrets in {c} should be forbidden: {other:?}"),
    }
    // ...and an operator told to watch it anyway gets refused there and touches nothing.
    let in_c = Case::with_operator(
        env,
        c.clone(),
        Operator::start(
            &kubeconfig,
            &[
                "--watch-namespaces",
                &format!("{a},{c}"),
                LOCAL_IDP_HOSTS[0],
                LOCAL_IDP_HOSTS[1],
            ],
        ),
    )
    .await;
    let (client_id, z_key) = keyed_client(env, &in_c, "z", None, None).await;
    eventually(
        WAIT,
        "the operator to report that it may not watch the other namespace",
        || async { in_c.operator.output().contains("403").then_some(()) },
    )
    .await;
    assert!(in_c.clients().get("z").await.unwrap().status.is_none());
    assert!(in_c.secrets().get_opt("z-token").await.unwrap().is_none());
    assert_eq!(env.idp.stats(&client_id).await.0, 0);
    in_b.assert_no_leaks(&[key_material(&x_key), key_material(&y_key)].concat())
        .await;
    in_c.assert_no_leaks(&key_material(&z_key)).await;
}

/// How long one kubectl call may take (it talks to the local apiserver only).
const KUBECTL_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) async fn kubectl_apply_k_installs_everything(env: &Env) {
    // Every kubectl call is bounded: a hung kubectl fails the scenario, it does not hang it.
    let kubectl = |args: &[&str]| {
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&env.plane.admin_kubeconfig)
            .args(args);
        let what = format!("kubectl {}", args.join(" "));
        async move { support::run_bounded(&what, command, KUBECTL_DEADLINE).await }
    };
    let built = kubectl(&["kustomize", &format!("{}/deploy/namespaced", support::REPO)]).await;
    assert!(
        built.status.success(),
        "kubectl kustomize deploy/namespaced: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let applied = kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        &format!("{}/deploy", support::REPO),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "kubectl apply -k deploy/: {}{}",
        stdout,
        String::from_utf8_lossy(&applied.stderr)
    );
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/idvclients.idv-token-operator.dev",
        "namespace/idv-token-operator-system",
        "serviceaccount/idv-token-operator",
        "clusterrole.rbac.authorization.k8s.io/idv-token-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/idv-token-operator",
        "role.rbac.authorization.k8s.io/idv-token-operator-leader-election",
        "deployment.apps/idv-token-operator",
        "poddisruptionbudget.policy/idv-token-operator",
        // The users' roles (their aggregation: below).
        "clusterrole.rbac.authorization.k8s.io/idv-token-operator:view",
        "clusterrole.rbac.authorization.k8s.io/idv-token-operator:edit",
    ] {
        assert!(stdout.contains(object), "{object} not applied:\n{stdout}");
    }
    // `kubectl apply -f crds/` as a new user types it: crds/ is plain CRD YAML (server dry run:
    // the CRD is shared with the other scenarios).
    let crds = kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        &format!("{}/crds/", support::REPO),
    ])
    .await;
    let out = String::from_utf8_lossy(&crds.stdout);
    assert!(
        crds.status.success()
            && out.contains(
                "customresourcedefinition.apiextensions.k8s.io/idvclients.idv-token-operator.dev"
            ),
        "kubectl apply -f crds/: {out}{}",
        String::from_utf8_lossy(&crds.stderr)
    );
    // The users' roles land in view, edit and admin by the aggregation rules this apiserver
    // bootstrapped those roles with. (kube-controller-manager, which copies the rules into them,
    // does not run here: the selectors are evaluated as it would.)
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(env.plane.admin().await);
    let view = aggregated_into(&roles, "idv-token-operator:view").await;
    assert_eq!(view, ["admin", "edit", "view"]);
    let edit = aggregated_into(&roles, "idv-token-operator:edit").await;
    assert_eq!(
        edit,
        ["admin", "edit"],
        "editing IdvClients is not for viewers"
    );
    // kubectl explain shows the doc comments of the Rust types.
    let explain = kubectl(&["explain", "idvclient.spec.refresh.beforeExpiry"]).await;
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.status.success() && text.contains("Refresh this long before the token expires"),
        "{text}"
    );
}

/// Which of the user-facing roles (view, edit, admin) take up the rules of ClusterRole `name`:
/// directly by their aggregation rule's label selectors, or through another of them (`view`
/// itself is aggregated into `edit`).
async fn aggregated_into(
    roles: &Api<k8s_openapi::api::rbac::v1::ClusterRole>,
    name: &str,
) -> Vec<String> {
    let builtin = ["admin", "edit", "view"];
    let mut labels = std::collections::BTreeMap::new();
    let mut selectors = std::collections::BTreeMap::new();
    for role in builtin.iter().copied().chain([name]) {
        let found = roles.get(role).await.unwrap();
        labels.insert(role, found.metadata.labels.clone().unwrap_or_default());
        if let Some(rule) = found.aggregation_rule {
            selectors.insert(role, rule.cluster_role_selectors.unwrap_or_default());
        }
    }
    let selects = |aggregate: &str, member: &str| {
        selectors.get(aggregate).is_some_and(|list| {
            list.iter().any(|selector| {
                assert!(
                    selector.match_expressions.is_none(),
                    "{aggregate}: matchExpressions"
                );
                selector
                    .match_labels
                    .as_ref()
                    .is_some_and(|want| want.iter().all(|(k, v)| labels[member].get(k) == Some(v)))
            })
        })
    };
    let mut into: Vec<String> = Vec::new();
    // Two rounds reach through one intermediate role, the deepest nesting of the three.
    for _ in 0..2 {
        for aggregate in builtin {
            let through = |r: &String| selects(aggregate, r);
            if !into.iter().any(|i| i == aggregate)
                && (selects(aggregate, name) || into.iter().any(through))
            {
                into.push(aggregate.to_string());
            }
        }
    }
    into.sort();
    into
}

pub(crate) async fn the_operator_survives_an_apiserver_restart(env: &Env) {
    let case = Case::new(env, "restart-api", &[]).await;
    let (_, before_key) = ready_client(env, &case, "before", None).await;
    env.plane.stop_apiserver();
    env.plane.start_apiserver().await;
    let mut case = Case {
        admin: env.plane.admin().await,
        ..case
    };
    let restarted = Instant::now();
    let (_, after_key) = ready_client(env, &case, "after", None).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(30),
        "served {:?} after the restart",
        restarted.elapsed()
    );
    assert!(case.operator.process.is_running());
    case.assert_no_leaks(&[key_material(&before_key), key_material(&after_key)].concat())
        .await;
}

/// Store IdvClients as the API takes them while the CRD has no CEL rules
/// (`install_crd_without_cel`): retried until the apiserver uses the new schema.
async fn store_past_admission<'a>(
    case: &Case,
    clients: impl Iterator<Item = (&'a str, &'a Value)>,
) {
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        case.admin.clone(),
        &case.ns,
        &kube::api::ApiResource::erase::<IdvClient>(&()),
    );
    for (name, spec) in clients {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        // The apiserver takes the new schema a moment after the CRD update.
        eventually(
            WAIT,
            "the CRD without CEL rules to be in effect",
            || async { raw.create(&PostParams::default(), &object).await.ok() },
        )
        .await;
    }
}

/// The CRD as `crds/` has it, but without its CEL rules: what objects stored under an older CRD
/// (or on an apiserver without CEL) got past.
pub(crate) async fn install_crd_without_cel(env: &Env) {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/idvclients.yaml"))
            .unwrap();
    let mut crd: Value = serde_yaml::from_str(text.trim_start_matches("---\n")).unwrap();
    strip(&mut crd);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.plane.admin().await);
    crds.patch(
        crd["metadata"]["name"].as_str().unwrap(),
        // The manager `install_crds` uses: its next apply restores the rules.
        &PatchParams::apply("envtest").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
}

/// Secret names that are URL syntax, in IdvClients stored before the CRD refused them: the
/// operator refuses them before any API call (`?watch=true` once held a worker for ever, and
/// `?x=1` listed every Secret of the namespace into the log), and a good IdvClient next to them
/// still gets its token.
pub(crate) async fn names_that_got_past_admission_never_reach_the_apiserver(env: &Env) {
    let mut case = Case::new(
        env,
        "old-names",
        &["--log-format", "json", "--concurrency", "4"],
    )
    .await;
    let password = format!("other-teams-password-{}", uuid::Uuid::new_v4());
    case.put_secret("database", &[("password", password.as_bytes())])
        .await;
    install_crd_without_cel(env).await;
    let key = |name: &str| json!({"secretRef": {"name": name, "key": "jwk.json"}});
    let spec = |private_key: Value, secret: Value| {
        json!({
            "clientId": "c",
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": private_key,
            "secret": secret,
        })
    };
    // More `?watch=true` clients than reconcile workers (--concurrency 4).
    let mut hostile = vec![
        (
            "list",
            spec(key("?x=1"), json!({})),
            "spec.privateKey.secretRef.name",
        ),
        (
            "slash",
            spec(key("a/b"), json!({})),
            "spec.privateKey.secretRef.name",
        ),
        (
            "token-watch",
            spec(key("k"), json!({"name": "?watch=true"})),
            "spec.secret.name",
        ),
    ];
    for i in 0..5 {
        hostile.push((
            ["watch-0", "watch-1", "watch-2", "watch-3", "watch-4"][i],
            spec(key("?watch=true"), json!({})),
            "spec.privateKey.secretRef.name",
        ));
    }
    store_past_admission(&case, hostile.iter().map(|(name, spec, _)| (*name, spec))).await;
    let started = Instant::now();
    keyed_client(env, &case, "good", None, None).await;
    for (name, _, field) in &hostile {
        let condition = case.wait_not_ready(name, "InvalidSpec").await;
        assert!(
            condition.message.contains(field),
            "{name}: {}",
            condition.message
        );
        assert!(
            !condition.message.contains('?'),
            "{name}: {}",
            condition.message
        );
    }
    case.wait_ready("good").await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the good client waited {:?}",
        started.elapsed()
    );
    let op = &case.operator;
    assert_eq!(
        op.get(op.health_port(), "/healthz").await,
        Some((200, "ok\n".to_string()))
    );
    env.plane.install_crds().await;
    let leaked = [password.clone(), STANDARD_B64.encode(&password)];
    case.assert_no_leaks(&leaked).await;
    assert!(
        case.terminate_operator().await,
        "SIGTERM stops the operator"
    );
}

/// An IdvClient deleted while the operator's watch was down sends no Delete event: the relist
/// that follows must still make the operator forget it (metric series, retries).
pub(crate) async fn a_client_deleted_while_the_watch_was_down_is_forgotten(env: &Env) {
    let case = Case::new(env, "missed-delete", &[]).await;
    ready_client(env, &case, "kept", None).await;
    let (gone_id, _) = keyed_client(
        env,
        &case,
        "gone",
        None,
        Some(
            json!({"mode": "respond", "status": 503, "content_type": "text/plain", "body": "down"}),
        ),
    )
    .await;
    case.wait_not_ready("gone", "IdpUnavailable").await;
    // A token for "gone" first, so that it has a metric series: the IdP recovers once.
    env.idp
        .fault(json!({"client_id": gone_id, "mode": "none"}))
        .await;
    case.wait_ready("gone").await;
    env.idp
        .fault(json!({"client_id": gone_id, "mode": "respond", "status": 503, "content_type": "text/plain", "body": "down"}))
        .await;
    let port = case.operator.metrics_port();
    assert_eq!(
        expiry_series(&case.operator, port, "gone").await,
        Some(true)
    );

    // Freeze the operator, restart the apiserver (its watch history starts anew), delete the
    // client, then let the operator go on: its watch resumes from before the restart, must
    // relist, and never sees the Delete.
    let pid = case.operator.process.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    env.plane.stop_apiserver();
    env.plane.start_apiserver().await;
    let case = Case {
        admin: env.plane.admin().await,
        ..case
    };
    let deleted = case
        .clients()
        .delete("gone", &DeleteParams::default())
        .await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    deleted.unwrap();
    eventually(
        WAIT,
        "the deleted client's series to leave /metrics",
        || async {
            (expiry_series(&case.operator, port, "gone").await == Some(false)).then_some(())
        },
    )
    .await;
    assert_eq!(
        expiry_series(&case.operator, port, "kept").await,
        Some(true),
        "the live client's series stays"
    );
    // Nothing is retried for it: its IdP counter stays put while a new client gets a token.
    let before = env.idp.stats(&gone_id).await;
    ready_client(env, &case, "later", None).await;
    assert_eq!(env.idp.stats(&gone_id).await, before);
}

/// Whether /metrics has a token expiry series for the IdvClient `name` (None: no answer).
async fn expiry_series(operator: &Operator, port: u16, name: &str) -> Option<bool> {
    let (_, body) = operator.get(port, "/metrics").await?;
    Some(body.lines().any(|l| {
        l.starts_with("idv_token_operator_token_expiry_timestamp_seconds")
            && l.contains(&format!("name=\"{name}\""))
    }))
}

/// Specs that the CRD's rules refuse, stored before those rules existed (the CRD without its CEL
/// rules), and a rule the CRD cannot express (a client secret that is not text): the operator's
/// own checks give InvalidSpec, before any credential is read or sent; a good client next to
/// them gets its token.
pub(crate) async fn specs_that_got_past_admission_are_refused_by_the_operator(env: &Env) {
    let mut case = Case::new(env, "old-specs", &[]).await;
    let (client_id, private) = registered_key(env, &case, "jwk", KeygenAlgorithm::Es256).await;
    case.put_secret("binary", &[("secret", &[0xff, 0xfe, 0x00, 0x80])])
        .await;
    let key = json!({"secretRef": {"name": "jwk", "key": "jwk.json"}});
    let base = json!({
        "clientId": client_id,
        "authServer": {"tokenEndpoint": env.idp.token_endpoint},
        "privateKey": key,
    });
    let with = |field: &str, value: Value| {
        let mut spec = base.clone();
        if value.is_null() {
            spec.as_object_mut().unwrap().remove(field);
        } else {
            spec[field] = value;
        }
        spec
    };
    let cases = [
        (
            "blank-id",
            with("clientId", json!("  ")),
            "clientId must not be empty",
        ),
        (
            "two-servers",
            with(
                "authServer",
                json!({"tokenEndpoint": env.idp.token_endpoint, "issuer": env.idp.issuer}),
            ),
            "set exactly one of environment, issuer or tokenEndpoint",
        ),
        (
            "no-server",
            with("authServer", json!({})),
            "set exactly one of environment, issuer or tokenEndpoint",
        ),
        (
            "plain-http",
            with(
                "authServer",
                json!({"tokenEndpoint": "http://idp.example/token"}),
            ),
            "tokenEndpoint must use https",
        ),
        (
            "not-a-url",
            with("authServer", json!({"tokenEndpoint": "not a url"})),
            "tokenEndpoint is not a valid URL",
        ),
        (
            "soon",
            with("refresh", json!({"beforeExpiry": "soon"})),
            "invalid spec",
        ),
        (
            "both-credentials",
            with(
                "clientSecret",
                json!({"secretRef": {"name": "binary", "key": "secret"}}),
            ),
            "set exactly one of privateKey and clientSecret",
        ),
        (
            "no-credential",
            with("privateKey", Value::Null),
            "set exactly one of privateKey and clientSecret",
        ),
    ];
    install_crd_without_cel(env).await;
    store_past_admission(&case, cases.iter().map(|(name, spec, _)| (*name, spec))).await;
    // The rules back at once: the objects stay stored as they are.
    env.plane.install_crds().await;
    // Valid for the CRD; only the operator can tell that the secret is not text.
    let mut binary = with("privateKey", Value::Null);
    binary["clientSecret"] = json!({"secretRef": {"name": "binary", "key": "secret"}});
    case.put_client("binary-secret", binary).await;
    case.put_client("good", base.clone()).await;

    let mut expected: Vec<(&str, &str)> = cases.iter().map(|(n, _, m)| (*n, *m)).collect();
    expected.push((
        "binary-secret",
        "the client secret in Secret \"binary\" is not UTF-8",
    ));
    for (name, message) in expected {
        let condition = case.wait_not_ready(name, "InvalidSpec").await;
        assert!(
            condition.message.contains(message),
            "{name}: {:?} lacks {message:?}",
            condition.message
        );
        assert!(
            case.secrets()
                .get_opt(&format!("{name}-token"))
                .await
                .unwrap()
                .is_none(),
            "{name}: no token Secret"
        );
    }
    case.wait_ready("good").await;
    assert_eq!(
        env.idp.stats(&client_id).await,
        (1, 1),
        "only the good client asked the IdP"
    );
    assert!(case.operator.process.is_running());
    case.assert_no_leaks(&key_material(&private)).await;
}
