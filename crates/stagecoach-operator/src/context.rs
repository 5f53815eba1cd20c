//! What every reconcile gets: the client, the event recorder, metrics and retry state.

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;
use crate::retry::Retries;

/// Name the operator reports Events under.
pub const CONTROLLER_NAME: &str = "stagecoach";

/// Shared by both controllers and all their reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub retries: Retries,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        // The reporting instance is the host name, which in a pod is the pod name.
        let recorder = Recorder::new(client.clone(), Reporter::from(CONTROLLER_NAME));
        Self {
            client,
            recorder,
            metrics,
            retries: Retries::default(),
        }
    }
}
