//! What the IdvClient's status says: Ready with the token's times, or why not, and (for
//! kstatus) whether work is in progress (Reconciling) or waits for a change (Stalled). Pure and
//! deterministic: the same outcome gives the same status, so writing it triggers nothing.

use std::fmt::Display;

use jiff::Timestamp;

use crate::{
    api::{self, Condition, IdvClient, IdvClientStatus},
    names,
    policy::{AfterFailure, TokenNote},
    schedule::{self, TokenTimes},
};

pub const READY: &str = "Ready";
/// kstatus: work for the current generation is in progress (present only while True).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the operator has given up until something changes (present only while True).
pub const STALLED: &str = "Stalled";

/// A Ready condition; `lastTransitionTime` stays when the status does not change, so an
/// unchanged outcome writes an identical status (and no new watch event).
pub fn ready_condition(
    previous: Option<&IdvClientStatus>,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    condition(previous, READY, status, reason, message, generation, now)
}

/// A condition of any type; `lastTransitionTime` stays while its status does not change.
pub fn condition(
    previous: Option<&IdvClientStatus>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| schedule::whole_seconds(now).to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// Status while a valid token is in place, derived only from what the Secret records.
/// `clamped`: `beforeExpiry` was overruled for this token (the message says so).
pub fn ready_status(
    client: &IdvClient,
    times: &TokenTimes,
    secret_uid: Option<&str>,
    key_id: Option<&str>,
    clamped: bool,
    now: Timestamp,
) -> IdvClientStatus {
    let mut message = format!(
        "token valid until {}; next refresh at {}",
        times.expires_at, times.refresh_at
    );
    if clamped {
        message.push_str(&format!(
            "; refresh.beforeExpiry {} is not shorter than the token lifetime, so the token is refreshed at 2/3 of its lifetime",
            client.spec.refresh.before_expiry.as_deref().unwrap_or_default()
        ));
    }
    let generation = client.metadata.generation;
    IdvClientStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(
            client.status.as_ref(),
            true,
            api::reasons::TOKEN_ISSUED,
            message,
            generation,
            now,
        )],
        expires_at: Some(times.expires_at.to_string()),
        refresh_at: Some(times.refresh_at.to_string()),
        key_id: key_id.map(str::to_string),
        secret_name: Some(client.token_secret_name()),
        secret_uid: secret_uid.map(str::to_string),
    }
}

/// Status after a failure. Token times and key id stay as they were: they describe the token
/// that is still in the Secret.
pub fn failed_status(
    client: &IdvClient,
    ready: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> IdvClientStatus {
    let previous = client.status.clone().unwrap_or_default();
    let generation = client.metadata.generation;
    IdvClientStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(
            client.status.as_ref(),
            ready,
            reason,
            message,
            generation,
            now,
        )],
        // An invalid name is never recorded: a later rename would try to delete it by name.
        secret_name: Some(client.token_secret_name())
            .filter(|name| names::is_dns1123_subdomain(name))
            .or(previous.secret_name.clone()),
        ..previous
    }
}

/// Status of a suspended client. Stalled: nothing happens until the spec changes (kstatus:
/// Failed, not a wait for ever on Ready=False).
pub fn suspended(client: &IdvClient, now: Timestamp) -> IdvClientStatus {
    failure_status(
        client,
        api::reasons::SUSPENDED,
        "spec.suspend is true: no tokens are fetched; the token Secret is left as it is".into(),
        false,
        now,
    )
}

/// Where the work for the client's current generation stands, as kstatus (Flux, `kubectl
/// wait`, cli-utils) reads it. `Reconciling` and `Stalled` are "abnormal-true" conditions:
/// present only while True, as Flux's controllers do, so a settled client shows Ready alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing pending: Ready says it all.
    Settled,
    /// Work for this generation is going on or will be retried: `Reconciling=True`.
    Working,
    /// Given up until the IdvClient, its key Secret or its token Secret changes: `Stalled=True`.
    Stalled,
}

impl Progress {
    /// After a failure that makes the client unready: a transient one is retried with
    /// backoff (still working); a configuration error waits for a change.
    pub fn after_failure(transient: bool) -> Self {
        if transient {
            Progress::Working
        } else {
            Progress::Stalled
        }
    }
}

fn is_true(status: &IdvClientStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// `status` with its Reconciling / Stalled conditions set for `progress` (Ready first, then
/// the one of them that is True, if any).
pub fn with_progress(
    mut status: IdvClientStatus,
    previous: Option<&IdvClientStatus>,
    progress: Progress,
    reason: &str,
    message: String,
    now: Timestamp,
) -> IdvClientStatus {
    status
        .conditions
        .retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
    let type_ = match progress {
        Progress::Settled => return status,
        Progress::Working => RECONCILING,
        Progress::Stalled => STALLED,
    };
    let generation = status.observed_generation;
    status.conditions.push(condition(
        previous, type_, "True", reason, message, generation, now,
    ));
    status
}

/// Status after a failure that makes the client unready (`policy::failure_flips_ready`):
/// `failed_status`, plus `Stalled` for a configuration error or `Reconciling` for a transient
/// one, with the same reason and message.
pub fn failure_status(
    client: &IdvClient,
    reason: &str,
    message: String,
    transient: bool,
    now: Timestamp,
) -> IdvClientStatus {
    let status = failed_status(client, false, reason, message.clone(), now);
    let progress = Progress::after_failure(transient);
    with_progress(
        status,
        client.status.as_ref(),
        progress,
        reason,
        message,
        now,
    )
}

/// Status after a transient failure that leaves the client Ready (a valid token is held):
/// unchanged, unless it shows work in progress for this generation (a spec change being
/// applied): then `Reconciling` says what is being retried. `None`: nothing to write.
pub fn retrying_status(
    client: &IdvClient,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Option<IdvClientStatus> {
    let previous = client.status.as_ref()?;
    if !is_true(previous, RECONCILING) || previous.observed_generation != client.metadata.generation
    {
        return None;
    }
    let status = previous.clone();
    Some(with_progress(
        status,
        Some(previous),
        Progress::Working,
        reason,
        message,
        now,
    ))
}

/// The message while a token is requested for the current generation.
pub const ISSUING_MESSAGE: &str =
    "a token is being requested from the authorization server for this generation of the spec";

/// Status while a token request runs. `None` (nothing to write) for a `retry` of inputs whose
/// last attempt failed (the failure's status stays: a Stalled client re-checked every 5 minutes
/// does not flap), when the client is already Ready for its current generation (a routine or
/// forced refresh is nothing to wait for), or already shows this generation's work in progress.
/// Otherwise the current generation with `Reconciling=True`; Ready stays True while a token of
/// an earlier generation is held, else is `Unknown` (as Flux does while progressing).
pub fn fetching_status(client: &IdvClient, retry: bool, now: Timestamp) -> Option<IdvClientStatus> {
    let previous = client.status.clone().unwrap_or_default();
    let generation = client.metadata.generation;
    if retry
        || previous.observed_generation == generation
            && (is_true(&previous, READY) || is_true(&previous, RECONCILING))
    {
        return None;
    }
    let ready = match previous.conditions.iter().find(|c| c.type_ == READY) {
        Some(held) if held.status == "True" => held.clone(),
        _ => condition(
            Some(&previous),
            READY,
            "Unknown",
            api::reasons::ISSUING,
            ISSUING_MESSAGE.into(),
            generation,
            now,
        ),
    };
    let status = IdvClientStatus {
        observed_generation: generation,
        conditions: vec![ready],
        ..previous.clone()
    };
    Some(with_progress(
        status,
        Some(&previous),
        Progress::Working,
        api::reasons::ISSUING,
        ISSUING_MESSAGE.into(),
        now,
    ))
}

/// A failure as status, Event and log say it: what went wrong, when the next attempt comes,
/// and what that means for the token in the Secret.
pub fn failure_message(error: &dyn Display, after: &AfterFailure) -> String {
    let mut message = format!("{error}; next attempt at {}", after.retry_at);
    match after.token {
        TokenNote::StaysUntil(expires) => message.push_str(&format!(
            "; the current token stays in the Secret until it expires at {expires}"
        )),
        TokenNote::ExpiredAt(expired) => {
            message.push_str(&format!("; the token in the Secret expired at {expired}"))
        }
        TokenNote::None => {}
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_clock::at;

    fn client() -> IdvClient {
        let mut c = api::test_client("gipod");
        c.metadata.uid = Some("uid-1".into());
        c.metadata.generation = Some(2);
        c
    }

    fn times() -> TokenTimes {
        TokenTimes {
            issued_at: at(0),
            expires_at: at(3600),
            refresh_at: at(2400),
        }
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut c = client();
        let first = failed_status(&c, false, "KeySecretNotFound", "m1".into(), at(0));
        c.status = Some(first.clone());
        let second = failed_status(&c, false, "InvalidKey", "m2".into(), at(100));
        assert_eq!(
            second.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        let ready = ready_status(&c, &times(), None, Some("kid"), false, at(200));
        assert_eq!(
            ready.conditions[0].last_transition_time,
            at(200).to_string()
        );
        c.status = Some(ready.clone());
        assert_eq!(
            ready_status(&c, &times(), None, Some("kid"), false, at(300)),
            ready,
            "same inputs, same status"
        );
    }

    #[test]
    fn ready_says_when_and_why() {
        let mut c = client();
        c.spec.refresh.before_expiry = Some("2h".into());
        let status = ready_status(&c, &times(), Some("s-uid"), Some("kid"), true, at(0));
        assert_eq!(
            status.conditions[0].message,
            format!(
                "token valid until {}; next refresh at {}; refresh.beforeExpiry 2h is not shorter than the token lifetime, so the token is refreshed at 2/3 of its lifetime",
                at(3600),
                at(2400)
            )
        );
        assert_eq!(
            (status.expires_at, status.refresh_at),
            (Some(at(3600).to_string()), Some(at(2400).to_string()))
        );
        assert_eq!(
            (status.secret_uid.as_deref(), status.key_id.as_deref()),
            (Some("s-uid"), Some("kid"))
        );
    }

    #[test]
    fn failure_messages_say_what_happens_to_the_token() {
        let after = |token| AfterFailure {
            count: 1,
            delay: std::time::Duration::from_secs(5),
            not_before: at(5),
            retry_at: at(5),
            flips_ready: true,
            token,
        };
        let cases = [
            (TokenNote::None, format!("boom; next attempt at {}", at(5))),
            (
                TokenNote::StaysUntil(at(60)),
                format!(
                    "boom; next attempt at {}; the current token stays in the Secret until it expires at {}",
                    at(5),
                    at(60)
                ),
            ),
            (
                TokenNote::ExpiredAt(at(-60)),
                format!(
                    "boom; next attempt at {}; the token in the Secret expired at {}",
                    at(5),
                    at(-60)
                ),
            ),
        ];
        for (note, expected) in cases {
            assert_eq!(failure_message(&"boom", &after(note)), expected);
        }
    }

    /// kstatus' rules for a custom resource (cli-utils v0.37.2 pkg/kstatus/status: Compute),
    /// enough to name the expectation; tests/operator/gitops.rs checks with the real library.
    fn kstatus(client: &IdvClient) -> &'static str {
        let Some(status) = client.status.as_ref() else {
            return "Current";
        };
        if status
            .observed_generation
            .is_some_and(|g| Some(g) != client.metadata.generation)
        {
            return "InProgress";
        }
        if is_true(status, RECONCILING) {
            return "InProgress";
        }
        if is_true(status, STALLED) {
            return "Failed";
        }
        // Then the Ready condition: anything but True is InProgress.
        match status.conditions.iter().find(|c| c.type_ == READY) {
            Some(ready) if ready.status != "True" => "InProgress",
            _ => "Current",
        }
    }

    /// (type, status, reason) of each condition, in order.
    type Shape = Vec<(String, String, String)>;

    fn shape(status: &IdvClientStatus) -> Shape {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[derive(Clone, Copy, Debug)]
    enum Event {
        /// A token request runs (reconcile's `Outcome::Fetching`).
        Fetching,
        /// The same, retrying inputs whose last attempt failed.
        Retry,
        Issued,
        ConfigError,
        TransientError,
        /// A transient error while a valid token is held (Ready stays).
        TransientWithToken,
        Suspended,
        /// The spec changes: a new generation.
        SpecChange,
    }

    /// Applies `event` as reconcile does; `false` when nothing would be written.
    fn step(c: &mut IdvClient, event: Event, now: Timestamp) -> bool {
        let next = match event {
            Event::Fetching => fetching_status(c, false, now),
            Event::Retry => fetching_status(c, true, now),
            Event::Issued => Some(ready_status(c, &times(), None, None, false, now)),
            Event::ConfigError => Some(failure_status(c, "InvalidKey", "bad".into(), false, now)),
            Event::TransientError => Some(failure_status(
                c,
                "IdpUnavailable",
                "down".into(),
                true,
                now,
            )),
            Event::TransientWithToken => retrying_status(c, "IdpUnavailable", "down".into(), now),
            Event::Suspended => Some(failure_status(c, "Suspended", "s".into(), false, now)),
            Event::SpecChange => {
                *c.metadata.generation.as_mut().unwrap() += 1;
                return true;
            }
        };
        match next {
            Some(status) if c.status.as_ref() != Some(&status) => {
                c.status = Some(status);
                true
            }
            _ => false,
        }
    }

    #[test]
    fn conditions_follow_kstatus_through_a_clients_life() {
        use Event::*;
        let t = |s: &str, st: &str, r: &str| (s.to_string(), st.to_string(), r.to_string());
        let ready = t(READY, "True", "TokenIssued");
        let issuing = [
            t(READY, "Unknown", "Issuing"),
            t(RECONCILING, "True", "Issuing"),
        ];
        // (event, written?, conditions after, kstatus after)
        let story: Vec<(Event, bool, Shape, &str)> = vec![
            (Fetching, true, issuing.to_vec(), "InProgress"),
            (Fetching, false, issuing.to_vec(), "InProgress"),
            (Issued, true, vec![ready.clone()], "Current"),
            // A routine refresh: nothing to wait for.
            (Fetching, false, vec![ready.clone()], "Current"),
            (TransientWithToken, false, vec![ready.clone()], "Current"),
            (SpecChange, true, vec![ready.clone()], "InProgress"),
            // The token of the older generation is held while the new one is requested.
            (
                Fetching,
                true,
                vec![ready.clone(), t(RECONCILING, "True", "Issuing")],
                "InProgress",
            ),
            (
                TransientWithToken,
                true,
                vec![ready.clone(), t(RECONCILING, "True", "IdpUnavailable")],
                "InProgress",
            ),
            (Issued, true, vec![ready.clone()], "Current"),
            (
                ConfigError,
                true,
                vec![
                    t(READY, "False", "InvalidKey"),
                    t(STALLED, "True", "InvalidKey"),
                ],
                "Failed",
            ),
            (
                ConfigError,
                false,
                vec![
                    t(READY, "False", "InvalidKey"),
                    t(STALLED, "True", "InvalidKey"),
                ],
                "Failed",
            ),
            // The periodic re-check of a configuration error: no flapping.
            (
                Retry,
                false,
                vec![
                    t(READY, "False", "InvalidKey"),
                    t(STALLED, "True", "InvalidKey"),
                ],
                "Failed",
            ),
            // The key was fixed: trying again.
            (Fetching, true, issuing.to_vec(), "InProgress"),
            (
                TransientError,
                true,
                vec![
                    t(READY, "False", "IdpUnavailable"),
                    t(RECONCILING, "True", "IdpUnavailable"),
                ],
                "InProgress",
            ),
            // The retry keeps the failure's message.
            (
                Retry,
                false,
                vec![
                    t(READY, "False", "IdpUnavailable"),
                    t(RECONCILING, "True", "IdpUnavailable"),
                ],
                "InProgress",
            ),
            // Nothing happens until the spec changes: Stalled (kstatus would otherwise wait
            // on Ready=False for ever).
            (
                Suspended,
                true,
                vec![
                    t(READY, "False", "Suspended"),
                    t(STALLED, "True", "Suspended"),
                ],
                "Failed",
            ),
            (
                SpecChange,
                true,
                vec![
                    t(READY, "False", "Suspended"),
                    t(STALLED, "True", "Suspended"),
                ],
                "InProgress",
            ),
            (Fetching, true, issuing.to_vec(), "InProgress"),
            (Issued, true, vec![ready.clone()], "Current"),
        ];
        let mut c = client();
        for (i, (event, written, conditions, expected)) in story.into_iter().enumerate() {
            let did = step(&mut c, event, at(i as i64 * 10));
            let status = c.status.clone().unwrap_or_default();
            assert_eq!(did, written, "step {i} {event:?}: {status:?}");
            assert_eq!(shape(&status), conditions, "step {i} {event:?}");
            assert_eq!(kstatus(&c), expected, "step {i} {event:?}");
            if !matches!(event, SpecChange) {
                assert_eq!(
                    status.observed_generation, c.metadata.generation,
                    "step {i} {event:?}: every write records the generation"
                );
            }
        }
    }

    #[test]
    fn progress_conditions_keep_their_transition_time() {
        let mut c = client();
        c.status = Some(failure_status(&c, "KeyNotFound", "m1".into(), false, at(0)));
        let again = failure_status(&c, "InvalidKey", "m2".into(), false, at(100));
        let stalled = |s: &IdvClientStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == STALLED)
                .unwrap()
                .clone()
        };
        assert_eq!(stalled(&again).last_transition_time, at(0).to_string());
        assert_eq!(stalled(&again).message, "m2");
        // Same outcome, later: the identical status (no rewrite loop).
        c.status = Some(again.clone());
        assert_eq!(
            failure_status(&c, "InvalidKey", "m2".into(), false, at(200)),
            again
        );
        // Stalled -> Reconciling: a new transition.
        let working = failure_status(&c, "IdpUnavailable", "m3".into(), true, at(300));
        let reconciling = working
            .conditions
            .iter()
            .find(|c| c.type_ == RECONCILING)
            .unwrap();
        assert_eq!(reconciling.last_transition_time, at(300).to_string());
        assert_eq!(
            working.conditions[0].last_transition_time,
            at(0).to_string(),
            "Ready stayed False"
        );
    }

    #[test]
    fn an_invalid_secret_name_is_never_recorded_in_status() {
        let mut c = client();
        c.status = Some(failed_status(
            &c,
            false,
            "KeySecretNotFound",
            "m".into(),
            at(0),
        ));
        assert_eq!(
            c.status.as_ref().unwrap().secret_name.as_deref(),
            Some("gipod-token")
        );
        c.spec.secret.name = Some("?watch=true".into());
        let status = failed_status(&c, false, "InvalidSpec", "m".into(), at(1));
        assert_eq!(status.secret_name.as_deref(), Some("gipod-token"));
        assert_eq!(
            suspended(&c, at(2)).conditions[0].reason,
            api::reasons::SUSPENDED
        );
    }
}
