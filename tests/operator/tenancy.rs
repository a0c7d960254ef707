//! One tenant against another: where credentials may go, which Secrets count as credentials, fairness.

use crate::case::*;

/// Where credentials may go: by default only to the IDV hosts; `*` is any host but loopback;
/// a loopback host only when named; a discovered token endpoint passes the same policy.
pub(crate) async fn allowed_token_hosts_keep_assertions_home(env: &Env) {
    let ns = create_namespace(env, "allowlist").await;
    // No --allowed-token-hosts: the default.
    let operator = Operator::start(&env.plane.operator_kubeconfig, &["--watch-namespace", &ns]);
    let mut case = Case::with_operator(env, ns, operator).await;
    let (client_id, private) = registered_key(env, &case, "jwk", KeygenAlgorithm::Es256).await;
    let (secret_client_id, client_secret) = env.idp.register_with_secret().await;
    case.put_secret("client-secret", &[("secret", client_secret.as_bytes())])
        .await;
    let names = ["endpoint", "issuer", "basic"];
    for (name, server) in [
        ("endpoint", json!({"tokenEndpoint": env.idp.token_endpoint})),
        ("issuer", json!({"issuer": env.idp.issuer})),
    ] {
        case.put_client(
            name,
            json!({
                "clientId": client_id,
                "authServer": server,
                "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
            }),
        )
        .await;
    }
    case.put_client(
        "basic",
        json!({
            "clientId": secret_client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "clientSecret": {"secretRef": {"name": "client-secret", "key": "secret"}},
        }),
    )
    .await;
    for name in names {
        let condition = case.wait_not_ready(name, "TokenHostNotAllowed").await;
        assert!(
            condition.message.contains("\"127.0.0.1\"")
                && condition.message.contains("--allowed-token-hosts")
                && condition.message.contains("default: the IDV hosts"),
            "{}",
            condition.message
        );
    }
    let started = case.operator.output();
    assert!(
        started.contains("assertions and client secrets are sent only to these hosts")
            && started.contains("authenticatie.vlaanderen.be,authenticatie-ti.vlaanderen.be,oauth.vlaanderen.be,beta.oauth.vlaanderen.be"),
        "the effective policy is logged at start:\n{}",
        case.operator.tail(40)
    );

    // `*` does not include loopback: still refused, and the message says why.
    case.restart_operator(env, &["--allowed-token-hosts", "*"])
        .await;
    for name in names {
        case.wait_client(name, "refused with the loopback hint", |c| {
            ready(c).is_some_and(|r| {
                r.reason == "TokenHostNotAllowed" && r.message.contains("`*` does not include it")
            })
        })
        .await;
    }
    assert_eq!(env.idp.stats(&client_id).await.0, 0, "no assertion left");
    assert_eq!(
        env.idp.stats(&secret_client_id).await.0,
        0,
        "no client secret left"
    );

    // Named literally, the local IdP is allowed...
    case.restart_operator(env, &[]).await;
    for name in names {
        case.wait_ready(name).await;
    }
    // ...but not a token endpoint that discovery names by another host.
    case.put_client(
        "discovered",
        json!({
            "clientId": client_id,
            "authServer": {"issuer": format!("{}/__test/issuer-via-localhost", env.idp.issuer)},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let condition = case
        .wait_not_ready("discovered", "TokenHostNotAllowed")
        .await;
    assert!(
        condition.message.contains("\"localhost\""),
        "{}",
        condition.message
    );
    let sent = env.idp.assertions(&client_id).await;
    assert_eq!(sent.len(), 2, "one assertion per allowed client: {sent:?}");
    let mut secrets = key_material(&private);
    secrets.push(client_secret);
    case.assert_no_leaks(&secrets).await;
}

/// An assertionAudience names the server the assertion is sent to, or nothing is sent.
pub(crate) async fn an_assertion_audience_points_only_at_its_own_server(env: &Env) {
    let case = Case::new(env, "audience", &[]).await;
    let (client_id, private) = registered_key(env, &case, "jwk", KeygenAlgorithm::Es256).await;
    let acm = "https://authenticatie.vlaanderen.be/op";
    let cases = [
        (
            "endpoint-acm",
            json!({"tokenEndpoint": env.idp.token_endpoint, "assertionAudience": acm}),
        ),
        (
            "issuer-acm",
            json!({"issuer": env.idp.issuer, "assertionAudience": acm}),
        ),
        (
            "endpoint-home",
            json!({"tokenEndpoint": env.idp.token_endpoint, "assertionAudience": env.idp.issuer}),
        ),
    ];
    for (name, server) in &cases {
        case.put_client(
            name,
            json!({
                "clientId": client_id,
                "authServer": server,
                "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
            }),
        )
        .await;
    }
    for name in ["endpoint-acm", "issuer-acm"] {
        let condition = case.wait_not_ready(name, "InvalidSpec").await;
        assert!(
            condition.message.contains("assertionAudience")
                && condition.message.contains("\"127.0.0.1\""),
            "{}",
            condition.message
        );
    }
    case.wait_ready("endpoint-home").await;
    let sent = env.idp.assertions(&client_id).await;
    assert_eq!(sent.len(), 1, "only the home audience was sent: {sent:?}");
    assert_eq!(sent[0]["payload"]["aud"], json!(env.idp.issuer));
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn a_hanging_token_endpoint_does_not_starve_other_clients(env: &Env) {
    let case = Case::new(env, "starve", &[]).await;
    // A client that is Ready before the trouble starts, to force-refresh during it.
    let (steady_id, steady_key) = ready_client(env, &case, "steady", None).await;
    let hanging = HangingEndpoint::start().await;
    let private = private_key(KeygenAlgorithm::Es256);
    case.put_secret(
        "hang-jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    for i in 0..40 {
        case.put_client(
            &format!("hang-{i}"),
            json!({
                "clientId": format!("hang-{i}"),
                "authServer": {"tokenEndpoint": hanging.url},
                "privateKey": {"secretRef": {"name": "hang-jwk", "key": "jwk.json"}},
            }),
        )
        .await;
    }
    // The hanging requests hold as many slots as they can get (at least the 4 workers' worth).
    eventually(WAIT, "requests hanging at the endpoint", || async {
        (hanging.accepted.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;

    let started = Instant::now();
    keyed_client(env, &case, "newcomer", None, None).await;
    case.wait_ready("newcomer").await;
    let new_client = started.elapsed();

    let first = text(
        &case.secrets().get("steady-token").await.unwrap(),
        "access_token",
    );
    let started = Instant::now();
    let patch = json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: "now"}}});
    case.clients()
        .patch("steady", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_secret("steady-token", "a forced token", |s| {
        text(s, "access_token") != first
    })
    .await;
    let forced = started.elapsed();
    assert!(
        new_client < Duration::from_secs(5),
        "a new client waited {new_client:?} behind 40 hanging ones"
    );
    assert!(
        forced < Duration::from_secs(5),
        "a force-refresh waited {forced:?} behind 40 hanging clients"
    );
    assert_eq!(env.idp.stats(&steady_id).await, (2, 2));
    drop(hanging);
    let mut secrets = key_material(&private);
    secrets.extend(key_material(&steady_key));
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn a_credential_secret_must_be_labelled(env: &Env) {
    let case = Case::new(env, "label", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    let jwk = serde_json::to_vec(&private).unwrap();
    case.put_secret_labelled("plain-jwk", &[("jwk.json", &jwk)], &[])
        .await;
    case.put_secret_labelled("other", &[("password", b"db-password-1234")], &[])
        .await;
    for (name, secret, key) in [
        ("unlabelled", "plain-jwk", "jwk.json"),
        // A key that is not there gives the same answer: no hint about the content.
        ("probe", "other", "no-such-key"),
        ("probe2", "other", "password"),
    ] {
        case.put_client(
            name,
            json!({
                "clientId": client_id,
                "authServer": {"tokenEndpoint": env.idp.token_endpoint},
                "privateKey": {"secretRef": {"name": secret, "key": key}},
            }),
        )
        .await;
    }
    let condition = case
        .wait_not_ready("unlabelled", "CredentialNotLabelled")
        .await;
    assert!(
        condition.message.contains(api::CREDENTIAL_LABEL),
        "the message says which label to add: {}",
        condition.message
    );
    let missing = case.wait_not_ready("probe", "CredentialNotLabelled").await;
    let present = case.wait_not_ready("probe2", "CredentialNotLabelled").await;
    let cause = |m: &str| m.split("; next attempt").next().unwrap().to_string();
    assert_eq!(
        cause(&missing.message),
        cause(&present.message),
        "whether the key exists does not show"
    );
    assert_eq!(env.idp.stats(&client_id).await, (0, 0));

    // Labelling the Secret is enough: the client gets its token at once.
    let patch = json!({"metadata": {"labels": {api::CREDENTIAL_LABEL: "true"}}});
    case.secrets()
        .patch("plain-jwk", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_ready("unlabelled").await;
    let mut secrets = key_material(&private);
    secrets.push("db-password-1234".into());
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn one_secret_is_not_a_key_and_a_client_secret_at_once(env: &Env) {
    let case = Case::new(env, "kind", &[]).await;
    let (client_id, client_secret) = env.idp.register_with_secret().await;
    case.put_secret("shared", &[("value", client_secret.as_bytes())])
        .await;
    case.put_client(
        "by-secret",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "clientSecret": {"secretRef": {"name": "shared", "key": "value"}},
        }),
    )
    .await;
    case.wait_ready("by-secret").await;
    // The same bytes named as a private key: not a key, whatever another client parsed them as.
    case.put_client(
        "by-key",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "shared", "key": "value"}},
        }),
    )
    .await;
    case.wait_not_ready("by-key", "InvalidKey").await;
    assert_eq!(
        env.idp.stats(&client_id).await,
        (1, 1),
        "the client secret was sent once, by the client that names it"
    );
    case.assert_no_leaks(&[client_secret]).await;
}

/// `--max-concurrent-token-requests 3`: the IdP never sees more than 3 token requests at once,
/// across hosts. Each host may hold all but one slot (2 here), so two hosts alone would allow
/// 4: the peak of 3 is the global limit at work. Every answer takes 1.5 s, so requests overlap.
pub(crate) async fn the_idp_sees_at_most_max_concurrent_token_requests(env: &Env) {
    let case = Case::new(
        env,
        "limit",
        &[
            "--max-concurrent-token-requests",
            "3",
            "--allowed-token-hosts",
            "127.0.0.1,localhost",
        ],
    )
    .await;
    // One client id for all: the IdP counts their requests together. The fault answers before
    // the provider looks at the client, so it needs no registration.
    let client_id = format!("limit-{}", case.ns);
    let token = format!("limited-token-{}", uuid::Uuid::new_v4());
    let body = json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600});
    env.idp
        .fault(
            json!({"client_id": client_id, "mode": "respond", "status": 200,
            "content_type": "application/json", "body": body.to_string(), "delay_ms": 1500}),
        )
        .await;
    let private = private_key(KeygenAlgorithm::Es256);
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    let localhost = env.idp.token_endpoint.replace("127.0.0.1", "localhost");
    let names: Vec<String> = (0..10).map(|i| format!("limited-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let endpoint = if i % 2 == 0 {
            &env.idp.token_endpoint
        } else {
            &localhost
        };
        case.put_client(
            name,
            json!({
                "clientId": client_id,
                "authServer": {"tokenEndpoint": endpoint},
                "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
            }),
        )
        .await;
    }
    for name in &names {
        case.wait_ready(name).await;
    }
    let (in_flight, peak) = env.idp.in_flight(&client_id).await;
    assert_eq!(in_flight, 0);
    assert_eq!(
        peak, 3,
        "the IdP saw {peak} token requests at once with --max-concurrent-token-requests 3"
    );
    assert_eq!(
        env.idp.stats(&client_id).await.0,
        10,
        "one request per client"
    );
    env.idp
        .fault(json!({"client_id": client_id, "mode": "none"}))
        .await;
    let mut secrets = key_material(&private);
    secrets.push(token);
    case.assert_no_leaks(&secrets).await;
}
