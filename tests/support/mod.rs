//! The real test environment: etcd + kube-apiserver (RBAC on, an admin and the operator's
//! restricted identity, OwnerReferencesPermissionEnforcement, an audit log of the operator
//! identities' Secret and Lease requests), the CRDs and deploy/'s RBAC installed, a test IdP (oidc-provider),
//! and operator processes. Every child process is killed when its guard drops (and, through
//! PR_SET_PDEATHSIG, when the test process dies).

#![allow(dead_code)]

pub mod tools;

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    runtime::wait::{await_condition, conditions},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const OPERATOR_NAMESPACE: &str = "idv-token-operator-system";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "idv-token-operator";
/// The operator's arguments for the local test IdP: loopback hosts are allowed only when named
/// (the default is the IDV hosts).
pub const LOCAL_IDP_HOSTS: [&str; 2] = ["--allowed-token-hosts", "127.0.0.1"];

/// The apiserver's audit policy: Secret and Lease requests of every identity in the operator's
/// namespace (the operator's ServiceAccounts), at Metadata level (never a body: no token or
/// key reaches the log). Tests read it as the apiserver's record of who did what.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts:idv-token-operator-system\"]
    resources:
      - {group: \"\", resources: [secrets]}
      - {group: coordination.k8s.io, resources: [leases]}
  - level: None
";

/// A child process that is killed when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Child,
}

impl ChildGuard {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// SIGTERM, then wait up to `grace` before SIGKILL. Returns whether it exited in time.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawn with the child tied to this process: it gets SIGKILL if we die.
pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    ChildGuard {
        name: name.to_string(),
        child,
    }
}

/// Run an external command with a deadline: its output, or a panic naming it once `timeout`
/// passed (the process is killed then, and whenever the calling future is dropped).
pub async fn run_bounded(what: &str, command: Command, timeout: Duration) -> std::process::Output {
    let mut command = tokio::process::Command::from(command);
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what} did not finish within {timeout:?} (killed)"),
    }
}

/// A port that was free a moment ago. Another process may take it before ours binds it:
/// callers that pass it to a child retry with a new one when the child cannot listen.
/// A `kB` line of /proc/PID/status (`VmHWM:` is the peak RSS, `VmRSS:`, `RssAnon:`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `check` until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The folder with kube-apiserver and etcd: $KUBEBUILDER_ASSETS, else `make envtest-assets`.
fn assets() -> PathBuf {
    if let Ok(dir) = std::env::var("KUBEBUILDER_ASSETS")
        && Path::new(&dir).join("kube-apiserver").exists()
        && Path::new(&dir).join("etcd").exists()
    {
        return PathBuf::from(dir);
    }
    eprintln!(
        "KUBEBUILDER_ASSETS not set: building kube-apiserver and etcd (cached after the first time)"
    );
    let output = Command::new("bash")
        .arg(format!("{REPO}/tests/envtest/build-assets.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/envtest/build-assets.sh");
    assert!(
        output.status.success(),
        "tests/envtest/build-assets.sh failed"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the folder")
            .trim(),
    )
}

struct Pki {
    ca_pem: String,
    serving_cert: String,
    serving_key: String,
    admin_cert: String,
    admin_key: String,
    operator_cert: String,
    operator_key: String,
    sa_key: String,
    sa_pub: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "idv-token-operator-test-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let leaf = |sans: Vec<String>, cn: &str, orgs: &[&str], usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for org in orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (serving_cert, serving_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "kube-apiserver",
        &[],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (admin_cert, admin_key) = leaf(
        vec![],
        "test-admin",
        &["system:masters"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    // The operator authenticates as its ServiceAccount's user name, so deploy/'s
    // ClusterRoleBinding (subject: that ServiceAccount) applies to it unchanged.
    let (operator_cert, operator_key) = leaf(
        vec![],
        &format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"),
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{OPERATOR_NAMESPACE}"),
        ],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let sa = KeyPair::generate().unwrap();
    Pki {
        ca_pem: ca.pem(),
        serving_cert,
        serving_key,
        admin_cert,
        admin_key,
        operator_cert,
        operator_key,
        sa_key: sa.serialize_pem(),
        sa_pub: sa.public_key_pem(),
    }
}

fn kubeconfig(server: &str, ca: &str, cert: &str, key: &str) -> String {
    let b64 = |s: &str| STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: user\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: user\ncurrent-context: envtest\n",
        b64(ca),
        b64(cert),
        b64(key)
    )
}

pub async fn client_from(kubeconfig_path: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Attempts at starting a process on ports picked before it binds them.
const PORT_ATTEMPTS: usize = 5;

/// The last `lines` lines of a log file.
fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// etcd on two ports picked before it binds them: if it exits (a port was taken in between),
/// again on other ports. Returns the process and its client URL once it is healthy.
async fn start_etcd(assets: &Path, dir: &Path) -> (ChildGuard, String) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for attempt in 1..=PORT_ATTEMPTS {
        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.join("etcd.log");
        let etcd_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        // A data folder per attempt: a failed start may leave a half-made member behind.
        let mut etcd = spawn(
            "etcd",
            Command::new(assets.join("etcd"))
                .args(["--name", "default", "--data-dir"])
                .arg(dir.join(format!("etcd-data-{attempt}")))
                .args([
                    "--listen-client-urls",
                    &etcd_url,
                    "--advertise-client-urls",
                    &etcd_url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .args(["--unsafe-no-fsync", "--log-level", "warn"])
                .stdout(etcd_log.try_clone().unwrap())
                .stderr(etcd_log),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = http
                .get(format!("{etcd_url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return (etcd, etcd_url);
            }
            if !etcd.is_running() {
                assert!(
                    attempt < PORT_ATTEMPTS,
                    "etcd exited at start {PORT_ATTEMPTS} times; log tail:\n{}",
                    log_tail(&log_path, 20)
                );
                eprintln!("etcd exited at start (ports {client_port}, {peer_port}); other ports");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd not healthy after 30 s; log tail:\n{}",
                log_tail(&log_path, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// The control plane: etcd and kube-apiserver.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub server: String,
    pub admin_kubeconfig: PathBuf,
    /// The operator's identity: its ServiceAccount's user name (client certificate), until a
    /// test swaps in a TokenRequest token (`service_account_kubeconfig`).
    pub operator_kubeconfig: PathBuf,
    apiserver_args: Vec<String>,
    assets: PathBuf,
    apiserver: Mutex<Option<ChildGuard>>,
    etcd: ChildGuard,
}

impl ControlPlane {
    pub async fn start(dir: &Path) -> ControlPlane {
        let assets = assets();
        let pki = pki();
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path.to_string_lossy().to_string()
        };
        let ca = write("ca.crt", &pki.ca_pem);
        let serving_cert = write("apiserver.crt", &pki.serving_cert);
        let serving_key = write("apiserver.key", &pki.serving_key);
        let sa_key = write("sa.key", &pki.sa_key);
        let sa_pub = write("sa.pub", &pki.sa_pub);
        let audit_policy = write("audit-policy.yaml", AUDIT_POLICY);

        let (mut etcd, etcd_url) = start_etcd(&assets, dir).await;
        // The secure port is picked before kube-apiserver binds it: another process may take
        // it in between, and then the apiserver exits. Try again with another port.
        for attempt in 1..=PORT_ATTEMPTS {
            let secure_port = free_port();
            let apiserver_args: Vec<String> = vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", dir.join("certs").display()),
                format!("--secure-port={secure_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--tls-cert-file={serving_cert}"),
                format!("--tls-private-key-file={serving_key}"),
                format!("--client-ca-file={ca}"),
                "--authorization-mode=RBAC".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                // On top of the defaults: what real clusters (OpenShift, GKE, hardened installs)
                // enable and what the operator's writes meet. Setting an owner reference with
                // blockOwnerDeletion needs `update` on the owner's finalizers.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
                format!("--audit-policy-file={audit_policy}"),
                format!("--audit-log-path={}", dir.join("audit.log").display()),
                "--audit-log-format=json".into(),
                // Written before the answer: a test reading it after a call sees that call.
                "--audit-log-mode=blocking".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={sa_pub}"),
                format!("--service-account-signing-key-file={sa_key}"),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                "--endpoint-reconciler-type=none".into(),
            ];
            let server = format!("https://127.0.0.1:{secure_port}");
            let admin_kubeconfig = dir.join("admin.kubeconfig");
            std::fs::write(
                &admin_kubeconfig,
                kubeconfig(&server, &pki.ca_pem, &pki.admin_cert, &pki.admin_key),
            )
            .unwrap();
            let operator_kubeconfig = dir.join("operator.kubeconfig");
            std::fs::write(
                &operator_kubeconfig,
                kubeconfig(&server, &pki.ca_pem, &pki.operator_cert, &pki.operator_key),
            )
            .unwrap();

            let plane = ControlPlane {
                dir: dir.to_path_buf(),
                server,
                admin_kubeconfig,
                operator_kubeconfig,
                apiserver_args,
                assets: assets.clone(),
                apiserver: Mutex::new(None),
                etcd,
            };
            match plane.try_start_apiserver().await {
                Ok(()) => return plane,
                Err(exited) if attempt < PORT_ATTEMPTS => {
                    eprintln!("kube-apiserver on port {secure_port}: {exited}; another port");
                    etcd = plane.etcd;
                }
                Err(exited) => panic!("{exited}\n{}", plane.apiserver_log_tail()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// (Re)start kube-apiserver and wait until it is ready.
    pub async fn start_apiserver(&self) {
        // On a restart the port is the one the kubeconfigs name: only that one will do.
        for attempt in 1..=PORT_ATTEMPTS {
            match self.try_start_apiserver().await {
                Ok(()) => return,
                Err(exited) if attempt < PORT_ATTEMPTS => {
                    eprintln!("{exited}; starting it again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(exited) => panic!("{exited}\n{}", self.apiserver_log_tail()),
            }
        }
    }

    /// Start kube-apiserver and wait until it is ready; `Err` if it exited first (e.g. its
    /// port was taken). Panics if it neither gets ready nor exits within 120 s.
    async fn try_start_apiserver(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .unwrap();
        *self.apiserver.lock().unwrap() = Some(spawn(
            "kube-apiserver",
            Command::new(self.assets.join("kube-apiserver"))
                .args(&self.apiserver_args)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
        let admin = client_from(&self.admin_kubeconfig).await;
        let readyz = || {
            let admin = admin.clone();
            async move {
                let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
                admin
                    .request_text(request)
                    .await
                    .ok()
                    .filter(|body| body.trim() == "ok")
                    .map(|_| ())
            }
        };
        let started = std::time::Instant::now();
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                if readyz().await.is_some() {
                    return Ok(());
                }
                let running = self
                    .apiserver
                    .lock()
                    .unwrap()
                    .as_mut()
                    .is_some_and(|a| a.is_running());
                if !running {
                    return Err("kube-apiserver exited before it was ready".to_string());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => {
                eprintln!(
                    "kube-apiserver ready in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Ok(Err(exited)) => {
                self.apiserver.lock().unwrap().take();
                Err(exited)
            }
            Err(_) => panic!(
                "kube-apiserver not ready after 120 s; log tail:\n{}",
                self.apiserver_log_tail()
            ),
        }
    }

    fn apiserver_log_tail(&self) -> String {
        log_tail(&self.dir.join("apiserver.log"), 40)
    }

    pub fn stop_apiserver(&self) {
        self.apiserver.lock().unwrap().take();
    }

    /// Freeze kube-apiserver (SIGSTOP): connections stay open and nothing answers, as with an
    /// apiserver that stalls. It resumes when the guard drops (also when the test fails).
    pub fn freeze_apiserver(&self) -> Frozen<'_> {
        let pid = self.apiserver_pid().expect("kube-apiserver runs");
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Frozen { plane: self, pid }
    }

    fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.lock().unwrap().as_ref().map(ChildGuard::pid)
    }

    /// The audit log's events so far (see `AUDIT_POLICY`), oldest first.
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(AuditEvent)
            .collect()
    }

    pub async fn admin(&self) -> Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// Install crds/ and wait until established.
    pub async fn install_crds(&self) {
        let admin = self.admin().await;
        let crds: Api<CustomResourceDefinition> = Api::all(admin);
        let text = std::fs::read_to_string(format!("{REPO}/crds/idvclients.yaml")).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document).unwrap();
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value).unwrap();
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(
                &name,
                &PatchParams::apply("envtest").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap();
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(crds.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .expect("CRD established in time")
            .unwrap();
        }
    }

    /// The operator's namespace, ServiceAccount and RBAC, exactly as deploy/ has them.
    pub async fn install_operator_rbac(&self) {
        self.apply_files(&[
            "deploy/base/namespace.yaml",
            "deploy/base/serviceaccount.yaml",
            "deploy/base/leader-election.yaml",
            "deploy/rbac.yaml",
        ])
        .await;
    }

    /// A kubeconfig that authenticates as a ServiceAccount with a token from the TokenRequest
    /// API, as a pod would. Written to `file` in the control plane's folder.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
        file: &str,
    ) -> PathBuf {
        let admin = self.admin().await;
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(admin, namespace);
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200},
        });
        let answer: k8s_openapi::api::authentication::v1::TokenRequest = accounts
            .create_subresource("token", service_account, &Default::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{service_account}: {e}"));
        let token = answer
            .status
            .and_then(|s| s.token)
            .expect("a TokenRequest answer has a token");
        let ca = std::fs::read_to_string(self.dir.join("ca.crt")).unwrap();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: sa\ncurrent-context: envtest\n",
            self.server,
            STANDARD.encode(ca)
        );
        let path = self.dir.join(file);
        std::fs::write(&path, config).unwrap();
        path
    }

    /// Apply YAML files (multi-document) with the admin identity.
    pub async fn apply_files(&self, files: &[&str]) {
        for file in files {
            let text = std::fs::read_to_string(format!("{REPO}/{file}")).unwrap();
            self.apply_yaml(&text).await;
        }
    }

    /// Apply multi-document YAML with the admin identity.
    pub async fn apply_yaml(&self, text: &str) {
        let admin = self.admin().await;
        {
            for document in serde_yaml::Deserializer::from_str(text) {
                let value = serde_yaml::Value::deserialize(document).unwrap();
                if value.is_null() {
                    continue;
                }
                let object: DynamicObject = serde_yaml::from_value(value).unwrap();
                apply_dynamic(&admin, object).await;
            }
        }
    }
}

/// A frozen kube-apiserver; resumed (SIGCONT) on drop.
pub struct Frozen<'a> {
    plane: &'a ControlPlane,
    pid: u32,
}

impl Frozen<'_> {
    pub fn resume(self) {}
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if self.plane.apiserver_pid() == Some(self.pid) {
            unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
        }
    }
}

/// One audit event (audit.k8s.io/v1 Event, Metadata level).
#[derive(Debug, Clone)]
pub struct AuditEvent(pub Value);

impl AuditEvent {
    fn text(&self, pointer: &str) -> &str {
        self.0
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn stage(&self) -> &str {
        self.text("/stage")
    }
    pub fn verb(&self) -> &str {
        self.text("/verb")
    }
    pub fn resource(&self) -> &str {
        self.text("/objectRef/resource")
    }
    pub fn namespace(&self) -> &str {
        self.text("/objectRef/namespace")
    }
    pub fn name(&self) -> &str {
        self.text("/objectRef/name")
    }
    pub fn uri(&self) -> &str {
        self.text("/requestURI")
    }
    pub fn code(&self) -> u16 {
        self.0
            .pointer("/responseStatus/code")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u16
    }
    pub fn username(&self) -> &str {
        self.text("/user/username")
    }
    /// The credential the request was made with: `JTI=<jti>` of a ServiceAccount token.
    pub fn credential_id(&self) -> &str {
        self.text("/user/extra/authentication.kubernetes.io~1credential-id/0")
    }
    /// When the apiserver finished the request (its clock: this machine's).
    pub fn completed_at(&self) -> jiff::Timestamp {
        self.text("/stageTimestamp").parse().unwrap_or_default()
    }
    /// A write that took effect if it succeeded (dry runs are checks, not writes).
    pub fn is_write(&self) -> bool {
        matches!(self.verb(), "create" | "update" | "patch" | "delete")
            && !self.uri().contains("dryRun=")
    }
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code())
    }
}

/// The credential id the apiserver records (`JTI=<jti>`) for the token in a kubeconfig written
/// by `service_account_kubeconfig`.
pub fn credential_id(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token kubeconfig");
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    format!("JTI={}", claims["jti"].as_str().expect("a jti claim"))
}

use serde::Deserialize;

pub async fn apply_dynamic(client: &Client, object: DynamicObject) {
    let types = object.types.clone().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(&types).unwrap();
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let name = object.metadata.name.clone().unwrap();
    let api: Api<DynamicObject> = match (&capabilities.scope, &object.metadata.namespace) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            Api::default_namespaced_with(client.clone(), &resource)
        }
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply("envtest").force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap();
}

/// A certificate and its key, as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Certificates for an HTTPS test IdP, made per run: a CA the operator may be told to trust,
/// a good server certificate (127.0.0.1 and localhost), and three that are wrong on purpose.
pub struct IdpTls {
    /// The trusted CA's certificate (PEM), alone in `ca_dir`.
    pub ca: PathBuf,
    /// A folder that holds only `ca`: an `SSL_CERT_DIR`.
    pub ca_dir: PathBuf,
    pub good: CertFiles,
    /// Names 127.0.0.1 and localhost, but signed by a CA nobody trusts.
    pub untrusted: CertFiles,
    /// Signed by the trusted CA, for localhost only (the IdP is reached as 127.0.0.1).
    pub wrong_host: CertFiles,
    /// Signed by the trusted CA, for 127.0.0.1 and localhost, expired at 2024-01-02T00:00:00Z.
    pub expired: CertFiles,
    _dir: tempfile::TempDir,
}

impl IdpTls {
    pub fn generate() -> IdpTls {
        let dir = tempfile::Builder::new()
            .prefix("idv-idp-tls-")
            .tempdir()
            .unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let trusted = ca("idv-token-operator test IdP CA");
        let stranger = ca("a CA nobody trusts");
        let write = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        let leaf =
            |name: &str, sans: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>, expired: bool| {
                let key = KeyPair::generate().unwrap();
                let mut params =
                    CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                        .unwrap();
                params.distinguished_name.push(DnType::CommonName, name);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                if expired {
                    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
                    params.not_after = rcgen::date_time_ymd(2024, 1, 2);
                }
                let cert = params.signed_by(&key, issuer).unwrap();
                CertFiles {
                    cert: write(&format!("{name}.crt"), &cert.pem()),
                    key: write(&format!("{name}.key"), &key.serialize_pem()),
                }
            };
        let here = ["127.0.0.1", "localhost"];
        let good = leaf("good", &here, &trusted, false);
        let untrusted = leaf("untrusted", &here, &stranger, false);
        let wrong_host = leaf("wrong-host", &["localhost"], &trusted, false);
        let expired = leaf("expired", &here, &trusted, true);
        let ca_dir = dir.path().join("ca");
        std::fs::create_dir(&ca_dir).unwrap();
        let ca = ca_dir.join("ca.crt");
        std::fs::write(&ca, trusted.pem()).unwrap();
        IdpTls {
            ca,
            ca_dir,
            good,
            untrusted,
            wrong_host,
            expired,
            _dir: dir,
        }
    }

    /// `IDP_TLS` for tests/idp/server.mjs: the good certificate on the issuer's listener, each
    /// wrong one on a listener of its own.
    fn server_config(&self) -> String {
        let pair = |files: &CertFiles| json!({"cert": files.cert, "key": files.key});
        json!({
            "cert": self.good.cert,
            "key": self.good.key,
            "extra": {
                "untrusted": pair(&self.untrusted),
                "wrong-host": pair(&self.wrong_host),
                "expired": pair(&self.expired),
            },
        })
        .to_string()
    }

    pub fn ca_path(&self) -> &str {
        self.ca.to_str().expect("a UTF-8 temp path")
    }
}

/// The test IdP: oidc-provider with test routes (tests/idp).
pub struct Idp {
    pub issuer: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    pub registration_endpoint: String,
    /// Plain-HTTP base URL for the harness's own calls (registration, introspection,
    /// /__test/): the issuer itself, or for an HTTPS IdP a listener that works whatever
    /// certificate the HTTPS ones present.
    pub control: String,
    /// Ports of the HTTPS listeners with a wrong certificate, by name ("untrusted",
    /// "wrong-host", "expired"); empty for a plain-HTTP IdP.
    pub tls_ports: std::collections::HashMap<String, u16>,
    http: reqwest::Client,
    _child: ChildGuard,
}

impl Idp {
    /// A plain-HTTP IdP.
    pub fn start() -> Idp {
        Self::start_with(None)
    }

    /// An HTTPS IdP when `tls` is given (issuer `https://127.0.0.1:PORT`).
    pub fn start_with(tls: Option<&IdpTls>) -> Idp {
        let idp_dir = format!("{REPO}/tests/idp");
        if !Path::new(&idp_dir)
            .join("node_modules/oidc-provider")
            .exists()
        {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix", &idp_dir])
                .stdout(Stdio::null())
                .status()
                .expect("run npm ci");
            assert!(status.success(), "npm ci --prefix tests/idp failed");
        }
        let mut command = Command::new("node");
        if let Some(tls) = tls {
            command.env("IDP_TLS", tls.server_config());
        }
        let mut child = spawn(
            "idp",
            command
                .arg(format!("{idp_dir}/server.mjs"))
                // The IdP exits when this pipe closes, i.e. when we die.
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = child.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the IdP prints its ready line within 30 s");
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("IdP ready line {line:?}: {e}"));
        let text = |k: &str| ready[k].as_str().unwrap().to_string();
        Idp {
            issuer: text("issuer"),
            token_endpoint: text("token_endpoint"),
            introspection_endpoint: text("introspection_endpoint"),
            registration_endpoint: text("registration_endpoint"),
            control: text("control"),
            tls_ports: serde_json::from_value(ready["tls_ports"].clone())
                .expect("tls_ports maps names to ports"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _child: child,
        }
    }

    /// Register a private_key_jwt client with these public keys; returns its client id.
    pub async fn register(&self, public_keys: &[Value], token_ttl: Option<u64>) -> String {
        let mut body = json!({
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": public_keys},
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "gipod_read api_read",
        });
        if let Some(ttl) = token_ttl {
            body["token_ttl"] = json!(ttl);
        }
        let response = self
            .http
            .post(self.via_control(&self.registration_endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert!(
            status.is_success(),
            "registration failed: {status} {answer}"
        );
        answer["client_id"].as_str().unwrap().to_string()
    }

    /// Register a client_secret_basic client; returns (client id, client secret).
    pub async fn register_with_secret(&self) -> (String, String) {
        let body = json!({
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "scope": "gipod_read api_read",
        });
        let response = self
            .http
            .post(self.via_control(&self.registration_endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        (
            answer["client_id"].as_str().unwrap().to_string(),
            answer["client_secret"]
                .as_str()
                .expect("a client secret")
                .to_string(),
        )
    }

    /// A new client secret for a client_secret client; the old one stops working at once.
    pub async fn rotate_secret(&self, client_id: &str) -> String {
        let response = self
            .http
            .post(format!("{}/__test/rotate-secret", self.issuer))
            .json(&json!({"client_id": client_id}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "rotating the secret failed");
        let answer: Value = response.json().await.unwrap();
        answer["client_secret"].as_str().unwrap().to_string()
    }

    pub async fn introspect(&self, token: &str) -> Value {
        self.http
            .post(self.via_control(&self.introspection_endpoint))
            .basic_auth("introspector", Some("introspector-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.control))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// One of the IdP's own URLs, reached through the control listener.
    fn via_control(&self, url: &str) -> String {
        match url.strip_prefix(&self.issuer) {
            Some(path) => format!("{}{path}", self.control),
            None => url.to_string(),
        }
    }

    /// The token endpoint on the HTTPS listener with this wrong certificate.
    pub fn endpoint_with(&self, listener: &str) -> String {
        let port = self
            .tls_ports
            .get(listener)
            .unwrap_or_else(|| panic!("the IdP has no TLS listener {listener:?}"));
        format!("https://127.0.0.1:{port}/token")
    }

    /// Present this certificate on a TLS listener ("main": the issuer's) from now on; open
    /// connections are closed and session tickets forgotten, so every client sees it.
    pub async fn use_certificate(&self, listener: &str, files: &CertFiles) {
        let response = self
            .http
            .post(format!("{}/__test/tls", self.control))
            .json(&json!({"listener": listener, "cert": files.cert, "key": files.key}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "swapping the certificate failed: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// TLS handshakes a listener completed, and the times (ms since the epoch) of those
    /// that failed (the client refused the certificate).
    pub async fn tls_handshakes(&self, listener: &str) -> (u64, Vec<i64>) {
        let all = self.get_json("/__test/tls").await;
        let counts = &all[listener];
        (
            counts["handshakes"].as_u64().expect("a TLS listener"),
            counts["failures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["at_ms"].as_i64().unwrap())
                .collect(),
        )
    }

    /// (token requests, successes) for a client.
    pub async fn stats(&self, client_id: &str) -> (u64, u64) {
        let v = self
            .get_json(&format!("/__test/stats?client_id={client_id}"))
            .await;
        (
            v["token_requests"].as_u64().unwrap(),
            v["token_successes"].as_u64().unwrap(),
        )
    }

    pub async fn fault(&self, body: Value) {
        let response = self
            .http
            .post(format!("{}/__test/fault", self.control))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "setting a fault failed");
    }

    /// The error descriptions an `echo` fault sent the client (the requests it repeated).
    pub async fn echoes(&self, client_id: &str) -> Vec<String> {
        serde_json::from_value(
            self.get_json(&format!("/__test/echoes?client_id={client_id}"))
                .await,
        )
        .unwrap()
    }

    /// (requests being answered now, the most there were at once) for a client.
    pub async fn in_flight(&self, client_id: &str) -> (u64, u64) {
        let v = self
            .get_json(&format!("/__test/stats?client_id={client_id}"))
            .await;
        (
            v["in_flight"].as_u64().unwrap(),
            v["peak_in_flight"].as_u64().unwrap(),
        )
    }

    /// The form fields of each token request of a client (credential values left out).
    pub async fn forms(&self, client_id: &str) -> Vec<Value> {
        serde_json::from_value(
            self.get_json(&format!("/__test/forms?client_id={client_id}"))
                .await,
        )
        .unwrap()
    }

    /// Every secret the token endpoint saw (of one client, or of all): raw assertions,
    /// Authorization headers, client secrets and the access tokens it answered with.
    pub async fn secrets(&self, client_id: Option<&str>) -> Vec<String> {
        idp_secrets(&self.http, &self.issuer, client_id).await
    }

    /// Decoded header and payload of each assertion the client sent.
    pub async fn assertions(&self, client_id: &str) -> Vec<Value> {
        serde_json::from_value(
            self.get_json(&format!("/__test/assertions?client_id={client_id}"))
                .await,
        )
        .unwrap()
    }
}

/// `Idp::secrets` for code that holds only the IdP's issuer URL. Each assertion also as its
/// signature alone: the part that proves possession of the key.
pub async fn idp_secrets(
    http: &reqwest::Client,
    issuer: &str,
    client_id: Option<&str>,
) -> Vec<String> {
    let query = client_id
        .map(|c| format!("?client_id={c}"))
        .unwrap_or_default();
    let answer: Value = http
        .get(format!("{issuer}/__test/secrets{query}"))
        .send()
        .await
        .expect("GET /__test/secrets")
        .json()
        .await
        .expect("JSON from /__test/secrets");
    let list = |kind: &str| -> Vec<String> {
        answer[kind]
            .as_array()
            .unwrap_or_else(|| panic!("/__test/secrets without {kind}: {answer}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let mut secrets = Vec::new();
    for assertion in list("assertions") {
        if let Some(signature) = assertion.rsplit('.').next() {
            secrets.push(signature.to_string());
        }
        secrets.push(assertion);
    }
    for authorization in list("authorizations") {
        // The header, and its credentials without the scheme (and without base64 padding).
        if let Some((_, credentials)) = authorization.split_once(' ') {
            secrets.push(credentials.trim_end_matches('=').to_string());
        }
        secrets.push(authorization);
    }
    secrets.extend(list("client_secrets"));
    secrets.extend(list("access_tokens"));
    secrets
}

/// The operator binary: IDV_OPERATOR_BIN when set (the demo, A/B benchmark runs), else the one
/// cargo built for this test or bench.
pub fn operator_binary() -> PathBuf {
    match (
        std::env::var_os("IDV_OPERATOR_BIN"),
        option_env!("CARGO_BIN_EXE_idv-token-operator"),
    ) {
        (Some(path), _) => PathBuf::from(path),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => panic!("IDV_OPERATOR_BIN names the operator binary"),
    }
}

/// The port logged on a line about `what` ("serving /metrics address=127.0.0.1:PORT").
fn port_in(output: &str, what: &str) -> Option<u16> {
    let line = output
        .lines()
        .find(|l| l.contains(what) && l.contains("address"))?;
    let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    after
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// An operator process with its output captured.
pub struct Operator {
    pub process: ChildGuard,
    output: Arc<Output>,
}

/// What a process printed, with a signal for each piece that arrives and for each output
/// stream that ends: waiting for a line wakes when it may have come, not on a timer.
#[derive(Default)]
struct Output {
    printed: Mutex<Printed>,
    changed: Condvar,
}

#[derive(Default)]
struct Printed {
    bytes: Vec<u8>,
    /// Output streams (stdout, stderr) that have ended.
    closed: usize,
}

impl Output {
    fn add(&self, bytes: &[u8]) {
        self.printed.lock().unwrap().bytes.extend_from_slice(bytes);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.printed.lock().unwrap().closed += 1;
        self.changed.notify_all();
    }
}

impl Operator {
    pub fn start(kubeconfig: &Path, args: &[&str]) -> Operator {
        Self::start_with_env(kubeconfig, args, &[])
    }

    /// With these environment variables. The trust-store variables (`SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`) are set only when given: the operator sees the system store otherwise.
    pub fn start_with_env(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Operator {
        let mut command = Command::new(operator_binary());
        command
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            // Most verbose logging: the secret scan covers every line the code can print.
            .env(
                "RUST_LOG",
                std::env::var("IDV_TEST_OPERATOR_LOG")
                    .unwrap_or_else(|_| "debug,hyper=info,h2=info,tower=info,rustls=info".into()),
            );
        // Given variables win, RUST_LOG included.
        for (name, value) in env {
            command.env(name, value);
        }
        // Port 0: the operator picks free ports and logs them (no race with other processes).
        let mut process = spawn(
            "operator",
            command
                .arg("run")
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--metrics-bind-address=127.0.0.1:0")
                .arg("--health-probe-bind-address=127.0.0.1:0")
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let output = Arc::new(Output::default());
        for stream in [
            Box::new(process.child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(process.child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buffer = [0u8; 8192];
                while let Ok(n) = reader.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    output.add(&buffer[..n]);
                }
                output.close();
            });
        }
        Operator { process, output }
    }

    /// Everything the operator printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.printed.lock().unwrap().bytes).to_string()
    }

    /// The port the operator logged for a listener ("serving /metrics" or "serving /healthz").
    fn logged_port(&self, what: &str) -> Option<u16> {
        port_in(&self.output(), what)
    }

    /// Port of /metrics if the operator logged it already.
    pub fn logged_metrics_port(&self) -> Option<u16> {
        self.logged_port("serving /metrics")
    }

    /// Port of /metrics; waits up to 10 s for the operator to log it.
    pub fn metrics_port(&self) -> u16 {
        self.wait_for_port("serving /metrics")
    }

    /// Port of /healthz and /readyz; waits up to 10 s for the operator to log it.
    pub fn health_port(&self) -> u16 {
        self.wait_for_port("serving /healthz")
    }

    /// Waits on the output: each new piece of it (or its end) wakes the wait.
    fn wait_for_port(&self, what: &str) -> u16 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut printed = self.output.printed.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&printed.bytes);
            if let Some(port) = port_in(&text, what) {
                return port;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // Both output streams ended: the operator exited, nothing more will come.
            let exited = printed.closed == 2;
            if exited || left.is_zero() {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                panic!("the operator did not log {what:?} (exited: {exited}):\n{tail}");
            }
            printed = self.output.changed.wait_timeout(printed, left).unwrap().0;
        }
    }

    /// GET a path on the metrics or probe port: (status, body).
    pub async fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    pub fn tail(&self, lines: usize) -> String {
        let all = self.output();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}
