//! What goes wrong at the IdP or with the key, and how the operator answers it.

use crate::case::*;

pub(crate) async fn broken_keys_give_ready_false_and_the_operator_lives_on(env: &Env) {
    let mut case = Case::new(env, "badkey", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    let spec = |secret: &str, key: &str| {
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": secret, "key": key}},
        })
    };
    case.put_secret("not-json", &[("jwk.json", b"this is not a JWK")])
        .await;
    let public_only = serde_json::to_vec(&public_key(&private)).unwrap();
    case.put_secret("public-only", &[("jwk.json", &public_only)])
        .await;
    let with = |k: &str, v: Value| {
        let mut jwk = private.clone();
        jwk.insert(k.into(), v);
        serde_json::to_vec(&jwk).unwrap()
    };
    case.put_secret(
        "odd",
        &[
            (
                "oct.json",
                br#"{"kty":"oct","k":"c2VjcmV0","d":"x"}"#.as_slice(),
            ),
            ("p521.json", &with("crv", json!("P-521"))),
            ("mismatch.json", &with("alg", json!("RS256"))),
            ("empty.json", b"".as_slice()),
        ],
    )
    .await;
    for (name, key) in [
        ("oct", "oct.json"),
        ("p521", "p521.json"),
        ("mismatch", "mismatch.json"),
        ("empty", "empty.json"),
    ] {
        case.put_client(name, spec("odd", key)).await;
    }
    case.put_client("garbage", spec("not-json", "jwk.json"))
        .await;
    case.put_client("public", spec("public-only", "jwk.json"))
        .await;
    case.put_client("missing-secret", spec("nowhere", "jwk.json"))
        .await;
    case.put_client("missing-key", spec("not-json", "other.json"))
        .await;

    let garbage = case.wait_not_ready("garbage", "InvalidKey").await;
    assert!(
        garbage.message.contains("not valid JSON"),
        "{}",
        garbage.message
    );
    let public = case.wait_not_ready("public", "InvalidKey").await;
    assert!(public.message.contains("public key"), "{}", public.message);
    let missing = case
        .wait_not_ready("missing-secret", "KeySecretNotFound")
        .await;
    assert!(
        missing.message.contains("\"nowhere\""),
        "{}",
        missing.message
    );
    let key = case.wait_not_ready("missing-key", "KeyNotFound").await;
    assert!(key.message.contains("\"other.json\""), "{}", key.message);
    for (name, reason, expected) in [
        ("oct", "InvalidKey", "unsupported key type (kty) \"oct\""),
        ("p521", "InvalidKey", "unsupported EC curve \"P-521\""),
        (
            "mismatch",
            "InvalidKey",
            "algorithm \"RS256\" does not fit a EC P-256 key",
        ),
        (
            "empty",
            "KeyNotFound",
            "has no key \"empty.json\" (or it is empty)",
        ),
    ] {
        let condition = case.wait_not_ready(name, reason).await;
        assert!(
            condition.message.contains(expected),
            "{name}: {:?} lacks {expected:?}",
            condition.message
        );
    }

    assert!(
        case.operator.process.is_running(),
        "the operator died:\n{}",
        case.operator.tail(30)
    );
    assert_eq!(
        env.idp.stats(&client_id).await.0,
        0,
        "a broken key never reaches the IdP"
    );
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn idp_refusal_gives_ready_false_without_a_retry_storm(env: &Env) {
    let mut case = Case::new(env, "refused", &[]).await;
    let registered = private_key(KeygenAlgorithm::Es256);
    let other = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&registered)], None).await;
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&other).unwrap())])
        .await;
    case.put_client(
        "wrong-key",
        json!({
            "clientId": client_id,
            "authServer": {"issuer": env.idp.issuer},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    let condition = case
        .wait_not_ready("wrong-key", "TokenRequestRejected")
        .await;
    assert!(
        condition.message.contains("invalid_client"),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains(&client_id),
        "names the client: {}",
        condition.message
    );
    assert!(
        condition.message.contains(other["kid"].as_str().unwrap()),
        "names the key: {}",
        condition.message
    );
    assert!(
        case.secrets()
            .get_opt("wrong-key-token")
            .await
            .unwrap()
            .is_none()
    );

    // A configuration error is retried slowly: the next attempt is minutes away...
    let failed_at = jiff::Timestamp::now();
    let retry = next_attempt(&condition.message);
    assert!(
        retry.duration_since(failed_at) >= jiff::SignedDuration::from_secs(200),
        "a configuration error retried at {retry}, {} after it",
        retry.duration_since(failed_at)
    );
    // ...and meanwhile the operator goes on: a second such client is refused too (a later
    // event), while the first one's count stays put.
    let second_id = env.idp.register(&[public_key(&registered)], None).await;
    case.put_client(
        "wrong-key-too",
        json!({
            "clientId": second_id,
            "authServer": {"issuer": env.idp.issuer},
            "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        }),
    )
    .await;
    case.wait_not_ready("wrong-key-too", "TokenRequestRejected")
        .await;
    assert!(case.operator.process.is_running());
    assert_eq!(
        env.idp.stats(&client_id).await.0,
        1,
        "one request, then a slow retry"
    );
    case.assert_no_leaks(&key_material(&other)).await;
}

pub(crate) async fn bad_idp_answers_give_clear_messages(env: &Env) {
    let mut case = Case::new(env, "badidp", &["--token-request-timeout", "2s"]).await;
    let html = "<html><body>Bad gateway</body></html>";
    let json_body = |v: Value| v.to_string();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "html-502",
            json!({"mode": "respond", "status": 502, "content_type": "text/html", "body": html}),
            "IdpUnavailable",
            "HTTP 502, text/html body",
        ),
        (
            "html-200",
            json!({"mode": "respond", "status": 200, "content_type": "text/html", "body": html}),
            "InvalidTokenResponse",
            "non-JSON body (HTML",
        ),
        (
            "no-token",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"token_type": "Bearer"}))}),
            "InvalidTokenResponse",
            "without an access_token",
        ),
        (
            "error-200",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"error": "invalid_scope"}))}),
            "TokenRequestRejected",
            "invalid_scope",
        ),
        (
            "negative",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"access_token": "abcdefgh", "token_type": "Bearer", "expires_in": -5}))}),
            "InvalidTokenResponse",
            "expires_in -5",
        ),
        (
            "huge",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"access_token": "abcdefgh", "token_type": "Bearer", "expires_in": 99_999_999_999u64}))}),
            "InvalidTokenResponse",
            "longer than a year",
        ),
        (
            "mac",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"access_token": "abcdefgh", "token_type": "mac", "expires_in": 60}))}),
            "InvalidTokenResponse",
            "only Bearer",
        ),
        (
            "crlf",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"access_token": "abcdefgh\r\nX-Injected: 1", "token_type": "Bearer", "expires_in": 60}))}),
            "InvalidTokenResponse",
            "not an RFC 6750 token (a line break at character 9",
        ),
        (
            "quoted",
            json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": json_body(json!({"access_token": "abcdefgh\" x=\"1", "token_type": "Bearer", "expires_in": 60}))}),
            "InvalidTokenResponse",
            "not an RFC 6750 token (a quote at character 9",
        ),
        (
            "hang",
            json!({"mode": "hang"}),
            "IdpUnreachable",
            "timed out",
        ),
        (
            "redirect",
            json!({"mode": "respond", "status": 302, "headers": {"location": "https://elsewhere.example/token"}, "body": ""}),
            "IdpUnreachable",
            "redirect",
        ),
        (
            "unavailable-json",
            json!({"mode": "respond", "status": 503, "content_type": "application/json", "body": json_body(json!({"error": "temporarily_unavailable"}))}),
            "IdpUnavailable",
            "temporarily_unavailable",
        ),
    ];
    let mut ids = Vec::new();
    for (name, fault, _, _) in cases.clone() {
        ids.push(keyed_client(env, &case, name, None, Some(fault)).await.0);
    }
    for (name, _, reason, message) in &cases {
        let condition = case.wait_not_ready(name, reason).await;
        assert!(
            condition.message.contains(message),
            "{name}: {:?} lacks {message:?}",
            condition.message
        );
        assert!(
            condition.message.contains("next attempt at"),
            "{name}: {}",
            condition.message
        );
        assert!(
            case.secrets()
                .get_opt(&format!("{name}-token"))
                .await
                .unwrap()
                .is_none(),
            "{name}: no Secret without a token"
        );
    }
    assert!(
        case.operator.process.is_running(),
        "the operator died:\n{}",
        case.operator.tail(30)
    );
    // Transient failures back off (1 s, 2 s, 4 s, ...): a handful of requests, no storm.
    for client_id in &ids {
        let (requests, _) = env.idp.stats(client_id).await;
        assert!((1..=8).contains(&requests), "{requests} requests");
    }
    case.assert_no_leaks(&["abcdefgh".to_string()]).await;
}

/// An IdP that repeats the request in its error answer (Authorization header, decoded Basic
/// credentials, form body): neither the client secret nor the assertion, in any encoding,
/// reaches status, Events or the log, and the reason is still readable.
pub(crate) async fn an_echoing_idp_learns_nothing_back_from_status_events_or_logs(env: &Env) {
    let case = Case::new(env, "echo", &[]).await;
    // A client_secret client. The echo answers before the provider looks at the client, so
    // the id and secret are made up; the secret has characters that form-encoding changes.
    let basic_id = format!("echo-basic-{}", case.ns);
    let secret = "p@ss w0rd:&=/+~é-echo-client-secret";
    env.idp
        .fault(json!({"client_id": basic_id, "mode": "echo", "status": 401}))
        .await;
    case.put_secret("echo-creds", &[("secret", secret.as_bytes())])
        .await;
    case.put_client(
        "echo-basic",
        json!({
            "clientId": basic_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "clientSecret": {"secretRef": {"name": "echo-creds", "key": "secret"}},
        }),
    )
    .await;
    // A private_key client, answered 400 invalid_request with its form body repeated.
    let echo = json!({"mode": "echo", "status": 400, "error": "invalid_request"});
    let (key_client_id, private) = keyed_client(env, &case, "echo-key", None, Some(echo)).await;

    for (name, code) in [
        ("echo-basic", "invalid_client"),
        ("echo-key", "invalid_request"),
    ] {
        let condition = case.wait_not_ready(name, "TokenRequestRejected").await;
        for wanted in [code, "rejected request", "[redacted]"] {
            assert!(
                condition.message.contains(wanted),
                "{name}: {:?} lacks {wanted:?}",
                condition.message
            );
        }
    }
    eventually(WAIT, "a Warning event for each client", || async {
        let events = case.events().await;
        ["echo-basic", "echo-key"]
            .iter()
            .all(|name| {
                events.iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(*name)
                        && e.reason.as_deref() == Some("TokenRequestRejected")
                })
            })
            .then_some(())
    })
    .await;

    // What the IdP repeated: the Basic header, and the form body with the assertion.
    let header = idv_token_operator::oauth::basic_authorization(&basic_id, secret);
    let basic_echo = env.idp.echoes(&basic_id).await.remove(0);
    assert!(basic_echo.contains(&header), "{basic_echo}");
    let key_echo = env.idp.echoes(&key_client_id).await.remove(0);
    let body = key_echo.split(" body=").nth(1).expect("a repeated body");
    let assertion = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.into_owned())
        .expect("the repeated body holds the assertion");
    let form_encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let payload = header.strip_prefix("Basic ").unwrap().to_string();
    let mut leaks = vec![
        secret.to_string(),
        header.clone(),
        payload.trim_end_matches('=').to_string(),
        form_encoded.clone(),
        form_encoded.replace('+', "%20"),
        format!("{basic_id}:{form_encoded}"),
        format!("{basic_id}:{secret}"),
        assertion.clone(),
        // The signature alone: the part of the assertion that proves possession of the key.
        assertion.rsplit('.').next().unwrap().to_string(),
    ];
    assert!(
        basic_echo.contains(&payload)
            && basic_echo.contains(&leaks[5])
            && basic_echo.contains(secret),
        "the echo repeats every form: {basic_echo}"
    );
    leaks.extend(key_material(&private));
    case.assert_no_leaks(&leaks).await;
}

pub(crate) async fn stale_token_is_served_while_the_idp_is_down(env: &Env) {
    let case = Case::new(env, "stale", &[]).await;
    let (client_id, private) = ready_client(env, &case, "steady", Some(12)).await;
    let first = case.secrets().get("steady-token").await.unwrap();
    let expires: jiff::Timestamp = text(&first, "expires_at").parse().unwrap();
    env.idp.fault(json!({"client_id": client_id, "mode": "respond", "status": 503, "content_type": "text/html", "body": "<html>down</html>"})).await;
    // Wait until refreshes have failed a few times.
    eventually(WAIT, "failed refreshes", || async {
        let (requests, successes) = env.idp.stats(&client_id).await;
        (requests - successes >= 2).then_some(())
    })
    .await;
    let during = case.secrets().get("steady-token").await.unwrap();
    assert_eq!(
        during.data, first.data,
        "the token is kept while the IdP is down"
    );
    if jiff::Timestamp::now() < expires {
        assert_eq!(
            ready(&case.clients().get("steady").await.unwrap())
                .unwrap()
                .status,
            "True",
            "still ready while the token is valid"
        );
    }
    // The outage outlasts the token: unready once it expired (what the message says about
    // it: `a_stale_token_that_expired_in_an_outage_is_named_in_the_message`).
    case.wait_not_ready("steady", "IdpUnavailable").await;
    let flipped = jiff::Timestamp::now();
    assert!(
        flipped >= expires,
        "unready only once the token expired ({flipped} < {expires})"
    );
    env.idp
        .fault(json!({"client_id": client_id, "mode": "none"}))
        .await;
    case.wait_secret("steady-token", "a new token after recovery", |s| {
        text(s, "access_token") != text(&first, "access_token")
    })
    .await;
    case.wait_ready("steady").await;
    let (requests, _) = env.idp.stats(&client_id).await;
    assert!(requests <= 16, "{requests} requests: retries are bounded");
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn retry_after_is_respected(env: &Env) {
    let case = Case::new(env, "retryafter", &[]).await;
    let fault = json!({"mode": "respond", "status": 429, "headers": {"retry-after": "4"}, "content_type": "text/plain", "body": "slow down", "times": 1});
    let (client_id, private) = keyed_client(env, &case, "patient", None, Some(fault)).await;
    case.wait_ready("patient").await;
    let assertions = env.idp.assertions(&client_id).await;
    assert_eq!(assertions.len(), 2, "one refused request, one retry");
    let gap = assertions[1]["received_at_ms"].as_i64().unwrap()
        - assertions[0]["received_at_ms"].as_i64().unwrap();
    assert!(gap >= 4000, "retried after {gap} ms despite Retry-After: 4");
    case.assert_no_leaks(&key_material(&private)).await;
}

pub(crate) async fn an_expired_token_makes_the_client_unready_whatever_retry_after_says(env: &Env) {
    let case = Case::new(env, "expiry", &[]).await;
    let (client_id, private) = ready_client(env, &case, "brief", Some(15)).await;
    env.idp
        .fault(
            json!({"client_id": client_id, "mode": "respond", "status": 429,
            "headers": {"retry-after": "3600"}, "content_type": "text/plain", "body": "slow down"}),
        )
        .await;
    let secret = case.secrets().get("brief-token").await.unwrap();
    let expires: jiff::Timestamp = text(&secret, "expires_at").parse().unwrap();
    let condition = case.wait_not_ready("brief", "IdpUnavailable").await;
    let flipped = jiff::Timestamp::now();
    assert!(
        flipped >= expires,
        "unready only once the token expired ({flipped} < {expires})"
    );
    assert!(
        flipped.duration_since(expires) < jiff::SignedDuration::from_secs(10),
        "Ready=False {} after expiry: {}",
        flipped.duration_since(expires),
        condition.message
    );
    let (requests, _) = env.idp.stats(&client_id).await;
    assert!(
        requests <= 4,
        "{requests} requests: Retry-After still slows the retries"
    );
    case.assert_no_leaks(&key_material(&private)).await;
}

/// Issuers whose discovery fails: Ready=False with DiscoveryFailed and a message that says what
/// went wrong; no credential is sent anywhere; fixed, the client gets its token.
pub(crate) async fn a_failed_discovery_gives_discovery_failed(env: &Env) {
    let case = Case::new(
        env,
        "discovery",
        &[
            "--token-request-timeout",
            "2s",
            "--allowed-token-hosts",
            "127.0.0.1,localhost",
        ],
    )
    .await;
    let hanging = HangingEndpoint::start().await;
    let (client_id, private) = registered_key(env, &case, "jwk", KeygenAlgorithm::Es256).await;
    let port = env.idp.issuer.rsplit(':').next().unwrap();
    let cases = [
        (
            "missing",
            format!("{}/__test/nowhere", env.idp.issuer),
            "the issuer answered HTTP 404".to_string(),
        ),
        (
            "mismatch",
            format!("http://localhost:{port}/__test/issuer-via-localhost"),
            format!(
                "names issuer \"{}/__test/issuer-via-localhost\"",
                env.idp.issuer
            ),
        ),
        (
            "refused",
            "http://127.0.0.1:1/op".to_string(),
            "cannot reach".to_string(),
        ),
        (
            "hanging",
            hanging.url.trim_end_matches("/token").to_string(),
            "timed out".to_string(),
        ),
    ];
    for (name, issuer, _) in &cases {
        case.put_client(
            name,
            json!({
                "clientId": client_id,
                "authServer": {"issuer": issuer},
                "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
            }),
        )
        .await;
    }
    for (name, issuer, expected) in &cases {
        let condition = case.wait_not_ready(name, "DiscoveryFailed").await;
        for wanted in [
            format!("OIDC discovery for issuer {issuer}"),
            expected.clone(),
            "next attempt at".to_string(),
        ] {
            assert!(
                condition.message.contains(&wanted),
                "{name}: {:?} lacks {wanted:?}",
                condition.message
            );
        }
        assert!(
            case.secrets()
                .get_opt(&format!("{name}-token"))
                .await
                .unwrap()
                .is_none(),
            "{name}: no Secret without a token"
        );
    }
    assert_eq!(
        env.idp.stats(&client_id).await,
        (0, 0),
        "no token request without a discovered endpoint"
    );
    assert!(
        env.idp.assertions(&client_id).await.is_empty(),
        "no assertion sent anywhere"
    );
    // Fixed: the token comes.
    let patch = json!({"spec": {"authServer": {"issuer": env.idp.issuer}}});
    case.clients()
        .patch("missing", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    case.wait_ready("missing").await;
    assert_eq!(env.idp.stats(&client_id).await, (1, 1));
    drop(hanging);
    case.assert_no_leaks(&key_material(&private)).await;
}

/// KNOWN FAILURE (reconcile.rs `handle_failure`): once the token in the Secret expired during an
/// outage, the Ready=False message names only the outage ("the token endpoint is unavailable
/// ...; next attempt at ..."), not that the token workloads hold has expired, nor when.
pub(crate) async fn a_stale_token_that_expired_in_an_outage_is_named_in_the_message(env: &Env) {
    let case = Case::new(env, "expired-msg", &[]).await;
    let (client_id, private) = ready_client(env, &case, "lapsed", Some(4)).await;
    let secret = case.secrets().get("lapsed-token").await.unwrap();
    let expires_at = text(&secret, "expires_at");
    env.idp.fault(json!({"client_id": client_id, "mode": "respond", "status": 503, "content_type": "text/html", "body": "<html>down</html>"})).await;
    let condition = case.wait_not_ready("lapsed", "IdpUnavailable").await;
    assert!(
        condition.message.contains("expired") && condition.message.contains(&expires_at),
        "the message says that the token in the Secret expired at {expires_at}: {}",
        condition.message
    );
    env.idp
        .fault(json!({"client_id": client_id, "mode": "none"}))
        .await;
    case.assert_no_leaks(&key_material(&private)).await;
}
