//! What the watches keep for the reconciles, and how the watches feed it: the operator's
//! token Secrets (as records), the Secrets labelled as credentials, the operator's own writes
//! not yet seen, and the credentials parsed from them. Other Secrets are never watched.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Resource,
    runtime::{WatchStreamExt, watcher},
};

use jiff::Timestamp;

use crate::{
    api::IdvClient,
    credential::Credential,
    policy::{self, Lookup},
    token_secret::{self, TokenSecretRecord},
};

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
    /// Credentials parsed from the Secrets they name.
    pub parsed_keys: ParsedKeys,
    /// Namespaces where a Secret create just succeeded.
    pub writable: WritableNamespaces,
}

impl Caches {
    fn scope(&self, namespace: &str) -> Option<&ScopeCaches> {
        self.scopes
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))
    }

    /// The record of a token Secret, or `Ask` when the cache may not know (`policy::lookup`).
    pub fn token_secret(&self, namespace: &str, name: &str) -> Lookup<TokenSecretRecord> {
        let Some(scope) = self.scope(namespace) else {
            return Lookup::Ask;
        };
        policy::lookup(
            scope.token_secrets.get(namespace, name),
            self.own_writes.in_flight(namespace, name),
            scope.token_secrets.listed(),
        )
    }

    /// A labelled credential Secret as its watch last saw it.
    pub fn credential(&self, namespace: &str, name: &str) -> Option<CachedCredential> {
        self.scope(namespace)?.credentials.get(namespace, name)
    }

    /// Its resourceVersion only.
    pub fn credential_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.scope(namespace)?.credentials.version(namespace, name)
    }

    /// Resolves once both Secret watches (token Secrets, credentials) of the namespace's
    /// scope have listed (at once if they have, or if no scope holds the namespace: there is
    /// no list to wait for, lookups ask the apiserver).
    pub async fn secrets_listed(&self, namespace: &str) {
        let Some(scope) = self.scope(namespace) else {
            return;
        };
        let (mut tokens, mut credentials) = (
            scope
                .token_secrets
                .0
                .lock()
                .expect("lock")
                .listed
                .subscribe(),
            scope.credentials.0.lock().expect("lock").listed.subscribe(),
        );
        // Err: the cache was dropped (shutdown); nothing to wait for then.
        let _ = tokens.wait_for(|listed| *listed).await;
        let _ = credentials.wait_for(|listed| *listed).await;
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
    /// Whether the watch has listed once; reconciles can wait for it (`secrets_listed`).
    listed: tokio::sync::watch::Sender<bool>,
}

impl<K: Hash + Eq, V> Default for Mirror<K, V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relisting: None,
            listed: tokio::sync::watch::channel(false).0,
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
                self.listed.send_replace(true);
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

/// A watch of Secrets, as kube-runtime's watcher delivers its events.
pub trait SecretEvents:
    Stream<Item = Result<watcher::Event<Secret>, watcher::Error>> + Send + 'static
{
}

impl<S> SecretEvents for S where
    S: Stream<Item = Result<watcher::Event<Secret>, watcher::Error>> + Send + 'static
{
}

impl CredentialSecrets {
    /// Follow the watch of the Secrets labelled as credentials: keep what is needed of each
    /// (`keep_credential_only`), and pass every event on (a changed key reconciles the
    /// IdvClients that name it).
    pub fn follow(self: Arc<Self>, events: impl SecretEvents) -> impl SecretEvents {
        events.modify(keep_credential_only).inspect(move |event| {
            if let Ok(event) = event {
                self.apply(event);
            }
        })
    }

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
        *self.0.lock().expect("lock").listed.borrow()
    }
}

/// The operator's token Secrets, as records (`TokenSecretRecord`), by "namespace/name".
#[derive(Default)]
pub struct TokenSecrets(Mutex<Mirror<String, TokenSecretRecord>>);

fn path(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl TokenSecrets {
    /// Follow the watch of the operator's token Secrets: every event goes into the cache (as
    /// records, from the full Secret); to the controller only those that are news
    /// (`OwnWrites::is_news`), without token data.
    pub fn follow(
        self: Arc<Self>,
        events: impl SecretEvents,
        own_writes: Arc<OwnWrites>,
    ) -> impl SecretEvents {
        events
            .inspect(move |event| {
                if let Ok(event) = event {
                    self.apply(event);
                }
            })
            .filter(move |event| {
                let news = event.as_ref().is_ok_and(|e| own_writes.is_news(e));
                futures::future::ready(news || event.is_err())
            })
            .modify(owner_only)
    }

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
        *self.0.lock().expect("lock").listed.borrow()
    }
}

/// Parsed credentials by what they are read from (`credential_reference`), each with the
/// namespace and the resourceVersion of the Secret it was parsed from: a new version replaces
/// the old one in place. Shared by the IdvClients that name the same key.
#[derive(Default)]
pub struct ParsedKeys(Mutex<HashMap<u64, ParsedCredential>>);

struct ParsedCredential {
    namespace: String,
    version: String,
    credential: Credential,
}

/// Where the parsed credential of this IdvClient is kept in `ParsedKeys`: a hash of the
/// namespace, Secret, key, kind and keyId it names (None: it names none).
pub fn credential_reference(client: &IdvClient) -> Option<u64> {
    // The kind belongs in the key: the same bytes are a client secret to one client and an
    // unparseable key to another.
    let (reference, kind, key_id) = match (&client.spec.private_key, &client.spec.client_secret) {
        (Some(private_key), _) => (
            &private_key.secret_ref,
            "private-key",
            private_key.key_id.as_ref(),
        ),
        (None, Some(client_secret)) => (&client_secret.secret_ref, "client-secret", None),
        (None, None) => return None,
    };
    let namespace = client.metadata.namespace.as_deref().unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (namespace, &reference.name, &reference.key, kind, key_id).hash(&mut hasher);
    Some(hasher.finish())
}

impl ParsedKeys {
    /// The credential parsed from this version of the Secret, if it was.
    pub fn get(&self, reference: u64, version: &str) -> Option<Credential> {
        self.0
            .lock()
            .expect("lock")
            .get(&reference)
            .filter(|parsed| parsed.version == version)
            .map(|parsed| parsed.credential.clone())
    }

    /// Replaces the credential parsed from an older version.
    pub fn insert(&self, reference: u64, namespace: &str, version: &str, credential: &Credential) {
        self.0.lock().expect("lock").insert(
            reference,
            ParsedCredential {
                namespace: namespace.to_string(),
                version: version.to_string(),
                credential: credential.clone(),
            },
        );
    }

    /// A deleted IdvClient's (another client of the same key parses it again).
    pub fn forget(&self, client: &IdvClient) {
        if let Some(reference) = credential_reference(client) {
            self.0.lock().expect("lock").remove(&reference);
        }
    }

    /// After a relist of the IdvClients of `scope`: keep the credentials that `live` clients
    /// still name (and those of other scopes).
    pub fn retain(&self, scope: Option<&str>, live: &[Arc<IdvClient>]) {
        let named: HashSet<u64> = live
            .iter()
            .filter_map(|c| credential_reference(c))
            .collect();
        self.0.lock().expect("lock").retain(|reference, parsed| {
            named.contains(reference) || scope.is_some_and(|s| s != parsed.namespace)
        });
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
            token_secret::content_fingerprint(secret),
        );
    }

    /// Whether this process wrote the Secret and its watch has not shown that yet.
    pub fn in_flight(&self, namespace: &str, name: &str) -> bool {
        self.0
            .lock()
            .expect("lock")
            .contains_key(&name_key(namespace, name))
    }

    /// Whether a watch event of a token Secret is news to the controller: not the echo of
    /// what this process wrote itself (which would reconcile its IdvClient a second time).
    pub fn is_news(&self, event: &watcher::Event<Secret>) -> bool {
        match event {
            watcher::Event::Apply(secret) => !self.is_echo(secret),
            watcher::Event::InitApply(secret) | watcher::Event::Delete(secret) => {
                self.forget(secret);
                true
            }
            watcher::Event::Init | watcher::Event::InitDone => true,
        }
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
        expected == Some(token_secret::content_fingerprint(secret))
    }

    /// A Secret deleted or relisted: whatever was expected of it will not come as an event.
    pub fn forget(&self, secret: &Secret) {
        self.0
            .lock()
            .expect("lock")
            .remove(&key_of(&secret.metadata));
    }
}

/// Credential Secrets as cached: identity and data only. Annotations in particular go:
/// `kubectl apply` leaves the whole Secret, key included, in `last-applied-configuration`.
fn keep_credential_only(secret: &mut Secret) {
    let meta = &mut secret.metadata;
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        uid: meta.uid.take(),
        ..ObjectMeta::default()
    };
    secret.string_data = None;
}

/// Token Secrets as passed on to the controller, which needs only their owner: no
/// managedFields, no token data.
fn owner_only(secret: &mut Secret) {
    secret.meta_mut().managed_fields = None;
    secret.data = None;
}

/// Per namespace: when a Secret create there (real or dry run) last succeeded, forgotten at
/// the first Secret write there that fails (`policy::needs_dry_run` decides with it).
#[derive(Default)]
pub struct WritableNamespaces(Mutex<HashMap<String, Timestamp>>);

impl WritableNamespaces {
    pub fn proven_at(&self, namespace: &str) -> Option<Timestamp> {
        self.0.lock().expect("lock").get(namespace).copied()
    }

    pub fn created(&self, namespace: &str, at: Timestamp) {
        let mut proofs = self.0.lock().expect("lock");
        // One entry per namespace that had a new Secret; old proofs are useless, drop them
        // now and then.
        if proofs.len() >= 1024 && !proofs.contains_key(namespace) {
            proofs.retain(|_, proven| at.duration_since(*proven) <= policy::WRITABLE_PROOF);
        }
        proofs.insert(namespace.to_string(), at);
    }

    pub fn write_failed(&self, namespace: &str) {
        self.0.lock().expect("lock").remove(namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api, schedule::TokenTimes};
    use k8s_openapi::{ByteString, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    fn token_secret(token: &str) -> Secret {
        let data = [(
            api::secret_keys::ACCESS_TOKEN.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )]
        .into();
        let hash = token_secret::data_hash(&data);
        let mut client = api::test_client("gipod");
        client.metadata.uid = Some("client-uid".into());
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let times = TokenTimes {
            issued_at: at,
            expires_at: at,
            refresh_at: at,
        };
        token_secret::desired_secret(&client, data, &hash, "inputs", &times)
    }

    /// What the watch delivers: the stored Secret.
    fn watched(mut secret: Secret, resource_version: &str) -> Secret {
        secret.metadata.resource_version = Some(resource_version.into());
        secret.metadata.uid = Some("u".into());
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

    #[tokio::test]
    async fn the_token_secret_watch_fills_the_cache_and_passes_on_only_news_without_data() {
        use watcher::Event::*;
        let (records, own_writes) = (
            Arc::new(TokenSecrets::default()),
            Arc::new(OwnWrites::default()),
        );
        let ours = token_secret("t1");
        own_writes.expect(&ours);
        let events = [
            Init,
            InitDone,
            // The echo of our own write, then someone else's edit.
            Apply(watched(ours.clone(), "2")),
            Apply(watched(token_secret("edited"), "3")),
        ];
        let passed: Vec<_> = records
            .clone()
            .follow(futures::stream::iter(events.map(Ok)), own_writes)
            .map(Result::unwrap)
            .collect()
            .await;
        let applied: Vec<_> = passed
            .iter()
            .filter_map(|e| match e {
                InitApply(s) | Apply(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(passed.len(), 3, "all but the echo");
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].metadata.resource_version.as_deref(), Some("3"));
        assert!(
            applied
                .iter()
                .all(|s| s.data.is_none() && s.metadata.owner_references.is_some()),
            "the controller gets owners, no token data"
        );
        let record = records.get("ns", "gipod-token").expect("cached");
        assert_eq!(
            record,
            TokenSecretRecord::of(&watched(token_secret("edited"), "3"))
        );
    }

    fn keyed_client(name: &str, secret: &str, key_id: Option<&str>) -> IdvClient {
        let mut c = api::test_client(name);
        c.spec.private_key = Some(api::PrivateKey {
            secret_ref: api::SecretKeyRef {
                name: secret.into(),
                key: "jwk.json".into(),
            },
            key_id: key_id.map(str::to_string),
        });
        c
    }

    #[test]
    fn parsed_keys_are_kept_by_what_is_read_not_by_who_reads_it() {
        let key = |c: &IdvClient| credential_reference(c).unwrap();
        assert_eq!(
            key(&keyed_client("a", "jwk", None)),
            key(&keyed_client("b", "jwk", None))
        );
        assert_ne!(
            key(&keyed_client("a", "jwk", None)),
            key(&keyed_client("a", "jwk", Some("k1")))
        );
        assert_ne!(
            key(&keyed_client("a", "jwk", None)),
            key(&keyed_client("a", "other", None))
        );
        let mut elsewhere = keyed_client("a", "jwk", None);
        elsewhere.metadata.namespace = Some("ns2".into());
        assert_ne!(key(&keyed_client("a", "jwk", None)), key(&elsewhere));
        let mut secret = keyed_client("a", "jwk", None);
        secret.spec.private_key = None;
        secret.spec.client_secret = Some(api::ClientSecret {
            secret_ref: api::SecretKeyRef {
                name: "jwk".into(),
                key: "jwk.json".into(),
            },
        });
        assert_ne!(key(&keyed_client("a", "jwk", None)), key(&secret), "kind");

        // Kept per version; pruned to what live clients name, in the relisted scope only.
        let parsed = ParsedKeys::default();
        let credential = crate::credential::parse(
            crate::credential::Kind::ClientSecret,
            b"s".to_vec(),
            None,
            "v".into(),
        )
        .unwrap();
        let (a, b) = (
            keyed_client("a", "jwk", None),
            keyed_client("b", "b-jwk", None),
        );
        parsed.insert(key(&a), "ns", "1", &credential);
        parsed.insert(key(&b), "ns", "1", &credential);
        parsed.insert(key(&elsewhere), "ns2", "1", &credential);
        assert!(parsed.get(key(&a), "1").is_some());
        assert!(parsed.get(key(&a), "2").is_none(), "another version");
        parsed.retain(Some("ns"), &[Arc::new(a.clone())]);
        assert!(parsed.get(key(&a), "1").is_some());
        assert!(
            parsed.get(key(&b), "1").is_none(),
            "named by no live client"
        );
        assert!(parsed.get(key(&elsewhere), "1").is_some(), "another scope");
        parsed.forget(&a);
        assert!(parsed.get(key(&a), "1").is_none());
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
    fn a_namespace_is_proven_writable_by_its_last_create_until_a_write_fails() {
        use crate::schedule::test_clock::at;
        let writable = WritableNamespaces::default();
        assert_eq!(writable.proven_at("a"), None);
        writable.created("a", at(1));
        writable.created("a", at(5));
        writable.created("b", at(2));
        assert_eq!(writable.proven_at("a"), Some(at(5)));
        writable.write_failed("a");
        assert_eq!(
            writable.proven_at("a"),
            None,
            "a failed write ends the proof"
        );
        assert_eq!(writable.proven_at("b"), Some(at(2)), "per namespace");
    }

    #[tokio::test]
    async fn a_reconcile_can_wait_for_both_secret_watches_to_list() {
        let scope = ScopeCaches {
            namespace: Some("ns".into()),
            token_secrets: Default::default(),
            credentials: Default::default(),
        };
        let (tokens, credentials) = (scope.token_secrets.clone(), scope.credentials.clone());
        let caches = Caches {
            scopes: vec![scope],
            own_writes: Default::default(),
            parsed_keys: Default::default(),
            writable: Default::default(),
        };
        let short = std::time::Duration::from_millis(50);
        let waited = |ns: &'static str| tokio::time::timeout(short, caches.secrets_listed(ns));
        assert!(waited("ns").await.is_err(), "neither has listed");
        credentials.apply(&watcher::Event::InitDone);
        assert!(
            waited("ns").await.is_err(),
            "the token Secrets have not listed"
        );
        tokens.apply(&watcher::Event::InitDone);
        assert!(waited("ns").await.is_ok());
        let outside = Caches {
            scopes: vec![],
            own_writes: Default::default(),
            parsed_keys: Default::default(),
            writable: Default::default(),
        };
        let waited = tokio::time::timeout(short, outside.secrets_listed("ns")).await;
        assert!(waited.is_ok(), "outside every scope: no list to wait for");
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
