//! HTTPS to the IdP: a CA made per run, trusted through `--ca-bundle` or the system trust
//! store, and certificates that are wrong on purpose (another CA, another host, expired).
//! Each scenario has an HTTPS IdP of its own, so that a certificate swap or a handshake count
//! is its alone.

use crate::case::*;
use crate::support::IdpTls;

/// What the operator says for each wrong certificate (tests/support: `IdpTls`).
const UNTRUSTED: &str = "TLS handshake failed: the server's certificate is not trusted";
const WRONG_HOST: &str = "TLS handshake failed: the server's certificate is for another host: it names localhost, not 127.0.0.1";
const EXPIRED: &str =
    "TLS handshake failed: the server's certificate expired at 2024-01-02T00:00:00Z";

/// A client with a fresh EC key registered at `idp`, its key Secret `<name>-jwk`, and an
/// IdvClient with this `authServer`. Returns (client id, key).
async fn client_at(
    idp: &Idp,
    case: &Case,
    name: &str,
    auth_server: Value,
) -> (String, Map<String, Value>) {
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        &format!("{name}-jwk"),
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    case.put_client(
        name,
        json!({
            "clientId": client_id,
            "authServer": auth_server,
            "privateKey": {"secretRef": {"name": format!("{name}-jwk"), "key": "jwk.json"}},
        }),
    )
    .await;
    (client_id, private)
}

/// The message names the TLS reason, not reqwest's generic words.
fn assert_names(message: &str, reason: &str) {
    assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    assert!(
        !message.contains("error sending request") && !message.contains("connection failed"),
        "{message}"
    );
}

/// Nothing secret in the output of an operator that is no longer the case's.
fn assert_output_clean(output: &str, secrets: &[String]) {
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !output.contains(secret.as_str()),
            "a secret value appears in an earlier operator's output"
        );
    }
    assert!(!output.contains("panicked"), "an operator panicked");
}

async fn token_of(case: &Case, name: &str) -> String {
    text(
        &case.secrets().get(&format!("{name}-token")).await.unwrap(),
        "access_token",
    )
}

pub(crate) async fn tokens_over_https_with_a_ca_bundle(env: &Env) {
    let tls = IdpTls::generate();
    let idp = Idp::start_with(Some(&tls));
    assert!(
        idp.issuer.starts_with("https://127.0.0.1:"),
        "{}",
        idp.issuer
    );
    let case = Case::new(env, "https", &["--ca-bundle", tls.ca_path()]).await;
    // Discovery and token request over HTTPS; and a token endpoint named directly.
    let (discovered_id, discovered_key) =
        client_at(&idp, &case, "discovered", json!({"issuer": idp.issuer})).await;
    let (direct_id, direct_key) = client_at(
        &idp,
        &case,
        "direct",
        json!({"tokenEndpoint": idp.token_endpoint}),
    )
    .await;
    let mut secrets = key_material(&discovered_key);
    secrets.extend(key_material(&direct_key));
    for (name, client_id) in [("discovered", &discovered_id), ("direct", &direct_id)] {
        case.wait_ready(name).await;
        let token = token_of(&case, name).await;
        let introspection = idp.introspect(&token).await;
        assert_eq!(introspection["active"], true, "{introspection}");
        assert_eq!(introspection["client_id"], json!(client_id));
        secrets.push(token);
    }
    let (handshakes, failures) = idp.tls_handshakes("main").await;
    // The IdP listens only on HTTPS and both tokens were introspected, so TLS carried every
    // request; how many connections that took depends on keep-alive reuse, not on the operator.
    assert!(handshakes >= 1, "{handshakes} handshakes");
    assert!(failures.is_empty(), "failed handshakes at {failures:?}");
    case.assert_no_leaks(&secrets).await;
}

/// reqwest 0.13 (rustls-platform-verifier -> rustls-native-certs) reads the system store on
/// Linux from `SSL_CERT_FILE` and `SSL_CERT_DIR` when either is set, else from the distro's
/// files (/etc/ssl/certs/ca-certificates.crt and /etc/ssl/certs on Debian).
pub(crate) async fn the_system_trust_store_is_honoured_without_a_flag(env: &Env) {
    let tls = IdpTls::generate();
    let idp = Idp::start_with(Some(&tls));
    let mut case = Case::new(env, "truststore", &[]).await;
    let (_, first_key) = client_at(
        &idp,
        &case,
        "first",
        json!({"tokenEndpoint": idp.token_endpoint}),
    )
    .await;
    // Neither flag nor variable: the test CA is not in the system store.
    let condition = case.wait_not_ready("first", "IdpUnreachable").await;
    assert_names(&condition.message, UNTRUSTED);
    let mut earlier = Vec::new();
    let mut secrets = key_material(&first_key);
    // SSL_CERT_FILE: a PEM bundle; SSL_CERT_DIR: a folder of PEM files.
    let ca_file = tls.ca_path().to_string();
    let ca_dir = tls.ca_dir.to_str().unwrap().to_string();
    for (variable, value, name) in [
        ("SSL_CERT_FILE", &ca_file, "first"),
        ("SSL_CERT_DIR", &ca_dir, "second"),
    ] {
        let next = Case::start_operator_with_env(env, &case.ns, &[], &[(variable, value)]);
        let mut previous = std::mem::replace(&mut case.operator, next);
        previous.process.terminate(Duration::from_secs(10));
        earlier.push(previous.output());
        if name == "second" {
            let (_, key) = client_at(
                &idp,
                &case,
                name,
                json!({"tokenEndpoint": idp.token_endpoint}),
            )
            .await;
            secrets.extend(key_material(&key));
        }
        case.wait_ready(name).await;
    }
    secrets.push(token_of(&case, "first").await);
    secrets.push(token_of(&case, "second").await);
    for output in &earlier {
        assert_output_clean(output, &secrets);
    }
    case.assert_no_leaks(&secrets).await;
}

/// Failed handshakes at `listener` come further and further apart (backoff 1 s, 2 s, 4 s,
/// less up to 20 % jitter): the first four after `from` have gaps of at least 0.75, 1.5 and
/// 3 s. Returns the gaps in ms.
async fn assert_backs_off(idp: &Idp, listener: &str, from: usize) -> Vec<i64> {
    let failures = eventually(
        WAIT,
        &format!("four failed handshakes at {listener}"),
        || async {
            let (_, failures) = idp.tls_handshakes(listener).await;
            (failures.len() >= from + 4).then_some(failures)
        },
    )
    .await;
    let gaps: Vec<i64> = failures[from..from + 4]
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    for (i, gap) in gaps.iter().enumerate() {
        let least = 750 << i;
        assert!(
            *gap >= least,
            "{listener}: retries {gaps:?} ms apart, the gap {i} under {least} ms"
        );
    }
    gaps
}

pub(crate) async fn wrong_certificates_give_idp_unreachable_with_the_reason(env: &Env) {
    let tls = IdpTls::generate();
    let idp = Idp::start_with(Some(&tls));
    let case = Case::new(env, "badcert", &["--ca-bundle", tls.ca_path()]).await;
    let cases = [
        ("untrusted", UNTRUSTED),
        ("wrong-host", WRONG_HOST),
        ("expired", EXPIRED),
    ];
    let mut secrets = Vec::new();
    for (listener, _) in cases {
        let (_, key) = client_at(
            &idp,
            &case,
            listener,
            json!({"tokenEndpoint": idp.endpoint_with(listener)}),
        )
        .await;
        secrets.extend(key_material(&key));
    }
    for (listener, reason) in cases {
        let condition = case.wait_not_ready(listener, "IdpUnreachable").await;
        assert_names(&condition.message, reason);
        assert!(
            condition.message.contains("next attempt at"),
            "{}",
            condition.message
        );
        assert!(
            case.secrets()
                .get_opt(&format!("{listener}-token"))
                .await
                .unwrap()
                .is_none(),
            "{listener}: no Secret without a token"
        );
    }
    for (listener, _) in cases {
        let gaps = assert_backs_off(&idp, listener, 0).await;
        eprintln!("{listener}: retries {gaps:?} ms apart");
        // The IdP's token endpoint never saw a request: the handshake failed first.
        let (handshakes, _) = idp.tls_handshakes(listener).await;
        assert_eq!(handshakes, 0, "{listener}: no handshake succeeded");
    }
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn a_certificate_gone_bad_keeps_the_token_and_says_why(env: &Env) {
    let tls = IdpTls::generate();
    let idp = Idp::start_with(Some(&tls));
    let case = Case::new(env, "gonebad", &["--ca-bundle", tls.ca_path()]).await;
    let (client_id, key) = client_at(
        &idp,
        &case,
        "steady",
        json!({"tokenEndpoint": idp.token_endpoint}),
    )
    .await;
    case.wait_ready("steady").await;
    let first = case.secrets().get("steady-token").await.unwrap();
    let mut secrets = key_material(&key);
    secrets.push(text(&first, "access_token"));
    let force = |value: String| {
        let patch = json!({"metadata": {"annotations": {api::FORCE_REFRESH_ANNOTATION: value}}});
        let clients = case.clients();
        async move {
            clients
                .patch("steady", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    for (round, (files, reason)) in [
        (&tls.expired, EXPIRED),
        (&tls.wrong_host, WRONG_HOST),
        (&tls.untrusted, UNTRUSTED),
    ]
    .into_iter()
    .enumerate()
    {
        idp.use_certificate("main", files).await;
        let (_, before) = idp.tls_handshakes("main").await;
        force(format!("bad-{round}")).await;
        let note = eventually(WAIT, &format!("a Warning naming {reason:?}"), || async {
            case.events().await.into_iter().find_map(|e| {
                let note = e.note.unwrap_or_default();
                (e.reason.as_deref() == Some("IdpUnreachable") && note.contains(reason))
                    .then_some(note)
            })
        })
        .await;
        assert_names(&note, reason);
        assert!(
            note.contains("the current token stays in the Secret until it expires at"),
            "{note}"
        );
        let now = case.secrets().get("steady-token").await.unwrap();
        assert_eq!(now.data, first.data, "the valid token stays in place");
        let client = case.clients().get("steady").await.unwrap();
        assert_eq!(
            ready(&client).unwrap().status,
            "True",
            "still ready while the token is valid"
        );
        let (_, after) = idp.tls_handshakes("main").await;
        assert!(
            after.len() > before.len(),
            "the refusal happened at the handshake"
        );
        if round == 0 {
            // Retried with backoff while the token is valid too. (In the first round only:
            // later ones begin while retries of the one before are still scheduled.)
            let gaps = assert_backs_off(&idp, "main", before.len()).await;
            eprintln!("main: retries {gaps:?} ms apart");
        }
    }
    assert_eq!(
        idp.stats(&client_id).await,
        (1, 1),
        "no request got past a bad certificate"
    );
    // A good certificate again: the next attempt gets a token.
    idp.use_certificate("main", &tls.good).await;
    force("good-again".into()).await;
    let renewed = case
        .wait_secret("steady-token", "a new token over a good certificate", |s| {
            text(s, "access_token") != text(&first, "access_token")
        })
        .await;
    secrets.push(text(&renewed, "access_token"));
    case.wait_ready("steady").await;
    case.assert_no_leaks(&secrets).await;
}
