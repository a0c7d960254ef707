//! Per-IdvClient failure memory: how often the last attempts with the same inputs failed, and
//! when the next may come. Time is a parameter; the delay itself is `schedule::backoff`'s.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use jiff::{SignedDuration, Timestamp};

use crate::fetcher::ClientKey;

/// One IdvClient's failures. `inputs` fingerprints what the failed attempt saw: when the
/// IdvClient or its key Secret changes, the next attempt is not held back.
#[derive(Debug, Clone, Default)]
struct Failure {
    count: u32,
    inputs: String,
    not_before: Option<Timestamp>,
}

#[derive(Default)]
pub struct Failures(Mutex<HashMap<ClientKey, Failure>>);

impl Failures {
    /// Count a failure with these inputs (a failure with other inputs starts the count anew)
    /// and remember not to try again before `now + delay(count)`. Returns the delay.
    pub fn record(
        &self,
        key: ClientKey,
        inputs: &str,
        now: Timestamp,
        delay: impl FnOnce(u32) -> Duration,
    ) -> Duration {
        let mut failures = self.0.lock().expect("lock");
        let failure = failures.entry(key).or_default();
        if failure.inputs != inputs {
            *failure = Failure {
                inputs: inputs.to_string(),
                ..Failure::default()
            };
        }
        failure.count = failure.count.saturating_add(1);
        let delay = delay(failure.count);
        let wait = SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_secs(60));
        failure.not_before = Some(now.saturating_add(wait).unwrap_or(now));
        delay
    }

    /// When the last attempt with the same inputs failed: the time before which not to retry.
    pub fn not_before(&self, key: &ClientKey, inputs: &str) -> Option<Timestamp> {
        let failures = self.0.lock().expect("lock");
        let failure = failures.get(key)?;
        failure.not_before.filter(|_| failure.inputs == inputs)
    }

    /// Whether the client's last attempt failed (a success now is a recovery).
    pub fn failed_last(&self, key: &ClientKey) -> bool {
        self.0.lock().expect("lock").contains_key(key)
    }

    /// A success, or a deleted client: forget its failures.
    pub fn clear(&self, key: &ClientKey) {
        self.0.lock().expect("lock").remove(key);
    }

    /// Keep only these clients' failures (after a relist).
    pub fn retain(&self, keep: impl Fn(&ClientKey) -> bool) {
        self.0.lock().expect("lock").retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn failures_count_per_inputs_and_hold_back_until_the_delay_passed() {
        let failures = Failures::default();
        let key: ClientKey = ObjectRef::new("c").within("ns");
        let seconds = |count: u32| Duration::from_secs(u64::from(count) * 10);
        assert_eq!(
            failures.record(key.clone(), "i1", at(0), seconds),
            seconds(1)
        );
        assert_eq!(
            failures.record(key.clone(), "i1", at(5), seconds),
            seconds(2)
        );
        assert_eq!(failures.not_before(&key, "i1"), Some(at(25)));
        assert_eq!(
            failures.not_before(&key, "i2"),
            None,
            "changed inputs: not held back"
        );
        assert_eq!(
            failures.record(key.clone(), "i2", at(30), seconds),
            seconds(1),
            "changed inputs count anew"
        );
        assert!(failures.failed_last(&key));
        failures.retain(|_| false);
        assert!(!failures.failed_last(&key));
        failures.record(key.clone(), "i1", at(0), seconds);
        failures.clear(&key);
        assert_eq!(failures.not_before(&key, "i1"), None);
    }
}
