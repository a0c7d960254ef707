//! Integration tests: the operator binary against a real kube-apiserver + etcd and a real
//! OAuth server (oidc-provider). One control plane and IdP per run; each test gets its own
//! namespace, IdP clients and operator process (watching only that namespace).

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as STANDARD_B64};
use idv_token_operator::{
    api::{self, IdvClient},
    jwk::{self, KeygenAlgorithm},
};
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret},
        events::v1::Event as EventV1,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Map, Value, json};
use support::{ControlPlane, Idp, LOCAL_IDP_HOSTS, Operator, eventually};

struct Env {
    rt: tokio::runtime::Runtime,
    plane: ControlPlane,
    idp: Idp,
    _dir: tempfile::TempDir,
}

static NAMESPACES: AtomicUsize = AtomicUsize::new(0);
const WAIT: Duration = Duration::from_secs(45);

/// One test's world: a namespace and an operator that watches only it.
struct Case {
    ns: String,
    admin: Client,
    operator: Operator,
}

async fn create_namespace(env: &Env, label: &str) -> String {
    let ns = format!("{label}-{}", NAMESPACES.fetch_add(1, Ordering::SeqCst));
    let namespaces: Api<Namespace> = Api::all(env.plane.admin().await);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    ns
}

fn private_key(alg: KeygenAlgorithm) -> Map<String, Value> {
    jwk::generate(alg, 2048).unwrap()
}

fn public_key(private: &Map<String, Value>) -> Value {
    Value::Object(jwk::public_jwk(private))
}

impl Case {
    async fn new(env: &Env, label: &str, operator_args: &[&str]) -> Case {
        let ns = create_namespace(env, label).await;
        let operator = Self::start_operator(env, &ns, operator_args);
        Case {
            ns,
            admin: env.plane.admin().await,
            operator,
        }
    }

    /// An operator for this namespace, allowed to send to the local IdP unless `extra` gives
    /// its own `--allowed-token-hosts`.
    fn start_operator(env: &Env, ns: &str, extra: &[&str]) -> Operator {
        let mut args = vec!["--watch-namespace", ns, "--min-refresh-interval", "2s"];
        if !extra.iter().any(|a| a.starts_with("--allowed-token-hosts")) {
            args.extend_from_slice(&LOCAL_IDP_HOSTS);
        }
        args.extend_from_slice(extra);
        Operator::start(&env.plane.operator_kubeconfig, &args)
    }

    fn clients(&self) -> Api<IdvClient> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// A credential Secret: labelled so that the operator may read it.
    async fn put_secret(&self, name: &str, data: &[(&str, &[u8])]) -> Secret {
        self.put_secret_labelled(name, data, &[(api::CREDENTIAL_LABEL, "true")])
            .await
    }

    async fn put_secret_labelled(
        &self,
        name: &str,
        data: &[(&str, &[u8])],
        labels: &[(&str, &str)],
    ) -> Secret {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap()
    }

    async fn put_client(&self, name: &str, spec: Value) -> IdvClient {
        let client: IdvClient = serde_json::from_value(json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1",
            "kind": "IdvClient",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.clients()
            .create(&PostParams::default(), &client)
            .await
            .unwrap()
    }

    /// Wait until the IdvClient satisfies `check`; on timeout show its status and the operator's log.
    async fn wait_client(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&IdvClient) -> bool,
    ) -> IdvClient {
        let api = self.clients();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(client) = api.get(name).await
                    && check(&client)
                {
                    return client;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        match found {
            Ok(client) => client,
            Err(_) => {
                let status = api
                    .get(name)
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .map(|s| serde_json::to_string_pretty(&s).unwrap());
                panic!(
                    "timed out waiting for {name}: {what}\nstatus: {status:?}\noperator log tail:\n{}",
                    self.operator.tail(400)
                );
            }
        }
    }

    async fn wait_ready(&self, name: &str) -> IdvClient {
        self.wait_client(name, "Ready=True", |c| {
            ready(c).is_some_and(|r| r.status == "True")
        })
        .await
    }

    async fn wait_not_ready(&self, name: &str, reason: &str) -> api::Condition {
        let client = self
            .wait_client(name, &format!("Ready=False with reason {reason}"), |c| {
                ready(c).is_some_and(|r| r.status == "False" && r.reason == reason)
            })
            .await;
        ready(&client).unwrap()
    }

    async fn wait_secret(&self, name: &str, what: &str, check: impl Fn(&Secret) -> bool) -> Secret {
        let api = self.secrets();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(Some(secret)) = api.get_opt(name).await
                    && check(&secret)
                {
                    return secret;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "timed out waiting for Secret {name}: {what}\noperator log tail:\n{}",
                self.operator.tail(30)
            )
        })
    }

    async fn events(&self) -> Vec<EventV1> {
        Api::<EventV1>::namespaced(self.admin.clone(), &self.ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    }

    /// Nothing secret in the operator's output, any IdvClient (status included) or any Event.
    async fn assert_no_leaks(&self, secrets: &[String]) {
        let output = self.operator.output();
        let statuses = serde_json::to_string(
            &self
                .clients()
                .list(&Default::default())
                .await
                .unwrap()
                .items,
        )
        .unwrap();
        let events = serde_json::to_string(&self.events().await).unwrap();
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(
                !output.contains(secret.as_str()),
                "a secret value appears in the operator output"
            );
            assert!(
                !statuses.contains(secret.as_str()),
                "a secret value appears in an IdvClient"
            );
            assert!(
                !events.contains(secret.as_str()),
                "a secret value appears in an Event"
            );
        }
        assert!(
            !output.contains("panicked"),
            "the operator panicked:\n{}",
            self.operator.tail(40)
        );
    }
}

fn ready(client: &IdvClient) -> Option<api::Condition> {
    client
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// Private-key material of a JWK, for the leak scans.
fn key_material(private: &Map<String, Value>) -> Vec<String> {
    ["d", "p", "q", "dp", "dq", "qi"]
        .iter()
        .filter_map(|m| private.get(*m)?.as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------

async fn token_secret_holds_a_token_the_idp_issued(env: &Env) {
    let case = Case::new(env, "issue", &[]).await;
    let private = private_key(KeygenAlgorithm::Rs256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "gipod-jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
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

async fn token_endpoint_mode_with_ec_key_from_a_jwk_set(env: &Env) {
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

async fn short_lived_token_is_refreshed_before_it_expires(env: &Env) {
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
    // A first token is news, a routine refresh is not: one TokenIssued Event. The status, queued
    // after the Event it would come with, shows the refreshed token first; then a short window.
    let second_expiry = text(&second, "expires_at");
    eventually(WAIT, "the status to show the refreshed token", || async {
        let client = case.clients().get("short").await.unwrap();
        let status = client.status.and_then(|s| s.expires_at);
        (status.as_deref() >= Some(second_expiry.as_str())).then_some(())
    })
    .await;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let issued: Vec<String> = case
        .events()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("TokenIssued"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert!(issued[0].contains("no token Secret yet"), "{issued:?}");
    case.assert_no_leaks(&[first_token, second_token]).await;
}

async fn broken_keys_give_ready_false_and_the_operator_lives_on(env: &Env) {
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

async fn idp_refusal_gives_ready_false_without_a_retry_storm(env: &Env) {
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

    // A configuration error is retried slowly: no more requests over the next seconds.
    let before = env.idp.stats(&client_id).await.0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(case.operator.process.is_running());
    }
    let after = env.idp.stats(&client_id).await.0;
    assert_eq!((before, after), (1, 1), "one request, then a slow retry");
    case.assert_no_leaks(&key_material(&other)).await;
}

async fn a_foreign_secret_of_the_same_name_is_left_untouched(env: &Env) {
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

async fn a_restarted_operator_reuses_the_recorded_token(env: &Env) {
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

async fn tiny_lifetimes_do_not_cause_a_hot_loop(env: &Env) {
    let case = Case::new(env, "tiny", &[]).await;
    let body =
        json!({"access_token": "short-lived-token", "token_type": "Bearer", "expires_in": 1})
            .to_string();
    let fault =
        json!({"mode": "respond", "status": 200, "content_type": "application/json", "body": body});
    let (client_id, _) = keyed_client(env, &case, "tiny", None, Some(fault)).await;
    case.wait_secret("tiny-token", "exists", |_| true).await;
    let start = env.idp.stats(&client_id).await.0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let requests = env.idp.stats(&client_id).await.0 - start;
    // --min-refresh-interval 2s: at most one request per 2 s, however short the lifetime.
    assert!(requests <= 4, "{requests} requests in 6 s for a 1 s token");
}

async fn a_client_secret_client_gets_a_token(env: &Env) {
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

async fn a_spec_change_brings_a_new_token(env: &Env) {
    let case = Case::new(env, "change", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
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
}

async fn the_crd_rejects_invalid_specs(env: &Env) {
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

/// A client with a fresh EC key registered at the IdP (token lifetime `ttl`), its key Secret
/// `<name>-jwk`, and `fault` set at the IdP before the IdvClient exists. Returns (client id, key).
async fn keyed_client(
    env: &Env,
    case: &Case,
    name: &str,
    ttl: Option<u64>,
    fault: Option<Value>,
) -> (String, Map<String, Value>) {
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], ttl).await;
    if let Some(mut fault) = fault {
        fault["client_id"] = json!(client_id);
        env.idp.fault(fault).await;
    }
    case.put_secret(
        &format!("{name}-jwk"),
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    case.put_client(
        name,
        json!({
            "clientId": client_id,
            "authServer": {"tokenEndpoint": env.idp.token_endpoint},
            "privateKey": {"secretRef": {"name": format!("{name}-jwk"), "key": "jwk.json"}},
        }),
    )
    .await;
    (client_id, private)
}

/// `keyed_client`, then wait until it is Ready.
async fn ready_client(
    env: &Env,
    case: &Case,
    name: &str,
    ttl: Option<u64>,
) -> (String, Map<String, Value>) {
    let made = keyed_client(env, case, name, ttl, None).await;
    case.wait_ready(name).await;
    made
}

async fn metrics_probes_and_events(env: &Env) {
    let case = Case::new(env, "observe", &["--log-format", "json"]).await;
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

async fn force_refresh_issues_exactly_one_new_token(env: &Env) {
    let case = Case::new(env, "force", &[]).await;
    let (client_id, _) = ready_client(env, &case, "forced", None).await;
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
    // Watch for a while: the same annotation value must not bring more tokens.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
}

async fn drift_is_repaired(env: &Env) {
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

async fn a_rotated_key_is_used_at_once(env: &Env) {
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

async fn a_renamed_secret_moves(env: &Env) {
    let case = Case::new(env, "rename", &[]).await;
    ready_client(env, &case, "mover", None).await;
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
}

async fn bad_idp_answers_give_clear_messages(env: &Env) {
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
async fn an_echoing_idp_learns_nothing_back_from_status_events_or_logs(env: &Env) {
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

async fn stale_token_is_served_while_the_idp_is_down(env: &Env) {
    let case = Case::new(env, "stale", &[]).await;
    let (client_id, _) = ready_client(env, &case, "steady", Some(12)).await;
    let first = case.secrets().get("steady-token").await.unwrap();
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
    let expires: jiff::Timestamp = text(&first, "expires_at").parse().unwrap();
    if jiff::Timestamp::now() < expires {
        assert_eq!(
            ready(&case.clients().get("steady").await.unwrap())
                .unwrap()
                .status,
            "True",
            "still ready while the token is valid"
        );
    }
    env.idp
        .fault(json!({"client_id": client_id, "mode": "none"}))
        .await;
    case.wait_secret("steady-token", "a new token after recovery", |s| {
        text(s, "access_token") != text(&first, "access_token")
    })
    .await;
    case.wait_ready("steady").await;
    let (requests, _) = env.idp.stats(&client_id).await;
    assert!(requests <= 12, "{requests} requests: retries are bounded");
}

async fn retry_after_is_respected(env: &Env) {
    let case = Case::new(env, "retryafter", &[]).await;
    let fault = json!({"mode": "respond", "status": 429, "headers": {"retry-after": "4"}, "content_type": "text/plain", "body": "slow down", "times": 1});
    let (client_id, _) = keyed_client(env, &case, "patient", None, Some(fault)).await;
    case.wait_ready("patient").await;
    let assertions = env.idp.assertions(&client_id).await;
    assert_eq!(assertions.len(), 2, "one refused request, one retry");
    let gap = assertions[1]["received_at_ms"].as_i64().unwrap()
        - assertions[0]["received_at_ms"].as_i64().unwrap();
    assert!(gap >= 4000, "retried after {gap} ms despite Retry-After: 4");
}

async fn a_standby_takes_over_from_a_dead_leader(env: &Env) {
    let mut case = Case::new(env, "ha", &[]).await;
    let lease = format!("lease-{}", case.ns);
    let ha = [
        "--leader-elect",
        "--leader-election-id",
        &lease,
        "--leader-election-lease-duration",
        "4s",
        "--leader-election-retry-period",
        "500ms",
    ];
    // Replace the plain operator with two electing replicas.
    case.operator.process.kill();
    let first = Case::start_operator(env, &case.ns, &ha);
    let waited = tokio::time::timeout(
        WAIT,
        eventually(WAIT, "the first replica to lead", || async {
            first.output().contains("leadership acquired").then_some(())
        }),
    )
    .await;
    assert!(
        waited.is_ok(),
        "first replica never led:\n{}",
        first.tail(30)
    );
    let second = Case::start_operator(env, &case.ns, &ha);
    eventually(WAIT, "the second replica to stand by", || async {
        second
            .output()
            .contains("waiting for leadership")
            .then_some(())
    })
    .await;
    case.operator = first;
    ready_client(env, &case, "before", None).await;
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

    case.operator.process.kill(); // SIGKILL: no release, the lease must expire
    let killed_at = Instant::now();
    case.operator = second;
    ready_client(env, &case, "after", None).await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_secs(15),
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
    assert!(
        case.operator.process.terminate(Duration::from_secs(10)),
        "SIGTERM stops the leader"
    );
    assert!(
        case.operator.output().contains("leadership released"),
        "{}",
        case.operator.tail(10)
    );
    eventually(WAIT, "the third replica to lead", || async {
        third.output().contains("leadership acquired").then_some(())
    })
    .await;
    assert!(
        terminated_at.elapsed() < Duration::from_secs(4),
        "handover after release took {:?}",
        terminated_at.elapsed()
    );
    case.operator = third;
}

async fn one_operator_serves_several_namespaces_and_no_others(env: &Env) {
    let admin = env.plane.admin().await;
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
    let in_a = Case {
        ns: a,
        admin: admin.clone(),
        operator,
    };
    ready_client(env, &in_a, "x", None).await;
    let in_b = Case {
        ns: b,
        admin: admin.clone(),
        operator: in_a.operator,
    };
    ready_client(env, &in_b, "y", None).await;
    let in_c = Case {
        ns: c.clone(),
        admin,
        operator: in_b.operator,
    };
    let (client_id, _) = keyed_client(env, &in_c, "z", None, None).await;
    // Give the operator time it would need to act (it acted within this in a and b).
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
}

async fn namespaced_mode_touches_only_its_namespaces(env: &Env) {
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
    let in_a = Case {
        ns: a.clone(),
        admin: env.plane.admin().await,
        operator,
    };
    ready_client(env, &in_a, "x", None).await;
    let in_b = Case {
        ns: b,
        admin: env.plane.admin().await,
        operator: in_a.operator,
    };
    ready_client(env, &in_b, "y", None).await;
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
    let in_c = Case {
        ns: c.clone(),
        admin: env.plane.admin().await,
        operator: Operator::start(
            &kubeconfig,
            &[
                "--watch-namespaces",
                &format!("{a},{c}"),
                LOCAL_IDP_HOSTS[0],
                LOCAL_IDP_HOSTS[1],
            ],
        ),
    };
    let (client_id, _) = keyed_client(env, &in_c, "z", None, None).await;
    eventually(
        WAIT,
        "the operator to report that it may not watch the other namespace",
        || async { in_c.operator.output().contains("403").then_some(()) },
    )
    .await;
    assert!(in_c.clients().get("z").await.unwrap().status.is_none());
    assert!(in_c.secrets().get_opt("z-token").await.unwrap().is_none());
    assert_eq!(env.idp.stats(&client_id).await.0, 0);
    drop(in_b);
}

/// Where credentials may go: by default only to the IDV hosts; `*` is any host but loopback;
/// a loopback host only when named; a discovered token endpoint passes the same policy.
async fn allowed_token_hosts_keep_assertions_home(env: &Env) {
    let ns = create_namespace(env, "allowlist").await;
    // No --allowed-token-hosts: the default.
    let mut case = Case {
        operator: Operator::start(&env.plane.operator_kubeconfig, &["--watch-namespace", &ns]),
        ns,
        admin: env.plane.admin().await,
    };
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
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
    case.operator = Case::start_operator(env, &case.ns, &["--allowed-token-hosts", "*"]);
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
    case.operator = Case::start_operator(env, &case.ns, &[]);
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
async fn an_assertion_audience_points_only_at_its_own_server(env: &Env) {
    let case = Case::new(env, "audience", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        "jwk",
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
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

async fn kubectl_apply_k_installs_everything(env: &Env) {
    let built = std::process::Command::new("kubectl")
        .args(["kustomize", &format!("{}/deploy/namespaced", support::REPO)])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "kubectl kustomize deploy/namespaced: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let applied = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.plane.admin_kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            &format!("{}/deploy", support::REPO),
        ])
        .output()
        .unwrap();
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
        // The users' roles. Their aggregation into view/edit/admin is done by
        // kube-controller-manager, which this control plane does not run (tests/deploy.rs
        // checks the labels instead).
        "clusterrole.rbac.authorization.k8s.io/idv-token-operator:view",
        "clusterrole.rbac.authorization.k8s.io/idv-token-operator:edit",
    ] {
        assert!(stdout.contains(object), "{object} not applied:\n{stdout}");
    }
    // kubectl explain shows the doc comments of the Rust types.
    let explain = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&env.plane.admin_kubeconfig)
        .args(["explain", "idvclient.spec.refresh.beforeExpiry"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.status.success() && text.contains("Refresh this long before the token expires"),
        "{text}"
    );
}

async fn the_operator_survives_an_apiserver_restart(env: &Env) {
    let case = Case::new(env, "restart-api", &[]).await;
    ready_client(env, &case, "before", None).await;
    env.plane.stop_apiserver();
    env.plane.start_apiserver().await;
    let mut case = Case {
        admin: env.plane.admin().await,
        ..case
    };
    let restarted = Instant::now();
    ready_client(env, &case, "after", None).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(30),
        "served {:?} after the restart",
        restarted.elapsed()
    );
    assert!(case.operator.process.is_running());
}

/// The CRD as `crds/` has it, but without its CEL rules: what objects stored under an older CRD
/// (or on an apiserver without CEL) got past.
async fn install_crd_without_cel(env: &Env) {
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
async fn names_that_got_past_admission_never_reach_the_apiserver(env: &Env) {
    let mut case = Case::new(env, "old-names", &["--log-format", "json"]).await;
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
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        case.admin.clone(),
        &case.ns,
        &kube::api::ApiResource::erase::<IdvClient>(&()),
    );
    for (name, spec, _) in &hostile {
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
        case.operator.process.terminate(Duration::from_secs(10)),
        "SIGTERM stops the operator"
    );
}

// ---------------------------------------------------------------------------------------------

type Scenario =
    for<'a> fn(&'a Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

// --- Shared-cluster safety (issue 11) ---------------------------------------------------------

/// A TCP endpoint that accepts connections and never answers: a token endpoint that hangs.
/// Stops (and drops its sockets) when dropped.
struct HangingEndpoint {
    url: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingEndpoint {
    async fn start() -> HangingEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        HangingEndpoint {
            url,
            accepted,
            task,
        }
    }
}

impl Drop for HangingEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn a_hanging_token_endpoint_does_not_starve_other_clients(env: &Env) {
    let case = Case::new(env, "starve", &[]).await;
    // A client that is Ready before the trouble starts, to force-refresh during it.
    let (steady_id, _) = ready_client(env, &case, "steady", None).await;
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
}

async fn a_credential_secret_must_be_labelled(env: &Env) {
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

async fn one_secret_is_not_a_key_and_a_client_secret_at_once(env: &Env) {
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

async fn an_expired_token_makes_the_client_unready_whatever_retry_after_says(env: &Env) {
    let case = Case::new(env, "expiry", &[]).await;
    let (client_id, _) = ready_client(env, &case, "brief", Some(15)).await;
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
}

async fn edited_bookkeeping_is_repaired_not_trusted(env: &Env) {
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

async fn an_unwritable_secret_costs_no_tokens(env: &Env) {
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

async fn a_secret_with_a_copied_owner_reference_is_not_adopted(env: &Env) {
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

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

/// Each scenario as a trial on the shared environment, with a deadline of its own.
fn trials(env: &Arc<Env>, scenarios: Vec<(&'static str, Scenario)>) -> Vec<Trial> {
    scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let env = env.clone();
            Trial::test(name, move || {
                let deadline = Duration::from_secs(180);
                env.rt
                    .block_on(async { tokio::time::timeout(deadline, scenario(&env)).await })
                    .map_err(|_| Failed::from(format!("{name} did not finish within {deadline:?}")))
            })
        })
        .collect()
}

fn main() {
    let args = Arguments::from_args();
    let list: Vec<(&'static str, Scenario)> = scenarios![
        token_secret_holds_a_token_the_idp_issued,
        token_endpoint_mode_with_ec_key_from_a_jwk_set,
        short_lived_token_is_refreshed_before_it_expires,
        broken_keys_give_ready_false_and_the_operator_lives_on,
        idp_refusal_gives_ready_false_without_a_retry_storm,
        a_foreign_secret_of_the_same_name_is_left_untouched,
        a_restarted_operator_reuses_the_recorded_token,
        tiny_lifetimes_do_not_cause_a_hot_loop,
        a_client_secret_client_gets_a_token,
        a_spec_change_brings_a_new_token,
        the_crd_rejects_invalid_specs,
        metrics_probes_and_events,
        force_refresh_issues_exactly_one_new_token,
        drift_is_repaired,
        a_rotated_key_is_used_at_once,
        a_renamed_secret_moves,
        bad_idp_answers_give_clear_messages,
        an_echoing_idp_learns_nothing_back_from_status_events_or_logs,
        stale_token_is_served_while_the_idp_is_down,
        retry_after_is_respected,
        a_standby_takes_over_from_a_dead_leader,
        one_operator_serves_several_namespaces_and_no_others,
        namespaced_mode_touches_only_its_namespaces,
        allowed_token_hosts_keep_assertions_home,
        an_assertion_audience_points_only_at_its_own_server,
        kubectl_apply_k_installs_everything,
        a_hanging_token_endpoint_does_not_starve_other_clients,
        a_credential_secret_must_be_labelled,
        one_secret_is_not_a_key_and_a_client_secret_at_once,
        an_expired_token_makes_the_client_unready_whatever_retry_after_says,
        edited_bookkeeping_is_repaired_not_trusted,
        an_unwritable_secret_costs_no_tokens,
        a_secret_with_a_copied_owner_reference_is_not_adopted,
    ];
    // Disruptive scenarios run alone, after the others.
    let disruptive: Vec<(&'static str, Scenario)> = scenarios![
        the_operator_survives_an_apiserver_restart,
        // Changes the CRD for a while.
        names_that_got_past_admission_never_reach_the_apiserver,
    ];
    if args.list {
        let trials = list
            .iter()
            .chain(&disruptive)
            .map(|(name, _)| Trial::test(*name, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("idv-envtest-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let (plane, idp) = rt.block_on(async {
        let mut plane = ControlPlane::start(dir.path()).await;
        plane.install_crds().await;
        plane.install_operator_rbac().await;
        // The operator runs as its ServiceAccount, with a token from the TokenRequest API.
        plane.operator_kubeconfig = plane
            .service_account_kubeconfig(
                support::OPERATOR_NAMESPACE,
                support::OPERATOR_SERVICE_ACCOUNT,
                "operator-sa.kubeconfig",
            )
            .await;
        (plane, Idp::start())
    });
    eprintln!(
        "test environment up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let env = Arc::new(Env {
        rt,
        plane,
        idp,
        _dir: dir,
    });
    let conclusion = libtest_mimic::run(&args, trials(&env, list));
    let alone = Arguments {
        test_threads: Some(1),
        ..args.clone()
    };
    let disruptive_conclusion = libtest_mimic::run(&alone, trials(&env, disruptive));
    match Arc::try_unwrap(env) {
        Ok(env) => {
            let Env {
                rt,
                plane,
                idp,
                _dir,
            } = env;
            drop(idp);
            drop(plane);
            drop(rt);
        }
        Err(_) => eprintln!("environment still shared; processes end with this one"),
    }
    if disruptive_conclusion.has_failed() {
        disruptive_conclusion.exit();
    }
    conclusion.exit();
}
