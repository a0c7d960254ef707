//! Kubernetes Events on IdvClients (events.k8s.io/v1), written straight to the API.
//!
//! kube's `Recorder` keeps every Event it published for six minutes to merge repeats into a
//! series, and sweeps that cache on each publish. Our notes carry times (expiry, next attempt),
//! so no two Events are ever repeats: the cache only cost memory (~28 MiB at 10,000 clients)
//! and CPU. Events here are fire-and-forget: failing to publish never fails a reconcile.

use jiff::Timestamp;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, api::PostParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Who reports: the controller's name and this process's identity.
#[derive(Clone)]
pub struct EventPublisher {
    kube: kube::Client,
    controller: String,
    instance: String,
}

impl EventPublisher {
    pub fn new(kube: kube::Client, controller: &str, instance: &str) -> Self {
        Self {
            kube,
            controller: controller.into(),
            instance: instance.into(),
        }
    }

    pub async fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = event(
            regarding,
            type_,
            reason,
            note,
            &self.controller,
            &self.instance,
            Timestamp::now(),
        );
        let api: Api<Event> = Api::namespaced(self.kube.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!("cannot publish event: {}", crate::error::kube_message(&e));
        }
    }
}

/// `<object>.<nanoseconds, hex>`, as client-go names Events; at most 253 characters.
fn event_name(object: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let mut prefix = object.to_string();
    let mut end = prefix.len().min(253 - suffix.len());
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    prefix.truncate(end);
    prefix + &suffix
}

/// The Event object.
fn event(
    regarding: ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    controller: &str,
    instance: &str,
    now: Timestamp,
) -> Event {
    // The API limits a note to 1 kB.
    let mut note = note;
    let mut end = note.len().min(1000);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(
                regarding.name.as_deref().unwrap_or("idvclient"),
                now,
            )),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        action: Some("Reconcile".into()),
        reason: Some(reason.into()),
        note: Some(note),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding),
        reporting_controller: Some(controller.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_its_object_and_reporter_and_keeps_notes_short() {
        let regarding = ObjectReference {
            kind: Some("IdvClient".into()),
            name: Some("gipod".into()),
            namespace: Some("team-a".into()),
            uid: Some("u-1".into()),
            ..ObjectReference::default()
        };
        let e = event(
            regarding,
            EventType::Warning,
            "InvalidKey",
            "é".repeat(3000),
            "idv-token-operator",
            "pod-1",
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(e.metadata.name.as_deref(), Some("gipod.0"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("InvalidKey"));
        assert_eq!(
            e.note.as_ref().map(String::len),
            Some(1000),
            "at most 1 kB, whole characters"
        );
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some("idv-token-operator")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(e.regarding.and_then(|r| r.uid).as_deref(), Some("u-1"));
        let long = event_name(&"a".repeat(253), Timestamp::from_second(1).unwrap());
        assert_eq!(long.len(), 253);
        assert!(long.ends_with(".3b9aca00"));
    }
}
