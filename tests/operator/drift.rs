//! The token Secret over time: restarts, edits, someone else's Secrets, writes that cannot succeed.

use crate::case::*;

pub(crate) async fn a_foreign_secret_of_the_same_name_is_left_untouched(env: &Env) {
    let case = Case::new(env, "foreign", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    let foreign = case
        .put_secret_labelled("mine-token", &[("password", b"hunter2-do-not-touch")], &[])
        .await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    case.put_client(
        "mine",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let condition = case.wait_not_ready("mine", "SecretConflict").await;
    assert!(
        condition.message.contains("\"mine-token\""),
        "{}",
        condition.message
    );
    let after = case.secrets().get("mine-token").await.unwrap();
    assert_eq!(
        after.resource_version(),
        foreign.resource_version(),
        "the foreign Secret was written to"
    );
    assert_eq!(after.data, foreign.data);
    assert_eq!(
        env.idp.stats(&client_id).await.0,
        0,
        "no token is fetched that could not be stored"
    );
}

pub(crate) async fn a_restarted_operator_reuses_the_recorded_token(env: &Env) {
    let mut case = Case::new(env, "restart", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    let names = ["one", "two", "three"];
    for name in names {
        case.put_client(
            name,
            json!({
                "clientId": client_id,
                "authServer": {"tokenEndpoint": env.idp.token_endpoint},
                "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
                // Longer than the lifetime: clamped to the default, and said so in the status.
                "refresh": {"beforeExpiry": "2h"},
            }),
        )
        .await;
    }
    let mut before = Vec::new();
    for name in names {
        let client = case.wait_ready(name).await;
        let message = ready(&client).unwrap().message;
        assert!(
            message.contains("not shorter than the token lifetime"),
            "{message}"
        );
        before.push((
            client.status.clone(),
            case.wait_secret(&format!("{name}-token"), "exists", |_| true)
                .await,
        ));
    }
    assert_eq!(env.idp.stats(&client_id).await.0, 3);
    assert!(
        case.operator.process.terminate(Duration::from_secs(10)),
        "SIGTERM stops the operator"
    );

    case.operator = Case::start_operator(env, &case.ns, &[]);
    eventually(WAIT, "the new operator to reconcile all clients", || {
        let reconciled = case.operator.output().matches("reconciled object=").count();
        async move { (reconciled >= names.len()).then_some(()) }
    })
    .await;
    assert_eq!(
        env.idp.stats(&client_id).await.0,
        3,
        "no token request after a restart while tokens are valid"
    );
    for (name, (status, secret)) in names.iter().zip(&before) {
        let after = case.secrets().get(&format!("{name}-token")).await.unwrap();
        assert_eq!(
            after.resource_version(),
            secret.resource_version(),
            "no Secret write after a restart"
        );
        assert_eq!(
            &case.clients().get(name).await.unwrap().status,
            status,
            "the same status after a restart"
        );
    }
    case.assert_no_leaks(
        &before
            .iter()
            .map(|(_, s)| text(s, "access_token"))
            .collect::<Vec<_>>(),
    )
    .await;
}

pub(crate) async fn drift_is_repaired(env: &Env) {
    let mut case = Case::new(env, "drift", &[]).await;
    ready_client(env, &case, "drifty", None).await;
    let secrets = case.secrets();
    let original = secrets.get("drifty-token").await.unwrap();

    secrets
        .delete("drifty-token", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = case
        .wait_secret("drifty-token", "recreated", |s| s.uid() != original.uid())
        .await;
    assert_eq!(
        env.idp.introspect(&text(&recreated, "access_token")).await["active"],
        json!(true)
    );

    let tamper = json!({"data": {"access_token": STANDARD_B64.encode("tampered")}});
    secrets
        .patch(
            "drifty-token",
            &PatchParams::default(),
            &Patch::Merge(&tamper),
        )
        .await
        .unwrap();
    let repaired = case
        .wait_secret("drifty-token", "repaired data", |s| {
            text(s, "access_token") != "tampered"
        })
        .await;
    assert_eq!(
        env.idp.introspect(&text(&repaired, "access_token")).await["active"],
        json!(true)
    );

    let unlabel = json!({"metadata": {"labels": {api::MANAGED_BY_LABEL: null}}});
    secrets
        .patch(
            "drifty-token",
            &PatchParams::default(),
            &Patch::Merge(&unlabel),
        )
        .await
        .unwrap();
    case.wait_secret("drifty-token", "the managed-by label back", |s| {
        s.labels().get(api::MANAGED_BY_LABEL).is_some()
    })
    .await;
    assert!(case.operator.process.is_running());
}

pub(crate) async fn edited_bookkeeping_is_repaired_not_trusted(env: &Env) {
    let case = Case::new(env, "bookkeeping", &[]).await;
    let (client_id, _) = ready_client(env, &case, "kept", None).await;
    let first = case.secrets().get("kept-token").await.unwrap();
    let patch = json!({"metadata": {"annotations": {
        api::EXPIRES_AT_ANNOTATION: "2099-01-01T00:00:00Z",
        api::REFRESH_AT_ANNOTATION: "2099-01-01T00:00:00Z",
    }}});
    case.secrets()
        .patch("kept-token", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let repaired = case
        .wait_secret("kept-token", "a new token with real bookkeeping", |s| {
            text(s, "access_token") != text(&first, "access_token")
        })
        .await;
    let annotations = repaired.metadata.annotations.unwrap();
    assert!(!annotations[api::REFRESH_AT_ANNOTATION].starts_with("2099"));
    assert!(!annotations[api::EXPIRES_AT_ANNOTATION].starts_with("2099"));
    let client = case
        .wait_client("kept", "status without the forged expiry", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.expires_at.as_deref())
                .is_some_and(|e| !e.starts_with("2099"))
                && ready(c).is_some_and(|r| r.status == "True")
        })
        .await;
    assert!(
        !serde_json::to_string(&client.status)
            .unwrap()
            .contains("2099")
    );
    assert_eq!(env.idp.stats(&client_id).await, (2, 2));
}

pub(crate) async fn an_unwritable_secret_costs_no_tokens(env: &Env) {
    let case = Case::new(env, "unwritable", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "stuck-jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    // A full Secret quota. There is no kube-controller-manager here to count the usage, so
    // the test writes it: one Secret (the key) of one allowed.
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(case.admin.clone(), &case.ns);
    let quota = serde_json::from_value(json!({
        "metadata": {"name": "secrets"},
        "spec": {"hard": {"secrets": "1"}},
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let usage = json!({"status": {"hard": {"secrets": "1"}, "used": {"secrets": "1"}}});
    quotas
        .patch_status("secrets", &PatchParams::default(), &Patch::Merge(&usage))
        .await
        .unwrap();
    case.put_client(
        "stuck",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "stuck-jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let condition = case.wait_not_ready("stuck", "SecretNotWritable").await;
    assert!(
        condition.message.contains("stuck-token"),
        "{}",
        condition.message
    );
    // Watch for a while: no token is requested while it cannot be stored.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(env.idp.stats(&client_id).await, (0, 0));
    let client = case.clients().get("stuck").await.unwrap();
    assert_eq!(
        ready(&client).unwrap().reason,
        "SecretNotWritable",
        "a configuration error: retried slowly"
    );
    // Once the quota is gone, a change of the client brings the token.
    quotas
        .delete("secrets", &DeleteParams::default())
        .await
        .unwrap();
    let patch = json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: "retry"}}});
    case.clients()
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_ready("stuck").await;
    assert_eq!(env.idp.stats(&client_id).await, (1, 1));
}

pub(crate) async fn a_secret_with_a_copied_owner_reference_is_not_adopted(env: &Env) {
    let case = Case::new(env, "forged", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "victim-jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    // Suspended, so that the Secret below exists before the operator first looks.
    let client = case
        .put_client(
            "victim",
            json!({
                "clientId": client_id,
                "authServer": {"tokenEndpoint": env.idp.token_endpoint},
                "privateKey": {"secretRef": {"name": "victim-jwk", "key": "jwk.json"}},
                "suspend": true,
            }),
        )
        .await;
    case.wait_not_ready("victim", "Suspended").await;
    let owner = json!({
        "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
        "name": "victim", "uid": client.metadata.uid, "controller": true,
    });
    let forged: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "victim-token",
            "labels": {api::MANAGED_BY_LABEL: api::MANAGED_BY_VALUE},
            // e.g. a replicator's annotation that copies it to another namespace
            "annotations": {"replicate-to": "elsewhere"},
            "ownerReferences": [owner],
        },
        "stringData": {"access_token": "planted"},
    }))
    .unwrap();
    let forged = case
        .secrets()
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let patch = json!({"spec": {"suspend": false}});
    case.clients()
        .patch("victim", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_not_ready("victim", "SecretConflict").await;
    let after = case.secrets().get("victim-token").await.unwrap();
    assert_eq!(
        after.data, forged.data,
        "the planted Secret is left untouched"
    );
    assert_eq!(
        env.idp.stats(&client_id).await,
        (0, 0),
        "no token fetched for it"
    );
}
