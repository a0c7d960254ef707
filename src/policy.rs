//! What to do for one IdvClient, given what is there. Pure: facts, the clock and a random
//! jitter in, a `Plan` out; each rule checked in order, like cert-manager's policy chain.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::schedule::{self, BeforeExpiry, FailureClass, TokenTimes};

/// What the operator's token Secret records (read from its annotations and data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedToken {
    /// Hash of the inputs (spec fields, key) that produced the token.
    pub inputs_hash: Option<String>,
    /// The token data still matches what the operator wrote.
    pub data_intact: bool,
    /// The recorded times, when all three are there.
    pub times: Option<TokenTimes>,
}

impl ObservedToken {
    /// A token that a workload can still use.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.data_intact && self.times.is_some_and(|t| t.expires_at > now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// No token Secret yet.
    NoSecret,
    /// The Secret's data or bookkeeping was changed by someone else.
    SecretModified,
    /// The spec or the key changed since the token was issued.
    InputsChanged,
    /// The refresh time has come (or the token expired).
    Due,
}

impl RefreshReason {
    pub fn describe(self) -> &'static str {
        match self {
            RefreshReason::NoSecret => "no token Secret yet",
            RefreshReason::SecretModified => "the token Secret was modified",
            RefreshReason::InputsChanged => "the client's spec or key changed",
            RefreshReason::Due => "the token is due for refresh",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Refresh(RefreshReason),
    /// The recorded token is good: nothing to do until its refresh time.
    Wait(TokenTimes),
}

/// Whether the token the Secret records is still the one to keep.
pub fn refresh_decision(
    inputs_hash: &str,
    observed: Option<&ObservedToken>,
    now: Timestamp,
) -> Decision {
    let Some(observed) = observed else {
        return Decision::Refresh(RefreshReason::NoSecret);
    };
    if !observed.data_intact {
        return Decision::Refresh(RefreshReason::SecretModified);
    }
    if observed.inputs_hash.as_deref() != Some(inputs_hash) {
        return Decision::Refresh(RefreshReason::InputsChanged);
    }
    // The recorded refresh time rules, even past expiry: for tiny lifetimes it is the floor
    // that keeps the operator from asking the IdP in a tight loop.
    match observed.times {
        Some(times) if now < times.refresh_at => Decision::Wait(times),
        Some(_) => Decision::Refresh(RefreshReason::Due),
        None => Decision::Refresh(RefreshReason::SecretModified),
    }
}

/// Where the token Secret's record comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// The cache's answer holds: the record, or no such Secret.
    Known(Option<T>),
    /// Read it from the API.
    Ask,
}

/// Whether to trust the cache of the operator's token Secrets: not while the watch has yet to
/// show a write of ours (the record is stale), nor for an absent Secret before the watch has
/// listed. Absent once listed means none labelled as ours: someone else's Secret of that name
/// is found by the dry run before the first token, or by the create (see `needs_dry_run`).
pub fn lookup<T>(cached: Option<T>, write_in_flight: bool, listed: bool) -> Lookup<T> {
    match cached {
        _ if write_in_flight => Lookup::Ask,
        Some(record) => Lookup::Known(Some(record)),
        None if listed => Lookup::Known(None),
        None => Lookup::Ask,
    }
}

/// A token the IdP issued, as far as deciding goes (the token itself stays with the fetcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// When the request was sent: the lifetime counts from then.
    pub requested_at: Timestamp,
    pub expires_in: u64,
    /// Fetched earlier and kept because it could not be stored then.
    pub kept: bool,
}

impl Answer {
    /// Whether to store this token at `now`: a new answer always (however short its
    /// lifetime), a kept one while at most half its lifetime has passed (a fresh one would be
    /// refreshed at 2/3 anyway).
    pub fn is_worth_storing_at(&self, now: Timestamp) -> bool {
        let half = SignedDuration::from_secs((self.expires_in / 2) as i64);
        !self.kept
            || now
                < self
                    .requested_at
                    .saturating_add(half)
                    .unwrap_or(self.requested_at)
    }
}

/// Where the client's token request (for the current inputs) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchState {
    /// None running, none answered.
    Idle,
    Running,
    Answered(Answer),
    /// The request failed.
    Failed,
}

/// When refreshes are due: `spec.refresh.beforeExpiry` and the operator's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRules {
    pub before_expiry: Option<BeforeExpiry>,
    pub min_interval: Duration,
}

impl RefreshRules {
    /// The times of a token issued at `requested_at` for `expires_in` seconds, and whether
    /// `beforeExpiry` had to be overruled. `spread`: a token that many clients may get at once
    /// (news: a rollout, a recovery from an outage) is refreshed at a random point of its
    /// wait, so that the herd does not come back together (`schedule::spread_refresh_at`).
    fn times(
        &self,
        requested_at: Timestamp,
        expires_in: u64,
        jitter: f64,
        spread: bool,
    ) -> (TokenTimes, bool) {
        let issued_at = schedule::whole_seconds(requested_at);
        let expires_at = issued_at + SignedDuration::from_secs(expires_in as i64);
        let refresh_at = if spread {
            schedule::spread_refresh_at
        } else {
            schedule::refresh_at
        };
        // The floor counts from the precise request time, not from the whole second.
        let plan = refresh_at(
            requested_at,
            expires_at,
            self.before_expiry,
            self.min_interval,
            jitter,
        );
        let times = TokenTimes {
            issued_at,
            expires_at,
            refresh_at: plan.refresh_at,
        };
        (times, plan.clamped)
    }

    /// Whether `beforeExpiry` was overruled for a token with these times: recomputed from what
    /// the Secret records, so that a restarted operator shows the same status.
    fn clamped(&self, times: &TokenTimes) -> bool {
        schedule::refresh_at(
            times.issued_at,
            times.expires_at,
            self.before_expiry,
            self.min_interval,
            0.0,
        )
        .clamped
    }
}

/// The token Secret of that name, as found.
#[derive(Debug, Clone, Copy)]
pub struct SecretFacts<'a> {
    pub token: &'a ObservedToken,
    /// This IdvClient's (the object the operator made for it).
    pub owned: bool,
    /// It carries every label and annotation the spec asks for (and none the spec dropped).
    pub metadata_matches: bool,
}

/// What the reconcile found: the input of `decide`.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The token Secret; None: there is none.
    pub secret: Option<SecretFacts<'a>>,
    /// Hash of the inputs that shape a token now; None: the credential cannot be used.
    pub inputs_hash: Option<&'a str>,
    pub fetch: FetchState,
    /// From the failure memory: no new request before this (same inputs as the failure).
    pub not_before: Option<Timestamp>,
    /// The client's last attempt failed: a new token is a recovery.
    pub failed_last: bool,
    /// When a Secret create in the client's namespace (real or dry run) last succeeded, if no
    /// Secret write there failed since.
    pub namespace_writable_at: Option<Timestamp>,
    pub rules: RefreshRules,
    pub now: Timestamp,
    /// In 0..1: spreads the refreshes of clients created together.
    pub jitter: f64,
}

/// What a reconcile does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// A Secret of that name is someone else's: leave it alone, report it.
    Conflict,
    /// Report why the credential cannot be used.
    Unusable,
    /// The token in the Secret stays until its refresh time; `repair_metadata`: first
    /// re-apply the labels and annotations the spec asks for (same token, no IdP call).
    Keep {
        times: TokenTimes,
        repair_metadata: bool,
        clamped: bool,
    },
    /// A request is running; its end reconciles the client again.
    AwaitFetch,
    /// Store the token the request brought, with these times. `announce`: worth an Event.
    Store {
        reason: RefreshReason,
        times: TokenTimes,
        clamped: bool,
        announce: bool,
    },
    /// Report the request's failure.
    ReportFailure,
    /// The last attempt with the same inputs failed; not again before `until`.
    HoldBack { until: Timestamp },
    /// Ask the IdP; `dry_run`: the Secret does not exist yet, so check first that it can be
    /// created (a name taken, a quota, a terminating namespace cost no token).
    StartFetch { dry_run: bool },
}

pub fn decide(facts: &Facts) -> Plan {
    if facts.secret.is_some_and(|s| !s.owned) {
        return Plan::Conflict;
    }
    let Some(inputs_hash) = facts.inputs_hash else {
        return Plan::Unusable;
    };
    let token = facts.secret.map(|s| s.token);
    match refresh_decision(inputs_hash, token, facts.now) {
        Decision::Wait(times) => Plan::Keep {
            times,
            repair_metadata: facts.secret.is_some_and(|s| !s.metadata_matches),
            clamped: facts.rules.clamped(&times),
        },
        Decision::Refresh(reason) => match facts.fetch {
            FetchState::Running => Plan::AwaitFetch,
            FetchState::Failed => Plan::ReportFailure,
            FetchState::Answered(answer) if answer.is_worth_storing_at(facts.now) => {
                let announce = token_is_news(reason, facts.failed_last);
                let (times, clamped) = facts.rules.times(
                    answer.requested_at,
                    answer.expires_in,
                    facts.jitter,
                    announce,
                );
                Plan::Store {
                    reason,
                    times,
                    clamped,
                    announce,
                }
            }
            // None yet, or a kept token too old to store now.
            FetchState::Idle | FetchState::Answered(_) => match facts.not_before {
                Some(until) if facts.now < until => Plan::HoldBack { until },
                _ => Plan::StartFetch {
                    dry_run: facts.secret.is_none()
                        && needs_dry_run(facts.failed_last, facts.namespace_writable_at, facts.now),
                },
            },
        },
    }
}

/// How long a successful Secret create in a namespace stands in for a dry run there.
pub const WRITABLE_PROOF: SignedDuration = SignedDuration::from_secs(10);

/// Whether a first token waits for a server-side dry run of its Secret. Quota, RBAC, a
/// terminating namespace and admission answer alike for every Secret of a namespace: a create
/// there that succeeded seconds ago (and no write failing since) answers them as well, and
/// saves one apiserver request per client in a rollout. A client whose last attempt failed,
/// and any client of a namespace not proven just now, is checked by name (the dry run also
/// finds a name taken by someone else's Secret; with the proof, the create finds it and the
/// token is kept for the retry).
pub fn needs_dry_run(failed_last: bool, writable_at: Option<Timestamp>, now: Timestamp) -> bool {
    failed_last || writable_at.is_none_or(|at| now.duration_since(at) > WRITABLE_PROOF || at > now)
}

/// How long to wait after a failure: the backoff, but never past the expiry of a token still
/// in the Secret (then the next attempt reports the client unready if it fails too).
pub fn retry_delay(backoff: Duration, valid_until: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(expires) = valid_until.filter(|e| *e > now) else {
        return backoff;
    };
    let left = Duration::from_secs(expires.duration_since(now).as_secs().max(1) as u64);
    backoff.min(left)
}

/// Whether a failure makes the client unready: not a transient one while a valid token is in
/// place (workloads are fine, and the next attempt comes before the token expires).
pub fn failure_flips_ready(transient: bool, holds_valid_token: bool) -> bool {
    !(transient && holds_valid_token)
}

/// Whether a new token is worth an Event: a routine refresh is not (at 10,000 clients it would
/// be ~4 Events a second, forever); a first token, a replaced one, or a recovery is.
pub fn token_is_news(reason: RefreshReason, recovered: bool) -> bool {
    reason != RefreshReason::Due || recovered
}

/// A failed attempt, as far as deciding what comes next goes.
#[derive(Debug, Clone, Copy)]
pub struct FailureFacts<'a> {
    pub class: FailureClass,
    pub transient: bool,
    /// What the IdP asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// What the token Secret recorded, if the attempt got that far.
    pub token: Option<&'a ObservedToken>,
    /// Failures in a row with the same inputs before this one.
    pub failures_before: u32,
    pub now: Timestamp,
    /// In 0..1: spreads the retries.
    pub jitter: f64,
}

/// What the token in the Secret means for a failure's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenNote {
    /// No token of ours, or one modified by someone else.
    None,
    /// A valid token stays in the Secret until it expires.
    StaysUntil(Timestamp),
    /// The token in the Secret has expired.
    ExpiredAt(Timestamp),
}

/// What follows a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    /// Failures in a row now, with the same inputs.
    pub count: u32,
    pub delay: Duration,
    /// No new attempt with the same inputs before this.
    pub not_before: Timestamp,
    /// The next attempt, in whole seconds (as messages show it).
    pub retry_at: Timestamp,
    /// The client is reported unready.
    pub flips_ready: bool,
    pub token: TokenNote,
}

pub fn after_failure(failure: &FailureFacts) -> AfterFailure {
    let now = failure.now;
    let valid_until = failure
        .token
        .filter(|t| t.is_valid_at(now))
        .and_then(|t| t.times)
        .map(|t| t.expires_at);
    let holds_valid_token = valid_until.is_some();
    let count = failure.failures_before.saturating_add(1);
    let backoff = schedule::backoff(
        failure.class,
        count,
        holds_valid_token,
        failure.retry_after,
        failure.jitter,
    );
    let delay = retry_delay(backoff, valid_until, now);
    let wait = SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_secs(60));
    let token = match valid_until {
        Some(expires) => TokenNote::StaysUntil(expires),
        None => failure
            .token
            .filter(|t| t.data_intact)
            .and_then(|t| t.times)
            .map_or(TokenNote::None, |t| TokenNote::ExpiredAt(t.expires_at)),
    };
    AfterFailure {
        count,
        delay,
        not_before: now.saturating_add(wait).unwrap_or(now),
        retry_at: schedule::whole_seconds(now + SignedDuration::from_secs(delay.as_secs() as i64)),
        flips_ready: failure_flips_ready(failure.transient, holds_valid_token),
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_clock::{at, times};

    #[test]
    fn a_first_token_is_checked_by_a_dry_run_unless_its_namespace_was_just_proven_writable() {
        let now = at(100);
        let cases = [
            // (last attempt failed, namespace proven at, dry run)
            (false, None, true),
            (false, Some(at(100)), false),
            (false, Some(at(90)), false),
            (false, Some(at(89)), true),
            // A proof from the future (a clock step back) proves nothing.
            (false, Some(at(101)), true),
            (true, Some(at(100)), true),
        ];
        for (failed_last, proven, expected) in cases {
            assert_eq!(
                needs_dry_run(failed_last, proven, now),
                expected,
                "{failed_last} {proven:?}"
            );
        }
    }

    fn good() -> ObservedToken {
        ObservedToken {
            inputs_hash: Some("h".into()),
            data_intact: true,
            times: Some(times(0, 3600, 2400)),
        }
    }

    #[test]
    fn decisions_in_order() {
        let tampered = ObservedToken {
            data_intact: false,
            inputs_hash: Some("old".into()),
            ..good()
        };
        let changed = ObservedToken {
            inputs_hash: Some("old".into()),
            ..good()
        };
        let untimed = ObservedToken {
            times: None,
            ..good()
        };
        // A 1 s token whose refresh was floored to 10 s after issue.
        let floored = ObservedToken {
            times: Some(times(0, 1, 10)),
            ..good()
        };
        let cases = [
            (None, at(10), Decision::Refresh(RefreshReason::NoSecret)),
            (
                Some(tampered),
                at(10),
                Decision::Refresh(RefreshReason::SecretModified),
            ),
            (
                Some(changed),
                at(10),
                Decision::Refresh(RefreshReason::InputsChanged),
            ),
            (
                Some(untimed),
                at(10),
                Decision::Refresh(RefreshReason::SecretModified),
            ),
            (Some(good()), at(10), Decision::Wait(times(0, 3600, 2400))),
            (
                Some(good()),
                at(2400),
                Decision::Refresh(RefreshReason::Due),
            ),
            (
                Some(good()),
                at(4000),
                Decision::Refresh(RefreshReason::Due),
            ),
            (
                Some(floored.clone()),
                at(5),
                Decision::Wait(times(0, 1, 10)),
            ),
            (Some(floored), at(10), Decision::Refresh(RefreshReason::Due)),
        ];
        for (observed, now, expected) in cases {
            assert_eq!(
                refresh_decision("h", observed.as_ref(), now),
                expected,
                "{observed:?} at {now}"
            );
        }
    }

    #[test]
    fn the_cache_is_trusted_unless_it_may_be_stale() {
        use Lookup::*;
        // (cached, write in flight, listed)
        let cases = [
            (Some("r"), false, true, Known(Some("r"))),
            (Some("r"), false, false, Known(Some("r"))),
            (None, false, true, Known(None)),
            // Not listed yet: absent from the cache says nothing.
            (None, false, false, Ask),
            // Our own write not seen yet: the record is older than the Secret.
            (Some("r"), true, true, Ask),
            (None, true, true, Ask),
        ];
        for (cached, in_flight, listed, expected) in cases {
            assert_eq!(
                lookup(cached, in_flight, listed),
                expected,
                "{cached:?} {in_flight} {listed}"
            );
        }
    }

    #[test]
    fn a_new_token_is_stored_a_kept_one_for_half_its_lifetime() {
        let answer = |kept, expires_in| Answer {
            requested_at: at(0),
            expires_in,
            kept,
        };
        assert!(
            answer(false, 1).is_worth_storing_at(at(5)),
            "a new answer, however short"
        );
        assert!(answer(true, 3600).is_worth_storing_at(at(0)));
        assert!(answer(true, 3600).is_worth_storing_at(at(1799)));
        assert!(!answer(true, 3600).is_worth_storing_at(at(1800)));
    }

    #[test]
    fn a_tiny_lifetime_waits_the_floor_from_the_precise_request_time() {
        let rules = RefreshRules {
            before_expiry: None,
            min_interval: Duration::from_secs(2),
        };
        let requested_at = at(0) + SignedDuration::from_millis(999);
        for spread in [false, true] {
            let (times, _) = rules.times(requested_at, 1, 1.0, spread);
            assert_eq!(times.issued_at, at(0));
            assert_eq!(
                times.refresh_at,
                at(3),
                "spread {spread}: 2 s after 0.999 s"
            );
        }
    }

    #[test]
    fn plans_in_order() {
        let rules = RefreshRules {
            before_expiry: None,
            min_interval: Duration::from_secs(10),
        };
        // beforeExpiry longer than a one-hour token: overruled.
        let overruled = RefreshRules {
            before_expiry: Some(BeforeExpiry::Duration(Duration::from_secs(7200))),
            ..rules
        };
        let held = good();
        // Valid, and past its refresh time.
        let due = ObservedToken {
            times: Some(times(-3000, 600, 0)),
            ..good()
        };
        let ours = |token| {
            Some(SecretFacts {
                token,
                owned: true,
                metadata_matches: true,
            })
        };
        let drifted = |token| {
            Some(SecretFacts {
                token,
                owned: true,
                metadata_matches: false,
            })
        };
        let theirs = Some(SecretFacts {
            token: &held,
            owned: false,
            metadata_matches: true,
        });
        let base = Facts {
            secret: ours(&held),
            inputs_hash: Some("h"),
            fetch: FetchState::Idle,
            not_before: None,
            failed_last: false,
            namespace_writable_at: None,
            rules,
            now: at(100),
            jitter: 0.0,
        };
        let fresh = Answer {
            requested_at: at(100),
            expires_in: 3600,
            kept: false,
        };
        let stale = Answer {
            requested_at: at(-4000),
            expires_in: 3600,
            kept: true,
        };
        let issued_now = times(100, 3700, 2500);
        // News (a first token, a recovery) is refreshed at a point of the last three quarters
        // of its wait that the jitter picks: a quarter of it at jitter 0.
        let spread_now = times(100, 3700, 700);
        use FetchState::*;
        let cases = [
            // Someone else's Secret comes first, also before an unusable credential.
            (
                Facts {
                    secret: theirs,
                    inputs_hash: None,
                    ..base
                },
                Plan::Conflict,
            ),
            (
                Facts {
                    inputs_hash: None,
                    ..base
                },
                Plan::Unusable,
            ),
            (
                base,
                Plan::Keep {
                    times: times(0, 3600, 2400),
                    repair_metadata: false,
                    clamped: false,
                },
            ),
            (
                Facts {
                    secret: drifted(&held),
                    rules: overruled,
                    ..base
                },
                Plan::Keep {
                    times: times(0, 3600, 2400),
                    repair_metadata: true,
                    clamped: true,
                },
            ),
            // A token being kept does not care about a request in flight.
            (
                Facts {
                    fetch: Running,
                    ..base
                },
                Plan::Keep {
                    times: times(0, 3600, 2400),
                    repair_metadata: false,
                    clamped: false,
                },
            ),
            (
                Facts {
                    secret: ours(&due),
                    fetch: Running,
                    not_before: Some(at(500)),
                    ..base
                },
                Plan::AwaitFetch,
            ),
            // A routine refresh is no news...
            (
                Facts {
                    secret: ours(&due),
                    fetch: Answered(fresh),
                    not_before: Some(at(500)),
                    ..base
                },
                Plan::Store {
                    reason: RefreshReason::Due,
                    times: issued_now,
                    clamped: false,
                    announce: false,
                },
            ),
            // ... a recovery is, and so is a first token.
            (
                Facts {
                    secret: ours(&due),
                    fetch: Answered(fresh),
                    failed_last: true,
                    ..base
                },
                Plan::Store {
                    reason: RefreshReason::Due,
                    times: spread_now,
                    clamped: false,
                    announce: true,
                },
            ),
            (
                Facts {
                    secret: None,
                    fetch: Answered(fresh),
                    rules: overruled,
                    jitter: 1.0,
                    ..base
                },
                Plan::Store {
                    reason: RefreshReason::NoSecret,
                    // Spread news at jitter 1: the default point (2/3 of the lifetime).
                    times: times(100, 3700, 2500),
                    clamped: true,
                    announce: true,
                },
            ),
            (
                Facts {
                    secret: ours(&due),
                    fetch: Failed,
                    ..base
                },
                Plan::ReportFailure,
            ),
            (
                Facts {
                    secret: ours(&due),
                    not_before: Some(at(500)),
                    ..base
                },
                Plan::HoldBack { until: at(500) },
            ),
            (
                Facts {
                    secret: ours(&due),
                    fetch: Answered(stale),
                    not_before: Some(at(500)),
                    ..base
                },
                Plan::HoldBack { until: at(500) },
            ),
            (
                Facts {
                    secret: ours(&due),
                    not_before: Some(at(100)),
                    ..base
                },
                Plan::StartFetch { dry_run: false },
            ),
            (
                Facts {
                    secret: None,
                    ..base
                },
                Plan::StartFetch { dry_run: true },
            ),
            (
                Facts {
                    secret: None,
                    fetch: Answered(stale),
                    ..base
                },
                Plan::StartFetch { dry_run: true },
            ),
            // A create in the namespace just succeeded: it answers for this one too.
            (
                Facts {
                    secret: None,
                    namespace_writable_at: Some(at(95)),
                    ..base
                },
                Plan::StartFetch { dry_run: false },
            ),
            (
                Facts {
                    secret: None,
                    namespace_writable_at: Some(at(95)),
                    failed_last: true,
                    ..base
                },
                Plan::StartFetch { dry_run: true },
            ),
        ];
        for (facts, expected) in cases {
            assert_eq!(decide(&facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn a_held_token_bounds_the_retry_delay() {
        let hour = Duration::from_secs(3600);
        let cases = [
            (hour, None, hour),
            (hour, Some(at(130)), Duration::from_secs(30)),
            (
                Duration::from_secs(5),
                Some(at(130)),
                Duration::from_secs(5),
            ),
            // Expired already: the backoff alone (the client is unready by now).
            (hour, Some(at(90)), hour),
            // Less than a second left: one second, never a zero requeue.
            (hour, Some(at(100)), hour),
        ];
        for (backoff, valid_until, expected) in cases {
            assert_eq!(
                retry_delay(backoff, valid_until, at(100)),
                expected,
                "{valid_until:?}"
            );
        }
    }

    #[test]
    fn what_a_failure_and_a_new_token_mean() {
        assert!(!failure_flips_ready(true, true), "transient, token held");
        assert!(failure_flips_ready(true, false));
        assert!(
            failure_flips_ready(false, true),
            "configuration errors always show"
        );
        assert!(!token_is_news(RefreshReason::Due, false));
        assert!(token_is_news(RefreshReason::Due, true), "a recovery");
        for reason in [
            RefreshReason::NoSecret,
            RefreshReason::SecretModified,
            RefreshReason::InputsChanged,
        ] {
            assert!(token_is_news(reason, false), "{reason:?}");
        }
    }

    #[test]
    fn after_failures_in_order() {
        let expired = ObservedToken {
            times: Some(times(-3600, 0, -1200)),
            ..good()
        };
        let modified = ObservedToken {
            data_intact: false,
            ..good()
        };
        let base = FailureFacts {
            class: FailureClass::Transient,
            transient: true,
            retry_after: None,
            token: None,
            failures_before: 0,
            now: at(100),
            jitter: 0.0,
        };
        let secs = Duration::from_secs;
        let configuration = FailureFacts {
            class: FailureClass::Configuration,
            transient: false,
            ..base
        };
        // (facts, count, delay, flips Ready, token note)
        let cases = [
            (base, 1, secs(1), true, TokenNote::None),
            (
                FailureFacts {
                    failures_before: 3,
                    ..base
                },
                4,
                secs(8),
                true,
                TokenNote::None,
            ),
            // A valid token: Ready stays, and the wait ends before the token does.
            (
                FailureFacts {
                    token: Some(&good()),
                    failures_before: 20,
                    ..base
                },
                21,
                secs(300),
                false,
                TokenNote::StaysUntil(at(3600)),
            ),
            (
                FailureFacts {
                    token: Some(&ObservedToken {
                        times: Some(times(0, 130, 80)),
                        ..good()
                    }),
                    failures_before: 20,
                    ..base
                },
                21,
                secs(30),
                false,
                TokenNote::StaysUntil(at(130)),
            ),
            (
                FailureFacts {
                    token: Some(&good()),
                    ..configuration
                },
                1,
                schedule::CONFIGURATION_RETRY,
                true,
                TokenNote::StaysUntil(at(3600)),
            ),
            (
                FailureFacts {
                    token: Some(&expired),
                    ..base
                },
                1,
                secs(1),
                true,
                TokenNote::ExpiredAt(at(0)),
            ),
            (
                FailureFacts {
                    token: Some(&modified),
                    ..base
                },
                1,
                secs(1),
                true,
                TokenNote::None,
            ),
            (
                FailureFacts {
                    retry_after: Some(secs(42)),
                    ..base
                },
                1,
                secs(42),
                true,
                TokenNote::None,
            ),
        ];
        for (facts, count, delay, flips_ready, token) in cases {
            let after = after_failure(&facts);
            let expected = AfterFailure {
                count,
                delay,
                not_before: at(100) + SignedDuration::try_from(delay).unwrap(),
                retry_at: at(100) + SignedDuration::try_from(delay).unwrap(),
                flips_ready,
                token,
            };
            assert_eq!(after, expected, "{facts:?}");
        }
        // The jitter takes up to a fifth off; the next attempt is shown in whole seconds.
        let jittered = after_failure(&FailureFacts {
            jitter: 0.5,
            ..base
        });
        assert_eq!(jittered.delay, Duration::from_millis(900));
        assert_eq!(jittered.retry_at, at(100));
        assert_eq!(
            jittered.not_before,
            at(100) + SignedDuration::from_millis(900)
        );
    }

    #[test]
    fn validity() {
        assert!(good().is_valid_at(at(3599)));
        assert!(!good().is_valid_at(at(3600)));
        assert!(
            !ObservedToken {
                data_intact: false,
                ..good()
            }
            .is_valid_at(at(1))
        );
    }
}
