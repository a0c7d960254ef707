//! Status and Events, written behind the token work.
//!
//! A token Secret is what workloads wait for; an IdvClient's status and Events report on it.
//! When many tokens are due at once (a first start, an IdP back after an outage), every status
//! and Event written in between slows the next token down: on a busy apiserver a status write
//! costs about twice a Secret write. So reconciles hand their status and Events to this queue
//! and move on. One background task writes them: one at a time while any token is being
//! fetched or stored, up to `parallel` at a time otherwise. A status queued for an IdvClient
//! replaces an older one that is still waiting, so a busy client costs one write. A progress
//! status (a token on its way, a retry) of a client that has reported before waits
//! `PROGRESS_HOLD` first: most tokens and failures come sooner, and their status then replaces
//! it, one write instead of two. Statuses go before Events: a client is Ready when its status
//! says so, and its Event can wait.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use tokio::sync::Notify;
use tracing::warn;

use crate::{
    api::{self, IdvClient, IdvClientStatus},
    events::{EventPublisher, EventType},
    memory::{ClientKey, ClientMemory},
};

/// Thousands of jobs can wait during a burst: kept small (24 bytes).
enum Job {
    /// Write the status pending for this IdvClient, if it still is.
    Status(ClientKey),
    Event(Box<EventJob>),
}

struct EventJob {
    name: String,
    namespace: String,
    uid: String,
    type_: EventType,
    reason: &'static str,
    note: String,
}

/// A status as queued: the IdvClient's uid (the write is conditional on it: a client deleted
/// and created again under the same name never gets its predecessor's status) and the
/// status's JSON, one allocation instead of a dozen.
struct Pending {
    uid: Box<str>,
    json: Box<str>,
    /// A progress status not yet in `jobs`: it joins them at this instant.
    held_until: Option<Instant>,
}

/// How long a progress status waits for the status that would replace it.
pub const PROGRESS_HOLD: Duration = Duration::from_secs(1);

/// At most this many Events wait (~0.5 KB each); more are dropped, with a log line.
const MAX_QUEUED_EVENTS: usize = 20_000;

/// A status as queued: its JSON.
fn to_json(status: &IdvClientStatus) -> Box<str> {
    serde_json::to_string(status)
        .expect("a status serializes")
        .into()
}

#[derive(Default)]
struct State {
    /// Status jobs, oldest first.
    jobs: VecDeque<Job>,
    /// Statuses to write, by IdvClient.
    pending: HashMap<ClientKey, Pending>,
    /// Progress statuses held back, by the instant they join `jobs` (in order, as the hold is
    /// fixed). An entry whose pending status is no longer held with that instant is stale.
    held: VecDeque<(Instant, ClientKey)>,
    /// Event jobs, written when no status waits (a client is Ready by its status, not by its
    /// Event); capped, so that a failure storm cannot fill memory.
    events: VecDeque<Job>,
    /// Statuses written that the IdvClient watch has not shown yet, as `fingerprint`s: a
    /// reconcile in between compares with these, not with the cached (older) status. Trusted
    /// for a minute at most, in case the watch shows someone else's write instead.
    /// The JSON is kept too: a reconcile in between decides on what was written (the uid of a
    /// token Secret just created, say), not on the older cached status.
    written: HashMap<ClientKey, (u64, Box<str>, Instant)>,
}

const TRUST_WRITTEN: Duration = Duration::from_secs(60);

/// A status without its conditions' transition times: a reconcile that decides on a stale
/// cached status computes a new `lastTransitionTime` for the same outcome.
fn fingerprint(status: &IdvClientStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut status = status.clone();
    for condition in &mut status.conditions {
        condition.last_transition_time.clear();
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&status)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

impl State {
    /// Move the held statuses due by `now` (all of them if `None`) to `jobs`.
    fn release_held(&mut self, now: Option<Instant>) {
        while let Some((due, _)) = self.held.front()
            && now.is_none_or(|now| *due <= now)
        {
            let (due, key) = self.held.pop_front().expect("a front");
            if let Some(pending) = self.pending.get_mut(&key)
                && pending.held_until == Some(due)
            {
                pending.held_until = None;
                self.jobs.push_back(Job::Status(key));
            }
        }
    }

    /// When the first held status is due.
    fn next_release(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    /// Whether `status` (`json` its JSON) is already queued or written (or, failing both,
    /// cached).
    fn is_latest(
        &self,
        key: &ClientKey,
        cached: Option<&IdvClientStatus>,
        status: &IdvClientStatus,
        json: &str,
    ) -> bool {
        if let Some(pending) = self.pending.get(key) {
            return *pending.json == *json;
        }
        if let Some((written, _, at)) = self.written.get(key)
            && at.elapsed() < TRUST_WRITTEN
        {
            return *written == fingerprint(status);
        }
        cached == Some(status)
    }
}

pub struct Writeback {
    kube: kube::Client,
    events: EventPublisher,
    parallel: usize,
    state: Mutex<State>,
    wake: Notify,
    /// Reconciles fetching or storing a token right now.
    token_work: AtomicUsize,
    stopping: AtomicBool,
}

/// Held while a token is requested.
pub struct TokenWork(Arc<Writeback>);

impl Drop for TokenWork {
    fn drop(&mut self) {
        self.0.token_work.fetch_sub(1, Ordering::SeqCst);
        // Maybe the writer may widen now.
        self.0.wake.notify_one();
    }
}

impl Writeback {
    pub fn new(kube: kube::Client, events: EventPublisher, parallel: usize) -> Self {
        Self {
            kube,
            events,
            parallel: parallel.max(1),
            state: Mutex::default(),
            wake: Notify::new(),
            token_work: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn token_work(self: &Arc<Self>) -> TokenWork {
        self.token_work.fetch_add(1, Ordering::SeqCst);
        TokenWork(self.clone())
    }

    /// The newest status this process knows for the IdvClient: queued, written but not yet
    /// seen by the watch, or the cached one.
    pub fn latest_status(&self, client: &IdvClient) -> Option<IdvClientStatus> {
        let state = self.state.lock().expect("lock");
        let key = ClientKey::of(client);
        if let Some(pending) = state.pending.get(&key) {
            return serde_json::from_str(&pending.json).ok();
        }
        match state.written.get(&key) {
            Some((_, json, at)) if at.elapsed() < TRUST_WRITTEN => serde_json::from_str(json).ok(),
            _ => client.status.clone(),
        }
    }

    /// The IdvClient with the newest status known (`latest_status`).
    pub fn with_latest_status(&self, client: Arc<IdvClient>) -> Arc<IdvClient> {
        let latest = self.latest_status(&client);
        if latest == client.status {
            return client;
        }
        let mut newer = (*client).clone();
        newer.status = latest;
        Arc::new(newer)
    }

    /// Queue `status` unless it is already the latest.
    pub fn set_status(&self, client: &IdvClient, status: IdvClientStatus) {
        self.queue_status(client, status, None);
    }

    /// Queue a progress status (`now` is the time of the call): written after
    /// `PROGRESS_HOLD` unless a status queued meanwhile replaces it. Not held for an IdvClient
    /// that has reported no generation yet: kstatus (Flux) reads an object without
    /// `observedGeneration` as Current, so its first status goes at once.
    pub fn set_progress_status(&self, client: &IdvClient, status: IdvClientStatus, now: Instant) {
        self.queue_status(client, status, Some(now + PROGRESS_HOLD));
    }

    fn queue_status(&self, client: &IdvClient, status: IdvClientStatus, hold: Option<Instant>) {
        let key = ClientKey::of(client);
        let json = to_json(&status);
        let mut state = self.state.lock().expect("lock");
        if state.is_latest(&key, client.status.as_ref(), &status, &json) {
            return;
        }
        let reported = state.written.contains_key(&key)
            || client
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation.is_some());
        let hold = hold.filter(|_| reported);
        let uid = client.metadata.uid.as_deref().unwrap_or_default().into();
        let state = &mut *state;
        match state.pending.get_mut(&key) {
            // Already queued: replaced where it waits; a status not held ends a hold.
            Some(pending) => {
                pending.uid = uid;
                pending.json = json;
                if pending.held_until.is_some() && hold.is_none() {
                    pending.held_until = None;
                    state.jobs.push_back(Job::Status(key));
                }
            }
            None => {
                let pending = Pending {
                    uid,
                    json,
                    held_until: hold,
                };
                state.pending.insert(key.clone(), pending);
                match hold {
                    Some(due) => state.held.push_back((due, key)),
                    None => state.jobs.push_back(Job::Status(key)),
                }
            }
        }
        self.wake.notify_one();
    }

    pub fn event(&self, client: &IdvClient, type_: EventType, reason: &'static str, note: String) {
        let meta = client.meta();
        let event = EventJob {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            type_,
            reason,
            note,
        };
        let mut state = self.state.lock().expect("lock");
        if state.events.len() >= MAX_QUEUED_EVENTS {
            tracing::debug!(reason, "event queue full, event dropped");
            return;
        }
        state.events.push_back(Job::Event(Box::new(event)));
        drop(state);
        self.wake.notify_one();
    }

    /// The IdvClient watch delivered this object: what was written is now in the cache.
    pub fn observed(&self, client: &IdvClient) {
        let key = ClientKey::of(client);
        let mut state = self.state.lock().expect("lock");
        if state.written.get(&key).is_some_and(|(written, _, at)| {
            client.status.as_ref().map(fingerprint) == Some(*written)
                || at.elapsed() >= TRUST_WRITTEN
        }) {
            state.written.remove(&key);
        }
    }

    /// Writes queued by reconciles, held ones included.
    pub fn queued(&self) -> usize {
        let state = self.state.lock().expect("lock");
        state.jobs.len() + state.held.len() + state.events.len()
    }

    /// Write what is queued, until `stop`; a batch begun is finished.
    pub async fn run(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            let batch = self.take(self.width(), Some(Instant::now()));
            if batch.is_empty() {
                let next = self.state.lock().expect("lock").next_release();
                match next {
                    Some(due) => {
                        let due = tokio::time::Instant::from_std(due);
                        let _ = tokio::time::timeout_at(due, self.wake.notified()).await;
                    }
                    None => self.wake.notified().await,
                }
                continue;
            }
            let failed = futures::future::join_all(batch.into_iter().map(|job| self.write(job)))
                .await
                .into_iter()
                .any(|ok| !ok);
            if failed {
                // The apiserver is in trouble: do not hammer it.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Ask `run` to return after its current batch.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Write what is queued now, for at most `limit` (on shutdown).
    pub async fn flush(&self, limit: Duration) {
        let drain = async {
            loop {
                let batch = self.take(self.parallel, None);
                if batch.is_empty() {
                    return;
                }
                futures::future::join_all(batch.into_iter().map(|job| self.write(job))).await;
            }
        };
        if tokio::time::timeout(limit, drain).await.is_err() {
            warn!(
                queued = self.queued(),
                "shutting down with status writes still queued; the next start writes them"
            );
        }
    }

    fn width(&self) -> usize {
        if self.token_work.load(Ordering::SeqCst) > 0 {
            1
        } else {
            self.parallel
        }
    }

    /// Up to `n` jobs, statuses first, after releasing the held statuses due by `now` (all if
    /// `None`).
    fn take(&self, n: usize, now: Option<Instant>) -> Vec<Job> {
        let mut state = self.state.lock().expect("lock");
        state.release_held(now);
        let statuses = n.min(state.jobs.len());
        let mut batch: Vec<Job> = state.jobs.drain(..statuses).collect();
        let events = (n - statuses).min(state.events.len());
        batch.extend(state.events.drain(..events));
        batch
    }

    /// One write; false when the apiserver failed it.
    async fn write(&self, job: Job) -> bool {
        match job {
            Job::Event(event) => {
                let EventJob {
                    name,
                    namespace,
                    uid,
                    type_,
                    reason,
                    note,
                } = *event;
                let regarding = ObjectReference {
                    api_version: Some(IdvClient::api_version(&()).into()),
                    kind: Some(IdvClient::kind(&()).into()),
                    name: Some(name),
                    namespace: Some(namespace),
                    uid: Some(uid),
                    ..ObjectReference::default()
                };
                self.events.publish(regarding, type_, reason, note).await;
                true
            }
            Job::Status(key) => {
                // Moved from queued to written in one step: a reconcile while the write is under
                // way decides on this status, never on the older cached one.
                let status = {
                    let mut state = self.state.lock().expect("lock");
                    let Some(status) = state.pending.remove(&key) else {
                        return true;
                    };
                    let written = serde_json::from_str(&status.json).map(|s| fingerprint(&s));
                    state.written.insert(
                        key.clone(),
                        (
                            written.unwrap_or_default(),
                            status.json.clone(),
                            Instant::now(),
                        ),
                    );
                    status
                };
                let (namespace, name) = (key.namespace(), key.name());
                let not_written = || {
                    self.state.lock().expect("lock").written.remove(&key);
                };
                match self.patch_status(namespace, name, &status).await {
                    Ok(()) => true,
                    // Deleted meanwhile: nothing to report on.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        not_written();
                        true
                    }
                    // Refused (another object of that name: uid mismatch; forbidden; invalid):
                    // retrying would not help. The next reconcile computes a new status.
                    Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => {
                        not_written();
                        warn!(
                            namespace,
                            name,
                            code = e.code,
                            "status write refused: {}",
                            e.message
                        );
                        true
                    }
                    Err(error) => {
                        warn!(
                            namespace,
                            name,
                            "cannot write status, will retry: {}",
                            crate::error::kube_message(&error)
                        );
                        // Retry later, unless a newer status was queued meanwhile.
                        not_written();
                        let mut state = self.state.lock().expect("lock");
                        if !state.pending.contains_key(&key) {
                            let status = Pending {
                                held_until: None,
                                ..status
                            };
                            state.pending.insert(key.clone(), status);
                            state.jobs.push_back(Job::Status(key));
                        }
                        false
                    }
                }
            }
        }
    }

    async fn patch_status(
        &self,
        namespace: &str,
        name: &str,
        pending: &Pending,
    ) -> Result<(), kube::Error> {
        let api: Api<IdvClient> = Api::namespaced(self.kube.clone(), namespace);
        let status: serde_json::Value =
            serde_json::from_str(&pending.json).map_err(kube::Error::SerdeError)?;
        let body = serde_json::json!({
            "apiVersion": IdvClient::api_version(&()),
            "kind": IdvClient::kind(&()),
            // Only the object this status was computed for.
            "metadata": {"uid": &*pending.uid},
            "status": status,
        });
        api.patch_status(
            name,
            &PatchParams::apply(api::FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        Ok(())
    }
}

impl ClientMemory for Writeback {
    /// A deleted IdvClient: nothing more to write.
    fn forget(&self, key: &ClientKey) {
        let mut state = self.state.lock().expect("lock");
        state.pending.remove(key);
        state.written.remove(key);
    }

    fn retain(&self, keep: &dyn Fn(&ClientKey) -> bool) {
        let mut state = self.state.lock().expect("lock");
        state.pending.retain(|key, _| keep(key));
        state.written.retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> IdvClient {
        api::test_client("gipod")
    }

    fn status(reason: &str) -> IdvClientStatus {
        IdvClientStatus {
            secret_name: Some(reason.into()),
            ..IdvClientStatus::default()
        }
    }

    impl Writeback {
        /// Whether `job` writes `status` (a status job whose status is still pending).
        fn write_would_send(&self, job: &Job, status: &IdvClientStatus) -> bool {
            let Job::Status(key) = job else { return false };
            let state = self.state.lock().unwrap();
            state
                .pending
                .get(key)
                .is_some_and(|p| *p.json == *to_json(status))
        }
    }

    /// A status as written for generation 1.
    fn reported(reason: &str) -> IdvClientStatus {
        IdvClientStatus {
            observed_generation: Some(1),
            ..status(reason)
        }
    }

    async fn writeback() -> Writeback {
        // Never contacted: these tests only queue.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let kube = kube::Client::try_from(config).unwrap();
        let events = EventPublisher::new(kube.clone(), "test", "test");
        Writeback::new(kube, events, 4)
    }

    #[tokio::test]
    async fn a_newer_status_replaces_a_queued_one_and_an_unchanged_one_is_not_queued() {
        let w = writeback().await;
        let mut c = client();
        c.status = Some(status("a"));
        w.set_status(&c, status("a"));
        assert_eq!(w.queued(), 0, "the cached status is already that");
        w.set_status(&c, status("b"));
        w.set_status(&c, status("c"));
        assert_eq!(w.queued(), 1, "one write for the client, the newest status");
        assert_eq!(w.latest_status(&c), Some(status("c")));
        w.set_status(&c, status("c"));
        assert_eq!(w.queued(), 1);
        w.forget(&ClientKey::of(&c));
        assert_eq!(w.latest_status(&c), Some(status("a")), "back to the cache");
    }

    #[tokio::test]
    async fn a_progress_status_waits_its_hold_and_a_status_in_time_replaces_it() {
        let w = writeback().await;
        let (mut first, mut second) = (client(), api::test_client("awv"));
        first.status = Some(reported("failed"));
        second.status = Some(reported("failed"));
        let now = Instant::now();
        w.set_progress_status(&first, status("issuing"), now);
        w.set_progress_status(&second, status("issuing"), now);
        assert_eq!(w.queued(), 2, "held, but counted");
        assert!(w.take(4, Some(now)).is_empty(), "held for PROGRESS_HOLD");
        assert_eq!(w.latest_status(&first), Some(status("issuing")));
        // The token came in time: its status goes at once, in the progress status's place.
        w.set_status(&first, status("ready"));
        let batch = w.take(4, Some(now));
        assert_eq!(batch.len(), 1);
        assert!(w.write_would_send(&batch[0], &status("ready")));
        let later = now + PROGRESS_HOLD;
        let batch = w.take(4, Some(later));
        assert_eq!(
            batch.len(),
            1,
            "the hold ended for the other; the first is not sent twice"
        );
        assert!(w.write_would_send(&batch[0], &status("issuing")));
        assert!(w.take(4, None).is_empty());
        assert_eq!(w.queued(), 0);
    }

    #[tokio::test]
    async fn a_flush_writes_held_statuses_too() {
        let w = writeback().await;
        let mut c = client();
        c.status = Some(reported("failed"));
        w.set_progress_status(&c, status("issuing"), Instant::now());
        assert!(w.take(4, Some(Instant::now())).is_empty());
        assert_eq!(w.take(4, None).len(), 1);
    }

    #[tokio::test]
    async fn the_first_status_of_a_new_client_is_not_held() {
        let w = writeback().await;
        let now = Instant::now();
        let mut c = client();
        w.set_progress_status(&c, status("issuing"), now);
        assert_eq!(
            w.take(4, Some(now)).len(),
            1,
            "kstatus would read Current meanwhile"
        );
        w.forget(&ClientKey::of(&c));
        c.status = Some(status("no generation"));
        w.set_progress_status(&c, status("issuing again"), now);
        assert_eq!(w.take(4, Some(now)).len(), 1);
    }

    #[tokio::test]
    async fn a_written_status_counts_until_the_watch_shows_it() {
        let w = writeback().await;
        let c = client();
        let key = ClientKey::of(&c);
        w.state.lock().unwrap().written.insert(
            key,
            (
                fingerprint(&status("w")),
                to_json(&status("w")),
                Instant::now(),
            ),
        );
        w.set_status(&c, status("w"));
        assert_eq!(w.queued(), 0, "not written twice while the cache lags");
        assert_eq!(
            w.latest_status(&c),
            Some(status("w")),
            "decisions use what was written, not the older cache"
        );
        w.observed(&c);
        assert_eq!(w.state.lock().unwrap().written.len(), 1, "an older event");
        let mut seen = c.clone();
        seen.status = Some(status("w"));
        w.observed(&seen);
        assert!(w.state.lock().unwrap().written.is_empty());
    }

    #[tokio::test]
    async fn waiting_events_are_capped() {
        let w = writeback().await;
        let c = client();
        for _ in 0..MAX_QUEUED_EVENTS + 5 {
            w.event(&c, EventType::Warning, "IdpUnavailable", "down".into());
        }
        assert_eq!(w.queued(), MAX_QUEUED_EVENTS);
        assert_eq!(w.take(10, Some(Instant::now())).len(), 10);
        w.event(&c, EventType::Warning, "IdpUnavailable", "down".into());
        assert_eq!(w.queued(), MAX_QUEUED_EVENTS - 9, "room again once taken");
    }

    #[tokio::test]
    async fn only_one_write_at_a_time_while_tokens_are_fetched() {
        let w = writeback().await;
        assert_eq!(w.width(), 4);
        let w = Arc::new(w);
        let work = w.token_work();
        assert_eq!(w.width(), 1);
        drop(work);
        assert_eq!(w.width(), 4);
    }
}
