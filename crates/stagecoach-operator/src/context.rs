//! What every reconcile gets: the client, the event recorder, metrics and retry state.

use kube::Client;

use crate::events::Publisher;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::retry::Retries;

/// Name the operator reports Events under.
pub const CONTROLLER_NAME: &str = "stagecoach";

/// Shared by both controllers and all their reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Publisher,
    pub metrics: Metrics,
    pub retries: Retries,
    /// Whether this replica may write (holds the leader Lease).
    pub leadership: Leadership,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, leadership: Leadership) -> Self {
        let recorder = Publisher::new(client.clone(), CONTROLLER_NAME);
        Self {
            client,
            recorder,
            metrics,
            retries: Retries::default(),
            leadership,
        }
    }
}
