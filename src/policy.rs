//! Whether to ask the IdP for a new token now. Pure: given what the token Secret records and
//! the clock, decide. Checked in order, like cert-manager's policy chain.

use std::time::Duration;

use jiff::Timestamp;

/// What the operator's token Secret records (read from its annotations and data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedToken {
    /// Hash of the inputs (spec fields, key) that produced the token.
    pub inputs_hash: Option<String>,
    /// The token data still matches what the operator wrote.
    pub data_intact: bool,
    pub issued_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub refresh_at: Option<Timestamp>,
}

impl ObservedToken {
    /// A token that a workload can still use.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.data_intact && self.expires_at.is_some_and(|e| e > now)
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
    /// The recorded token is good: nothing to do until then.
    Wait {
        until: Timestamp,
    },
}

pub fn decide(inputs_hash: &str, observed: Option<&ObservedToken>, now: Timestamp) -> Decision {
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
    match (observed.expires_at, observed.refresh_at) {
        (Some(_), Some(refresh)) if now < refresh => Decision::Wait { until: refresh },
        (Some(_), Some(_)) => Decision::Refresh(RefreshReason::Due),
        _ => Decision::Refresh(RefreshReason::SecretModified),
    }
}

/// Where the client's token request stands (the fetcher's state, without its payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchState {
    /// None running, none answered.
    Idle,
    Running,
    /// A token that could not be stored before, now too old to store.
    Stale,
    /// A token to store.
    Answered,
    /// The request failed.
    Failed,
}

/// What a reconcile does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The token in the Secret stays until `until`; `repair_metadata`: first re-apply the
    /// labels and annotations the spec asks for (same token, no IdP call).
    Keep {
        until: Timestamp,
        repair_metadata: bool,
    },
    /// A request is running; its end reconciles the client again.
    AwaitFetch,
    /// Store the token the request brought.
    Store,
    /// Report the request's failure.
    ReportFailure,
    /// The last attempt with the same inputs failed; not again before `until`.
    HoldBack { until: Timestamp },
    /// Ask the IdP; `dry_run`: the Secret does not exist yet, so check first that it can be
    /// created (a name taken, a quota, a terminating namespace cost no token).
    StartFetch { dry_run: bool },
}

/// What the reconcile observed, beyond the token decision.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub decision: Decision,
    pub fetch: FetchState,
    /// From the failure memory: no new request before this (same inputs as the failure).
    pub not_before: Option<Timestamp>,
    pub secret_exists: bool,
    /// The Secret carries every label and annotation the spec asks for.
    pub metadata_matches: bool,
    pub now: Timestamp,
}

pub fn next_step(facts: &Facts) -> Step {
    match facts.decision {
        Decision::Wait { until } => Step::Keep {
            until,
            repair_metadata: !facts.metadata_matches,
        },
        Decision::Refresh(_) => match facts.fetch {
            FetchState::Running => Step::AwaitFetch,
            FetchState::Answered => Step::Store,
            FetchState::Failed => Step::ReportFailure,
            FetchState::Idle | FetchState::Stale => match facts.not_before {
                Some(until) if facts.now < until => Step::HoldBack { until },
                _ => Step::StartFetch {
                    dry_run: !facts.secret_exists,
                },
            },
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn good() -> ObservedToken {
        ObservedToken {
            inputs_hash: Some("h".into()),
            data_intact: true,
            issued_at: Some(at(0)),
            expires_at: Some(at(3600)),
            refresh_at: Some(at(2400)),
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
        let unannotated = ObservedToken {
            refresh_at: None,
            ..good()
        };
        // A 1 s token whose refresh was floored to 10 s after issue.
        let floored = ObservedToken {
            expires_at: Some(at(1)),
            refresh_at: Some(at(10)),
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
                Some(unannotated),
                at(10),
                Decision::Refresh(RefreshReason::SecretModified),
            ),
            (Some(good()), at(10), Decision::Wait { until: at(2400) }),
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
                Decision::Wait { until: at(10) },
            ),
            (Some(floored), at(10), Decision::Refresh(RefreshReason::Due)),
        ];
        for (observed, now, expected) in cases {
            assert_eq!(
                decide("h", observed.as_ref(), now),
                expected,
                "{observed:?} at {now}"
            );
        }
    }

    #[test]
    fn steps_in_order() {
        let refresh = Decision::Refresh(RefreshReason::Due);
        let facts = |decision, fetch, not_before, secret_exists, metadata_matches| Facts {
            decision,
            fetch,
            not_before,
            secret_exists,
            metadata_matches,
            now: at(100),
        };
        use FetchState::*;
        let wait = Decision::Wait { until: at(2400) };
        let cases = [
            (
                facts(wait, Idle, None, true, true),
                Step::Keep {
                    until: at(2400),
                    repair_metadata: false,
                },
            ),
            (
                facts(wait, Idle, None, true, false),
                Step::Keep {
                    until: at(2400),
                    repair_metadata: true,
                },
            ),
            // A token being kept does not care about a request in flight.
            (
                facts(wait, Running, None, true, true),
                Step::Keep {
                    until: at(2400),
                    repair_metadata: false,
                },
            ),
            (
                facts(refresh, Running, Some(at(500)), true, true),
                Step::AwaitFetch,
            ),
            (
                facts(refresh, Answered, Some(at(500)), false, true),
                Step::Store,
            ),
            (
                facts(refresh, Failed, None, true, true),
                Step::ReportFailure,
            ),
            (
                facts(refresh, Idle, Some(at(500)), true, true),
                Step::HoldBack { until: at(500) },
            ),
            (
                facts(refresh, Stale, Some(at(500)), true, true),
                Step::HoldBack { until: at(500) },
            ),
            (
                facts(refresh, Idle, Some(at(100)), true, true),
                Step::StartFetch { dry_run: false },
            ),
            (
                facts(refresh, Idle, None, false, true),
                Step::StartFetch { dry_run: true },
            ),
            (
                facts(refresh, Stale, None, false, false),
                Step::StartFetch { dry_run: true },
            ),
        ];
        for (facts, expected) in cases {
            assert_eq!(next_step(&facts), expected, "{facts:?}");
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
