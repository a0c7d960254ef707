//! `make demo`: a local control plane and IdP, the operator, an example IdvClient, and the
//! token Secret it produces. Everything it starts stops when it ends.
//!
//! `make demo-up` (DEMO_KEEP=1): the same, then it keeps running, printing the operator's log,
//! until Ctrl-C or SIGTERM (`make demo-down`), so that one can try kubectl by hand. It writes the
//! KUBECONFIG to export and its pid to DEMO_STATE_DIR.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{path::Path, process::Command, time::Duration};

use support::{ControlPlane, Idp, LOCAL_IDP_HOSTS, Operator, eventually};

fn step(text: &str) {
    eprintln!("\n==> {text}");
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("kubectl is installed");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "kubectl {} failed", args.join(" "));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("idv-demo-")
        .tempdir()
        .unwrap();
    let operator_bin = support::operator_binary();

    step("Starting a local control plane (etcd + kube-apiserver) and a local IdP (oidc-provider)");
    let plane = rt.block_on(async {
        let plane = ControlPlane::start(dir.path()).await;
        plane.install_operator_rbac().await;
        plane
    });
    let idp = Idp::start();
    let admin = plane.admin_kubeconfig.clone();
    eprintln!("    apiserver {}   IdP issuer {}", plane.server, idp.issuer);

    step("kubectl apply -f crds/");
    eprint!(
        "{}",
        kubectl(
            &admin,
            &[
                "apply",
                "--server-side",
                "-f",
                &format!("{}/crds/idvclients.yaml", support::REPO)
            ],
            None
        )
    );
    kubectl(
        &admin,
        &[
            "wait",
            "--for=condition=Established",
            "crd/idvclients.idv-token-operator.dev",
            "--timeout=30s",
        ],
        None,
    );

    step(
        "idv-token-operator keygen --alg ES256 --private jwk.json   (the public JWK goes to the portal)",
    );
    let private_path = dir.path().join("jwk.json");
    let keygen = Command::new(&operator_bin)
        .args(["keygen", "--alg", "ES256", "--private"])
        .arg(&private_path)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "keygen failed");
    let public: serde_json::Value = serde_json::from_slice(&keygen.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&public).unwrap());

    step("Registering the public key with the local IdP (the Beheerportaal's job in real life)");
    let client_id = rt.block_on(idp.register(&[public], None));
    eprintln!("    client id: {client_id}");

    step(
        "kubectl create namespace demo; kubectl create secret generic gipod-jwk --from-file=jwk.json; \
         kubectl label secret gipod-jwk idv-token-operator.dev/credential=true",
    );
    kubectl(&admin, &["create", "namespace", "demo"], None);
    kubectl(
        &admin,
        &[
            "-n",
            "demo",
            "create",
            "secret",
            "generic",
            "gipod-jwk",
            &format!("--from-file=jwk.json={}", private_path.display()),
        ],
        None,
    );
    // Only a Secret labelled as a credential is read by the operator.
    kubectl(
        &admin,
        &[
            "-n",
            "demo",
            "label",
            "secret",
            "gipod-jwk",
            "idv-token-operator.dev/credential=true",
        ],
        None,
    );

    let manifest = format!(
        "apiVersion: idv-token-operator.dev/v1alpha1\nkind: IdvClient\nmetadata:\n  name: gipod\n  namespace: demo\nspec:\n  clientId: {client_id}\n  authServer:\n    issuer: {}\n  privateKey:\n    secretRef: {{name: gipod-jwk, key: jwk.json}}\n  scopes: [gipod_read]\n",
        idp.issuer
    );
    step("kubectl apply -f - <<EOF");
    eprint!("{manifest}");
    kubectl(&admin, &["apply", "-f", "-"], Some(&manifest));

    step(
        "Running the operator (as its ServiceAccount, with deploy/rbac.yaml's permissions; \
         --allowed-token-hosts 127.0.0.1 lets it send to the local IdP, the default being the IDV hosts)",
    );
    // Its default log level, so the log stays readable when it is followed by hand.
    let operator = Operator::start_with_env(
        &plane.operator_kubeconfig,
        &[
            "--watch-namespace",
            "demo",
            LOCAL_IDP_HOSTS[0],
            LOCAL_IDP_HOSTS[1],
        ],
        &[("RUST_LOG", "info")],
    );
    rt.block_on(eventually(
        Duration::from_secs(60),
        "the token Secret",
        || {
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&admin)
                .args(["-n", "demo", "get", "secret", "gipod-token", "-o", "name"])
                .stderr(std::process::Stdio::null())
                .output()
                .unwrap();
            async move { out.status.success().then_some(()) }
        },
    ));
    kubectl(
        &admin,
        &[
            "-n",
            "demo",
            "wait",
            "--for=condition=Ready",
            "idvclient/gipod",
            "--timeout=30s",
        ],
        None,
    );

    step("kubectl get idvclients -n demo");
    eprint!(
        "{}",
        kubectl(&admin, &["-n", "demo", "get", "idvclients"], None)
    );
    step(
        "kubectl describe secret gipod-token -n demo   (keys and sizes only; the token stays secret)",
    );
    eprint!(
        "{}",
        kubectl(
            &admin,
            &["-n", "demo", "describe", "secret", "gipod-token"],
            None
        )
    );
    step("The operator's log");
    for line in operator
        .output()
        .lines()
        .filter(|l| l.contains("token issued"))
    {
        eprintln!("    {line}");
    }
    if std::env::var_os("DEMO_KEEP").is_some() {
        keep_running(&rt, &admin, &operator);
    }
    step("Stopping the operator, the IdP and the control plane");
    drop(operator);
    drop(idp);
    drop(plane);
    eprintln!("done.");
}

/// Leave everything running for a person at a terminal: say what to export and what to try,
/// follow the operator's log, and return on Ctrl-C or SIGTERM (`make demo-down`).
fn keep_running(rt: &tokio::runtime::Runtime, kubeconfig: &Path, operator: &Operator) {
    let state = std::env::var_os("DEMO_STATE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("idv-token-operator-demo"));
    std::fs::create_dir_all(&state).unwrap();
    let env_file = state.join("env");
    std::fs::write(
        &env_file,
        format!("export KUBECONFIG={}\n", kubeconfig.display()),
    )
    .unwrap();
    std::fs::write(state.join("pid"), format!("{}\n", std::process::id())).unwrap();
    step("The demo keeps running. In another terminal:");
    eprintln!(
        r#"
    export KUBECONFIG={kubeconfig}        # or: source {env_file}

    kubectl get idvclients -n demo
    kubectl describe idvclient gipod -n demo
    kubectl get secret gipod-token -n demo -o jsonpath='{{.data.expires_at}}' | base64 -d; echo

    # A new token now (any new value of the annotation):
    kubectl annotate idvclient gipod -n demo --overwrite idv-token-operator.dev/force-refresh="$(date +%s)"

    # A broken key: READY turns False with reason InvalidKey; the last token stays in its Secret.
    kubectl create secret generic broken-jwk -n demo --from-literal=jwk.json='{{"kty":"EC","crv":"P-256"}}'
    kubectl label secret broken-jwk -n demo idv-token-operator.dev/credential=true
    kubectl patch idvclient gipod -n demo --type merge -p '{{"spec":{{"privateKey":{{"secretRef":{{"name":"broken-jwk","key":"jwk.json"}}}}}}}}'
    kubectl get idvclients -n demo
    # ...and back to the good key:
    kubectl patch idvclient gipod -n demo --type merge -p '{{"spec":{{"privateKey":{{"secretRef":{{"name":"gipod-jwk","key":"jwk.json"}}}}}}}}'

Stop it with Ctrl-C here, or `make demo-down`. The operator's log follows.
"#,
        kubeconfig = kubeconfig.display(),
        env_file = env_file.display(),
    );
    rt.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let mut shown = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                _ = tick.tick() => {
                    // Whole lines only: the last one may still be arriving.
                    let output = operator.output();
                    let complete = output.rfind('\n').map_or(0, |end| end + 1);
                    if let Some(new) = output.get(shown..complete) {
                        eprint!("{new}");
                        shown = complete;
                    }
                }
            }
        }
    });
    let _ = std::fs::remove_file(state.join("pid"));
    let _ = std::fs::remove_file(env_file);
}
