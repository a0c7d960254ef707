//! deploy/ holds what the security review asks for: least-privilege RBAC, every rule
//! explained, and a locked-down Deployment. Pure file checks; the integration tests run the
//! operator under these exact rules.

use serde_yaml::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{REPO}/{path}")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

const RBAC_FILES: [&str; 3] = [
    "deploy/rbac.yaml",
    "deploy/base/leader-election.yaml",
    "deploy/namespaced/roles.yaml",
];

#[test]
fn rbac_has_no_wildcards_and_no_deletecollection() {
    for file in RBAC_FILES {
        for doc in documents(file) {
            let Some(rules) = doc.get("rules").and_then(Value::as_sequence) else {
                continue;
            };
            for rule in rules {
                for field in ["verbs", "resources", "apiGroups"] {
                    for item in rule[field].as_sequence().unwrap() {
                        assert_ne!(item.as_str(), Some("*"), "{file}: wildcard in {field}");
                    }
                }
                let verbs = strings(&rule["verbs"]);
                assert!(
                    !verbs.contains(&"deletecollection"),
                    "{file}: deletecollection"
                );
                if rule["resources"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_str() == Some("events"))
                {
                    assert_eq!(verbs, ["create"], "{file}: events are only created");
                    assert_eq!(
                        rule["apiGroups"].as_sequence().unwrap(),
                        &[Value::from("events.k8s.io")],
                        "{file}: events.k8s.io/v1 only"
                    );
                }
            }
        }
    }
}

/// The users' IdvClient roles (not the operator's: they may `deletecollection`).
const USER_ROLES: &str = "deploy/base/user-roles.yaml";

#[test]
fn every_rbac_rule_says_why() {
    for file in RBAC_FILES.into_iter().chain([USER_ROLES]) {
        let text = std::fs::read_to_string(format!("{REPO}/{file}")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                assert!(
                    i > 0 && lines[i - 1].trim_start().starts_with('#'),
                    "{file}:{}: a rule without a comment above it",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn leases_only_in_the_operator_namespace() {
    for file in RBAC_FILES {
        for doc in documents(file) {
            let leases = doc
                .get("rules")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .any(|r| {
                    r["resources"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .any(|x| x.as_str() == Some("leases"))
                });
            if leases {
                assert_eq!(
                    doc["kind"].as_str(),
                    Some("Role"),
                    "{file}: leases only through a Role"
                );
                assert_eq!(
                    doc["metadata"]["namespace"].as_str(),
                    Some("idv-token-operator-system")
                );
            }
        }
    }
}

#[test]
fn the_deployment_is_locked_down() {
    let deployment = &documents("deploy/base/deployment.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind]["memory"].as_str().is_some(),
            "memory {kind}"
        );
    }
    assert!(container["resources"]["requests"]["cpu"].as_str().is_some());
    assert_eq!(
        container["livenessProbe"]["httpGet"]["port"].as_str(),
        Some("health")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let ports: Vec<&str> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(ports.contains(&"metrics") && ports.contains(&"health"));
    let args = strings(&container["args"]);
    assert!(
        args.contains(&"--leader-elect"),
        "two replicas need leader election"
    );
}

/// The users' roles, aggregated the way cert-manager ships its own: `view` into view, edit and
/// admin; `edit` (which may delete many IdvClients at once) into edit and admin. The files here;
/// the integration test `kubectl_apply_k_installs_everything` evaluates these labels against the
/// aggregation rules of the apiserver's own view, edit and admin.
#[test]
fn user_roles_aggregate_into_view_edit_and_admin() {
    const FILE: &str = USER_ROLES;
    let roles = documents(FILE);
    let role = |name: &str| {
        roles
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{FILE}: no {name}"))
    };
    let aggregates_to = |doc: &Value| -> Vec<String> {
        let labels = doc["metadata"]["labels"].as_mapping().unwrap();
        let mut to: Vec<String> = labels
            .iter()
            .filter_map(|(k, v)| {
                let target = k
                    .as_str()?
                    .strip_prefix("rbac.authorization.k8s.io/aggregate-to-")?;
                assert_eq!(v.as_str(), Some("true"), "{FILE}: label values are strings");
                Some(target.to_string())
            })
            .collect();
        to.sort();
        to
    };
    let only_rule = |doc: &Value| -> Vec<String> {
        let rules = doc["rules"].as_sequence().unwrap();
        assert_eq!(rules.len(), 1, "{FILE}: one rule per role");
        let rule = &rules[0];
        assert_eq!(strings(&rule["apiGroups"]), ["idv-token-operator.dev"]);
        assert_eq!(strings(&rule["resources"]), ["idvclients"]);
        strings(&rule["verbs"])
            .into_iter()
            .map(String::from)
            .collect()
    };
    let view = role("idv-token-operator:view");
    assert_eq!(view["kind"].as_str(), Some("ClusterRole"));
    assert_eq!(aggregates_to(view), ["admin", "edit", "view"]);
    assert_eq!(only_rule(view), ["get", "list", "watch"]);
    let edit = role("idv-token-operator:edit");
    assert_eq!(edit["kind"].as_str(), Some("ClusterRole"));
    assert_eq!(aggregates_to(edit), ["admin", "edit"]);
    assert_eq!(
        only_rule(edit),
        ["create", "update", "patch", "delete", "deletecollection"]
    );
    // Installed by `kubectl apply -k deploy/` and deploy/namespaced, both built on base.
    let kustomization = &documents("deploy/base/kustomization.yaml")[0];
    assert!(strings(&kustomization["resources"]).contains(&"user-roles.yaml"));
    for overlay in [
        "deploy/kustomization.yaml",
        "deploy/namespaced/kustomization.yaml",
    ] {
        let resources = documents(overlay)[0]["resources"].clone();
        assert!(
            strings(&resources).iter().any(|r| r.ends_with("base")),
            "{overlay} does not build on base"
        );
    }
}

/// `kubectl apply -f crds/` works: crds/ holds CRD YAML and nothing else (a kustomization file
/// there made it exit 1).
#[test]
fn crds_holds_only_crds() {
    let mut files = 0;
    for entry in std::fs::read_dir(format!("{REPO}/crds")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(path.is_file(), "crds/{name} is not a file");
        assert!(name.ends_with(".yaml"), "crds/{name}: only .yaml files");
        let docs = documents(&format!("crds/{name}"));
        assert!(!docs.is_empty(), "crds/{name} is empty");
        for doc in docs {
            assert_eq!(
                (doc["apiVersion"].as_str(), doc["kind"].as_str()),
                (
                    Some("apiextensions.k8s.io/v1"),
                    Some("CustomResourceDefinition")
                ),
                "crds/{name}: only CRDs"
            );
        }
        files += 1;
    }
    assert!(files > 0);
}

/// kustomize reads no file outside its folder and a chart carries its own files, so deploy/crds
/// and the chart hold copies of crds/ (`make crds` writes all three): the same files, byte for
/// byte.
#[test]
fn every_copy_of_the_crds_is_crds() {
    let listing = |dir: &str| -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(format!("{REPO}/{dir}"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let crds = listing("crds");
    for copy in ["deploy/crds", "deploy/helm/idv-token-operator/files/crds"] {
        let found = listing(copy);
        let names = |files: &[(String, String)]| -> Vec<String> {
            files.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(
            names(&found),
            names(&crds),
            "{copy} has other files than crds/: run `make crds`"
        );
        for ((name, text), (_, original)) in found.iter().zip(&crds) {
            assert!(
                text == original,
                "{copy}/{name} differs from crds/{name}: run `make crds`"
            );
        }
    }
    let kustomization = &documents("deploy/crds/kustomization.yaml")[0];
    let resources = strings(&kustomization["resources"]);
    assert_eq!(
        resources,
        names_of(&crds),
        "deploy/crds/kustomization.yaml lists every CRD file"
    );
}

fn names_of(files: &[(String, String)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}

/// The strings of a YAML sequence.
fn strings(value: &Value) -> Vec<&str> {
    value
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// deploy/argocd/argocd-cm.yaml carries the Lua files of deploy/argocd/ verbatim (the files
/// are what the integration tests run with gopher-lua).
#[test]
fn the_argocd_cm_snippet_holds_the_tested_scripts() {
    let dir = "deploy/argocd/idv-token-operator.dev/IdvClient";
    let file = |path: &str| std::fs::read_to_string(format!("{REPO}/{dir}/{path}")).unwrap();
    let cm = &documents("deploy/argocd/argocd-cm.yaml")[0];
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    let data = &cm["data"];
    let key =
        |kind: &str| format!("resource.customizations.{kind}.idv-token-operator.dev_IdvClient");
    assert_eq!(
        data[key("health").as_str()].as_str(),
        Some(file("health.lua").as_str()),
        "health.lua differs from the argocd-cm snippet"
    );
    let actions: Value =
        serde_yaml::from_str(data[key("actions").as_str()].as_str().unwrap()).unwrap();
    assert_eq!(
        actions["discovery.lua"].as_str(),
        Some(file("actions/discovery.lua").as_str())
    );
    let definitions = actions["definitions"].as_sequence().unwrap();
    assert_eq!(definitions.len(), 1);
    assert_eq!(definitions[0]["name"].as_str(), Some("refresh"));
    assert_eq!(
        definitions[0]["action.lua"].as_str(),
        Some(file("actions/refresh/action.lua").as_str())
    );
}
