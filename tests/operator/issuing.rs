//! Issuing and refreshing tokens: the paths that end in a token Secret.

use crate::case::*;

pub(crate) async fn token_secret_holds_a_token_the_idp_issued(env: &Env) {
    let case = Case::new(env, "issue", &[]).await;
    let (client_id, private) =
        registered_key(env, &case, "gipod-jwk", KeygenAlgorithm::Rs256).await;
    let created = case
        .put_client(
            "gipod",
            json!({
                "clientId": client_id,
                "authServer": {"issuer": env.idp.issuer},
                "privateKey": {"secretRef": {"name": "gipod-jwk", "key": "jwk.json"}},
                "scopes": ["gipod_read"],
                "secret": {"labels": {"team": "roads"}},
            }),
        )
        .await;

    let client = case.wait_ready("gipod").await;
    let secret = case.wait_secret("gipod-token", "exists", |_| true).await;
    let token = text(&secret, "access_token");
    assert_eq!(text(&secret, "authorization"), format!("Bearer {token}"));
    assert_eq!(text(&secret, "token_type"), "Bearer");
    assert_eq!(text(&secret, "scope"), "gipod_read");
    let expires_at: jiff::Timestamp = text(&secret, "expires_at").parse().unwrap();

    // The IdP itself vouches for the token.
    let introspection = env.idp.introspect(&token).await;
    assert_eq!(introspection["active"], json!(true), "{introspection}");
    assert_eq!(introspection["client_id"], json!(client_id));
    assert_eq!(introspection["scope"], json!("gipod_read"));
    assert!((introspection["exp"].as_i64().unwrap() - expires_at.as_second()).abs() <= 5);

    // Owned, labelled, annotated.
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("IdvClient", "gipod", Some(true))
    );
    assert_eq!(Some(owner.uid.as_str()), created.metadata.uid.as_deref());
    assert_eq!(
        secret.labels()[api::MANAGED_BY_LABEL],
        api::MANAGED_BY_VALUE
    );
    assert_eq!(secret.labels()["team"], "roads");
    for annotation in [
        api::EXPIRES_AT_ANNOTATION,
        api::REFRESH_AT_ANNOTATION,
        api::INPUTS_HASH_ANNOTATION,
    ] {
        assert!(
            secret.annotations().contains_key(annotation),
            "{annotation}"
        );
    }

    // Status.
    let status = client.status.clone().unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("gipod-token"));
    assert_eq!(status.key_id.as_deref(), private["kid"].as_str());
    assert_eq!(
        status.expires_at.as_deref(),
        Some(expires_at.to_string().as_str())
    );
    assert_eq!(status.observed_generation, client.metadata.generation);
    let refresh_at: jiff::Timestamp = status.refresh_at.unwrap().parse().unwrap();
    assert!(refresh_at < expires_at);

    // The assertion followed the rules: issuer as aud in issuer mode.
    let assertions = env.idp.assertions(&client_id).await;
    assert_eq!(assertions.len(), 1, "exactly one token request");
    let (header, claims) = (&assertions[0]["header"], &assertions[0]["payload"]);
    assert_eq!(claims["iss"], json!(client_id));
    assert_eq!(claims["sub"], json!(client_id));
    assert_eq!(claims["aud"], json!(env.idp.issuer));
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);
    assert_eq!(
        uuid::Uuid::parse_str(claims["jti"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        4
    );
    assert_eq!(header["alg"], json!("RS256"));
    assert_eq!(header["kid"], private["kid"]);

    let mut secrets = key_material(&private);
    secrets.push(token);
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn token_endpoint_mode_with_ec_key_from_a_jwk_set(env: &Env) {
    let case = Case::new(env, "ec", &[]).await;
    let old = private_key(KeygenAlgorithm::Rs256);
    let new = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&new)], None).await;
    let set = json!({"keys": [old, new]});
    case.put_secret("keys", &[("jwks.json", &serde_json::to_vec(&set).unwrap())])
        .await;
    case.put_client(
        "awv",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "keys", "key": "jwks.json"}, "keyId": new["kid"]},
            "secret": {"name": "awv-bearer"},
        }),
    )
    .await;
    let client = case.wait_ready("awv").await;
    assert_eq!(
        client.status.unwrap().key_id.as_deref(),
        new["kid"].as_str()
    );
    let secret = case.wait_secret("awv-bearer", "exists", |_| true).await;
    let token = text(&secret, "access_token");
    assert_eq!(env.idp.introspect(&token).await["active"], json!(true));
    let assertions = env.idp.assertions(&client_id).await;
    assert_eq!(
        assertions[0]["payload"]["aud"],
        json!(env.idp.token_endpoint),
        "tokenEndpoint mode: aud is the endpoint"
    );
    assert_eq!(assertions[0]["header"]["alg"], json!("ES256"));
    let mut secrets = key_material(&old);
    secrets.extend(key_material(&new));
    secrets.push(token);
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn short_lived_token_is_refreshed_before_it_expires(env: &Env) {
    let case = Case::new(env, "refresh", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], Some(9)).await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    case.put_client(
        "short",
        json!({
            "clientId": client_id,
            "authServer": {"issuer": env.idp.issuer},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let first = case.wait_secret("short-token", "exists", |_| true).await;
    let first_token = text(&first, "access_token");
    let first_expiry: jiff::Timestamp = text(&first, "expires_at").parse().unwrap();
    let second = case
        .wait_secret("short-token", "a new token", |s| {
            text(s, "access_token") != first_token
        })
        .await;
    let replaced_at = jiff::Timestamp::now();
    assert!(
        replaced_at < first_expiry,
        "refreshed at {replaced_at}, after the old token expired at {first_expiry}"
    );
    let second_token = text(&second, "access_token");
    assert_eq!(
        env.idp.introspect(&second_token).await["active"],
        json!(true)
    );
    let (requests, successes) = env.idp.stats(&client_id).await;
    assert!(
        successes >= 2 && requests == successes,
        "{requests} requests, {successes} successes"
    );
    // A first token is news, a routine refresh is not. A forced token is news too: its Event,
    // queued after any the refresh would have brought, is the later event to wait for.
    let patch =
        json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: "after-refresh"}}});
    case.clients()
        .patch("short", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(WAIT, "the forced token's Event", || async {
        let notes = case.event_notes("TokenIssued").await;
        notes
            .iter()
            .any(|n| n.contains("the client's spec or key changed"))
            .then_some(())
    })
    .await;
    let issued = case.event_notes("TokenIssued").await;
    assert_eq!(
        issued.len(),
        2,
        "no Event for the routine refresh: {issued:?}"
    );
    assert!(
        issued.iter().any(|n| n.contains("no token Secret yet")),
        "{issued:?}"
    );
    case.assert_no_leaks(&[first_token, second_token]).await;
}

pub(crate) async fn tiny_lifetimes_do_not_cause_a_hot_loop(env: &Env) {
    let case = Case::new(env, "tiny", &[]).await;
    let body =
        json!({"access_token": "short-lived-token", "token_type": "Bearer", "expires_in": 1})
            .to_string();
    let fault =
        json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": body});
    let (client_id, private) = keyed_client(env, &case, "tiny", None, Some(fault)).await;
    case.wait_secret("tiny-token", "exists", |_| true).await;
    // --min-refresh-interval 2s: requests at least 2 s apart, however short the lifetime. The
    // IdP's arrival times of four requests show it (a hot loop makes them milliseconds apart).
    let arrivals = eventually(WAIT, "four token requests", || async {
        let sent = env.idp.assertions(&client_id).await;
        (sent.len() >= 4).then(|| {
            sent.iter()
                .map(|a| a["received_at_ms"].as_i64().unwrap())
                .collect::<Vec<_>>()
        })
    })
    .await;
    for pair in arrivals.windows(2) {
        // The floor counts from the request's start; arrival times vary by a few ms.
        assert!(
            pair[1] - pair[0] >= 1900,
            "requests {} ms apart for a 1 s token: {arrivals:?}",
            pair[1] - pair[0]
        );
    }
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn a_client_secret_client_gets_a_token(env: &Env) {
    let case = Case::new(env, "basic", &[]).await;
    let (client_id, client_secret) = env.idp.register_with_secret().await;
    case.put_secret(
        "creds",
        &[("secret", format!("{client_secret}\n").as_bytes())],
    )
    .await;
    case.put_client(
        "legacy",
        json!({
            "clientId": client_id,
            "authServer": {"issuer": env.idp.issuer},
            "clientSecret": {"secretRef": {"name": "creds", "key": "secret"}},
            "scopes": ["api_read"],
        }),
    )
    .await;
    let client = case.wait_ready("legacy").await;
    assert_eq!(client.status.unwrap().key_id, None);
    let secret = case.wait_secret("legacy-token", "exists", |_| true).await;
    let token = text(&secret, "access_token");
    let introspection = env.idp.introspect(&token).await;
    assert_eq!(
        (
            introspection["active"].clone(),
            introspection["client_id"].clone()
        ),
        (json!(true), json!(client_id))
    );
    assert!(
        env.idp.assertions(&client_id).await.is_empty(),
        "no assertion with a client secret"
    );
    case.assert_no_leaks(&[token, client_secret]).await;
}

pub(crate) async fn a_spec_change_brings_a_new_token(env: &Env) {
    let case = Case::new(env, "change", &[]).await;
    let (client_id, private) = registered_key(env, &case, "jwk", KeygenAlgorithm::Es256).await;
    case.put_client(
        "evolving",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
            "scopes": ["gipod_read"],
        }),
    )
    .await;
    let first = case.wait_secret("evolving-token", "exists", |_| true).await;
    let patch = json!({"spec": {"scopes": ["gipod_read", "api_read"]}});
    case.clients()
        .patch(
            "evolving",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let second = case
        .wait_secret("evolving-token", "a token with both scopes", |s| {
            text(s, "scope") == "gipod_read api_read"
        })
        .await;
    assert_ne!(text(&first, "access_token"), text(&second, "access_token"));
    assert_eq!(
        env.idp.introspect(&text(&second, "access_token")).await["scope"],
        json!("gipod_read api_read")
    );
    let client = case
        .wait_client("evolving", "status for generation 2", |c| {
            c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
                && ready(c).is_some_and(|r| r.status == "True")
        })
        .await;
    assert_eq!(client.metadata.generation, Some(2));
    assert_eq!(
        env.idp.stats(&client_id).await,
        (2, 2),
        "exactly one new token for one change"
    );
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn force_refresh_issues_exactly_one_new_token(env: &Env) {
    let case = Case::new(env, "force", &[]).await;
    let (client_id, private) = ready_client(env, &case, "forced", None).await;
    let first = text(
        &case.secrets().get("forced-token").await.unwrap(),
        "access_token",
    );
    let annotate = |value: &str| {
        let patch = json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: value}}});
        let clients = case.clients();
        async move {
            clients
                .patch("forced", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap()
        }
    };
    annotate("2026-11-27T10:00").await;
    let second = case
        .wait_secret("forced-token", "a new token", |s| {
            text(s, "access_token") != first
        })
        .await;
    // The operator looks again with the same annotation value: no more tokens (and the count
    // after the next forced token shows that none came later either).
    case.poke("forced", "forced-token").await;
    assert_eq!(
        env.idp.stats(&client_id).await,
        (2, 2),
        "exactly one new token"
    );
    annotate("2026-11-27T11:00").await;
    case.wait_secret("forced-token", "a third token", |s| {
        text(s, "access_token") != text(&second, "access_token")
    })
    .await;
    assert_eq!(env.idp.stats(&client_id).await, (3, 3));
    // A forced token is news: first, forced, forced again.
    eventually(WAIT, "three TokenIssued events", || async {
        let issued = case
            .events()
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("TokenIssued"))
            .count();
        (issued == 3).then_some(())
    })
    .await;
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn a_rotated_key_is_used_at_once(env: &Env) {
    let case = Case::new(env, "rotate", &[]).await;
    let old = private_key(KeygenAlgorithm::Es256);
    let new = private_key(KeygenAlgorithm::Rs256);
    let client_id = env
        .idp
        .register(&[public_key(&old), public_key(&new)], None)
        .await;
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&old).unwrap())])
        .await;
    case.put_client(
        "rotating",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let first = case
        .wait_client("rotating", "ready with the old key", |c| {
            c.status.as_ref().and_then(|s| s.key_id.as_deref()) == old["kid"].as_str()
        })
        .await;
    let patch =
        json!({"data": {"jwk.json": STANDARD_B64.encode(serde_json::to_vec(&new).unwrap())}});
    let rotated_at = Instant::now();
    case.secrets()
        .patch("jwk", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_client("rotating", "ready with the new key", |c| {
        c.status.as_ref().and_then(|s| s.key_id.as_deref()) == new["kid"].as_str()
    })
    .await;
    assert!(
        rotated_at.elapsed() < Duration::from_secs(10),
        "rotation took {:?}",
        rotated_at.elapsed()
    );
    let assertions = env.idp.assertions(&client_id).await;
    assert_eq!(assertions.last().unwrap()["header"]["kid"], new["kid"]);
    assert_ne!(first.status.unwrap().expires_at, None);
    case.assert_no_leaks(&[key_material(&old), key_material(&new)].concat())
        .await;
}

pub(crate) async fn a_renamed_secret_moves(env: &Env) {
    let case = Case::new(env, "rename", &[]).await;
    let (_, private) = ready_client(env, &case, "mover", None).await;
    let patch = json!({"spec": {"secret": {"name": "mover-bearer"}}});
    case.clients()
        .patch("mover", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_secret("mover-bearer", "the Secret under its new name", |_| true)
        .await;
    eventually(WAIT, "the old Secret to go", || async {
        case.secrets()
            .get_opt("mover-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let client = case
        .wait_client("mover", "status names the new Secret", |c| {
            c.status.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("mover-bearer")
        })
        .await;
    assert_eq!(
        ready(&client).unwrap().status,
        "True",
        "{:?}\n{}",
        client.status,
        case.operator.tail(60)
    );
    case.assert_no_leaks(&key_material(&private)).await;
}

/// While `spec.suspend` is true no token is requested, not even when one is due or expired; the
/// token Secret is left as it is. Resumed, the client gets its token at once.
pub(crate) async fn a_suspended_client_asks_the_idp_nothing_until_resumed(env: &Env) {
    let case = Case::new(env, "suspend", &[]).await;
    // A client that keeps refreshing: its refreshes are the later events to wait for.
    let (_, ticking_key) = ready_client(env, &case, "ticking", Some(6)).await;
    // One suspended from the start...
    let paused_key = private_key(KeygenAlgorithm::Es256);
    let paused_id = env.idp.register(&[public_key(&paused_key)], Some(6)).await;
    case.put_secret(
        "paused-jwk",
        &[("jwk.json", &serde_json::to_vec(&paused_key).unwrap())],
    )
    .await;
    case.put_client(
        "paused",
        json!({
            "clientId": paused_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": "paused-jwk", "key": "jwk.json"}},
            "suspend": true,
        }),
    )
    .await;
    // ...and one suspended while it holds a token.
    let (held_id, held_key) = ready_client(env, &case, "held", Some(6)).await;
    let suspend = |name: &'static str, value: bool| {
        let clients = case.clients();
        async move {
            let patch = json!({"spec": {"suspend": value}});
            clients
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    suspend("held", true).await;
    for name in ["paused", "held"] {
        let condition = case.wait_not_ready(name, "Suspended").await;
        assert!(
            condition.message.contains("spec.suspend"),
            "{name}: {}",
            condition.message
        );
    }
    let held = case.secrets().get("held-token").await.unwrap();
    let held_expiry: jiff::Timestamp = text(&held, "expires_at").parse().unwrap();
    // Wait until the ticking client got a token after `held`'s expired: by then `held` was due
    // and expired while suspended.
    let ticking = eventually(WAIT, "a ticking refresh after held's expiry", || async {
        let secret = case.secrets().get("ticking-token").await.ok()?;
        let expires: jiff::Timestamp = text(&secret, "expires_at").parse().ok()?;
        // Issued (its expiry minus the 6 s lifetime) after held's token expired.
        (expires - jiff::SignedDuration::from_secs(6) > held_expiry).then_some(secret)
    })
    .await;
    assert_eq!(
        env.idp.stats(&paused_id).await,
        (0, 0),
        "paused: no request"
    );
    assert_eq!(
        env.idp.stats(&held_id).await,
        (1, 1),
        "held: no request while suspended"
    );
    let after = case.secrets().get("held-token").await.unwrap();
    assert_eq!(
        after.resource_version(),
        held.resource_version(),
        "a suspended client's Secret is left as it is"
    );
    assert!(
        case.secrets()
            .get_opt("paused-token")
            .await
            .unwrap()
            .is_none()
    );

    suspend("paused", false).await;
    suspend("held", false).await;
    case.wait_ready("paused").await;
    case.wait_secret("held-token", "a new token after resuming", |s| {
        text(s, "access_token") != text(&held, "access_token")
    })
    .await;
    case.wait_ready("held").await;
    assert_eq!(env.idp.stats(&paused_id).await, (1, 1));
    assert_eq!(env.idp.stats(&held_id).await, (2, 2));
    let mut secrets = key_material(&paused_key);
    secrets.extend(key_material(&held_key));
    secrets.extend(key_material(&ticking_key));
    secrets.push(text(&ticking, "access_token"));
    case.assert_no_leaks(&secrets).await;
}

/// `audience` and `resource` are sent as form fields: the IdP records them, and the token it
/// issued for the resource carries it as its audience. Without them, neither field is sent.
pub(crate) async fn audience_and_resource_reach_the_idp(env: &Env) {
    let case = Case::new(env, "formfields", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    let plain_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    let resource = "https://api.test.example/gipod";
    let spec = |client_id: &str| {
        json!({
            "clientId": client_id,
            "authServer": {"issuer": env.idp.issuer},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
            "scopes": ["gipod_read"],
        })
    };
    let mut targeted = spec(&client_id);
    targeted["audience"] = json!("gipod-api-client-id");
    targeted["resource"] = json!(resource);
    case.put_client("targeted", targeted).await;
    case.put_client("plain", spec(&plain_id)).await;
    case.wait_ready("targeted").await;
    case.wait_ready("plain").await;

    let forms = env.idp.forms(&client_id).await;
    assert_eq!(forms.len(), 1, "{forms:?}");
    let form = &forms[0];
    assert_eq!(form["audience"], json!("gipod-api-client-id"), "{form}");
    assert_eq!(form["resource"], json!(resource), "{form}");
    assert_eq!(form["scope"], json!("gipod_read"), "{form}");
    assert_eq!(form["grant_type"], json!("client_credentials"), "{form}");
    let token = text(
        &case.secrets().get("targeted-token").await.unwrap(),
        "access_token",
    );
    let introspection = env.idp.introspect(&token).await;
    assert_eq!(
        (
            introspection["active"].clone(),
            introspection["aud"].clone()
        ),
        (json!(true), json!(resource)),
        "the token is for the resource: {introspection}"
    );

    let plain = env.idp.forms(&plain_id).await;
    assert_eq!(plain.len(), 1, "{plain:?}");
    for field in ["audience", "resource"] {
        assert!(
            plain[0].get(field).is_none(),
            "{field} sent unasked: {}",
            plain[0]
        );
    }
    case.assert_no_leaks(&key_material(&private)).await;
}

/// A new value in the client secret's Secret is used for the next request at once: a new token
/// comes without waiting for the old one to be due, and the old secret is never tried again.
pub(crate) async fn a_rotated_client_secret_is_used_at_once(env: &Env) {
    let case = Case::new(env, "secretrotation", &[]).await;
    let (client_id, old_secret) = env.idp.register_with_secret().await;
    case.put_secret("creds", &[("secret", old_secret.as_bytes())])
        .await;
    case.put_client(
        "rotating",
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "clientSecret": {"secretRef": {"name": "creds", "key": "secret"}},
        }),
    )
    .await;
    case.wait_ready("rotating").await;
    let first = text(
        &case.secrets().get("rotating-token").await.unwrap(),
        "access_token",
    );
    // Rotated at the IdP (the old secret stops working), then in the Secret.
    let new_secret = env.idp.rotate_secret(&client_id).await;
    let patch = json!({"data": {"secret": STANDARD_B64.encode(&new_secret)}});
    let rotated_at = Instant::now();
    case.secrets()
        .patch("creds", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let second = case
        .wait_secret("rotating-token", "a token got with the new secret", |s| {
            text(s, "access_token") != first
        })
        .await;
    assert!(
        rotated_at.elapsed() < Duration::from_secs(10),
        "rotation took {:?}",
        rotated_at.elapsed()
    );
    assert_eq!(
        env.idp.stats(&client_id).await,
        (2, 2),
        "the next request used the new secret, the old one was not tried again"
    );
    let sent = env.idp.secrets(Some(&client_id)).await;
    let header = idv_token_operator::oauth::basic_authorization(&client_id, &new_secret);
    assert!(
        sent.contains(&header),
        "the new secret went in the Basic header"
    );
    case.wait_ready("rotating").await;
    let second = text(&second, "access_token");
    assert_eq!(env.idp.introspect(&second).await["active"], json!(true));
    case.assert_no_leaks(&[old_secret, new_secret, first, second])
        .await;
}
