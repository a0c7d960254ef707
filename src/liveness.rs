//! Whether the reconcile loop makes progress: what `/healthz` reports. Pure: the caller
//! passes the time.
//!
//! Every reconcile runs under a deadline, so one that is still running long after it is a sign
//! that the deadline itself cannot fire (a blocked runtime thread, a controller task that is no
//! longer polled). The kubelet should then restart the process rather than let it hold its
//! workers (and its Lease) forever. A loop that has stopped is unhealthy too; one that has not
//! started yet (a standby waiting for the Lease) is not.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How far beyond its deadline a reconcile may run before the process counts as stuck.
pub const STALL_FACTOR: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not started: a standby waiting for the Lease, or still starting.
    #[default]
    NotStarted,
    Running {
        /// Every reconcile's deadline.
        deadline: Duration,
    },
    Stopped,
}

/// The decision: `Err(why)` when the process should be restarted.
pub fn verdict(phase: Phase, oldest_start: Option<Instant>, now: Instant) -> Result<(), String> {
    match phase {
        Phase::NotStarted => Ok(()),
        Phase::Stopped => Err("the reconcile loop has stopped".into()),
        Phase::Running { deadline } => {
            let stall = deadline.saturating_mul(STALL_FACTOR);
            match oldest_start.map(|started| now.saturating_duration_since(started)) {
                Some(running) if running > stall => Err(format!(
                    "a reconcile has been running for {} s, past its deadline of {} s",
                    running.as_secs(),
                    deadline.as_secs()
                )),
                _ => Ok(()),
            }
        }
    }
}

/// The loop's phase and the start times of the reconciles in flight (at most the controller's
/// concurrency: cheap to scan on each probe).
#[derive(Debug, Default)]
pub struct Progress {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    next_id: u64,
    in_flight: HashMap<u64, Instant>,
}

impl Progress {
    pub fn loop_started(&self, deadline: Duration) {
        self.state.lock().expect("lock").phase = Phase::Running { deadline };
    }

    pub fn loop_stopped(&self) {
        self.state.lock().expect("lock").phase = Phase::Stopped;
    }

    /// A reconcile begins at `now`; it counts as in flight until the guard is dropped
    /// (finished, failed or cancelled).
    pub fn begin(self: &Arc<Self>, now: Instant) -> InFlight {
        let mut state = self.state.lock().expect("lock");
        let id = state.next_id;
        state.next_id += 1;
        state.in_flight.insert(id, now);
        InFlight {
            progress: self.clone(),
            id,
        }
    }

    pub fn check(&self, now: Instant) -> Result<(), String> {
        let state = self.state.lock().expect("lock");
        verdict(state.phase, state.in_flight.values().min().copied(), now)
    }
}

/// One reconcile in flight.
#[derive(Debug)]
pub struct InFlight {
    progress: Arc<Progress>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut state) = self.progress.state.lock() {
            state.in_flight.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let running = Phase::Running {
            deadline: Duration::from_secs(30),
        };
        assert!(verdict(Phase::NotStarted, None, at(1000)).is_ok());
        assert!(verdict(running, None, at(1000)).is_ok(), "idle is healthy");
        assert!(verdict(running, Some(t0), at(30)).is_ok());
        assert!(
            verdict(running, Some(t0), at(60)).is_ok(),
            "up to twice the deadline"
        );
        let stuck = verdict(running, Some(t0), at(61)).unwrap_err();
        assert!(stuck.contains("61 s") && stuck.contains("30 s"), "{stuck}");
        assert!(verdict(Phase::Stopped, None, at(0)).is_err());
        // A start time after `now` (clock read in another order) is not a stall.
        assert!(verdict(running, Some(at(5)), at(0)).is_ok());
    }

    #[test]
    fn progress_tracks_the_oldest_reconcile_in_flight() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let progress = Arc::new(Progress::default());
        let first = progress.begin(at(0));
        assert!(
            progress.check(at(100)).is_ok(),
            "not started: no verdict on reconciles"
        );
        progress.loop_started(Duration::from_secs(10));
        let second = progress.begin(at(15));
        assert!(progress.check(at(20)).is_ok());
        assert!(progress.check(at(21)).is_err(), "the first is 21 s old");
        drop(first);
        assert!(progress.check(at(21)).is_ok(), "the oldest left is 6 s old");
        assert!(progress.check(at(36)).is_err());
        drop(second);
        assert!(progress.check(at(10_000)).is_ok());
        progress.loop_stopped();
        assert!(progress.check(at(10_000)).is_err());
    }
}
