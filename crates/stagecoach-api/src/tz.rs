//! IANA time zone names, checked at admission.
//!
//! The API server has no time zone database for CEL, so the list of names comes from the
//! one compiled into the operator (chrono-tz) and is written into the CRD: a zone the
//! operator cannot resolve is refused before it is stored.

/// Every zone name the operator knows, such as `Europe/Stockholm`.
pub fn names() -> impl Iterator<Item = &'static str> {
    chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
}

/// The CEL rule admitting exactly [`names`].
pub fn cel_rule() -> serde_json::Value {
    let list = names()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    serde_json::json!({
        "rule": format!("self in [{list}]"),
        "message": "timeZone must be an IANA time zone name such as Europe/Stockholm, America/New_York or UTC",
    })
}

/// The zone called `name`, if the database has it.
pub fn parse(name: &str) -> Option<chrono_tz::Tz> {
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_zones_parse_and_unknown_do_not() {
        assert!(super::parse("Europe/Stockholm").is_some());
        assert!(super::parse("UTC").is_some());
        assert!(super::parse("Mars/Olympus_Mons").is_none());
        assert!(super::names().all(|n| !n.contains('\'')));
        assert!(super::names().count() > 400);
    }
}
