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

use idv_token_operator::{
    api::{self, IdvClient},
    jwk::{self, KeygenAlgorithm},
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Map, Value, json};
use support::{ControlPlane, Idp, Operator, eventually};

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

fn private_key(alg: KeygenAlgorithm) -> Map<String, Value> {
    jwk::generate(alg, 2048).unwrap()
}

fn public_key(private: &Map<String, Value>) -> Value {
    Value::Object(jwk::public_jwk(private))
}

impl Case {
    async fn new(env: &Env, label: &str, operator_args: &[&str]) -> Case {
        let ns = format!("{label}-{}", NAMESPACES.fetch_add(1, Ordering::SeqCst));
        let admin = env.plane.admin().await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let namespace = Namespace { metadata: ObjectMeta { name: Some(ns.clone()), ..Default::default() }, ..Default::default() };
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
        let operator = Self::start_operator(env, &ns, operator_args);
        Case { ns, admin, operator }
    }

    fn start_operator(env: &Env, ns: &str, extra: &[&str]) -> Operator {
        let mut args = vec!["--watch-namespace", ns, "--min-refresh-interval", "2s"];
        args.extend_from_slice(extra);
        Operator::start(&env.plane.operator_kubeconfig, &args)
    }

    fn clients(&self) -> Api<IdvClient> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn put_secret(&self, name: &str, data: &[(&str, &[u8])]) -> Secret {
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        };
        self.secrets().create(&PostParams::default(), &secret).await.unwrap()
    }

    async fn put_client(&self, name: &str, spec: Value) -> IdvClient {
        let client: IdvClient = serde_json::from_value(json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1",
            "kind": "IdvClient",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.clients().create(&PostParams::default(), &client).await.unwrap()
    }

    /// Wait until the IdvClient satisfies `check`; on timeout show its status and the operator's log.
    async fn wait_client(&self, name: &str, what: &str, check: impl Fn(&IdvClient) -> bool) -> IdvClient {
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
                let status = api.get(name).await.ok().and_then(|c| c.status).map(|s| serde_json::to_string_pretty(&s).unwrap());
                panic!("timed out waiting for {name}: {what}\nstatus: {status:?}\noperator log tail:\n{}", self.operator.tail(30));
            }
        }
    }

    async fn wait_ready(&self, name: &str) -> IdvClient {
        self.wait_client(name, "Ready=True", |c| ready(c).is_some_and(|r| r.status == "True")).await
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
        found.unwrap_or_else(|_| panic!("timed out waiting for Secret {name}: {what}\noperator log tail:\n{}", self.operator.tail(30)))
    }

    /// Nothing secret in the operator's output, nor in any IdvClient status.
    async fn assert_no_leaks(&self, secrets: &[String]) {
        let output = self.operator.output();
        let statuses = serde_json::to_string(&self.clients().list(&Default::default()).await.unwrap().items).unwrap();
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(!output.contains(secret.as_str()), "a secret value appears in the operator output");
            assert!(!statuses.contains(secret.as_str()), "a secret value appears in an IdvClient");
        }
        assert!(!output.contains("panicked"), "the operator panicked:\n{}", self.operator.tail(40));
    }
}

fn ready(client: &IdvClient) -> Option<api::Condition> {
    client.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").cloned()
}

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// Private-key material of a JWK, for the leak scans.
fn key_material(private: &Map<String, Value>) -> Vec<String> {
    ["d", "p", "q", "dp", "dq", "qi"].iter().filter_map(|m| private.get(*m)?.as_str().map(str::to_string)).collect()
}

// ---------------------------------------------------------------------------------------------

async fn token_secret_holds_a_token_the_idp_issued(env: &Env) {
    let case = Case::new(env, "issue", &[]).await;
    let private = private_key(KeygenAlgorithm::Rs256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret("gipod-jwk", &[("jwk.json", &serde_json::to_vec(&private).unwrap())]).await;
    let created = case
        .put_client("gipod", json!({
            "clientId": client_id,
            "authServer": {"issuer": env.idp.issuer},
            "privateKey": {"secretRef": {"name": "gipod-jwk", "key": "jwk.json"}},
            "scopes": ["gipod_read"],
            "secret": {"labels": {"team": "roads"}},
        }))
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
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("IdvClient", "gipod", Some(true)));
    assert_eq!(Some(owner.uid.as_str()), created.metadata.uid.as_deref());
    assert_eq!(secret.labels()[api::MANAGED_BY_LABEL], api::MANAGED_BY_VALUE);
    assert_eq!(secret.labels()["team"], "roads");
    for annotation in [api::EXPIRES_AT_ANNOTATION, api::REFRESH_AT_ANNOTATION, api::INPUTS_HASH_ANNOTATION] {
        assert!(secret.annotations().contains_key(annotation), "{annotation}");
    }

    // Status.
    let status = client.status.clone().unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("gipod-token"));
    assert_eq!(status.key_id.as_deref(), private["kid"].as_str());
    assert_eq!(status.expires_at.as_deref(), Some(expires_at.to_string().as_str()));
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
    assert_eq!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).unwrap().get_version_num(), 4);
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
    case.put_secret("keys", &[("jwks.json", &serde_json::to_vec(&set).unwrap())]).await;
    case.put_client("awv", json!({
        "clientId": client_id,
        "authServer": {"tokenEndpoint": env.idp.token_endpoint},
        "privateKey": {"secretRef": {"name": "keys", "key": "jwks.json"}, "keyId": new["kid"]},
        "secret": {"name": "awv-bearer"},
    }))
    .await;
    let client = case.wait_ready("awv").await;
    assert_eq!(client.status.unwrap().key_id.as_deref(), new["kid"].as_str());
    let secret = case.wait_secret("awv-bearer", "exists", |_| true).await;
    let token = text(&secret, "access_token");
    assert_eq!(env.idp.introspect(&token).await["active"], json!(true));
    let assertions = env.idp.assertions(&client_id).await;
    assert_eq!(assertions[0]["payload"]["aud"], json!(env.idp.token_endpoint), "tokenEndpoint mode: aud is the endpoint");
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
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&private).unwrap())]).await;
    case.put_client("short", json!({
        "clientId": client_id,
        "authServer": {"issuer": env.idp.issuer},
        "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
    }))
    .await;
    let first = case.wait_secret("short-token", "exists", |_| true).await;
    let first_token = text(&first, "access_token");
    let first_expiry: jiff::Timestamp = text(&first, "expires_at").parse().unwrap();
    let second = case.wait_secret("short-token", "a new token", |s| text(s, "access_token") != first_token).await;
    let replaced_at = jiff::Timestamp::now();
    assert!(replaced_at < first_expiry, "refreshed at {replaced_at}, after the old token expired at {first_expiry}");
    let second_token = text(&second, "access_token");
    assert_eq!(env.idp.introspect(&second_token).await["active"], json!(true));
    let (requests, successes) = env.idp.stats(&client_id).await;
    assert!(successes >= 2 && requests == successes, "{requests} requests, {successes} successes");
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
    case.put_secret("not-json", &[("jwk.json", b"this is not a JWK")]).await;
    let public_only = serde_json::to_vec(&public_key(&private)).unwrap();
    case.put_secret("public-only", &[("jwk.json", &public_only)]).await;
    case.put_client("garbage", spec("not-json", "jwk.json")).await;
    case.put_client("public", spec("public-only", "jwk.json")).await;
    case.put_client("missing-secret", spec("nowhere", "jwk.json")).await;
    case.put_client("missing-key", spec("not-json", "other.json")).await;

    let garbage = case.wait_not_ready("garbage", "InvalidKey").await;
    assert!(garbage.message.contains("not valid JSON"), "{}", garbage.message);
    let public = case.wait_not_ready("public", "InvalidKey").await;
    assert!(public.message.contains("public key"), "{}", public.message);
    let missing = case.wait_not_ready("missing-secret", "KeySecretNotFound").await;
    assert!(missing.message.contains("\"nowhere\""), "{}", missing.message);
    let key = case.wait_not_ready("missing-key", "KeyNotFound").await;
    assert!(key.message.contains("\"other.json\""), "{}", key.message);

    assert!(case.operator.process.is_running(), "the operator died:\n{}", case.operator.tail(30));
    assert_eq!(env.idp.stats(&client_id).await.0, 0, "a broken key never reaches the IdP");
    case.assert_no_leaks(&key_material(&private)).await;
}

async fn idp_refusal_gives_ready_false_without_a_retry_storm(env: &Env) {
    let mut case = Case::new(env, "refused", &[]).await;
    let registered = private_key(KeygenAlgorithm::Es256);
    let other = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&registered)], None).await;
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&other).unwrap())]).await;
    case.put_client("wrong-key", json!({
        "clientId": client_id,
        "authServer": {"issuer": env.idp.issuer},
        "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
    }))
    .await;
    let condition = case.wait_not_ready("wrong-key", "TokenRequestRejected").await;
    assert!(condition.message.contains("invalid_client"), "{}", condition.message);
    assert!(condition.message.contains(&client_id), "names the client: {}", condition.message);
    assert!(condition.message.contains(other["kid"].as_str().unwrap()), "names the key: {}", condition.message);
    assert!(case.secrets().get_opt("wrong-key-token").await.unwrap().is_none());

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
    let foreign = case.put_secret("mine-token", &[("password", b"hunter2-do-not-touch")]).await;
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&private).unwrap())]).await;
    case.put_client("mine", json!({
        "clientId": client_id,
        "authServer": {"tokenEndpoint": env.idp.token_endpoint},
        "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
    }))
    .await;
    let condition = case.wait_not_ready("mine", "SecretConflict").await;
    assert!(condition.message.contains("\"mine-token\""), "{}", condition.message);
    let after = case.secrets().get("mine-token").await.unwrap();
    assert_eq!(after.resource_version(), foreign.resource_version(), "the foreign Secret was written to");
    assert_eq!(after.data, foreign.data);
    assert_eq!(env.idp.stats(&client_id).await.0, 0, "no token is fetched that could not be stored");
}

async fn a_restarted_operator_reuses_the_recorded_token(env: &Env) {
    let mut case = Case::new(env, "restart", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&private).unwrap())]).await;
    case.put_client("steady", json!({
        "clientId": client_id,
        "authServer": {"tokenEndpoint": env.idp.token_endpoint},
        "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
    }))
    .await;
    case.wait_ready("steady").await;
    let secret = case.wait_secret("steady-token", "exists", |_| true).await;
    assert!(case.operator.process.terminate(Duration::from_secs(10)), "SIGTERM stops the operator");

    case.operator = Case::start_operator(env, &case.ns, &[]);
    eventually(WAIT, "the new operator to reconcile the client", || {
        let seen = case.operator.output().contains("reconciled");
        async move { seen.then_some(()) }
    })
    .await;
    assert_eq!(env.idp.stats(&client_id).await.0, 1, "no new token request after a restart");
    let after = case.secrets().get("steady-token").await.unwrap();
    assert_eq!(after.resource_version(), secret.resource_version(), "no write after a restart");
    case.assert_no_leaks(&[text(&secret, "access_token")]).await;
}

async fn a_client_secret_client_gets_a_token(env: &Env) {
    let case = Case::new(env, "basic", &[]).await;
    let (client_id, client_secret) = env.idp.register_with_secret().await;
    case.put_secret("creds", &[("secret", format!("{client_secret}\n").as_bytes())]).await;
    case.put_client("legacy", json!({
        "clientId": client_id,
        "authServer": {"issuer": env.idp.issuer},
        "clientSecret": {"secretRef": {"name": "creds", "key": "secret"}},
        "scopes": ["api_read"],
    }))
    .await;
    let client = case.wait_ready("legacy").await;
    assert_eq!(client.status.unwrap().key_id, None);
    let secret = case.wait_secret("legacy-token", "exists", |_| true).await;
    let token = text(&secret, "access_token");
    let introspection = env.idp.introspect(&token).await;
    assert_eq!((introspection["active"].clone(), introspection["client_id"].clone()), (json!(true), json!(client_id)));
    assert!(env.idp.assertions(&client_id).await.is_empty(), "no assertion with a client secret");
    case.assert_no_leaks(&[token, client_secret]).await;
}

async fn a_spec_change_brings_a_new_token(env: &Env) {
    let case = Case::new(env, "change", &[]).await;
    let private = private_key(KeygenAlgorithm::Es256);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret("jwk", &[("jwk.json", &serde_json::to_vec(&private).unwrap())]).await;
    case.put_client("evolving", json!({
        "clientId": client_id,
        "authServer": {"tokenEndpoint": env.idp.token_endpoint},
        "privateKey": {"secretRef": {"name": "jwk", "key": "jwk.json"}},
        "scopes": ["gipod_read"],
    }))
    .await;
    let first = case.wait_secret("evolving-token", "exists", |_| true).await;
    let patch = json!({"spec": {"scopes": ["gipod_read", "api_read"]}});
    case.clients().patch("evolving", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let second = case.wait_secret("evolving-token", "a token with both scopes", |s| text(s, "scope") == "gipod_read api_read").await;
    assert_ne!(text(&first, "access_token"), text(&second, "access_token"));
    assert_eq!(env.idp.introspect(&text(&second, "access_token")).await["scope"], json!("gipod_read api_read"));
    let client = case.wait_client("evolving", "status for generation 2", |c| {
        c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation && ready(c).is_some_and(|r| r.status == "True")
    })
    .await;
    assert_eq!(client.metadata.generation, Some(2));
    assert_eq!(env.idp.stats(&client_id).await, (2, 2), "exactly one new token for one change");
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
        (with(&["authServer", "issuer"], json!("https://idp.example")), "exactly one of environment, issuer or tokenEndpoint"),
        (with(&["authServer"], json!({})), "exactly one of environment, issuer or tokenEndpoint"),
        (with(&["authServer", "tokenEndpoint"], json!("http://idp.example/token")), "must be an https URL"),
        (with(&["clientId"], json!("  ")), "clientId must not be empty"),
        (with(&["scopes"], json!(["has space"])), "a scope is printable ASCII"),
        (with(&["refresh"], json!({"beforeExpiry": "soon"})), "beforeExpiry is a duration"),
        (with(&["authServer"], json!({"environment": "acm-nowhere"})), "Unsupported value"),
        (with(&["clientSecret"], json!({"secretRef": {"name": "s", "key": "k"}})), "exactly one of privateKey and clientSecret"),
        (with(&["privateKey"], Value::Null), "exactly one of privateKey and clientSecret"),
    ];
    // Untyped, so that values the Rust types would refuse reach the apiserver.
    let resource = kube::api::ApiResource::erase::<IdvClient>(&());
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(case.admin.clone(), &case.ns, &resource);
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec,
        }))
        .unwrap();
        let error = raw.create(&PostParams::default(), &object).await.expect_err(expected);
        assert!(error.to_string().contains(expected), "{error} lacks {expected:?}");
    }
    let good: IdvClient = serde_json::from_value(json!({
        "apiVersion": "idv-token-operator.dev/v1alpha1", "kind": "IdvClient",
        "metadata": {"name": "good"}, "spec": with(&["authServer", "tokenEndpoint"], json!("http://127.0.0.1:9/token")),
    }))
    .unwrap();
    case.clients().create(&PostParams::default(), &good).await.expect("http to loopback is allowed");
}

// ---------------------------------------------------------------------------------------------

type Scenario = for<'a> fn(&'a Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

fn main() {
    let args = Arguments::from_args();
    let list: Vec<(&str, Scenario)> = scenarios![
        token_secret_holds_a_token_the_idp_issued,
        token_endpoint_mode_with_ec_key_from_a_jwk_set,
        short_lived_token_is_refreshed_before_it_expires,
        broken_keys_give_ready_false_and_the_operator_lives_on,
        idp_refusal_gives_ready_false_without_a_retry_storm,
        a_foreign_secret_of_the_same_name_is_left_untouched,
        a_restarted_operator_reuses_the_recorded_token,
        a_client_secret_client_gets_a_token,
        a_spec_change_brings_a_new_token,
        the_crd_rejects_invalid_specs,
    ];
    if args.list {
        let trials = list.iter().map(|(name, _)| Trial::test(*name, || Ok(()))).collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::Builder::new().prefix("idv-envtest-").tempdir().unwrap();
    let started = Instant::now();
    let (plane, idp) = rt.block_on(async {
        let plane = ControlPlane::start(dir.path()).await;
        plane.install_crds().await;
        plane.apply_files(&["deploy/namespace.yaml", "deploy/serviceaccount.yaml", "deploy/rbac.yaml"]).await;
        (plane, Idp::start())
    });
    eprintln!("test environment up in {:.1}s", started.elapsed().as_secs_f64());
    let env = Arc::new(Env { rt, plane, idp, _dir: dir });
    let trials = list
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
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    match Arc::try_unwrap(env) {
        Ok(env) => {
            let Env { rt, plane, idp, _dir } = env;
            drop(idp);
            drop(plane);
            drop(rt);
        }
        Err(_) => eprintln!("environment still shared; processes end with this one"),
    }
    conclusion.exit();
}
