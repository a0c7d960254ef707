//! The bench's own watches, started before a clock starts: when each Secret first appeared
//! (metadata only, by label) and when each object (IdvClient or ExternalSecret) first showed
//! `Ready=True`. One LIST and one WATCH each, instead of polling lists.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject},
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::Value;

use crate::Task;

/// When each watched name was first seen (Secrets) or first Ready, and which are Ready now.
#[derive(Default)]
pub struct Seen {
    first: Mutex<HashMap<String, Instant>>,
    now: Mutex<std::collections::HashSet<String>>,
    synced: AtomicBool,
}

impl Seen {
    /// How many are present (Secrets) or Ready (objects) now.
    pub fn count(&self) -> usize {
        self.now.lock().unwrap().len()
    }

    pub fn first(&self, name: &str) -> Option<Instant> {
        self.first.lock().unwrap().get(name).copied()
    }

    /// The first-seen times, sorted.
    pub fn times(&self) -> Vec<Instant> {
        let mut times: Vec<Instant> = self.first.lock().unwrap().values().copied().collect();
        times.sort();
        times
    }

    fn set(&self, name: String, present: bool) {
        if present {
            self.first
                .lock()
                .unwrap()
                .entry(name.clone())
                .or_insert_with(Instant::now);
            self.now.lock().unwrap().insert(name);
        } else {
            self.now.lock().unwrap().remove(&name);
        }
    }

    /// Wait (bounded) for the watch's initial list.
    pub async fn synced(&self, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.synced.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                return Err(format!(
                    "the bench's watch of {what} did not sync within 120 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Secrets in `ns` with this label selector.
pub fn secrets(admin: &Client, ns: &str, selector: &str) -> (Arc<Seen>, Task) {
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(admin.clone(), ns);
    let config = watcher::Config::default().labels(selector);
    follow(watcher(api, config), |_: &PartialObjectMeta<Secret>| true)
}

/// Objects of this kind in `ns`, Ready when their `Ready` condition is True.
pub fn readiness(admin: &Client, ns: &str, kind: &ApiResource) -> (Arc<Seen>, Task) {
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, kind);
    follow(watcher(api, watcher::Config::default()), is_ready)
}

fn is_ready(object: &DynamicObject) -> bool {
    let conditions = object
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array);
    conditions
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn follow<K, S>(stream: S, present: fn(&K) -> bool) -> (Arc<Seen>, Task)
where
    K: kube::Resource + Send + 'static,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = stream.default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    state.set(o.name_any(), present(&o));
                }
                Ok(watcher::Event::Delete(o)) => state.set(o.name_any(), false),
                Ok(watcher::Event::InitDone) => state.synced.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    });
    (seen, Task(task))
}

/// The two watches a clock stops on: every object Ready and every Secret there.
pub struct Settling {
    pub secrets: Arc<Seen>,
    pub ready: Arc<Seen>,
    _tasks: (Task, Task),
}

impl Settling {
    pub async fn start(
        admin: &Client,
        ns: &str,
        secret_selector: &str,
        kind: &ApiResource,
    ) -> Result<Settling, String> {
        let (secrets, a) = secrets(admin, ns, secret_selector);
        let (ready, b) = readiness(admin, ns, kind);
        secrets.synced("Secrets").await?;
        ready.synced(&kind.plural).await?;
        Ok(Settling {
            secrets,
            ready,
            _tasks: (a, b),
        })
    }

    /// Wait until `n` objects are Ready and `n` Secrets exist; `check` is asked every 100 ms
    /// whether to give up (a process died, a deadline passed: it says why).
    pub async fn until_all(
        &self,
        n: usize,
        mut check: impl FnMut(&Self) -> Option<String>,
    ) -> Result<(), String> {
        let mut last_report = Instant::now();
        loop {
            if self.ready.count() >= n && self.secrets.count() >= n {
                return Ok(());
            }
            if let Some(why) = check(self) {
                return Err(format!(
                    "{why} ({} of {n} Ready, {} Secrets)",
                    self.ready.count(),
                    self.secrets.count()
                ));
            }
            if last_report.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "bench:   ... {} of {n} Ready, {} Secrets",
                    self.ready.count(),
                    self.secrets.count()
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every 0.5 s from `started` until the last of them: how many objects were applied (by
    /// `applied`, their create times), how many Secrets had appeared and how many objects
    /// had been Ready: where a run spends its time.
    pub fn timeline(&self, started: Instant, applied: &[Instant]) -> Vec<[f64; 4]> {
        let (secrets, ready) = (self.secrets.times(), self.ready.times());
        let end = [secrets.last(), ready.last(), applied.iter().max()]
            .into_iter()
            .flatten()
            .max()
            .map_or(0.0, |at| {
                at.saturating_duration_since(started).as_secs_f64()
            });
        let until = |times: &[Instant], t: f64| {
            times
                .iter()
                .filter(|at| at.saturating_duration_since(started).as_secs_f64() <= t)
                .count() as f64
        };
        (1..=((end / 0.5).ceil() as usize))
            .map(|step| {
                let t = step as f64 * 0.5;
                [t, until(applied, t), until(&secrets, t), until(&ready, t)]
            })
            .collect()
    }

    /// When the last of the first `n` became Ready and when the last Secret appeared.
    pub fn finished(&self) -> (Option<Instant>, Option<Instant>) {
        (
            self.ready.times().last().copied(),
            self.secrets.times().last().copied(),
        )
    }
}
