//! Leader election on a coordination.k8s.io Lease, so that of several replicas one works and
//! the others stand by. kube-runtime has none; this follows client-go's rules in small.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is good for without renewal: the standby's takeover time.
    pub lease_duration: Duration,
    /// How often to renew, and to retry acquiring.
    pub retry_period: Duration,
}

/// Whether `identity` may take the lease now: it is free, ours, or expired.
pub fn may_acquire(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration =
        SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1)));
    match &spec.renew_time {
        Some(MicroTime(renewed)) => *renewed + duration <= now,
        None => true,
    }
}

fn claimed(previous: Option<&LeaseSpec>, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let same_holder =
        previous.and_then(|p| p.holder_identity.as_deref()) == Some(settings.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(settings.lease_duration.as_secs().max(1) as i32),
        acquire_time: if same_holder {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if same_holder || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt to take or renew the lease. Ok(true): we hold it now.
async fn try_claim(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&settings.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claimed(None, settings, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            if !may_acquire(&spec, &settings.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(claimed(Some(&spec), settings, now));
            // replace carries the resourceVersion: a concurrent claim makes one of us lose.
            match api
                .replace(&settings.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Held leadership: renewed in the background until released or lost.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    settings: LeaseSettings,
}

/// Wait until this replica holds the lease.
pub async fn acquire(client: kube::Client, settings: LeaseSettings) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    info!(
        lease = settings.name,
        namespace = settings.namespace,
        identity = settings.identity,
        "waiting for leadership"
    );
    loop {
        match try_claim(&api, &settings).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!("leader election: {e}"),
        }
        tokio::time::sleep(settings.retry_period).await;
    }
    info!(identity = settings.identity, "leadership acquired");
    let (tx, lost) = watch::channel(false);
    let renewer = tokio::spawn(renew(api.clone(), settings.clone(), tx));
    Leadership {
        lost,
        renewer,
        api,
        settings,
    }
}

/// Renew every retry period; give up when renewal has failed for most of a lease duration,
/// before another replica may take over.
async fn renew(api: Api<Lease>, settings: LeaseSettings, lost: watch::Sender<bool>) {
    let deadline = settings.lease_duration.mul_f64(2.0 / 3.0);
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(settings.retry_period).await;
        match try_claim(&api, &settings).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => {
                warn!("leadership lost: another replica holds the lease");
                let _ = lost.send(true);
                return;
            }
            Err(e) => warn!("leader election: renewal failed: {e}"),
        }
        if last_renewal.elapsed() > deadline {
            warn!("leadership lost: could not renew the lease in time");
            let _ = lost.send(true);
            return;
        }
    }
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|l| *l).await;
        }
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Give the lease up so a standby takes over at once.
    pub async fn release(self) {
        self.renewer.abort();
        if self.is_lost() {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.settings.identity.as_str())
        {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            match self
                .api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => info!("leadership released"),
                Err(e) => warn!("could not release the lease: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held_by(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn who_may_take_the_lease() {
        assert!(may_acquire(&held_by(None, 0), "a", at(1)));
        assert!(may_acquire(&held_by(Some(""), 0), "a", at(1)));
        assert!(may_acquire(&held_by(Some("a"), 0), "a", at(1)));
        assert!(!may_acquire(&held_by(Some("b"), 0), "a", at(14)));
        assert!(may_acquire(&held_by(Some("b"), 0), "a", at(15)));
    }

    #[test]
    fn claims_count_transitions() {
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        };
        let first = claimed(None, &settings, at(0));
        assert_eq!(
            (first.lease_transitions, first.acquire_time.clone()),
            (Some(0), Some(MicroTime(at(0))))
        );
        let renewed = claimed(Some(&first), &settings, at(5));
        assert_eq!(
            (renewed.lease_transitions, renewed.acquire_time),
            (Some(0), Some(MicroTime(at(0))))
        );
        let taken = claimed(Some(&held_by(Some("b"), 0)), &settings, at(20));
        assert_eq!(taken.lease_transitions, Some(1));
    }
}
