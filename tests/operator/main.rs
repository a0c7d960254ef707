//! Integration tests: the operator binary against a real kube-apiserver + etcd and a real
//! OAuth server (oidc-provider). One control plane and IdP per run; each test gets its own
//! namespace, IdP clients and operator process (watching only that namespace).

#[path = "../support/mod.rs"]
mod support;

mod case;
mod drift;
mod failures;
mod gitops;
mod ha;
mod helm;
mod install;
mod issuing;
mod operations;
mod tenancy;
mod tls;

use case::*;
use drift::*;
use failures::*;
use gitops::*;
use ha::*;
use helm::*;
use install::*;
use issuing::*;
use operations::*;
use tenancy::*;
use tls::*;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

type Scenario =
    for<'a> fn(&'a Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

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
        a_foreign_secret_in_a_just_proven_namespace_is_left_untouched,
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
        tokens_over_https_with_a_ca_bundle,
        the_system_trust_store_is_honoured_without_a_flag,
        wrong_certificates_give_idp_unreachable_with_the_reason,
        a_certificate_gone_bad_keeps_the_token_and_says_why,
        a_suspended_client_asks_the_idp_nothing_until_resumed,
        audience_and_resource_reach_the_idp,
        a_rotated_client_secret_is_used_at_once,
        secret_metadata_changes_are_applied_without_a_new_token,
        a_deleted_client_leaves_its_secret_to_garbage_collection,
        a_failed_discovery_gives_discovery_failed,
        the_idp_sees_at_most_max_concurrent_token_requests,
        a_stale_token_that_expired_in_an_outage_is_named_in_the_message,
        secret_metadata_removed_from_the_spec_is_removed_from_the_secret,
        a_standby_whose_clock_runs_ahead_does_not_take_a_live_lease,
        owner_references_need_the_finalizers_rule_and_the_shipped_rules_suffice,
        gitops_tools_read_every_state_of_an_idvclient,
        the_helm_chart_installs_upgrades_and_uninstalls,
        the_example_clients_pass_the_apiservers_validation,
        the_example_workloads_pass_the_apiservers_validation,
    ];
    // Disruptive scenarios run alone, after the others.
    let disruptive: Vec<(&'static str, Scenario)> = scenarios![
        the_operator_survives_an_apiserver_restart,
        a_client_deleted_while_the_watch_was_down_is_forgotten,
        // Changes the CRD for a while.
        names_that_got_past_admission_never_reach_the_apiserver,
        specs_that_got_past_admission_are_refused_by_the_operator,
        // Freezes the apiserver for longer than a lease.
        a_frozen_apiserver_never_yields_two_leaders,
        // Cluster-wide, as deploy/ installs it: it serves every namespace, other tests' too.
        the_shipped_install_serves_every_namespace_and_reads_no_other_secret,
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
