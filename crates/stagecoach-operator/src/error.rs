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

    /// Writing the audit record ConfigMap of a release that ended failed.
    #[error("cannot write the audit record: {0}")]
    WriteRecord(#[source] Box<kube::Error>),

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
            Self::WriteRecord(_) => "write_record",
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
            | Self::Finalizer(_)
            | Self::WriteRecord(_) => true,
        }
    }

    /// Whether the failure deserves a person's attention (it is reported to Sentry): a
    /// refusal that will come back on every retry (403 Forbidden, 422 Invalid from a
    /// policy or webhook, ...) or a fault of the operator itself. Not a fault: what the
    /// retry absorbs, the ordinary weather of a cluster (a 409 conflict, throttling, an
    /// API server that restarts or cannot be reached, an object deleted in between).
    /// The write fence's stale-cache waits are not errors at all (a plain requeue).
    pub fn is_fault(&self) -> bool {
        match self {
            Self::MissingMetadata(_) | Self::SerializeStatus(_) => true,
            Self::PatchStatus(source)
            | Self::PublishEvent(source)
            | Self::WriteFlagSet { source, .. } => !is_weather(source),
            Self::ApplyWorkload { source, .. }
            | Self::Finalizer(source)
            | Self::WriteRecord(source) => !is_weather(source),
        }
    }

    /// The namespace of the workload or flag set a failed write was for.
    pub fn target_namespace(&self) -> Option<&str> {
        match self {
            Self::ApplyWorkload { namespace, .. } | Self::WriteFlagSet { namespace, .. } => {
                Some(namespace)
            }
            _ => None,
        }
    }

    /// The HTTP status the API server answered, when it answered with an error status.
    pub fn api_status(&self) -> Option<u16> {
        match self {
            Self::PatchStatus(kube::Error::Api(status))
            | Self::PublishEvent(kube::Error::Api(status))
            | Self::WriteFlagSet {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            Self::ApplyWorkload { source, .. }
            | Self::Finalizer(source)
            | Self::WriteRecord(source) => match source.as_ref() {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Whether a client error is transient by nature: a conflict (409), throttling (429), a
/// timeout (408, 504), the API server failing or going away (5xx), an object gone in
/// between (404, 410), or the connection itself (refused, reset, timed out).
fn is_weather(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 404 | 408 | 409 | 410 | 429 | 500..=599),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
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

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        }))
    }

    fn apply_workload(source: kube::Error) -> ReconcileError {
        ReconcileError::ApplyWorkload {
            action: "update",
            namespace: "shop-dev".into(),
            name: "api".into(),
            source: Box::new(source),
        }
    }

    #[test]
    fn transient_failures_are_not_faults() {
        for code in [404, 408, 409, 410, 429, 500, 503, 504] {
            for error in [
                ReconcileError::PatchStatus(api(code)),
                ReconcileError::PublishEvent(api(code)),
                apply_workload(api(code)),
                ReconcileError::Finalizer(Box::new(api(code))),
                ReconcileError::WriteFlagSet {
                    action: "apply",
                    namespace: "shop-dev".into(),
                    source: api(code),
                },
            ] {
                assert!(!error.is_fault(), "{code}: {error}");
                assert_eq!(error.api_status(), Some(code));
            }
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!apply_workload(kube::Error::Service(Box::new(refused))).is_fault());
    }

    #[test]
    fn refusals_that_stay_are_faults() {
        for code in [400, 401, 403, 413, 422] {
            assert!(apply_workload(api(code)).is_fault(), "{code}");
            assert!(ReconcileError::PatchStatus(api(code)).is_fault(), "{code}");
        }
        assert!(ReconcileError::MissingMetadata("name").is_fault());
        assert_eq!(ReconcileError::MissingMetadata("name").api_status(), None);
    }
}
