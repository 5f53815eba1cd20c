//! What can fail in a reconcile, one variant per step.

/// A reconcile step that failed. An invalid spec is not an error: it becomes an
/// `Accepted=False` condition and the reconcile succeeds.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object came without a name or namespace; the API server never sends such
    /// objects for namespaced kinds.
    #[error("object has no {0}")]
    MissingMetadata(&'static str),

    /// The desired status could not be turned into JSON.
    #[error("cannot serialize the status: {0}")]
    SerializeStatus(#[source] serde_json::Error),

    /// The API server refused or did not answer the status patch.
    #[error("cannot patch the status: {0}")]
    PatchStatus(#[source] kube::Error),

    /// The API server refused or did not answer the Event.
    #[error("cannot publish the event: {0}")]
    PublishEvent(#[source] kube::Error),

    /// A change to a workload in a stage namespace failed.
    #[error("cannot {action} {namespace}/{name}: {source}")]
    ApplyWorkload {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Adding or removing the Release finalizer failed.
    #[error("cannot update the finalizer: {0}")]
    Finalizer(#[source] Box<kube::Error>),

    /// Writing or deleting a flag-set ConfigMap in a stage namespace failed.
    #[error("cannot {action} the flag set in namespace {namespace}: {source}")]
    WriteFlagSet {
        action: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Short, fixed name of the failing step, for metric labels and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingMetadata(_) => "missing_metadata",
            Self::SerializeStatus(_) => "serialize_status",
            Self::PatchStatus(_) => "patch_status",
            Self::PublishEvent(_) => "publish_event",
            Self::ApplyWorkload { .. } => "apply_workload",
            Self::WriteFlagSet { .. } => "write_flag_set",
            Self::Finalizer(_) => "finalizer",
        }
    }

    /// Whether trying again can help (API server unavailable, throttling, a conflict), as
    /// opposed to a fault that stays until the object changes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::MissingMetadata(_) | Self::SerializeStatus(_) => false,
            Self::PatchStatus(_)
            | Self::PublishEvent(_)
            | Self::ApplyWorkload { .. }
            | Self::WriteFlagSet { .. }
            | Self::Finalizer(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_snake_case() {
        let errors = [
            ReconcileError::MissingMetadata("namespace"),
            ReconcileError::SerializeStatus(serde_json::from_str::<u8>("x").unwrap_err()),
        ];
        for error in errors {
            let category = error.category();
            assert!(category.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
