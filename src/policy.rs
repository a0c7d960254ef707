//! Whether to ask the IdP for a new token now. Pure: given what the token Secret records and
//! the clock, decide. Checked in order, like cert-manager's policy chain.

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
