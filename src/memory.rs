//! What the operator remembers per IdvClient (failures, token requests, queued status writes,
//! metric series) is keyed by one type, `ClientKey`, and forgotten through one trait,
//! `ClientMemory`: `reconcile::Context` forgets a deleted IdvClient in every memory at once,
//! and prunes them all after a relist. Pure.

use kube::runtime::reflector::ObjectRef;

use crate::api::IdvClient;

/// An IdvClient's namespace and name, as one allocation "namespace/name" (a name cannot
/// contain '/'): 16 bytes in a map, where an `ObjectRef` takes about 100 and two allocations.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ClientKey(Box<str>);

impl ClientKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ClientKey(format!("{namespace}/{name}").into())
    }

    pub fn of(client: &IdvClient) -> Self {
        let meta = &client.metadata;
        Self::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    pub fn namespace(&self) -> &str {
        self.0.split_once('/').unwrap_or_default().0
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').unwrap_or_default().1
    }

    /// As the controller names objects to reconcile.
    pub fn object_ref(&self) -> ObjectRef<IdvClient> {
        ObjectRef::new(self.name()).within(self.namespace())
    }
}

/// Memory kept per IdvClient.
pub trait ClientMemory {
    /// The IdvClient is gone.
    fn forget(&self, key: &ClientKey);
    /// Keep only what `keep` says of (after a relist: the IdvClients still there).
    fn retain(&self, keep: &dyn Fn(&ClientKey) -> bool);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_one_client() {
        let key = ClientKey::of(&crate::api::test_client("gipod"));
        assert_eq!(key, ClientKey::new("ns", "gipod"));
        assert_eq!((key.namespace(), key.name()), ("ns", "gipod"));
        assert_eq!(key.object_ref(), ObjectRef::new("gipod").within("ns"));
        assert_ne!(key, ClientKey::new("ns", "other"));
        assert_ne!(key, ClientKey::new("gipod", "ns"));
        assert_eq!(std::mem::size_of::<ClientKey>(), 16);
    }
}
