//! The Helm chart on the test apiserver with the real helm: a values typo fails `helm install`,
//! the installed release's ServiceAccount and RBAC are enough for the operator to issue tokens
//! (cluster-wide, then namespaced after `helm upgrade`), and `helm uninstall` leaves the CRD and
//! the IdvClients.

use crate::case::*;
use k8s_openapi::api::{
    apps::v1::Deployment,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/helm/idv-token-operator"
);
const CRD: &str = "idvclients.idv-token-operator.dev";
/// One helm call against the local apiserver (no --wait: nothing here runs pods).
const HELM_DEADLINE: Duration = Duration::from_secs(90);

/// helm as the cluster admin, with its cache, config and data in the control plane's folder.
struct Helm {
    binary: std::path::PathBuf,
    home: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
}

impl Helm {
    async fn new(env: &Env) -> Helm {
        // Built on first use (minutes, progress on stderr), off the runtime's threads.
        let binary = tokio::task::spawn_blocking(|| support::tools::tool("helm"))
            .await
            .unwrap();
        Helm {
            binary,
            home: env.plane.dir.join("helm"),
            kubeconfig: env.plane.admin_kubeconfig.clone(),
        }
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new(&self.binary);
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"));
        support::run_bounded(&format!("helm {}", args.join(" ")), command, HELM_DEADLINE).await
    }

    /// A helm call that must succeed: its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "helm {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The operator as the installed Deployment would run it: its arguments (plus `extra`), as its
/// ServiceAccount (a TokenRequest token), POD_NAME and POD_NAMESPACE as its fieldRefs give them.
async fn operator_as_deployed(
    env: &Env,
    namespace: &str,
    deployment: &Deployment,
    extra: &[&str],
) -> Operator {
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let account = pod.service_account_name.as_deref().unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert_eq!(args[0], "run");
    let kubeconfig = env
        .plane
        .service_account_kubeconfig(
            namespace,
            account,
            &format!("{namespace}-{account}.kubeconfig"),
        )
        .await;
    let mut args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let pod_name = format!("{}-7d9f8b6c5-h2x4q", deployment.name_any());
    Operator::start_with_env(
        &kubeconfig,
        &args,
        &[("POD_NAME", &pod_name), ("POD_NAMESPACE", namespace)],
    )
}

pub(crate) async fn the_helm_chart_installs_upgrades_and_uninstalls(env: &Env) {
    let helm = Helm::new(env).await;
    let admin = env.plane.admin().await;
    let apps = create_namespace(env, "helm-apps").await;
    // Made by `helm install --create-namespace`.
    let release_ns = format!("helm-release-{}", NAMESPACES.fetch_add(1, Ordering::SeqCst));
    let release = "helm-e2e";
    let fullname = "helm-e2e-idv-token-operator";
    // The harness installed the CRD before this release; Helm takes over an existing object
    // only when it is marked as the release's, as a user moving from crds/ to the chart does.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let adopt = json!({"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": release_ns},
    }});
    crds.patch(CRD, &PatchParams::default(), &Patch::Merge(&adopt))
        .await
        .unwrap();

    // A typo in the values fails the install, before anything reaches the cluster.
    let install = [
        "install",
        release,
        CHART,
        "--namespace",
        &release_ns,
        "--create-namespace",
    ];
    let typo = helm
        .run(&[&install[..], &["--set", "replicaCont=1"]].concat())
        .await;
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        !typo.status.success() && stderr.contains("replicaCont"),
        "helm install with a typo: {stderr}"
    );
    let status = helm
        .run(&["status", release, "--namespace", &release_ns])
        .await;
    assert!(
        !status.status.success(),
        "a release exists after the failed install"
    );

    // Installed with the default values but the local IdP's host.
    let values = env.plane.dir.join("helm-values.yaml");
    std::fs::write(&values, "allowedTokenHosts: [\"127.0.0.1\"]\n").unwrap();
    let values = values.to_str().unwrap();
    // The NOTES say what was installed.
    let notes = helm
        .ok(&[&install[..], &["--values", values]].concat())
        .await;
    assert!(
        notes.contains("serving every namespace")
            && notes.contains("Tokens are sent only to 127.0.0.1."),
        "{notes}"
    );
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &release_ns);
    let deployment = deployments.get(fullname).await.unwrap();
    let crd = crds.get(CRD).await.unwrap();
    assert_eq!(
        crd.annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    for role in [
        fullname.to_string(),
        format!("{fullname}:view"),
        format!("{fullname}:edit"),
    ] {
        cluster_roles.get(&role).await.unwrap();
    }

    // The operator as that ServiceAccount, with the Deployment's arguments, gets a token: the
    // chart's RBAC is enough. It also watches only the test's namespace (cluster-wide it would
    // serve the other scenarios' IdvClients).
    let operator = operator_as_deployed(
        env,
        &release_ns,
        &deployment,
        &["--watch-namespaces", &apps],
    )
    .await;
    let mut case = Case::with_operator(env, apps.clone(), operator).await;
    let (_, first_key) = ready_client(env, &case, "app", None).await;
    let first_token = text(
        &case.secrets().get("app-token").await.unwrap(),
        "access_token",
    );

    // `helm upgrade` to the namespaced mode: Roles in the served namespace instead of the
    // ClusterRole, and the operator told to watch only it.
    let namespaced = format!("watchNamespaces={{{apps}}}");
    let notes = helm
        .ok(&[
            "upgrade",
            release,
            CHART,
            "--namespace",
            &release_ns,
            "--values",
            values,
            "--set",
            &namespaced,
        ])
        .await;
    assert!(
        notes.contains(&format!("serving the namespaces {apps}.")),
        "{notes}"
    );
    assert!(cluster_roles.get_opt(fullname).await.unwrap().is_none());
    assert!(cluster_bindings.get_opt(fullname).await.unwrap().is_none());
    Api::<Role>::namespaced(admin.clone(), &apps)
        .get(fullname)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &apps)
        .get(fullname)
        .await
        .unwrap();
    let upgraded = deployments.get(fullname).await.unwrap();
    let args = upgraded
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&format!("--watch-namespaces={apps}")),
        "{args:?}"
    );

    // The upgraded Deployment's arguments exactly (one replica at a time: the first releases
    // the Lease), with only the Roles: a new client gets its token.
    assert!(
        case.terminate_operator().await,
        "the operator did not stop on SIGTERM"
    );
    let next = operator_as_deployed(env, &release_ns, &upgraded, &[]).await;
    case.replace_operator(next).await;
    let (_, second_key) = ready_client(env, &case, "second", None).await;
    let second_token = text(
        &case.secrets().get("second-token").await.unwrap(),
        "access_token",
    );

    // `helm uninstall`: the operator's objects go, the CRD and the users' IdvClients stay.
    assert!(
        case.terminate_operator().await,
        "the operator did not stop on SIGTERM"
    );
    let uninstall = helm
        .ok(&["uninstall", release, "--namespace", &release_ns])
        .await;
    assert!(
        uninstall.contains("kept due to the resource policy"),
        "{uninstall}"
    );
    assert!(deployments.get_opt(fullname).await.unwrap().is_none());
    assert!(
        Api::<Role>::namespaced(admin.clone(), &apps)
            .get_opt(fullname)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        cluster_roles
            .get_opt(&format!("{fullname}:view"))
            .await
            .unwrap()
            .is_none()
    );
    crds.get(CRD).await.unwrap();
    for name in ["app", "second"] {
        case.clients().get(name).await.unwrap();
        case.secrets().get(&format!("{name}-token")).await.unwrap();
    }
    let secrets = [
        key_material(&first_key),
        key_material(&second_key),
        vec![first_token, second_token],
    ]
    .concat();
    case.assert_no_leaks(&secrets).await;
}
