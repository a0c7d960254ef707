//! Token requests off the reconcile workers.
//!
//! A reconcile that needs a token starts a request here and returns at once; when the answer
//! (or the failure) is in, the IdvClient is reconciled again and stores it. So a token
//! endpoint that hangs holds no reconcile worker, only its own slots: each token host may use
//! at most `per_host` of the `global` request slots, and a slot is taken for one request at
//! a time (bounded by the request timeout). Other hosts' clients keep getting tokens.
//!
//! A fetched token that could not be stored is kept (`keep`) and used by the next attempt
//! instead of asking the IdP again, while it is fresh enough.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use jiff::Timestamp;
use tokio::sync::Semaphore;

use crate::{
    error::Error,
    memory::{ClientKey, ClientMemory},
    oauth::TokenAnswer,
    policy::{Answer, FetchState},
};

/// A token the IdP issued, with the time the request was sent (its lifetime counts from then).
#[derive(Debug)]
pub struct Fetched {
    pub requested_at: Timestamp,
    pub answer: TokenAnswer,
    /// Fetched earlier and kept because it could not be stored then.
    pub kept: bool,
}

impl Fetched {
    /// What deciding needs of it (not the token).
    fn summary(&self) -> Answer {
        Answer {
            requested_at: self.requested_at,
            expires_in: self.answer.expires_in,
            kept: self.kept,
        }
    }
}

/// The outcome of a request, with what was held for it since it started: keep that until the
/// token is stored.
pub type Outcome = (Result<Fetched, Error>, Hold);

/// Held from a request's start until its token is stored (the status writer narrows while
/// token work is under way); dropped with the outcome when nobody takes it.
pub type Hold = Option<Box<dyn Send + Sync>>;

enum Job {
    Running,
    Done {
        inputs: String,
        result: Result<Fetched, Error>,
        hold: Hold,
    },
}

pub struct Fetcher {
    global: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    jobs: Mutex<HashMap<ClientKey, Job>>,
    /// Per watched scope (a namespace, or all: `None`), where finished requests are announced.
    wakers: Mutex<Vec<(Option<String>, UnboundedSender<ClientKey>)>>,
}

/// Slots one token host may hold: all but one of the global slots, so that one hanging host
/// always leaves room for the others (and at least one).
pub fn per_host_slots(global: usize) -> usize {
    global.saturating_sub(1).max(1)
}

impl Fetcher {
    pub fn new(global: usize, per_host: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_host: per_host.max(1),
            hosts: Mutex::default(),
            jobs: Mutex::default(),
            wakers: Mutex::default(),
        }
    }

    /// A stream of IdvClients whose request ended, for the controller of this scope.
    pub fn subscribe(&self, scope: Option<String>) -> UnboundedReceiver<ClientKey> {
        let (tx, rx) = unbounded();
        self.wakers.lock().expect("lock").push((scope, tx));
        rx
    }

    /// Where the request for these inputs stands (an outcome for other inputs counts as none:
    /// the spec or key changed meanwhile).
    pub fn state(&self, key: &ClientKey, inputs: &str) -> FetchState {
        match self.jobs.lock().expect("lock").get(key) {
            None => FetchState::Idle,
            Some(Job::Running) => FetchState::Running,
            Some(Job::Done { inputs: done, .. }) if done != inputs => FetchState::Idle,
            Some(Job::Done {
                result: Ok(fetched),
                ..
            }) => FetchState::Answered(fetched.summary()),
            Some(Job::Done { result: Err(_), .. }) => FetchState::Failed,
        }
    }

    /// Take the outcome of the request for these inputs (a second take gives `None`).
    pub fn take(&self, key: &ClientKey, inputs: &str) -> Option<Outcome> {
        let mut jobs = self.jobs.lock().expect("lock");
        match jobs.get(key) {
            Some(Job::Done { inputs: done, .. }) if done == inputs => match jobs.remove(key) {
                Some(Job::Done { result, hold, .. }) => Some((result, hold)),
                _ => unreachable!("checked above"),
            },
            _ => None,
        }
    }

    /// Keep a fetched token that could not be stored, for the next attempt.
    pub fn keep(&self, key: ClientKey, inputs: String, fetched: Fetched) {
        let fetched = Fetched {
            kept: true,
            ..fetched
        };
        self.jobs.lock().expect("lock").insert(
            key,
            Job::Done {
                inputs,
                result: Ok(fetched),
                hold: None,
            },
        );
    }

    /// Drop an outcome nobody will take (the client's token is good as it is, or the outcome
    /// was for other inputs or is too old to store).
    pub fn discard_outcome(&self, key: &ClientKey) {
        let mut jobs = self.jobs.lock().expect("lock");
        if matches!(jobs.get(key), Some(Job::Done { .. })) {
            jobs.remove(key);
        }
    }

    /// Start `request` for `key` in the background, under `host`'s and the global slots.
    pub fn start<F>(
        self: &Arc<Self>,
        key: ClientKey,
        inputs: String,
        host: &str,
        hold: Hold,
        request: F,
    ) where
        F: Future<Output = Result<Fetched, Error>> + Send + 'static,
    {
        self.jobs
            .lock()
            .expect("lock")
            .insert(key.clone(), Job::Running);
        let host_slots = self
            .hosts
            .lock()
            .expect("lock")
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone();
        let this = self.clone();
        tokio::spawn(async move {
            // The host's slot first: requests queued for a hanging host wait there, not in
            // the global queue ahead of everyone else.
            let result = async {
                let _host = host_slots.acquire_owned().await.expect("never closed");
                let _slot = this
                    .global
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                request.await
            }
            .await;
            let finished = {
                let mut jobs = this.jobs.lock().expect("lock");
                // Forgotten meanwhile (the IdvClient was deleted): drop the outcome.
                let wanted = matches!(jobs.get(&key), Some(Job::Running));
                if wanted {
                    jobs.insert(
                        key.clone(),
                        Job::Done {
                            inputs,
                            result,
                            hold,
                        },
                    );
                }
                wanted
            };
            if finished {
                this.wake(key);
            }
        });
    }

    fn wake(&self, key: ClientKey) {
        let wakers = self.wakers.lock().expect("lock");
        if let Some((_, tx)) = wakers
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == key.namespace()))
        {
            let _ = tx.unbounded_send(key);
        }
    }
}

impl ClientMemory for Fetcher {
    /// A deleted IdvClient: forget its request (a running one finishes unheard).
    fn forget(&self, key: &ClientKey) {
        self.jobs.lock().expect("lock").remove(key);
    }

    fn retain(&self, keep: &dyn Fn(&ClientKey) -> bool) {
        self.jobs.lock().expect("lock").retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::AccessToken;
    use futures::StreamExt;
    use std::time::Duration;

    fn key(name: &str) -> ClientKey {
        ClientKey::new("ns", name)
    }

    fn fetched(at: i64, lifetime: u64) -> Fetched {
        Fetched {
            requested_at: Timestamp::from_second(1_800_000_000 + at).unwrap(),
            answer: TokenAnswer {
                access_token: AccessToken::new("t".into()),
                token_type: "Bearer".into(),
                expires_in: lifetime,
                scope: None,
            },
            kept: false,
        }
    }

    #[test]
    fn slots_per_host_leave_room_for_other_hosts() {
        assert_eq!(per_host_slots(8), 7);
        assert_eq!(per_host_slots(2), 1);
        assert_eq!(per_host_slots(1), 1);
        assert_eq!(per_host_slots(0), 1);
    }

    #[tokio::test]
    async fn an_outcome_is_kept_for_its_inputs_and_taken_once() {
        let fetcher = Arc::new(Fetcher::new(2, 1));
        let mut woken = fetcher.subscribe(Some("ns".into()));
        assert_eq!(fetcher.state(&key("a"), "i1"), FetchState::Idle);
        fetcher.start(key("a"), "i1".into(), "https://idp", None, async {
            Ok(fetched(0, 60))
        });
        assert_eq!(fetcher.state(&key("a"), "i1"), FetchState::Running);
        assert!(fetcher.take(&key("a"), "i1").is_none(), "still running");
        let next = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(next.unwrap(), Some(key("a")));
        let answered = FetchState::Answered(fetched(0, 60).summary());
        assert_eq!(fetcher.state(&key("a"), "i1"), answered);
        assert_eq!(
            fetcher.state(&key("a"), "i2"),
            FetchState::Idle,
            "other inputs"
        );
        assert!(fetcher.take(&key("a"), "i2").is_none());
        fetcher.keep(key("a"), "i1".into(), fetched(0, 60));
        assert!(matches!(fetcher.take(&key("a"), "i1"), Some((Ok(f), _)) if f.kept));
        assert!(fetcher.take(&key("a"), "i1").is_none(), "taken");
        assert_eq!(fetcher.state(&key("a"), "i1"), FetchState::Idle);
        fetcher.start(key("b"), "i1".into(), "https://idp", None, async {
            Err(Error::InvalidSpec("no".into()))
        });
        let next = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(next.unwrap(), Some(key("b")));
        assert_eq!(fetcher.state(&key("b"), "i1"), FetchState::Failed);
        fetcher.discard_outcome(&key("b"));
        assert_eq!(fetcher.state(&key("b"), "i1"), FetchState::Idle);
    }

    #[tokio::test]
    async fn a_hanging_host_does_not_hold_the_other_hosts_back() {
        let fetcher = Arc::new(Fetcher::new(2, per_host_slots(2)));
        let mut woken = fetcher.subscribe(None);
        for name in ["h1", "h2", "h3"] {
            fetcher.start(key(name), "i".into(), "https://hanging", None, async {
                futures::future::pending::<()>().await;
                unreachable!()
            });
        }
        fetcher.start(key("ok"), "i".into(), "https://fine", None, async {
            Ok(fetched(0, 60))
        });
        let next = tokio::time::timeout(Duration::from_secs(5), woken.next()).await;
        assert_eq!(
            next.expect("the other host's request ends"),
            Some(key("ok"))
        );
        assert_eq!(fetcher.state(&key("h1"), "i"), FetchState::Running);
    }

    #[tokio::test]
    async fn a_forgotten_client_hears_nothing() {
        let fetcher = Arc::new(Fetcher::new(1, 1));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        fetcher.start(key("gone"), "i".into(), "https://idp", None, async move {
            let _ = wait.await;
            Ok(fetched(0, 60))
        });
        fetcher.forget(&key("gone"));
        release.send(()).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(fetcher.state(&key("gone"), "i"), FetchState::Idle);
    }
}
