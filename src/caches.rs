//! What the watches keep for the reconciles: the operator's token Secrets, the
//! resourceVersions of the Secrets labelled as credentials, and the operator's own writes not
//! yet seen. Other Secrets are never watched.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;

use crate::resources::{self, TokenSecretRecord};

/// One watched namespace (`namespace: None`: all namespaces).
pub struct ScopeCaches {
    pub namespace: Option<String>,
    /// The token Secrets the operator manages (label-filtered), as records.
    pub token_secrets: Arc<TokenSecrets>,
    /// The Secrets labelled as credentials.
    pub credentials: Arc<CredentialSecrets>,
}

pub struct Caches {
    pub scopes: Vec<ScopeCaches>,
    /// Token Secret writes whose watch events are still to come.
    pub own_writes: Arc<OwnWrites>,
}

impl Caches {
    fn scope(&self, namespace: &str) -> Option<&ScopeCaches> {
        self.scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
    }

    pub fn token_secret(&self, namespace: &str, name: &str) -> Option<TokenSecretRecord> {
        self.scope(namespace)?.token_secrets.get(namespace, name)
    }

    /// A labelled credential Secret as its watch last saw it.
    pub fn credential(&self, namespace: &str, name: &str) -> Option<CachedCredential> {
        self.scope(namespace)?.credentials.get(namespace, name)
    }

    /// Its resourceVersion only.
    pub fn credential_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.scope(namespace)?.credentials.version(namespace, name)
    }

    /// Whether the watch of the operator's token Secrets has listed them.
    pub fn token_secrets_listed(&self, namespace: &str) -> bool {
        self.scope(namespace)
            .is_some_and(|scope| scope.token_secrets.listed())
    }
}

/// A Secret's namespace and name, hashed. Used where an entry is only a hint: a collision
/// costs one extra API read or reconcile, never a wrong answer.
fn name_key(namespace: &str, name: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut hasher);
    hasher.finish()
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    name_key(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// A map that follows a watch, as kube's reflector store does: a (re)list is swapped in
/// whole when complete, so readers never see half a list.
struct Mirror<K, V> {
    current: HashMap<K, V>,
    relisting: Option<HashMap<K, V>>,
    listed: bool,
}

impl<K: Hash + Eq, V> Default for Mirror<K, V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relisting: None,
            listed: false,
        }
    }
}

impl<K: Hash + Eq, V> Mirror<K, V> {
    fn apply<T>(
        &mut self,
        event: &watcher::Event<T>,
        key: impl Fn(&T) -> K,
        value: impl Fn(&T) -> V,
    ) {
        match event {
            watcher::Event::Init => self.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(object) => {
                if let Some(next) = self.relisting.as_mut() {
                    next.insert(key(object), value(object));
                }
            }
            watcher::Event::InitDone => {
                if let Some(next) = self.relisting.take() {
                    self.current = next;
                }
                self.listed = true;
            }
            watcher::Event::Apply(object) => {
                self.current.insert(key(object), value(object));
            }
            watcher::Event::Delete(object) => {
                self.current.remove(&key(object));
            }
        }
    }
}

/// The Secrets labelled as credentials, as their watch last saw them: version, uid and data
/// (nothing else: annotations can hold a copy of the whole Secret). Only labelled Secrets are
/// here, so that a key is read from the watch, not asked for again, also after a restart.
/// Keyed by exact namespace and name: this serves data.
#[derive(Default)]
pub struct CredentialSecrets(Mutex<Mirror<String, CachedCredential>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedCredential {
    pub version: String,
    pub uid: String,
    pub data: std::collections::BTreeMap<String, k8s_openapi::ByteString>,
}

impl CredentialSecrets {
    pub fn apply(&self, event: &watcher::Event<Secret>) {
        self.0.lock().expect("lock").apply(
            event,
            |s| {
                path(
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                )
            },
            |s| CachedCredential {
                version: s.metadata.resource_version.clone().unwrap_or_default(),
                uid: s.metadata.uid.clone().unwrap_or_default(),
                data: s.data.clone().unwrap_or_default(),
            },
        );
    }

    pub fn version(&self, namespace: &str, name: &str) -> Option<String> {
        let mirror = self.0.lock().expect("lock");
        mirror
            .current
            .get(&path(namespace, name))
            .map(|c| c.version.clone())
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<CachedCredential> {
        let mirror = self.0.lock().expect("lock");
        mirror.current.get(&path(namespace, name)).cloned()
    }

    #[cfg(test)]
    fn listed(&self) -> bool {
        self.0.lock().expect("lock").listed
    }
}

/// The operator's token Secrets, as records (`TokenSecretRecord`), by "namespace/name".
#[derive(Default)]
pub struct TokenSecrets(Mutex<Mirror<String, TokenSecretRecord>>);

fn path(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl TokenSecrets {
    pub fn apply(&self, event: &watcher::Event<Secret>) {
        self.0.lock().expect("lock").apply(
            event,
            |s| {
                path(
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                )
            },
            TokenSecretRecord::of,
        );
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<TokenSecretRecord> {
        let mirror = self.0.lock().expect("lock");
        mirror.current.get(&path(namespace, name)).cloned()
    }

    pub fn listed(&self) -> bool {
        self.0.lock().expect("lock").listed
    }
}

/// The operator's own token Secret writes, by content fingerprint, until the watch delivers
/// them. Their echo needs no reconcile: without this filter every new token would reconcile
/// its IdvClient a second time (from a cache that has not yet seen the status just written).
/// Keyed by `name_key` (16 bytes an entry: at 10,000 new tokens the watch lags thousands of
/// writes behind); a collision only costs a reconcile.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<u64, u64>>);

impl OwnWrites {
    /// Call before writing `secret`.
    pub fn expect(&self, secret: &Secret) {
        self.0.lock().expect("lock").insert(
            key_of(&secret.metadata),
            resources::content_fingerprint(secret),
        );
    }

    /// Whether this process wrote the Secret and its watch has not shown that yet.
    pub fn in_flight(&self, namespace: &str, name: &str) -> bool {
        self.0
            .lock()
            .expect("lock")
            .contains_key(&name_key(namespace, name))
    }

    /// Whether a watched Secret is exactly what this process last wrote. Any event for the
    /// Secret ends the wait: a later one is never taken for an echo (at worst an echo that
    /// comes after another event costs a reconcile).
    pub fn is_echo(&self, secret: &Secret) -> bool {
        let expected = self
            .0
            .lock()
            .expect("lock")
            .remove(&key_of(&secret.metadata));
        expected == Some(resources::content_fingerprint(secret))
    }

    /// A Secret deleted or relisted: whatever was expected of it will not come as an event.
    pub fn forget(&self, secret: &Secret) {
        self.0
            .lock()
            .expect("lock")
            .remove(&key_of(&secret.metadata));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use k8s_openapi::{ByteString, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    fn token_secret(token: &str) -> Secret {
        let data = [(
            api::secret_keys::ACCESS_TOKEN.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )]
        .into();
        let hash = resources::data_hash(&data);
        let mut client = api::test_client("gipod");
        client.metadata.uid = Some("client-uid".into());
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let times = resources::TokenTimes {
            issued_at: at,
            expires_at: at,
            refresh_at: at,
        };
        resources::desired_secret(&client, data, &hash, "inputs", &times)
    }

    /// What the watch delivers: the stored Secret, as the cache slims it.
    fn watched(mut secret: Secret, resource_version: &str) -> Secret {
        secret.metadata.resource_version = Some(resource_version.into());
        secret.metadata.uid = Some("u".into());
        resources::strip_token_data(&mut secret);
        secret
    }

    #[test]
    fn only_the_echo_of_our_own_write_is_swallowed_and_only_once() {
        let writes = OwnWrites::default();
        let ours = token_secret("t1");
        assert!(
            !writes.is_echo(&watched(ours.clone(), "1")),
            "nothing written yet"
        );
        writes.expect(&ours);
        assert!(writes.in_flight("ns", "gipod-token"));
        assert!(
            !writes.is_echo(&watched(token_secret("edited"), "2")),
            "someone else's data"
        );
        assert!(
            !writes.in_flight("ns", "gipod-token"),
            "any event ends the wait"
        );
        writes.expect(&ours);
        assert!(writes.is_echo(&watched(ours.clone(), "3")));
        assert!(!writes.in_flight("ns", "gipod-token"));
        assert!(
            !writes.is_echo(&watched(ours.clone(), "4")),
            "a later event is not an echo"
        );
        writes.expect(&ours);
        writes.forget(&ours);
        assert!(!writes.in_flight("ns", "gipod-token"));
    }

    #[test]
    fn token_secrets_are_kept_as_records() {
        use watcher::Event::*;
        let secrets = TokenSecrets::default();
        let stored = watched(token_secret("t1"), "1");
        for event in [Init, InitApply(stored.clone()), InitDone] {
            secrets.apply(&event);
        }
        assert!(secrets.listed());
        let record = secrets.get("ns", "gipod-token").expect("cached");
        assert_eq!(record, TokenSecretRecord::of(&stored));
        assert!(record.observed.data_intact);
        secrets.apply(&Delete(stored));
        assert_eq!(secrets.get("ns", "gipod-token"), None);
    }

    fn meta(name: &str, version: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            data: Some(
                [(
                    "jwk.json".to_string(),
                    ByteString(version.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn credentials_follow_the_watch_and_swap_a_relist_in_whole() {
        use watcher::Event::*;
        let versions = CredentialSecrets::default();
        assert!(!versions.listed());
        for event in [Init, InitApply(meta("a", "1")), InitApply(meta("b", "2"))] {
            versions.apply(&event);
        }
        assert_eq!(
            versions.version("ns", "a"),
            None,
            "not before the list is complete"
        );
        versions.apply(&InitDone);
        assert!(versions.listed());
        assert_eq!(versions.version("ns", "a").as_deref(), Some("1"));
        versions.apply(&Apply(meta("a", "3")));
        versions.apply(&Delete(meta("b", "2")));
        assert_eq!(versions.version("ns", "a").as_deref(), Some("3"));
        assert_eq!(versions.version("ns", "b"), None);
        // A relist after a watch error: the old state serves until the new one is complete.
        versions.apply(&Init);
        versions.apply(&InitApply(meta("c", "4")));
        assert_eq!(versions.version("ns", "a").as_deref(), Some("3"));
        versions.apply(&InitDone);
        assert_eq!(versions.version("ns", "a"), None);
        assert_eq!(versions.version("ns", "c").as_deref(), Some("4"));
        assert_eq!(versions.version("other", "c"), None);
        let c = versions.get("ns", "c").expect("cached");
        assert_eq!(
            (c.uid.as_str(), &c.data["jwk.json"].0[..]),
            ("uid-c", &b"4"[..])
        );
    }
}
