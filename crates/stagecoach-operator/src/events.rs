//! Publishing Kubernetes Events (events.k8s.io/v1) without a client-side cache.
//!
//! kube-runtime's `Recorder` keeps every Event it published for a few minutes, to fold
//! repeats into a series. With one Event per new FeatureToggle that cache grew to tens of
//! MiB for 10,000 toggles (measured with heaptrack in the OFREP benchmark), and its hash
//! table never shrinks. Stagecoach publishes Events only on transitions, so repeats are
//! rare: each Event here is one `create`, and nothing is kept.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};

/// Publishes Events as `controller`.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
}

impl Publisher {
    /// The reporting instance is the host name (in a pod, the pod name).
    pub fn new(client: Client, controller: &str) -> Self {
        let instance = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| controller.to_owned());
        Self {
            client,
            controller: controller.to_owned(),
            instance,
        }
    }

    /// Creates one Event about `regarding`, in its namespace (`default` for cluster-scoped
    /// objects).
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let object = K8sEvent {
            metadata: ObjectMeta {
                name: Some(event_name(regarding, now)),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            reason: Some(event.reason.clone()),
            action: Some(event.action.clone()),
            note: event.note.clone(),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await?;
        Ok(())
    }
}

/// `<object name>.<nanoseconds, hex>`: unique per object and instant, like kubectl's.
fn event_name(regarding: &ObjectReference, now: Timestamp) -> String {
    format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or("stagecoach"),
        now.as_nanosecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_object_and_the_instant() {
        let regarding = ObjectReference {
            name: Some("billing-2.4.0".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_nanosecond(0x1234_5678_9abc).unwrap();
        assert_eq!(event_name(&regarding, now), "billing-2.4.0.123456789abc");
        assert_ne!(
            event_name(&regarding, now),
            event_name(
                &regarding,
                Timestamp::from_nanosecond(0x1234_5678_9abd).unwrap()
            )
        );
    }
}
