//! The Helm chart (deploy/helm/idv-token-operator) and the release workflow that publishes it,
//! checked with the real tools: helm (lint, template, the values schema), kubectl kustomize (the
//! objects deploy/ installs, which the chart must match) and actionlint. No cluster: the helm
//! scenario of tests/operator installs the chart into the test apiserver.

#[path = "support/tools.rs"]
mod tools;

use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/helm/idv-token-operator"
);
/// Release name and namespace that give deploy/'s names.
const RELEASE: &str = "idv-token-operator";
const NAMESPACE: &str = "idv-token-operator-system";
const DEADLINE: Duration = Duration::from_secs(120);

/// helm with its cache, config and data in a folder of this test run (never the user's).
fn helm(args: &[&str]) -> Output {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let mut command = Command::new(tools::tool("helm"));
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    tools::run_with_deadline(&format!("helm {}", args.join(" ")), command, DEADLINE)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The documents of a multi-document YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            serde_json::to_value(<serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
                .unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the chart with these extra arguments (values files, --set).
fn template(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let output = helm(&args);
    assert!(
        output.status.success(),
        "helm {}: {}",
        args.join(" "),
        text(&output.stderr)
    );
    documents(&text(&output.stdout))
}

/// `helm template` that must fail: its error message.
fn template_error(extra: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let output = helm(&args);
    assert!(
        !output.status.success(),
        "helm {} succeeded:\n{}",
        args.join(" "),
        text(&output.stdout)
    );
    text(&output.stderr)
}

fn kustomize(dir: &str) -> Vec<Value> {
    let mut command = Command::new("kubectl");
    command.args(["kustomize", &format!("{REPO}/{dir}")]);
    let output = tools::run_with_deadline(&format!("kubectl kustomize {dir}"), command, DEADLINE);
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        text(&output.stderr)
    );
    documents(&text(&output.stdout))
}

type Key = (String, String, String);

fn key(object: &Value) -> Key {
    let field = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name"),
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    objects.into_iter().map(|o| (key(&o), o)).collect()
}

/// Helm's release bookkeeping, which the kustomize install cannot carry: the labels naming the
/// chart, its version and Helm, and the CRD's keep annotation. Removed wherever metadata is.
fn without_helm_bookkeeping(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
                if let Some(Value::Object(labels)) = metadata.get_mut("labels") {
                    for label in [
                        "helm.sh/chart",
                        "app.kubernetes.io/managed-by",
                        "app.kubernetes.io/version",
                    ] {
                        labels.remove(label);
                    }
                }
                if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
                    annotations.remove("helm.sh/resource-policy");
                    if annotations.is_empty() {
                        metadata.remove("annotations");
                    }
                }
            }
            map.values_mut().for_each(without_helm_bookkeeping);
        }
        Value::Array(items) => items.iter_mut().for_each(without_helm_bookkeeping),
        _ => {}
    }
}

/// Where two values differ, as JSON pointers with both sides.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = format!("{path}/{k}");
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{path}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: chart {a} / kustomize {b}")),
        _ => {}
    }
}

/// The chart rendered with `values` installs exactly the objects of `kubectl kustomize dir`,
/// but the Namespace (Helm's `--create-namespace` makes it).
fn assert_same_objects(values: &[&str], dir: &str) {
    let chart = by_key(template(values));
    let mut kustomized = by_key(kustomize(dir));
    let namespace = kustomized
        .remove(&("Namespace".into(), String::new(), NAMESPACE.into()))
        .unwrap_or_else(|| panic!("{dir} creates the namespace {NAMESPACE}"));
    assert_eq!(namespace["kind"], "Namespace");
    let only_chart: Vec<_> = chart
        .keys()
        .filter(|k| !kustomized.contains_key(*k))
        .collect();
    let only_kustomize: Vec<_> = kustomized
        .keys()
        .filter(|k| !chart.contains_key(*k))
        .collect();
    assert!(
        only_chart.is_empty() && only_kustomize.is_empty(),
        "objects only in the chart: {only_chart:?}; only in {dir}: {only_kustomize:?}"
    );
    let mut drift = Vec::new();
    for (k, object) in chart {
        let mut object = object;
        without_helm_bookkeeping(&mut object);
        let mut out = Vec::new();
        differences(&object, &kustomized[&k], "", &mut out);
        drift.extend(out.into_iter().map(|d| format!("{k:?}{d}")));
    }
    assert!(
        drift.is_empty(),
        "the chart drifted from {dir}:\n{}",
        drift.join("\n")
    );
}

#[test]
fn helm_lint_strict_passes_for_each_values_file() {
    for values in [
        None,
        Some("ci/namespaced-values.yaml"),
        Some("ci/all-values.yaml"),
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        let file = values.map(|v| format!("{CHART}/{v}"));
        if let Some(file) = &file {
            args.extend(["--values", file]);
        }
        let output = helm(&args);
        assert!(
            output.status.success(),
            "helm lint --strict with {values:?}:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

#[test]
fn default_values_install_what_kubectl_apply_k_deploy_installs() {
    assert_same_objects(&[], "deploy");
}

#[test]
fn namespaced_values_install_what_deploy_namespaced_installs() {
    let values = format!("{CHART}/ci/namespaced-values.yaml");
    assert_same_objects(&["--values", &values], "deploy/namespaced");
}

#[test]
fn a_typo_or_a_bad_value_fails_before_anything_is_rendered() {
    // (--set, what the error names)
    let cases = [
        ("replicaCont=3", "replicaCont"),
        ("image.tgs=0.2.0", "tgs"),
        ("crds.kep=false", "kep"),
        ("concurrency=many", "concurrency"),
        ("logFormat=yaml", "logFormat"),
        ("watchNamespaces={Team_A}", "watchNamespaces"),
        ("allowedTokenHosts={idp.example/token}", "allowedTokenHosts"),
        ("tokenRequestTimeout=10", "tokenRequestTimeout"),
        ("image.digest=latest", "digest"),
        ("extraArgs={run}", "extraArgs"),
    ];
    for (set, named) in cases {
        let error = template_error(&["--set", set]);
        assert!(
            error.contains("values don't meet the specifications of the schema")
                && error.contains(named),
            "--set {set}: {error}"
        );
    }
    // What a schema cannot say, the templates refuse.
    let both = template_error(&[
        "--set",
        "caBundle.configMap.name=a",
        "--set",
        "caBundle.secret.name=b",
    ]);
    assert!(both.contains("not both"), "{both}");
    let unled = template_error(&["--set", "leaderElection.enabled=false"]);
    assert!(unled.contains("needs leaderElection.enabled"), "{unled}");
    let no_account = template_error(&["--set", "serviceAccount.create=false"]);
    assert!(no_account.contains("serviceAccount.name"), "{no_account}");
}

/// The flags `idv-token-operator run` has, from its --help.
fn operator_flags() -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idv-token-operator"));
    command.args(["run", "--help"]);
    let output = tools::run_with_deadline("idv-token-operator run --help", command, DEADLINE);
    assert!(output.status.success());
    text(&output.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches([',', '.', ')'])
                .split(['=', ' ', '<'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn every_value_reaches_the_objects() {
    let objects = template(&["--values", &format!("{CHART}/ci/all-values.yaml")]);
    let deployment = find(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        strings(&container["args"]),
        [
            "run",
            "--leader-elect",
            "--leader-election-id=tokens-lease",
            "--leader-election-lease-duration=30s",
            "--leader-election-retry-period=4s",
            "--log-format",
            "text",
            "--watch-namespaces=team-a",
            "--allowed-token-hosts=authenticatie.vlaanderen.be,*.idp.example.org",
            "--ca-bundle=/etc/idv-token-operator/ca/ca.crt",
            "--concurrency=8",
            "--max-concurrent-token-requests=16",
            "--token-request-timeout=20s",
            "--min-refresh-interval=1m",
            "--health-probe-bind-address=:8081",
        ]
    );
    // Each is a flag of the operator (a renamed flag fails here, not in a cluster).
    let flags = operator_flags();
    for arg in strings(&container["args"])
        .into_iter()
        .filter_map(|a| a.strip_prefix("--"))
    {
        let name = arg.split('=').next().unwrap();
        assert!(
            flags.iter().any(|f| f == name),
            "--{name} is not a flag of `run`: {flags:?}"
        );
    }
    assert_eq!(
        container["image"],
        "registry.example/mirror/idv-token-operator:0.1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
        .collect();
    assert_eq!(env["RUST_LOG"], "info,idv_token_operator=debug");
    assert_eq!(env["SSL_CERT_DIR"], "/etc/ssl/certs");
    // The CA bundle: the ConfigMap's key, mounted where --ca-bundle points.
    assert_eq!(
        pod["spec"]["volumes"][0],
        json!({"name": "ca-bundle", "configMap": {"name": "corporate-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}})
    );
    assert_eq!(
        container["volumeMounts"][0],
        json!({"name": "ca-bundle", "mountPath": "/etc/idv-token-operator/ca", "readOnly": true})
    );
    let spec = &pod["spec"];
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert!(spec["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(spec["topologySpreadConstraints"][0]["maxSkew"], 1);
    assert_eq!(spec["imagePullSecrets"][0]["name"], "registry-login");
    assert_eq!(
        pod["metadata"]["annotations"]["example.org/team"],
        "platform"
    );
    assert_eq!(pod["metadata"]["labels"]["example.org/tier"], "infra");
    assert_eq!(deployment["spec"]["replicas"], 3);
    // Namespaced: a Role in team-a, nothing cluster-wide but the users' roles, unaggregated.
    let roles = find(&objects, "Role");
    assert!(roles.iter().any(|r| r["metadata"]["namespace"] == "team-a"));
    assert!(find(&objects, "ClusterRoleBinding").is_empty());
    for role in find(&objects, "ClusterRole") {
        let name = role["metadata"]["name"].as_str().unwrap();
        assert!(name.ends_with(":view") || name.ends_with(":edit"), "{name}");
        let labels = role["metadata"]["labels"].as_object().unwrap();
        assert!(
            !labels
                .keys()
                .any(|l| l.starts_with("rbac.authorization.k8s.io/aggregate-to")),
            "{name}"
        );
    }
    let pdb = find(&objects, "PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    let policy = &find(&objects, "NetworkPolicy")[0]["spec"];
    assert_eq!(policy["policyTypes"], json!(["Ingress", "Egress"]));
    let egress = policy["egress"].as_array().unwrap();
    assert_eq!(
        egress[0]["ports"],
        json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[1],
        json!({"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]})
    );
    assert_eq!(
        egress[2],
        json!({"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]})
    );
    assert_eq!(
        policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let monitor = find(&objects, "ServiceMonitor")[0];
    assert_eq!(monitor["metadata"]["namespace"], "monitoring");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    let service = find(&objects, "Service")[0];
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        service["spec"]["selector"],
        monitor["spec"]["selector"]["matchLabels"]
    );
    let account = find(&objects, "ServiceAccount")[0];
    assert_eq!(
        account["metadata"]["annotations"]["example.org/owner"],
        "platform"
    );
}

#[test]
fn switches_turn_objects_on_and_off() {
    let kinds = |objects: &[Value]| -> Vec<String> {
        objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap().to_string())
            .collect()
    };
    // One replica: no PodDisruptionBudget (it would block every drain).
    let single = template(&["--set", "replicaCount=1"]);
    assert!(!kinds(&single).contains(&"PodDisruptionBudget".to_string()));
    // The CRD: off, or not kept.
    assert!(
        !kinds(&template(&["--set", "crds.enabled=false"]))
            .contains(&"CustomResourceDefinition".to_string())
    );
    let unkept = template(&["--set", "crds.keep=false"]);
    let crd = find(&unkept, "CustomResourceDefinition")[0];
    assert!(
        crd["metadata"].get("annotations").is_none(),
        "{}",
        crd["metadata"]
    );
    // A CA bundle from a Secret.
    let from_secret = template(&["--set", "caBundle.secret.name=idp-ca"]);
    let pod = &find(&from_secret, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"],
        json!({"secretName": "idp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );
    assert!(
        strings(&pod["containers"][0]["args"])
            .contains(&"--ca-bundle=/etc/idv-token-operator/ca/ca.crt")
    );
    // An existing ServiceAccount: not created, bound by name.
    let existing = template(&[
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=ops-robot",
    ]);
    assert!(find(&existing, "ServiceAccount").is_empty());
    assert_eq!(
        find(&existing, "ClusterRoleBinding")[0]["subjects"][0]["name"],
        "ops-robot"
    );
    assert_eq!(
        find(&existing, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"],
        "ops-robot"
    );
    // Another release name: every name carries it, so two releases do not collide.
    let output = helm(&[
        "template",
        "tenant-a",
        CHART,
        "--namespace",
        "tenant-a",
        "--set",
        "watchNamespaces={tenant-a}",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for object in documents(&text(&output.stdout)) {
        let name = object["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("tenant-a-idv-token-operator")
                || object["kind"] == "CustomResourceDefinition",
            "{name}"
        );
    }
    // A digest alone pins the image without a tag.
    let pinned = template(&[
        "--set",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(
        find(&pinned, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/idv-token-operator/idv-token-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
}

/// One version and one image reference everywhere a release names them: Cargo.toml, the chart,
/// deploy/, and what the release workflow publishes (it refuses a tag that differs).
#[test]
fn one_version_and_one_image_everywhere() {
    let version = env!("CARGO_PKG_VERSION");
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["version"].as_str(), Some(version));
    assert_eq!(chart["appVersion"].as_str(), Some(version));
    let deployment =
        documents(&std::fs::read_to_string(format!("{REPO}/deploy/base/deployment.yaml")).unwrap())
            .remove(0);
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    assert_eq!(tag, version);
    let rendered = template(&[]);
    assert_eq!(
        find(&rendered, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        image.as_str()
    );
    let workflow: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{REPO}/.github/workflows/release.yml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        workflow["env"]["IMAGE"].as_str(),
        Some(repository),
        "the workflow pushes the image deploy/ names"
    );
    assert_eq!(
        workflow["env"]["CHART_REPOSITORY"].as_str(),
        Some("oci://ghcr.io/idv-token-operator/charts"),
        "the chart's OCI repository, as the README's install section names it"
    );
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).unwrap();
    assert!(readme.contains("oci://ghcr.io/idv-token-operator/charts/idv-token-operator"));
}

/// The values a user can set: the schema's properties, down to those that are not groups of
/// values (an object schema with properties of its own is a group).
fn value_paths(schema: &Value, prefix: &str, out: &mut Vec<String>) {
    for (name, property) in schema["properties"].as_object().unwrap() {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if property.get("properties").is_some() {
            value_paths(property, &path, out);
        } else if path != "global" {
            out.push(path);
        }
    }
}

#[test]
fn the_schema_closes_every_group_and_the_readme_documents_every_value() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.schema.json")).unwrap(),
    )
    .unwrap();
    fn closed(schema: &Value, path: &str) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            assert_eq!(
                schema["additionalProperties"], false,
                "{path}: typos would pass"
            );
            for (name, property) in properties {
                closed(property, &format!("{path}.{name}"));
            }
        }
    }
    closed(&schema, "values");
    let mut paths = Vec::new();
    value_paths(&schema, "", &mut paths);
    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let undocumented: Vec<_> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("`{p}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "values the chart README does not document: {undocumented:?}"
    );
    // And values.yaml sets nothing the schema does not know (helm would refuse its own defaults).
    let output = helm(&["show", "values", CHART]);
    assert!(output.status.success());
    let defaults: Value = serde_yaml::from_str(&text(&output.stdout)).unwrap();
    fn known(defaults: &Value, schema: &Value, path: &str) {
        if let (Some(values), Some(properties)) = (
            defaults.as_object(),
            schema.get("properties").and_then(Value::as_object),
        ) {
            for (name, value) in values {
                let property = properties
                    .get(name)
                    .unwrap_or_else(|| panic!("{path}.{name} is not in the schema"));
                known(value, property, &format!("{path}.{name}"));
            }
        }
    }
    known(&defaults, &schema, "values");
}

#[test]
fn the_release_workflow_passes_actionlint() {
    let workflows = PathBuf::from(REPO).join(".github/workflows");
    let files: Vec<PathBuf> = std::fs::read_dir(&workflows)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("release.yml")),
        "{files:?}"
    );
    let mut command = Command::new(tools::tool("actionlint"));
    // -shellcheck= and -pyflakes= off: what they find depends on what this machine has installed.
    command
        .args(["-no-color", "-shellcheck=", "-pyflakes="])
        .args(&files)
        .current_dir(REPO);
    let output = tools::run_with_deadline("actionlint", command, DEADLINE);
    assert!(
        output.status.success(),
        "actionlint:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}
