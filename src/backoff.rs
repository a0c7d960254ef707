//! Per-IdvClient failure memory: how often the last attempts with the same inputs failed and
//! when the next may come, and how many reconciles in a row ran out of time. What follows a
//! failure is `policy::after_failure`'s to decide.

use std::{collections::HashMap, sync::Mutex};

use jiff::Timestamp;

use crate::memory::{ClientKey, ClientMemory};

/// One IdvClient's failures. `inputs` fingerprints what the failed attempt saw: when the
/// IdvClient or its key Secret changes, the next attempt is not held back.
#[derive(Debug, Clone)]
struct Failure {
    count: u32,
    inputs: String,
    not_before: Timestamp,
}

#[derive(Default)]
pub struct Failures {
    attempts: Mutex<HashMap<ClientKey, Failure>>,
    /// Reconciles in a row that did not finish within their deadline.
    timeouts: Mutex<HashMap<ClientKey, u32>>,
}

impl Failures {
    /// Failures in a row with these inputs so far (0: none, or the last had other inputs).
    pub fn in_a_row(&self, key: &ClientKey, inputs: &str) -> u32 {
        let attempts = self.attempts.lock().expect("lock");
        attempts
            .get(key)
            .filter(|failure| failure.inputs == inputs)
            .map_or(0, |failure| failure.count)
    }

    /// Remember a failure with these inputs, the `count`th in a row (`in_a_row` + 1), and not
    /// to try again with them before `not_before`.
    pub fn record(&self, key: ClientKey, inputs: &str, count: u32, not_before: Timestamp) {
        self.attempts.lock().expect("lock").insert(
            key,
            Failure {
                count,
                inputs: inputs.to_string(),
                not_before,
            },
        );
    }

    /// When the last attempt with the same inputs failed: the time before which not to retry.
    pub fn not_before(&self, key: &ClientKey, inputs: &str) -> Option<Timestamp> {
        let attempts = self.attempts.lock().expect("lock");
        let failure = attempts.get(key)?;
        (failure.inputs == inputs).then_some(failure.not_before)
    }

    /// Whether the client's last attempt failed (a success now is a recovery).
    pub fn failed_last(&self, key: &ClientKey) -> bool {
        self.attempts.lock().expect("lock").contains_key(key)
    }

    /// A success: forget the client's failures.
    pub fn clear(&self, key: &ClientKey) {
        self.attempts.lock().expect("lock").remove(key);
    }

    /// A reconcile ran out of time: how many in a row now.
    pub fn timed_out(&self, key: &ClientKey) -> u32 {
        let mut timeouts = self.timeouts.lock().expect("lock");
        let count = timeouts.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    /// A reconcile finished in time.
    pub fn finished_in_time(&self, key: &ClientKey) {
        let mut timeouts = self.timeouts.lock().expect("lock");
        if !timeouts.is_empty() {
            timeouts.remove(key);
        }
    }
}

impl ClientMemory for Failures {
    fn forget(&self, key: &ClientKey) {
        self.clear(key);
        self.timeouts.lock().expect("lock").remove(key);
    }

    fn retain(&self, keep: &dyn Fn(&ClientKey) -> bool) {
        self.attempts
            .lock()
            .expect("lock")
            .retain(|key, _| keep(key));
        self.timeouts
            .lock()
            .expect("lock")
            .retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_clock::at;

    #[test]
    fn failures_count_per_inputs_and_hold_back_until_the_delay_passed() {
        let failures = Failures::default();
        let key = ClientKey::new("ns", "c");
        assert_eq!(failures.in_a_row(&key, "i1"), 0);
        failures.record(key.clone(), "i1", 1, at(10));
        failures.record(key.clone(), "i1", 2, at(25));
        assert_eq!(failures.in_a_row(&key, "i1"), 2);
        assert_eq!(failures.not_before(&key, "i1"), Some(at(25)));
        assert_eq!(
            (
                failures.in_a_row(&key, "i2"),
                failures.not_before(&key, "i2")
            ),
            (0, None),
            "changed inputs: counted anew, not held back"
        );
        assert!(failures.failed_last(&key));
        failures.retain(&|_| false);
        assert!(!failures.failed_last(&key));
        failures.record(key.clone(), "i1", 1, at(10));
        failures.clear(&key);
        assert_eq!(failures.not_before(&key, "i1"), None);
    }

    #[test]
    fn timeouts_count_until_a_reconcile_finishes_in_time() {
        let failures = Failures::default();
        let (key, other) = (ClientKey::new("ns", "c"), ClientKey::new("ns", "d"));
        assert_eq!(failures.timed_out(&key), 1);
        assert_eq!(failures.timed_out(&key), 2);
        assert_eq!(failures.timed_out(&other), 1);
        failures.finished_in_time(&key);
        assert_eq!(failures.timed_out(&key), 1);
        failures.retain(&|k| *k == key);
        assert_eq!(failures.timed_out(&other), 1, "pruned");
        failures.forget(&key);
        assert_eq!(failures.timed_out(&key), 1, "forgotten");
    }
}
