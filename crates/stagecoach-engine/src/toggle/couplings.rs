//! Which release couplings (`when: {release, reached}`) are active right now.

use std::collections::BTreeSet;

use stagecoach_api::toggle::ReleaseCoupling;

/// The (release, stage) pairs whose couplings are active: a rule with
/// `when: {release: R, reached: S}` applies exactly when (R, S) is in the set.
///
/// The operator fills it from the Releases of the toggle's namespace: a release counts as
/// having reached stage S once it has succeeded at S or at a later stage, or is in early
/// life support at S, and stops counting when it is rolled back at S. So for a release
/// now live in prod the set holds (release, dev), (release, qa), (release, demo) and
/// (release, prod).
///
/// A plain set rather than a callback: it is data, so it can be compared to the previous
/// one to detect a change, printed in a log line, and built in a test with one line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActiveCouplings {
    reached: BTreeSet<(String, String)>,
}

impl ActiveCouplings {
    /// No release has reached any stage: every coupled rule is inactive.
    pub fn none() -> Self {
        Self::default()
    }

    /// Records that `release` has reached `stage`.
    pub fn insert(&mut self, release: impl Into<String>, stage: impl Into<String>) {
        self.reached.insert((release.into(), stage.into()));
    }

    /// Whether `release` counts as having reached `stage`.
    pub fn has_reached(&self, release: &str, stage: &str) -> bool {
        // BTreeSet<(String, String)> cannot be queried with borrowed pairs; the sets are
        // small (releases x stages of one namespace), so a scan is fine.
        self.reached.iter().any(|(r, s)| r == release && s == stage)
    }

    /// Whether a rule coupled by `coupling` applies now.
    pub fn is_active(&self, coupling: &ReleaseCoupling) -> bool {
        self.has_reached(&coupling.release, &coupling.reached)
    }

    /// The (release, stage) pairs, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.reached.iter().map(|(r, s)| (r.as_str(), s.as_str()))
    }

    /// Whether no release has reached any stage.
    pub fn is_empty(&self) -> bool {
        self.reached.is_empty()
    }
}

impl<R: Into<String>, S: Into<String>> FromIterator<(R, S)> for ActiveCouplings {
    fn from_iter<I: IntoIterator<Item = (R, S)>>(pairs: I) -> Self {
        let mut couplings = Self::none();
        for (release, stage) in pairs {
            couplings.insert(release, stage);
        }
        couplings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coupling_is_active_only_for_its_release_and_stage() {
        let couplings: ActiveCouplings = [("billing-2.4.0", "demo")].into_iter().collect();
        let when = |release: &str, reached: &str| ReleaseCoupling {
            release: release.into(),
            reached: reached.into(),
        };
        assert!(couplings.is_active(&when("billing-2.4.0", "demo")));
        assert!(!couplings.is_active(&when("billing-2.4.0", "prod")));
        assert!(!couplings.is_active(&when("billing-2.5.0", "demo")));
        assert!(!ActiveCouplings::none().is_active(&when("billing-2.4.0", "demo")));
    }
}
