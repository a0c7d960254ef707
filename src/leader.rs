//! Leader election on a coordination.k8s.io Lease, so that of several replicas one works and
//! the others stand by. kube-runtime has none, and the Lease crates for kube 5 judge expiry by
//! the holder's `renewTime` on the local clock (docs/operations.md, "High availability").
//!
//! The rules, which make two leaders impossible without trusting any clock but each replica's
//! own monotonic one:
//! - Another replica's lease has expired only when this replica has seen the same record (its
//!   resourceVersion) for the lease's whole duration. The holder's `renewTime` is written for
//!   people and never compared with the local clock, so clock skew between nodes cannot make a
//!   standby take a live lease.
//! - The leader's hold ends `renew_deadline` (2/3 of the lease duration) after the start of its
//!   last successful renewal. A standby saw that renewal after it started, so it cannot take
//!   over before a full lease duration later. Every Lease call is bounded by the time left in
//!   the hold (a renewal that hangs counts as failed), and when the hold ends the caller stops
//!   all work at once (`Leadership::lost`), before any standby may take over.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is good for without renewal: the standby's takeover time.
    pub lease_duration: Duration,
    /// How often to renew, and to retry acquiring.
    pub retry_period: Duration,
}

/// Longest one Lease call may take: below the "calls" client's read timeout (15 s), so that
/// the bound here is the one that applies.
const MAX_CALL: Duration = Duration::from_secs(10);

const POST: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};

/// Hidden test knob: shifts the wall clock of this replica (the times it writes into the
/// Lease) by so many seconds, to show that no decision depends on it.
const CLOCK_OFFSET_VAR: &str = "IDV_TOKEN_OPERATOR_TEST_CLOCK_OFFSET_SECONDS";

impl LeaseSettings {
    /// How long after the start of its last successful renewal the leader may work.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.mul_f64(2.0 / 3.0)
    }

    /// A renewal must be able to start at least once within the hold.
    pub fn check(&self) -> Result<(), String> {
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline() {
            return Err(format!(
                "the retry period ({:?}) must be shorter than 2/3 of the lease duration ({:?})",
                self.retry_period, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// What this replica last saw of the Lease, and since when (its own monotonic clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The record's resourceVersion: any write changes it.
    pub version: String,
    /// Non-empty holder identity.
    pub holder: Option<String>,
    /// The duration the holder promised (leaseDurationSeconds).
    pub duration: Duration,
    /// When this replica first saw this version (after the read that showed it came back).
    pub since: Instant,
}

/// The observation after reading `version` at `now`: a record seen before keeps its `since`.
pub fn observe(
    previous: Option<&Observation>,
    version: &str,
    spec: Option<&LeaseSpec>,
    now: Instant,
) -> Observation {
    let since = match previous {
        Some(p) if !version.is_empty() && p.version == version => p.since,
        _ => now,
    };
    Observation {
        version: version.to_string(),
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or_default(),
        since,
    }
}

/// The version an absent Lease is observed as.
const ABSENT: &str = "(absent)";

/// The observation of a missing Lease at `now`. Deleted under a holder we saw, it stays that
/// holder's for a lease duration from when we noticed: the holder may be working until its
/// next renewal finds the Lease gone. Missing from the start, it is free.
pub fn observe_absent(previous: Option<&Observation>, now: Instant) -> Observation {
    match previous {
        Some(p) if p.version == ABSENT => p.clone(),
        Some(p) => Observation {
            version: ABSENT.to_string(),
            since: now,
            ..p.clone()
        },
        None => Observation {
            version: ABSENT.to_string(),
            holder: None,
            duration: Duration::ZERO,
            since: now,
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Free, ours, or unchanged for its whole duration in our observation: claim it.
    Claim,
    /// Another replica holds it; expired at `until` unless the record changes before.
    Held { holder: String, until: Instant },
}

/// Whether `identity` may claim the lease at `now`. An unchanged record expires after the
/// longer of the holder's promised duration and our own (a shorter record is no reason to
/// hurry).
pub fn judge(
    observed: &Observation,
    identity: &str,
    own_duration: Duration,
    now: Instant,
) -> Verdict {
    match observed.holder.as_deref() {
        None => Verdict::Claim,
        Some(holder) if holder == identity => Verdict::Claim,
        Some(holder) => {
            let until = observed.since + observed.duration.max(own_duration);
            if now >= until {
                Verdict::Claim
            } else {
                Verdict::Held {
                    holder: holder.to_string(),
                    until,
                }
            }
        }
    }
}

/// The end of the hold after a successful claim or renewal whose attempt started at `started`.
pub fn hold_end(started: Instant, settings: &LeaseSettings) -> Instant {
    started + settings.renew_deadline()
}

/// How long the next Lease call may take: a leader's never past its hold (`None`: the hold is
/// over, no call can help), a standby's at most the renew deadline; never over `MAX_CALL`.
pub fn call_timeout(
    hold: Option<Instant>,
    now: Instant,
    settings: &LeaseSettings,
) -> Option<Duration> {
    let bound = settings.renew_deadline().min(MAX_CALL);
    match hold {
        None => Some(bound),
        Some(end) => Some(end.saturating_duration_since(now).min(bound)).filter(|d| !d.is_zero()),
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal succeeded within the renew deadline (apiserver slow, down or refusing).
    NotRenewed {
        deadline: Duration,
    },
    /// Another replica holds the Lease (or nobody: it was cleared or deleted).
    Taken {
        holder: Option<String>,
    },
    Deleted,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::NotRenewed { deadline } => write!(
                f,
                "the Lease could not be renewed within {:.1}s (renew deadline)",
                deadline.as_secs_f64()
            ),
            LostReason::Taken {
                holder: Some(holder),
            } => write!(f, "the Lease is held by {holder:?} now"),
            LostReason::Taken { holder: None } => write!(f, "the Lease was cleared"),
            LostReason::Deleted => write!(f, "the Lease was deleted"),
        }
    }
}

/// The Lease record for a claim or renewal by `settings.identity` at `now` (wall clock).
fn claimed(previous: Option<&LeaseSpec>, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let same_holder =
        previous.and_then(|p| p.holder_identity.as_deref()) == Some(settings.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(settings.lease_duration.as_secs().max(1) as i32),
        acquire_time: if same_holder {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if same_holder || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

fn clock_offset(value: Option<&str>) -> SignedDuration {
    value
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(SignedDuration::from_secs)
        .unwrap_or(SignedDuration::ZERO)
}

/// What one attempt found.
#[derive(Debug)]
enum Outcome {
    /// We hold the Lease now.
    Holding,
    /// Someone else holds it, or our write lost a race.
    Waiting,
    /// (A leader's attempt) the Lease is no longer ours.
    Lost(LostReason),
}

/// A failed Lease call.
enum CallError {
    /// 409: another write came first (a concurrent claim or renewal).
    Conflict,
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Conflict => f.write_str("another write came first"),
            CallError::Failed(message) => f.write_str(message),
        }
    }
}

/// The Lease API with this replica's settings and memory of what it saw.
struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observation>,
    clock_offset: SignedDuration,
}

impl Elector {
    fn new(api: Api<Lease>, settings: LeaseSettings) -> Elector {
        Elector {
            api,
            settings,
            observed: None,
            clock_offset: clock_offset(std::env::var(CLOCK_OFFSET_VAR).ok().as_deref()),
        }
    }

    fn wall_clock(&self) -> Timestamp {
        Timestamp::now() + self.clock_offset
    }

    /// `call` within the time `hold` leaves (see `call_timeout`).
    async fn bounded<T>(
        &self,
        hold: Option<Instant>,
        what: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, CallError> {
        let Some(timeout) = call_timeout(hold, Instant::now(), &self.settings) else {
            return Err(CallError::Failed(format!(
                "no time left to {what} the Lease"
            )));
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Err(CallError::Conflict),
            Ok(Err(e)) => Err(CallError::Failed(format!(
                "cannot {what} the Lease: {}",
                crate::error::kube_message(&e)
            ))),
            Err(_) => Err(CallError::Failed(format!(
                "cannot {what} the Lease: no answer within {:.1}s",
                timeout.as_secs_f64()
            ))),
        }
    }

    /// One attempt to take (standby: `hold` is None) or renew (leader) the lease.
    async fn attempt(&mut self, hold: Option<Instant>) -> Result<Outcome, CallError> {
        let leading = hold.is_some();
        let name = self.settings.name.clone();
        let found = self.bounded(hold, "read", self.api.get_opt(&name)).await?;
        let seen_at = Instant::now();
        let Some(mut lease) = found else {
            if leading {
                return Ok(Outcome::Lost(LostReason::Deleted));
            }
            let observed = observe_absent(self.observed.as_ref(), seen_at);
            let verdict = judge(
                &observed,
                &self.settings.identity,
                self.settings.lease_duration,
                seen_at,
            );
            self.observed = Some(observed);
            if let Verdict::Held { holder, .. } = verdict {
                debug!(
                    holder,
                    "the Lease was deleted under another replica; waiting"
                );
                return Ok(Outcome::Waiting);
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed(None, &self.settings, self.wall_clock())),
            };
            let created = self.api.create(&POST, &lease);
            return match self.bounded(hold, "create", created).await {
                Ok(_) => Ok(Outcome::Holding),
                Err(CallError::Conflict) => Ok(Outcome::Waiting),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let observed = observe(self.observed.as_ref(), &version, Some(&spec), seen_at);
        let verdict = judge(
            &observed,
            &self.settings.identity,
            self.settings.lease_duration,
            seen_at,
        );
        self.observed = Some(observed.clone());
        if leading && observed.holder.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(Outcome::Lost(LostReason::Taken {
                holder: observed.holder,
            }));
        }
        if let Verdict::Held { holder, until } = verdict {
            debug!(
                holder,
                expires_in_s = until.saturating_duration_since(seen_at).as_secs(),
                "the Lease is held by another replica"
            );
            return Ok(Outcome::Waiting);
        }
        lease.spec = Some(claimed(Some(&spec), &self.settings, self.wall_clock()));
        // replace carries the resourceVersion read: of concurrent claims, one wins.
        let replaced = self.api.replace(&name, &POST, &lease);
        match self.bounded(hold, "update", replaced).await {
            Ok(_) => Ok(Outcome::Holding),
            Err(CallError::Conflict) => Ok(Outcome::Waiting),
            Err(e) => Err(e),
        }
    }

    /// Clear the holder (only if it is us) so that a standby takes over at once.
    async fn release(&self) {
        let name = self.settings.name.clone();
        let Ok(Some(mut lease)) = self.bounded(None, "read", self.api.get_opt(&name)).await else {
            warn!("could not release the lease: cannot read it");
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(self.wall_clock()));
        let replaced = self.api.replace(&name, &POST, &lease);
        match self.bounded(None, "release", replaced).await {
            Ok(_) => info!("leadership released"),
            Err(e) => warn!("could not release the lease: {e}"),
        }
    }
}

/// Held leadership: renewed in the background until released or lost.
pub struct Leadership {
    hold: watch::Receiver<Hold>,
    renewer: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    settings: LeaseSettings,
}

#[derive(Debug, Clone)]
enum Hold {
    Until(Instant),
    Lost(LostReason),
}

/// Wait until this replica holds the lease.
pub async fn acquire(client: kube::Client, settings: LeaseSettings) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    info!(
        lease = settings.name,
        namespace = settings.namespace,
        identity = settings.identity,
        lease_duration_s = settings.lease_duration.as_secs_f64(),
        renew_deadline_s = settings.renew_deadline().as_secs_f64(),
        "waiting for leadership"
    );
    let mut elector = Elector::new(api.clone(), settings.clone());
    let end = loop {
        let started = Instant::now();
        match elector.attempt(None).await {
            Ok(Outcome::Holding) => break hold_end(started, &settings),
            Ok(_) => {}
            Err(e) => warn!("leader election: {e}"),
        }
        tokio::time::sleep(settings.retry_period).await;
    };
    info!(identity = settings.identity, "leadership acquired");
    let (tx, hold) = watch::channel(Hold::Until(end));
    let renewer = tokio::spawn(renew(elector, end, tx));
    Leadership {
        hold,
        renewer,
        api,
        settings,
    }
}

/// Renew every retry period while the hold lasts; report the loss once it cannot be renewed.
async fn renew(mut elector: Elector, mut end: Instant, hold: watch::Sender<Hold>) {
    let retry = elector.settings.retry_period;
    loop {
        let next = tokio::time::Instant::from_std((Instant::now() + retry).min(end));
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let reason = match elector.attempt(Some(end)).await {
            Ok(Outcome::Holding) => {
                end = hold_end(started, &elector.settings);
                let _ = hold.send(Hold::Until(end));
                continue;
            }
            Ok(Outcome::Lost(reason)) => Some(reason),
            Ok(Outcome::Waiting) => {
                warn!("leader election: renewal conflicted with another write; retrying");
                None
            }
            Err(e) => {
                warn!("leader election: renewal failed: {e}");
                None
            }
        };
        let reason = reason.or_else(|| {
            (Instant::now() >= end).then(|| LostReason::NotRenewed {
                deadline: elector.settings.renew_deadline(),
            })
        });
        if let Some(reason) = reason {
            warn!("leadership lost: {reason}");
            let _ = hold.send(Hold::Lost(reason));
            return;
        }
    }
}

impl Leadership {
    /// Resolves when leadership is lost, at the latest when the hold ends without renewal
    /// (whatever the renewer is doing): the caller must stop all work at once.
    pub fn lost(&self) -> impl std::future::Future<Output = LostReason> + Send + 'static {
        let mut hold = self.hold.clone();
        let deadline = self.settings.renew_deadline();
        async move {
            loop {
                let end = match hold.borrow_and_update().clone() {
                    Hold::Lost(reason) => return reason,
                    Hold::Until(end) => end,
                };
                let closed = tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(end)) => false,
                    changed = hold.changed() => changed.is_err(),
                };
                match hold.borrow_and_update().clone() {
                    Hold::Lost(reason) => return reason,
                    // Renewed in time: wait for the new end.
                    Hold::Until(next) if !closed && Instant::now() < next => {}
                    // Not renewed, or the renewer is gone.
                    Hold::Until(_) => return LostReason::NotRenewed { deadline },
                }
            }
        }
    }

    pub fn is_lost(&self) -> bool {
        match &*self.hold.borrow() {
            Hold::Lost(_) => true,
            Hold::Until(end) => Instant::now() >= *end,
        }
    }

    /// Give the lease up so a standby takes over at once. Call only after all work stopped.
    pub async fn release(self) {
        self.renewer.abort();
        if self.is_lost() {
            return;
        }
        Elector::new(self.api, self.settings).release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_clock::at;

    fn settings(lease_s: u64, retry_ms: u64) -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(lease_s),
            retry_period: Duration::from_millis(retry_ms),
        }
    }

    fn held_by(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_record_is_timed_from_when_this_replica_first_saw_it() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let spec = held_by(Some("b"), 0);
        let first = observe(None, "7", Some(&spec), s(0));
        assert_eq!(first.since, s(0));
        assert_eq!(first.holder.as_deref(), Some("b"));
        assert_eq!(first.duration, Duration::from_secs(15));
        // Same version later: still timed from the first sight.
        assert_eq!(observe(Some(&first), "7", Some(&spec), s(9)).since, s(0));
        // Any write (new resourceVersion) restarts the clock.
        assert_eq!(observe(Some(&first), "8", Some(&spec), s(9)).since, s(9));
        // No version: never counts as unchanged.
        let unversioned = observe(None, "", Some(&spec), s(0));
        assert_eq!(
            observe(Some(&unversioned), "", Some(&spec), s(9)).since,
            s(9)
        );
        // An empty holder is no holder.
        assert_eq!(
            observe(None, "7", Some(&held_by(Some(""), 0)), s(0)).holder,
            None
        );
    }

    #[test]
    fn a_deleted_lease_stays_its_holders_for_a_lease_duration() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let own = Duration::from_secs(15);
        // Missing from the start: free.
        let fresh = observe_absent(None, s(0));
        assert_eq!(judge(&fresh, "a", own, s(0)), Verdict::Claim);
        // Deleted under "b": timed from when we noticed, like any change.
        let held = observe(None, "3", Some(&held_by(Some("b"), 0)), s(0));
        let gone = observe_absent(Some(&held), s(10));
        let still_gone = observe_absent(Some(&gone), s(20));
        assert_eq!(still_gone.since, s(10));
        assert!(matches!(
            judge(&still_gone, "a", own, s(24)),
            Verdict::Held { until, .. } if until == s(25)
        ));
        assert_eq!(judge(&still_gone, "a", own, s(25)), Verdict::Claim);
        // Ours, or released before the deletion: free.
        let ours = observe(None, "3", Some(&held_by(Some("a"), 0)), s(0));
        assert_eq!(
            judge(&observe_absent(Some(&ours), s(1)), "a", own, s(1)),
            Verdict::Claim
        );
        let released = observe(None, "4", Some(&held_by(None, 0)), s(0));
        assert_eq!(
            judge(&observe_absent(Some(&released), s(1)), "a", own, s(1)),
            Verdict::Claim
        );
    }

    #[test]
    fn who_may_take_the_lease() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let own = Duration::from_secs(15);
        let seen = |holder: Option<&str>, duration: u64| Observation {
            version: "1".into(),
            holder: holder.map(str::to_string),
            duration: Duration::from_secs(duration),
            since: s(100),
        };
        let held = |until: u64| Verdict::Held {
            holder: "b".into(),
            until: s(until),
        };
        let table = [
            (seen(None, 15), 100, Verdict::Claim),
            (seen(Some("a"), 15), 100, Verdict::Claim),
            (seen(Some("b"), 15), 100, held(115)),
            (seen(Some("b"), 15), 114, held(115)),
            (seen(Some("b"), 15), 115, Verdict::Claim),
            // A holder promising longer than our own duration is waited for that long...
            (seen(Some("b"), 40), 130, held(140)),
            // ...a shorter promise is no reason to hurry.
            (seen(Some("b"), 1), 105, held(115)),
            (seen(Some("b"), 0), 105, held(115)),
        ];
        for (observed, now, expected) in table {
            assert_eq!(
                judge(&observed, "a", own, s(now)),
                expected,
                "{observed:?} at +{now}s"
            );
        }
    }

    #[test]
    fn the_holders_clock_does_not_matter() {
        // renewTime an hour in the past or a minute in the future (clock skew either way):
        // a standby that first sees the record now waits a full duration from now.
        let t0 = Instant::now();
        for renewed in [-3600, -60, 0, 60] {
            let observed = observe(None, "5", Some(&held_by(Some("b"), renewed)), t0);
            assert!(matches!(
                judge(
                    &observed,
                    "a",
                    Duration::from_secs(15),
                    t0 + Duration::from_secs(14)
                ),
                Verdict::Held { .. }
            ));
            assert_eq!(
                judge(
                    &observed,
                    "a",
                    Duration::from_secs(15),
                    t0 + Duration::from_secs(15)
                ),
                Verdict::Claim
            );
        }
    }

    #[test]
    fn the_leader_stops_before_any_standby_may_take_over() {
        // The leader's attempt starts at `s`; the apiserver writes it `w` later; a standby
        // sees it `r` after that. Whatever the delays, the hold ends before the standby may
        // claim, by at least the lease duration minus the renew deadline.
        let settings = settings(15, 2000);
        let t0 = Instant::now();
        for w in [0u64, 10, 500, 4_000, 20_000] {
            for r in [0u64, 1, 2_000, 60_000] {
                let written = t0 + Duration::from_millis(w);
                let seen_at = written + Duration::from_millis(r);
                let observed = observe(None, "9", Some(&held_by(Some("b"), 0)), seen_at);
                let Verdict::Held { until, .. } =
                    judge(&observed, "a", settings.lease_duration, seen_at)
                else {
                    panic!("a fresh record is held");
                };
                let end = hold_end(t0, &settings);
                assert!(until >= end + Duration::from_secs(5), "w={w} r={r}");
            }
        }
    }

    #[test]
    fn lease_calls_end_before_the_hold_does() {
        let settings = settings(15, 2000);
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let end = hold_end(t0, &settings);
        assert_eq!(end, s(10_000));
        // A leader: the time left in its hold...
        assert_eq!(
            call_timeout(Some(end), s(2_000), &settings),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            call_timeout(Some(end), s(9_900), &settings),
            Some(Duration::from_millis(100))
        );
        // ...and nothing once it is over.
        assert_eq!(call_timeout(Some(end), s(10_000), &settings), None);
        assert_eq!(call_timeout(Some(end), s(12_000), &settings), None);
        // A standby: the renew deadline.
        assert_eq!(
            call_timeout(None, s(0), &settings),
            Some(Duration::from_secs(10))
        );
        // Long leases: never longer than MAX_CALL, below the client's 15 s read timeout.
        let long = self::settings(120, 2000);
        assert_eq!(call_timeout(None, s(0), &long), Some(MAX_CALL));
        assert_eq!(
            call_timeout(Some(hold_end(t0, &long)), s(0), &long),
            Some(MAX_CALL)
        );
        const { assert!(MAX_CALL.as_secs() < crate::controller::API_CALL_TIMEOUT.as_secs()) };
    }

    #[test]
    fn settings_leave_room_for_a_renewal() {
        assert!(settings(15, 2000).check().is_ok());
        assert!(settings(15, 9_999).check().is_ok());
        assert!(settings(15, 10_000).check().is_err());
        assert!(settings(15, 0).check().is_err());
        assert!(settings(1, 500).check().is_ok());
    }

    #[test]
    fn the_test_clock_offset_is_whole_seconds_or_nothing() {
        assert_eq!(clock_offset(None), SignedDuration::ZERO);
        assert_eq!(clock_offset(Some("60")), SignedDuration::from_secs(60));
        assert_eq!(clock_offset(Some(" -5 ")), SignedDuration::from_secs(-5));
        assert_eq!(clock_offset(Some("1m")), SignedDuration::ZERO);
    }

    /// A fake apiserver with one Lease: GET, POST and PUT (resourceVersion-checked), HTTP/1.1.
    /// `frozen` makes it read requests and never answer, as a SIGSTOPped apiserver.
    #[derive(Clone, Default)]
    struct FakeApiserver {
        lease: std::sync::Arc<std::sync::Mutex<Option<serde_json::Value>>>,
        version: std::sync::Arc<std::sync::atomic::AtomicU64>,
        frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl FakeApiserver {
        async fn start(&self) -> kube::Client {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let fake = self.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let fake = fake.clone();
                    tokio::spawn(async move {
                        let mut buffer = Vec::new();
                        loop {
                            let head_end = loop {
                                if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                    break i + 4;
                                }
                                let mut chunk = [0u8; 4096];
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                                }
                            };
                            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                            let length: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            while buffer.len() < head_end + length {
                                let mut chunk = [0u8; 4096];
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                                }
                            }
                            let body: Vec<u8> =
                                buffer.drain(..head_end + length).skip(head_end).collect();
                            if fake.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            let method = head.split(' ').next().unwrap_or_default().to_string();
                            let (code, answer) = fake.answer(&method, &body);
                            let text = answer.to_string();
                            let response = format!(
                                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                                text.len()
                            );
                            if stream.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
        }

        fn answer(&self, method: &str, body: &[u8]) -> (u16, serde_json::Value) {
            let status = |code: u16, reason: &str| {
                (
                    code,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": reason, "code": code, "message": reason}),
                )
            };
            let mut lease = self.lease.lock().unwrap();
            match method {
                "GET" => match &*lease {
                    Some(l) => (200, l.clone()),
                    None => status(404, "NotFound"),
                },
                "POST" | "PUT" => {
                    let mut sent: serde_json::Value = serde_json::from_slice(body).unwrap();
                    let current = lease
                        .as_ref()
                        .map(|l| l["metadata"]["resourceVersion"].clone());
                    match (method, current) {
                        ("POST", Some(_)) => return status(409, "AlreadyExists"),
                        ("PUT", None) => return status(404, "NotFound"),
                        ("PUT", Some(v)) if v != sent["metadata"]["resourceVersion"] => {
                            return status(409, "Conflict");
                        }
                        _ => {}
                    }
                    self.stamp(&mut sent);
                    *lease = Some(sent.clone());
                    (if method == "POST" { 201 } else { 200 }, sent)
                }
                _ => status(405, "MethodNotAllowed"),
            }
        }

        fn stamp(&self, lease: &mut serde_json::Value) {
            let version = self
                .version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            lease["apiVersion"] = "coordination.k8s.io/v1".into();
            lease["kind"] = "Lease".into();
            lease["metadata"]["resourceVersion"] = version.to_string().into();
        }

        /// Another replica writes the Lease (a claim or renewal by `holder`).
        fn write_as(&self, holder: &str, duration_s: i32, renewed: Timestamp) {
            let mut lease = serde_json::json!({
                "metadata": {"name": "l", "namespace": "ns"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration_s,
                    "renewTime": MicroTime(renewed)},
            });
            self.stamp(&mut lease);
            *self.lease.lock().unwrap() = Some(lease);
        }
    }

    #[tokio::test]
    async fn a_leader_whose_renewal_hangs_is_told_to_stop_at_its_renew_deadline() {
        let fake = FakeApiserver::default();
        let client = fake.start().await;
        // Lease 1.5 s: renew deadline 1 s; retry 100 ms. The client has no read timeout: only
        // the Lease code's own bound can end a call.
        let settings = LeaseSettings {
            lease_duration: Duration::from_millis(1500),
            ..settings(0, 100)
        };
        let held = tokio::time::timeout(Duration::from_secs(5), acquire(client, settings))
            .await
            .expect("an empty apiserver gives the lease at once");
        // Renewals go through for a while...
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(!held.is_lost());
        let renewals = fake.version.load(std::sync::atomic::Ordering::SeqCst);
        assert!(renewals >= 3, "renewed {renewals} times");
        // ...then the apiserver stalls.
        fake.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        let frozen_at = Instant::now();
        let reason = tokio::time::timeout(Duration::from_secs(5), held.lost())
            .await
            .expect("a hanging renewal counts as failed");
        let after = frozen_at.elapsed();
        assert_eq!(
            reason,
            LostReason::NotRenewed {
                deadline: Duration::from_secs(1)
            }
        );
        // The last renewal started at most a retry period before the stall: the hold ended
        // within the renew deadline of the stall, before the lease could expire (1.5 s).
        assert!(
            after < Duration::from_millis(1500),
            "stopped after {after:?}"
        );
        assert!(
            after >= Duration::from_millis(1000 - 100 - 50),
            "stopped after {after:?}"
        );
        assert!(held.is_lost());
    }

    #[tokio::test]
    async fn a_standby_waits_for_a_record_unchanged_for_a_whole_lease_duration() {
        let fake = FakeApiserver::default();
        // Held by "b", whose clock is an hour behind: by renewTime long expired.
        let stale = Timestamp::now() - SignedDuration::from_hours(1);
        fake.write_as("b", 1, stale);
        let client = fake.start().await;
        let settings = LeaseSettings {
            lease_duration: Duration::from_millis(1200),
            ..settings(0, 100)
        };
        let started = Instant::now();
        let standby = tokio::spawn(acquire(client, settings));
        // "b" keeps renewing (with its skewed clock) for 2.5 s: two lease durations.
        let mut last_renewal = Instant::now();
        while started.elapsed() < Duration::from_millis(2500) {
            last_renewal = Instant::now();
            fake.write_as("b", 1, stale);
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!standby.is_finished(), "took a live lease");
        }
        let held = tokio::time::timeout(Duration::from_secs(5), standby)
            .await
            .expect("an unchanged lease is taken over")
            .unwrap();
        let waited = last_renewal.elapsed();
        assert!(
            waited >= Duration::from_millis(1200),
            "took over after {waited:?}"
        );
        assert!(
            waited <= Duration::from_millis(1200 + 800),
            "took over after {waited:?}"
        );
        let lease = fake.lease.lock().unwrap().clone().unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        drop(held);
    }

    fn leadership(end: Instant) -> (Leadership, watch::Sender<Hold>) {
        let (tx, hold) = watch::channel(Hold::Until(end));
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let held = Leadership {
            hold,
            renewer: tokio::spawn(async {}),
            api: Api::namespaced(client, "ns"),
            settings: LeaseSettings {
                lease_duration: Duration::from_millis(300),
                ..settings(0, 50)
            },
        };
        (held, tx)
    }

    #[tokio::test]
    async fn the_hold_lasts_while_renewals_extend_it_and_ends_with_the_reason() {
        let start = Instant::now();
        let (held, tx) = leadership(start + Duration::from_millis(100));
        let lost = tokio::spawn(held.lost());
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Hold::Until(Instant::now() + Duration::from_millis(100)))
                .unwrap();
            assert!(!lost.is_finished(), "renewed holds last");
        }
        let renewed_until = Instant::now() + Duration::from_millis(100);
        tx.send(Hold::Until(renewed_until)).unwrap();
        assert_eq!(
            lost.await.unwrap(),
            LostReason::NotRenewed {
                deadline: Duration::from_millis(200)
            }
        );
        assert!(Instant::now() >= renewed_until);

        // A reason the renewer found is the one reported, at once.
        let (held, tx) = leadership(Instant::now() + Duration::from_secs(60));
        let lost = tokio::spawn(held.lost());
        let taken = LostReason::Taken {
            holder: Some("b".into()),
        };
        tx.send(Hold::Lost(taken.clone())).unwrap();
        drop(tx);
        let reason = tokio::time::timeout(Duration::from_secs(1), lost).await;
        assert_eq!(reason.unwrap().unwrap(), taken);
        assert!(held.is_lost());

        // A renewer that is gone renews nothing.
        let (held, tx) = leadership(Instant::now() + Duration::from_secs(60));
        drop(tx);
        let reason = tokio::time::timeout(Duration::from_secs(1), held.lost()).await;
        assert!(matches!(reason, Ok(LostReason::NotRenewed { .. })));
    }

    #[test]
    fn claims_count_transitions() {
        let settings = settings(15, 2000);
        let first = claimed(None, &settings, at(0));
        assert_eq!(
            (first.lease_transitions, first.acquire_time.clone()),
            (Some(0), Some(MicroTime(at(0))))
        );
        let renewed = claimed(Some(&first), &settings, at(5));
        assert_eq!(
            (renewed.lease_transitions, renewed.acquire_time),
            (Some(0), Some(MicroTime(at(0))))
        );
        let taken = claimed(Some(&held_by(Some("b"), 0)), &settings, at(20));
        assert_eq!(taken.lease_transitions, Some(1));
    }
}
