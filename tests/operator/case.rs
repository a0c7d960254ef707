//! The integration tests' world: the shared environment, one namespace and operator per
//! scenario (`Case`), and the helpers the scenarios share.

pub(crate) use crate::support;
pub(crate) use crate::support::{ControlPlane, Idp, LOCAL_IDP_HOSTS, Operator, eventually};
pub(crate) use base64::{Engine, engine::general_purpose::STANDARD as STANDARD_B64};
pub(crate) use idv_token_operator::{
    api::{self, IdvClient},
    jwk::{self, KeygenAlgorithm},
};
pub(crate) use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret},
        events::v1::Event as EventV1,
    },
};
pub(crate) use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
pub(crate) use libtest_mimic::{Arguments, Failed, Trial};
pub(crate) use serde_json::{Map, Value, json};
pub(crate) use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

pub(crate) struct Env {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) plane: ControlPlane,
    pub(crate) idp: Idp,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

pub(crate) const WAIT: Duration = Duration::from_secs(45);

/// One test's world: a namespace and an operator that watches only it.
pub(crate) struct Case {
    pub(crate) ns: String,
    pub(crate) admin: Client,
    pub(crate) operator: Operator,
    /// Operators this case ran before `operator` (restarts, replicas), kept for the leak scan.
    pub(crate) earlier: Vec<Operator>,
    /// /metrics of operators scraped before they stopped, for the leak scan.
    pub(crate) scraped: Vec<String>,
    /// The test IdP, whose record of the secrets it saw the leak scan looks for.
    pub(crate) idp_issuer: String,
}

pub(crate) async fn create_namespace(env: &Env, label: &str) -> String {
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

pub(crate) fn private_key(alg: KeygenAlgorithm) -> Map<String, Value> {
    jwk::generate(alg, 2048).unwrap()
}

pub(crate) fn public_key(private: &Map<String, Value>) -> Value {
    Value::Object(jwk::public_jwk(private))
}

impl Case {
    pub(crate) async fn new(env: &Env, label: &str, operator_args: &[&str]) -> Case {
        let ns = create_namespace(env, label).await;
        let operator = Self::start_operator(env, &ns, operator_args);
        Case::with_operator(env, ns, operator).await
    }

    /// A case for namespace `ns` served by `operator`.
    pub(crate) async fn with_operator(env: &Env, ns: String, operator: Operator) -> Case {
        Case {
            ns,
            admin: env.plane.admin().await,
            operator,
            earlier: Vec::new(),
            scraped: Vec::new(),
            idp_issuer: env.idp.issuer.clone(),
        }
    }

    /// Another case in namespace `ns`, served by this case's operator (which it takes over,
    /// with everything kept for the leak scan).
    pub(crate) fn move_to(self, ns: String) -> Case {
        Case { ns, ..self }
    }

    /// Make `next` the case's operator. The current one is stopped (SIGKILL, if still running)
    /// and kept for the leak scan, its /metrics scraped first if it still serves them.
    pub(crate) async fn replace_operator(&mut self, next: Operator) {
        self.scrape_metrics().await;
        let mut previous = std::mem::replace(&mut self.operator, next);
        previous.process.kill();
        self.earlier.push(previous);
    }

    /// Stop the current operator (kept for the leak scan) and start one with `args`: never
    /// two at once.
    pub(crate) async fn restart_operator(&mut self, env: &Env, args: &[&str]) {
        self.scrape_metrics().await;
        self.operator.process.kill();
        let next = Self::start_operator(env, &self.ns, args);
        self.replace_operator(next).await;
    }

    /// Keep the current operator's /metrics for the leak scan (before it is stopped).
    pub(crate) async fn scrape_metrics(&mut self) {
        if let Some(body) = metrics_of(&self.operator).await {
            self.scraped.push(body);
        }
    }

    /// SIGTERM the current operator (its /metrics scraped first); whether it exited within 10 s.
    pub(crate) async fn terminate_operator(&mut self) -> bool {
        self.scrape_metrics().await;
        self.operator.process.terminate(Duration::from_secs(10))
    }

    /// An operator for this namespace, allowed to send to the local IdP unless `extra` gives
    /// its own `--allowed-token-hosts`.
    pub(crate) fn start_operator(env: &Env, ns: &str, extra: &[&str]) -> Operator {
        Self::start_operator_with_env(env, ns, extra, &[])
    }

    /// `start_operator` with these environment variables (e.g. `SSL_CERT_FILE`).
    pub(crate) fn start_operator_with_env(
        env: &Env,
        ns: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Operator {
        let mut args = vec!["--watch-namespace", ns, "--min-refresh-interval", "2s"];
        if !extra.iter().any(|a| a.starts_with("--allowed-token-hosts")) {
            args.extend_from_slice(&LOCAL_IDP_HOSTS);
        }
        args.extend_from_slice(extra);
        Operator::start_with_env(&env.plane.operator_kubeconfig, &args, vars)
    }

    pub(crate) fn clients(&self) -> Api<IdvClient> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub(crate) fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// A credential Secret: labelled so that the operator may read it.
    pub(crate) async fn put_secret(&self, name: &str, data: &[(&str, &[u8])]) -> Secret {
        self.put_secret_labelled(name, data, &[(api::CREDENTIAL_LABEL, "true")])
            .await
    }

    pub(crate) async fn put_secret_labelled(
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

    pub(crate) async fn put_client(&self, name: &str, spec: Value) -> IdvClient {
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
    pub(crate) async fn wait_client(
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

    pub(crate) async fn wait_ready(&self, name: &str) -> IdvClient {
        self.wait_client(name, "Ready=True", |c| {
            ready(c).is_some_and(|r| r.status == "True")
        })
        .await
    }

    pub(crate) async fn wait_not_ready(&self, name: &str, reason: &str) -> api::Condition {
        let client = self
            .wait_client(name, &format!("Ready=False with reason {reason}"), |c| {
                ready(c).is_some_and(|r| r.status == "False" && r.reason == reason)
            })
            .await;
        ready(&client).unwrap()
    }

    pub(crate) async fn wait_secret(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Secret) -> bool,
    ) -> Secret {
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

    /// How many reconciles of IdvClient `name` the current operator logged as finished.
    pub(crate) fn reconciles(&self, name: &str) -> usize {
        let field = format!(
            "object=IdvClient.v1alpha1.idv-token-operator.dev/{name}.{}",
            self.ns
        );
        self.operator
            .output()
            .lines()
            .filter(|line| {
                line.contains("reconciled") && line.split_whitespace().any(|w| w == field)
            })
            .count()
    }

    /// Have the operator look at IdvClient `name` again while nothing it decides on changed (a
    /// foreign annotation on its token Secret `secret`), and wait until it has: a later event
    /// for absence checks.
    pub(crate) async fn poke(&self, name: &str, secret: &str) {
        let before = self.reconciles(name);
        let patch = json!({"metadata": {"annotations": {"test.example/poke": uuid::Uuid::new_v4().to_string()}}});
        self.secrets()
            .patch(secret, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        eventually(
            WAIT,
            &format!("a reconcile of {name} after the poke"),
            || async { (self.reconciles(name) > before).then_some(()) },
        )
        .await;
    }

    /// The notes of the Events with this reason.
    pub(crate) async fn event_notes(&self, reason: &str) -> Vec<String> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    pub(crate) async fn events(&self) -> Vec<EventV1> {
        Api::<EventV1>::namespaced(self.admin.clone(), &self.ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
    }

    /// Nothing secret anywhere the case can see: the full output of every operator it ran,
    /// their /metrics, any IdvClient (status included) and any Event of its namespace. Secrets
    /// are `secrets` and everything the test IdP saw at its token endpoint (the raw assertions
    /// and their signatures, Authorization headers, client secrets, the tokens it issued), of
    /// any client: none of it belongs in this case's output.
    pub(crate) async fn assert_no_leaks(&self, secrets: &[String]) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut all = support::idp_secrets(&http, &self.idp_issuer, None).await;
        all.extend(secrets.iter().cloned());
        all.retain(|s| s.len() >= 8);
        all.sort();
        all.dedup();
        let operators: Vec<&Operator> = self.earlier.iter().chain([&self.operator]).collect();
        let mut places: Vec<(String, String)> = Vec::new();
        for (i, operator) in operators.iter().enumerate() {
            places.push((format!("the output of operator #{i}"), operator.output()));
            if let Some(metrics) = metrics_of(operator).await {
                places.push((format!("/metrics of operator #{i}"), metrics));
            }
        }
        for (i, metrics) in self.scraped.iter().enumerate() {
            places.push((
                format!("/metrics scraped before a stop (#{i})"),
                metrics.clone(),
            ));
        }
        let clients = self
            .clients()
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        places.push((
            "an IdvClient".into(),
            serde_json::to_string(&clients).unwrap(),
        ));
        places.push((
            "an Event".into(),
            serde_json::to_string(&self.events().await).unwrap(),
        ));
        let scan = aho_corasick::AhoCorasick::new(&all).unwrap();
        for (place, text) in &places {
            if let Some(found) = scan.find(text) {
                let secret = &all[found.pattern().as_usize()];
                panic!(
                    "a secret ({} characters, {}) appears in {place} at byte {}",
                    secret.len(),
                    if secrets.contains(secret) {
                        "named by the test"
                    } else {
                        "seen by the IdP"
                    },
                    found.start()
                );
            }
        }
        for (i, operator) in operators.iter().enumerate() {
            assert!(
                !operator.output().contains("panicked"),
                "operator #{i} panicked:\n{}",
                operator.tail(40)
            );
        }
    }
}

/// An operator's /metrics, if it still serves them.
pub(crate) async fn metrics_of(operator: &Operator) -> Option<String> {
    let port = operator.logged_metrics_port()?;
    match operator.get(port, "/metrics").await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

pub(crate) fn ready(client: &IdvClient) -> Option<api::Condition> {
    client
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

/// The time a failure message announces for the next attempt ("next attempt at <time>").
pub(crate) fn next_attempt(message: &str) -> jiff::Timestamp {
    let after = message
        .split("next attempt at ")
        .nth(1)
        .unwrap_or_else(|| panic!("no next attempt in {message:?}"));
    let end = after.find([';', ' ']).unwrap_or(after.len());
    after[..end]
        .parse()
        .unwrap_or_else(|e| panic!("next attempt in {message:?}: {e}"))
}

pub(crate) fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// Private-key material of a JWK, for the leak scans.
pub(crate) fn key_material(private: &Map<String, Value>) -> Vec<String> {
    ["d", "p", "q", "dp", "dq", "qi"]
        .iter()
        .filter_map(|m| private.get(*m)?.as_str().map(str::to_string))
        .collect()
}

/// A fresh key pair whose public key is registered at the IdP (a new client there), and its
/// private key in the credential Secret `secret` (key `jwk.json`). Returns (client id, key).
pub(crate) async fn registered_key(
    env: &Env,
    case: &Case,
    secret: &str,
    alg: KeygenAlgorithm,
) -> (String, Map<String, Value>) {
    let private = private_key(alg);
    let client_id = env.idp.register(&[public_key(&private)], None).await;
    case.put_secret(
        secret,
        &[("jwk.json", &serde_json::to_vec(&private).unwrap())],
    )
    .await;
    (client_id, private)
}

/// A client with a fresh EC key registered at the IdP (token lifetime `ttl`), its key Secret
/// `<name>-jwk`, and `fault` set at the IdP before the IdvClient exists. Returns (client id, key).
pub(crate) async fn keyed_client(
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
pub(crate) async fn ready_client(
    env: &Env,
    case: &Case,
    name: &str,
    ttl: Option<u64>,
) -> (String, Map<String, Value>) {
    let made = keyed_client(env, case, name, ttl, None).await;
    case.wait_ready(name).await;
    made
}

/// A TCP endpoint that accepts connections and never answers: a token endpoint that hangs.
/// Stops (and drops its sockets) when dropped.
pub(crate) struct HangingEndpoint {
    pub(crate) url: String,
    pub(crate) accepted: Arc<AtomicUsize>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl HangingEndpoint {
    pub(crate) async fn start() -> HangingEndpoint {
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
