//! Leader election under stress: a frozen apiserver, a standby whose clock runs ahead. The
//! apiserver's audit log (tests/support) is the record of who wrote what: each replica has its
//! own ServiceAccount token, as each pod has, so its requests carry their own credential id.

use crate::case::*;
use support::AuditEvent;

/// An operator replica: its own token (as a pod has), its own POD_NAME.
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) credential: String,
    pub(crate) operator: Operator,
}

/// A fresh ServiceAccount token for a replica (the operator's ServiceAccount, deploy/'s RBAC).
pub(crate) async fn replica_kubeconfig(env: &Env, file: &str) -> (std::path::PathBuf, String) {
    let kubeconfig = env
        .plane
        .service_account_kubeconfig(
            support::OPERATOR_NAMESPACE,
            support::OPERATOR_SERVICE_ACCOUNT,
            file,
        )
        .await;
    let credential = support::credential_id(&kubeconfig);
    (kubeconfig, credential)
}

/// Arguments of a replica serving `ns` under leader election with the Lease `lease`, at the
/// shipped lease timing.
fn replica_args(ns: &str, lease: &str) -> Vec<String> {
    [
        "--watch-namespace",
        ns,
        "--min-refresh-interval",
        "2s",
        LOCAL_IDP_HOSTS[0],
        LOCAL_IDP_HOSTS[1],
        "--leader-elect",
        "--leader-election-id",
        lease,
    ]
    .map(str::to_string)
    .to_vec()
}

pub(crate) async fn start_replica(
    env: &Env,
    name: &str,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Replica {
    let (kubeconfig, credential) = replica_kubeconfig(env, &format!("{name}.kubeconfig")).await;
    let mut environment = vec![
        ("POD_NAME", name),
        ("POD_NAMESPACE", support::OPERATOR_NAMESPACE),
    ];
    environment.extend_from_slice(extra_env);
    Replica {
        name: name.to_string(),
        credential,
        operator: Operator::start_with_env(&kubeconfig, args, &environment),
    }
}

impl Replica {
    pub(crate) fn leads(&self) -> bool {
        self.operator.output().contains("leadership acquired")
    }

    pub(crate) async fn wait_for(&self, what: &str) {
        let found = tokio::time::timeout(
            WAIT,
            eventually(WAIT, what, || async {
                self.operator.output().contains(what).then_some(())
            }),
        )
        .await;
        assert!(
            found.is_ok(),
            "{} never logged {what:?}:\n{}",
            self.name,
            self.operator.tail(40)
        );
    }
}

/// Successful writes (not dry runs) to Secrets in `ns`, by credential id, in completion order.
pub(crate) fn secret_writes<'a>(events: &'a [AuditEvent], ns: &str) -> Vec<&'a AuditEvent> {
    let mut writes: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.resource() == "secrets" && e.namespace() == ns)
        .filter(|e| e.is_write() && e.succeeded())
        .collect();
    writes.sort_by_key(|e| e.completed_at());
    writes
}

/// Successful writes of the Lease `name`, in completion order.
fn lease_writes<'a>(events: &'a [AuditEvent], name: &str) -> Vec<&'a AuditEvent> {
    let mut writes: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.resource() == "leases" && e.name() == name)
        .filter(|e| e.is_write() && e.succeeded())
        .collect();
    writes.sort_by_key(|e| e.completed_at());
    writes
}

/// Every Secret write was made while its writer held the Lease, by the apiserver's record:
/// the last Lease write before it was the writer's own.
fn assert_one_writer_at_a_time(events: &[AuditEvent], ns: &str, lease: &str, names: &[&Replica]) {
    let who = |credential: &str| {
        names
            .iter()
            .find(|r| r.credential == credential)
            .map_or("someone else", |r| r.name.as_str())
            .to_string()
    };
    let leases = lease_writes(events, lease);
    for write in secret_writes(events, ns) {
        let holder = leases
            .iter()
            .rev()
            .find(|l| l.completed_at() <= write.completed_at())
            .map(|l| who(l.credential_id()));
        assert_eq!(
            holder.as_deref(),
            Some(who(write.credential_id()).as_str()),
            "{} wrote Secret {} at {} while the Lease was {}'s; Lease writes: {:?}",
            who(write.credential_id()),
            write.name(),
            write.completed_at(),
            holder.as_deref().unwrap_or("nobody"),
            leases
                .iter()
                .map(|l| format!("{} {}", l.completed_at(), who(l.credential_id())))
                .collect::<Vec<_>>()
        );
    }
}

pub(crate) async fn a_frozen_apiserver_never_yields_two_leaders(env: &Env) {
    let ns = create_namespace(env, "frozen").await;
    // The shipped lease timing (15 s, renewals every 2 s): long enough for a loaded machine.
    let lease = format!("lease-{ns}");
    let replica_args = replica_args(&ns, &lease);
    let args: Vec<&str> = replica_args.iter().map(String::as_str).collect();
    let lease_duration = Duration::from_secs(15);
    let first = start_replica(env, &format!("{ns}-a"), &args, &[]).await;
    first.wait_for("leadership acquired").await;
    let second = start_replica(env, &format!("{ns}-b"), &args, &[]).await;
    second.wait_for("waiting for leadership").await;
    let case = Case::with_operator(env, ns.clone(), first.operator).await;
    // Tokens of 12 s are refreshed every 8 s: Secret writes go on all the time.
    let names = ["t1", "t2", "t3", "t4"];
    let mut secrets = Vec::new();
    for name in names {
        let (_, private) = ready_client(env, &case, name, Some(12)).await;
        secrets.extend(key_material(&private));
    }

    let frozen = env.plane.freeze_apiserver();
    let frozen_at = Instant::now();
    // The leader cannot renew: it must stop, on its own, while the apiserver is still frozen.
    let mut leader = case.operator;
    let freeze = lease_duration + Duration::from_secs(5);
    while leader.process.is_running() && frozen_at.elapsed() < freeze {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = jiff::Timestamp::now();
    let stopped = !leader.process.is_running();
    let stopped_after = frozen_at.elapsed();
    // Frozen for longer than the lease, whatever the leader did.
    while frozen_at.elapsed() < freeze {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    frozen.resume();
    assert!(
        stopped,
        "the leader still ran {freeze:?} into the freeze:\n{}",
        leader.tail(30)
    );
    let said = leader.output();
    assert!(
        said.contains("leadership lost: the Lease could not be renewed")
            && said.contains("stopped all work"),
        "the leader says why it stopped:\n{}",
        leader.tail(30)
    );

    // The standby takes over and writes the tokens from now on.
    let standby = Replica {
        name: second.name.clone(),
        credential: second.credential.clone(),
        operator: second.operator,
    };
    standby.wait_for("leadership acquired").await;
    let took_over = tokio::time::timeout(
        WAIT,
        eventually(
            WAIT,
            "the new leader to write every token Secret",
            || async {
                let events = env.plane.audit_events();
                let writes = secret_writes(&events, &ns);
                names
                    .iter()
                    .all(|n| {
                        writes.iter().any(|w| {
                            w.credential_id() == standby.credential
                                && w.name() == format!("{n}-token")
                        })
                    })
                    .then_some(())
            },
        ),
    )
    .await;
    assert!(
        took_over.is_ok(),
        "the new leader did not write every token Secret:\n{}",
        standby.operator.tail(40)
    );

    let events = env.plane.audit_events();
    let old = Replica {
        name: first.name.clone(),
        credential: first.credential.clone(),
        operator: leader,
    };
    // The apiserver's record: Secret writes by both, never by a replica not holding the Lease.
    let writes = secret_writes(&events, &ns);
    assert!(writes.iter().any(|w| w.credential_id() == old.credential));
    assert_one_writer_at_a_time(&events, &ns, &lease, &[&old, &standby]);
    // The old leader stopped before its lease could be taken over: within the lease duration
    // of its last successful renewal (apiserver time; one machine, one clock).
    let last_renewal = lease_writes(&events, &lease)
        .into_iter()
        .rfind(|l| l.credential_id() == old.credential)
        .expect("the old leader renewed")
        .completed_at();
    let margin = stopped_at.duration_since(last_renewal);
    assert!(
        margin < jiff::SignedDuration::try_from(lease_duration).unwrap(),
        "the old leader stopped {margin:#} after its last renewal (stopped {stopped_after:?} into the freeze)"
    );
    eprintln!(
        "frozen apiserver: leader stopped {:.1}s after its last renewal, {:.1}s into the freeze",
        margin.as_secs_f64(),
        stopped_after.as_secs_f64()
    );

    for replica in [&old, &standby] {
        let output = replica.operator.output();
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(!output.contains(secret.as_str()), "key material in the log");
        }
    }
    let case = Case::with_operator(env, ns, standby.operator).await;
    let tokens: Vec<String> = {
        let mut tokens = Vec::new();
        for name in names {
            if let Some(s) = case
                .secrets()
                .get_opt(&format!("{name}-token"))
                .await
                .unwrap()
            {
                tokens.push(text(&s, "access_token"));
            }
        }
        tokens
    };
    secrets.extend(tokens.iter().cloned());
    assert!(
        !old.operator.output().contains(tokens[0].as_str()),
        "a token in the old leader's log"
    );
    case.assert_no_leaks(&secrets).await;
}

pub(crate) async fn a_standby_whose_clock_runs_ahead_does_not_take_a_live_lease(env: &Env) {
    let ns = create_namespace(env, "skew").await;
    let lease = format!("lease-{ns}");
    let replica_args = replica_args(&ns, &lease);
    let args: Vec<&str> = replica_args.iter().map(String::as_str).collect();
    let lease_duration = Duration::from_secs(15);
    let first = start_replica(env, &format!("{ns}-a"), &args, &[]).await;
    first.wait_for("leadership acquired").await;
    // Its wall clock is 60 s ahead: by renewTime, the leader's lease always looks expired.
    let ahead = start_replica(
        env,
        &format!("{ns}-b"),
        &args,
        &[("IDV_TOKEN_OPERATOR_TEST_CLOCK_OFFSET_SECONDS", "60")],
    )
    .await;
    ahead.wait_for("waiting for leadership").await;
    let standing_by = Instant::now();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.plane.admin().await, support::OPERATOR_NAMESPACE);
    let holder = |lease: &k8s_openapi::api::coordination::v1::Lease| {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    // Until the standby has watched the leader renew for longer than a lease duration (and
    // two retries), the holder stays the leader.
    let watched = lease_duration + Duration::from_secs(4);
    let mut renewals = std::collections::BTreeSet::new();
    while standing_by.elapsed() < watched {
        let current = leases.get(&lease).await.unwrap();
        assert_eq!(
            holder(&current),
            first.name,
            "the standby with a fast clock took a live lease:\n{}",
            ahead.operator.tail(20)
        );
        renewals.insert(current.metadata.resource_version.clone());
        assert!(!ahead.leads(), "{}", ahead.operator.tail(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(renewals.len() >= 5, "the leader renewed: {renewals:?}");

    // When the leader dies, the standby takes over: about a lease duration after it last saw
    // the record change, whatever the record's times say.
    let mut leader = first.operator;
    leader.process.kill();
    let killed = Instant::now();
    ahead.wait_for("leadership acquired").await;
    let takeover = killed.elapsed();
    assert!(
        takeover >= lease_duration - Duration::from_secs(3)
            && takeover < lease_duration + Duration::from_secs(10),
        "took over {takeover:?} after the leader died"
    );
    let case = Case::with_operator(env, ns, ahead.operator).await;
    let (_, private) = ready_client(env, &case, "after", None).await;
    let token = text(
        &case.secrets().get("after-token").await.unwrap(),
        "access_token",
    );
    let mut secrets = key_material(&private);
    secrets.push(token);
    case.assert_no_leaks(&secrets).await;
    assert_eq!(
        holder(&leases.get(&lease).await.unwrap()),
        ahead.name,
        "the standby holds the lease now"
    );
}
