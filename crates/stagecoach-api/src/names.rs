//! Name rules shared by the schema (as regular expressions for CEL) and the operator.

/// A DNS-1123 label: lower-case letters, digits and '-', starting and ending with an
/// alphanumeric character. Stage names and namespaces follow it.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Longest stage name. Short, so that `<application>-<stage>` fits in a namespace.
pub const MAX_STAGE_NAME: usize = 20;

/// Semantic version 2.0.0, with an optional leading `v` refused (write `2.4.0`).
pub const SEMVER_PATTERN: &str = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\+([0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*))?$";

/// The stages of the default pipeline, in order.
pub const DEFAULT_STAGES: [&str; 4] = ["dev", "qa", "demo", "prod"];

/// Is `name` a DNS-1123 label of at most 63 characters?
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// The namespace a stage uses when the manifest names none: `<application>-<stage>`,
/// or `None` when that is not a valid namespace name.
pub fn default_stage_namespace(application: &str, stage: &str) -> Option<String> {
    let candidate = format!("{application}-{stage}");
    is_dns_label(&candidate).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("billing-prod"));
        assert!(is_dns_label("a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("Billing"));
        assert!(!is_dns_label("billing.prod"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn default_namespace() {
        assert_eq!(
            default_stage_namespace("billing", "prod").as_deref(),
            Some("billing-prod")
        );
        assert_eq!(default_stage_namespace("billing.eu", "prod"), None);
        assert_eq!(default_stage_namespace(&"a".repeat(60), "prod"), None);
    }
}
