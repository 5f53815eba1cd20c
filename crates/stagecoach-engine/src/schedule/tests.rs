use std::collections::BTreeSet;

use chrono::NaiveTime;
use proptest::prelude::*;
use stagecoach_api::pipeline::Weekday::{self, Fri, Mon, Sat, Sun, Thu, Tue, Wed};

use super::*;

const STOCKHOLM: &str = "Europe/Stockholm";

fn utc(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn window(days: &[Weekday], start: &str, end: &str, zone: &str) -> Window {
    Window {
        days: days.to_vec(),
        start: start.into(),
        end: end.into(),
        time_zone: zone.into(),
        stages: Vec::new(),
    }
}

fn freeze(from: &str, to: &str, reason: &str) -> Freeze {
    Freeze {
        from: utc(from),
        to: utc(to),
        reason: Some(reason.into()),
        stages: Vec::new(),
    }
}

fn input<'a>(windows: &'a [Window], freezes: &'a [Freeze], now: &str) -> ScheduleInput<'a> {
    ScheduleInput {
        stage: "prod",
        is_last_stage: true,
        release_type: ReleaseType::Minor,
        windows,
        freezes,
        notice: None,
        announced_at: None,
        now: utc(now),
    }
}

/// The decision at `now` for the same rules.
fn at(input: &ScheduleInput, now: &str) -> ScheduleDecision {
    decide(&ScheduleInput {
        now: utc(now),
        ..*input
    })
}

#[track_caller]
fn assert_waits(decision: &ScheduleDecision, reason: WaitReason, until: Option<&str>) -> String {
    match decision {
        ScheduleDecision::Wait {
            until: got,
            reason: got_reason,
            message,
        } => {
            assert_eq!(*got_reason, reason, "{message}");
            assert_eq!(*got, until.map(utc), "{message}");
            message.clone()
        }
        ScheduleDecision::Open => panic!("open, expected to wait for {reason:?} until {until:?}"),
    }
}

fn local(date: &str, time: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M").unwrap()
}

fn stockholm() -> Tz {
    STOCKHOLM.parse().unwrap()
}

#[test]
fn local_times_in_the_spring_gap_are_the_first_instant_after_it() {
    // 2026-03-29: Stockholm's clocks go from 02:00 CET to 03:00 CEST at 01:00 UTC.
    let tz = stockholm();
    let read = |time| to_instant(tz, local("2026-03-29", time));
    assert_eq!(read("01:59"), Some(utc("2026-03-29T00:59:00Z")));
    assert_eq!(read("02:00"), Some(utc("2026-03-29T01:00:00Z")));
    assert_eq!(read("02:30"), Some(utc("2026-03-29T01:00:00Z")));
    assert_eq!(read("02:59"), Some(utc("2026-03-29T01:00:00Z")));
    assert_eq!(read("03:00"), Some(utc("2026-03-29T01:00:00Z")));
    assert_eq!(read("03:01"), Some(utc("2026-03-29T01:01:00Z")));
}

#[test]
fn repeated_local_times_in_the_autumn_are_their_earlier_occurrence() {
    // 2026-10-25: from 03:00 CEST back to 02:00 CET at 01:00 UTC; 02:00-03:00 happens twice.
    let tz = stockholm();
    let read = |time| to_instant(tz, local("2026-10-25", time));
    assert_eq!(read("01:59"), Some(utc("2026-10-24T23:59:00Z")));
    assert_eq!(read("02:00"), Some(utc("2026-10-25T00:00:00Z")));
    assert_eq!(read("02:30"), Some(utc("2026-10-25T00:30:00Z")));
    assert_eq!(read("03:00"), Some(utc("2026-10-25T02:00:00Z")));
}

#[test]
fn a_window_starting_at_0230_on_the_spring_forward_night() {
    let windows = [window(&[Sun], "02:30", "04:00", STOCKHOLM)];
    let rules = input(&windows, &[], "2026-03-28T12:00:00Z");
    let message = assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2026-03-29T01:00:00Z"),
    );
    assert_eq!(
        message,
        "outside the release windows for minor releases; the next opens Sun 2026-03-29 03:00 Europe/Stockholm (2026-03-29T01:00:00Z)"
    );
    assert_waits(
        &at(&rules, "2026-03-29T00:59:59Z"),
        WaitReason::OutsideWindow,
        Some("2026-03-29T01:00:00Z"),
    );
    assert!(at(&rules, "2026-03-29T01:00:00Z").is_open());
    assert!(at(&rules, "2026-03-29T01:59:59Z").is_open());
    // Closes at 04:00 CEST; next Sunday it opens at 02:30 CEST.
    assert_waits(
        &at(&rules, "2026-03-29T02:00:00Z"),
        WaitReason::OutsideWindow,
        Some("2026-04-05T00:30:00Z"),
    );
    // The Sunday before, in winter time: 02:30 CET to 04:00 CET.
    assert!(at(&rules, "2026-03-22T01:30:00Z").is_open());
    assert_waits(
        &at(&rules, "2026-03-22T01:29:59Z"),
        WaitReason::OutsideWindow,
        Some("2026-03-22T01:30:00Z"),
    );
}

#[test]
fn a_window_wholly_inside_the_spring_gap_does_not_open_that_night() {
    let windows = [window(&[Sun], "02:00", "02:45", STOCKHOLM)];
    let rules = input(&windows, &[], "2026-03-28T12:00:00Z");
    assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2026-04-05T00:00:00Z"),
    );
}

#[test]
fn a_window_starting_at_0230_on_the_fall_back_night() {
    // 02:30 to 04:00 is open from the first 02:30 (CEST) to 04:00 CET: two and a half hours.
    let windows = [window(&[Sun], "02:30", "04:00", STOCKHOLM)];
    let rules = input(&windows, &[], "2026-10-25T00:00:00Z");
    let message = assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2026-10-25T00:30:00Z"),
    );
    assert!(message.contains("Sun 2026-10-25 02:30 Europe/Stockholm (2026-10-25T00:30:00Z)"));
    assert!(at(&rules, "2026-10-25T00:30:00Z").is_open());
    // 02:15 CET, the second time the wall clock shows 02:15: still open.
    assert!(at(&rules, "2026-10-25T01:15:00Z").is_open());
    assert!(at(&rules, "2026-10-25T02:59:59Z").is_open());
    assert_waits(
        &at(&rules, "2026-10-25T03:00:00Z"),
        WaitReason::OutsideWindow,
        Some("2026-11-01T01:30:00Z"),
    );
}

#[test]
fn a_window_ending_at_0230_on_the_fall_back_night_closes_at_the_first_0230() {
    let windows = [window(&[Sun], "01:00", "02:30", STOCKHOLM)];
    let rules = input(&windows, &[], "2026-10-24T22:59:59Z");
    assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2026-10-24T23:00:00Z"),
    );
    assert!(at(&rules, "2026-10-25T00:29:59Z").is_open());
    // 02:00 CET (second pass): closed, and it does not reopen until next Sunday 01:00 CET.
    assert_waits(
        &at(&rules, "2026-10-25T01:00:00Z"),
        WaitReason::OutsideWindow,
        Some("2026-11-01T00:00:00Z"),
    );
}

#[test]
fn a_window_ending_at_2400_lasts_to_local_midnight() {
    // 2026-12-04 is a Friday; Stockholm is on CET (UTC+1).
    let windows = [window(&[Fri], "20:00", "24:00", STOCKHOLM)];
    let rules = input(&windows, &[], "2026-12-04T18:59:59Z");
    assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2026-12-04T19:00:00Z"),
    );
    assert!(at(&rules, "2026-12-04T22:59:59Z").is_open());
    assert_waits(
        &at(&rules, "2026-12-04T23:00:00Z"),
        WaitReason::OutsideWindow,
        Some("2026-12-11T19:00:00Z"),
    );
}

#[test]
fn midnight_inside_a_gap() {
    // Asia/Beirut went from 00:00 EET to 01:00 EEST on Sunday 2022-03-27 (22:00 UTC on
    // Saturday): Saturday's 24:00 and Sunday's 00:00 are both that instant.
    let tz: Tz = "Asia/Beirut".parse().unwrap();
    assert_eq!(
        to_instant(tz, local("2022-03-27", "00:00")),
        Some(utc("2022-03-26T22:00:00Z"))
    );
    let windows = [
        window(&[Sat], "22:00", "24:00", "Asia/Beirut"),
        window(&[Sun], "00:00", "02:00", "Asia/Beirut"),
    ];
    let rules = input(&windows, &[], "2022-03-26T20:00:00Z");
    assert!(decide(&rules).is_open());
    assert!(at(&rules, "2022-03-26T21:59:59Z").is_open());
    assert!(at(&rules, "2022-03-26T22:00:00Z").is_open());
    assert!(at(&rules, "2022-03-26T22:59:59Z").is_open());
    assert_waits(
        &at(&rules, "2022-03-26T23:00:00Z"),
        WaitReason::OutsideWindow,
        Some("2022-04-02T19:00:00Z"),
    );
}

#[test]
fn a_day_the_zone_skipped_has_no_window() {
    // Samoa skipped Friday 2011-12-30 (from -10 to +14 at 10:00 UTC).
    let tz: Tz = "Pacific/Apia".parse().unwrap();
    assert_eq!(
        to_instant(tz, local("2011-12-30", "10:00")),
        Some(utc("2011-12-30T10:00:00Z"))
    );
    let windows = [window(&[Fri], "10:00", "12:00", "Pacific/Apia")];
    let rules = input(&windows, &[], "2011-12-24T00:00:00Z");
    assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2012-01-05T20:00:00Z"),
    );
}

#[test]
fn a_freeze_then_a_window() {
    let windows = [window(&[Mon, Tue, Wed, Thu], "08:00", "16:00", STOCKHOLM)];
    let freezes = [freeze(
        "2026-12-20T00:00:00Z",
        "2027-01-06T00:00:00Z",
        "year-end freeze",
    )];
    // Tuesday 11:00 in Stockholm: inside the window, but frozen. The freeze ends at 01:00
    // local on Wednesday 2027-01-06; the window opens at 08:00.
    let rules = input(&windows, &freezes, "2026-12-22T10:00:00Z");
    let message = assert_waits(
        &decide(&rules),
        WaitReason::Frozen,
        Some("2027-01-06T07:00:00Z"),
    );
    assert_eq!(
        message,
        "frozen until 2027-01-06T00:00:00Z: year-end freeze; the earliest start the windows, freezes and notice allow is Wed 2027-01-06 08:00 Europe/Stockholm (2027-01-06T07:00:00Z)"
    );
    // The freeze's bounds: from is frozen, to is not.
    assert_waits(
        &at(&rules, "2026-12-19T23:59:59Z"),
        WaitReason::OutsideWindow,
        Some("2027-01-06T07:00:00Z"),
    );
    let no_windows = input(&[], &freezes, "2026-12-20T00:00:00Z");
    let message = assert_waits(
        &decide(&no_windows),
        WaitReason::Frozen,
        Some("2027-01-06T00:00:00Z"),
    );
    assert_eq!(
        message,
        "frozen until 2027-01-06T00:00:00Z: year-end freeze"
    );
    assert!(at(&no_windows, "2027-01-06T00:00:00Z").is_open());
    assert!(at(&no_windows, "2026-12-19T23:59:59Z").is_open());
}

#[test]
fn a_freeze_ending_inside_a_window_lets_the_release_start_at_its_end() {
    let windows = [window(&[Mon, Tue, Wed, Thu], "08:00", "16:00", STOCKHOLM)];
    let freezes = [freeze("2027-01-04T00:00:00Z", "2027-01-06T10:30:00Z", "")];
    let rules = input(&windows, &freezes, "2027-01-05T09:00:00Z");
    let message = assert_waits(
        &decide(&rules),
        WaitReason::Frozen,
        Some("2027-01-06T10:30:00Z"),
    );
    assert_eq!(message, "frozen until 2027-01-06T10:30:00Z");
}

#[test]
fn overlapping_freezes_and_freezes_of_other_stages() {
    let mut freezes = vec![
        freeze("2026-06-01T00:00:00Z", "2026-06-10T00:00:00Z", "first"),
        freeze("2026-06-09T00:00:00Z", "2026-06-20T00:00:00Z", "second"),
    ];
    let rules = input(&[], &freezes, "2026-06-05T00:00:00Z");
    let message = assert_waits(
        &decide(&rules),
        WaitReason::Frozen,
        Some("2026-06-20T00:00:00Z"),
    );
    assert!(
        message.starts_with("frozen until 2026-06-10T00:00:00Z: first; "),
        "{message}"
    );
    for f in &mut freezes {
        f.stages = vec!["qa".into()];
    }
    assert!(decide(&input(&[], &freezes, "2026-06-05T00:00:00Z")).is_open());
    let qa = ScheduleInput {
        stage: "qa",
        ..input(&[], &freezes, "2026-06-05T00:00:00Z")
    };
    assert!(!decide(&qa).is_open());
}

#[test]
fn notice_before_the_last_stage() {
    let windows = [window(&[Tue, Wed, Thu], "06:00", "09:00", STOCKHOLM)];
    let rules = ScheduleInput {
        release_type: ReleaseType::Major,
        notice: Some(Duration::from_secs(72 * 3600)),
        announced_at: Some(utc("2026-11-30T10:00:00Z")),
        ..input(&windows, &[], "2026-12-01T05:30:00Z")
    };
    // Inside the window, but the notice runs until Thursday 11:00 local, after that
    // week's windows: next Tuesday.
    let message = assert_waits(
        &decide(&rules),
        WaitReason::Notice,
        Some("2026-12-08T05:00:00Z"),
    );
    assert_eq!(
        message,
        "a major release enters prod no earlier than 72h after it was announced (at 2026-11-30T10:00:00Z), that is at 2026-12-03T10:00:00Z; the earliest start the windows, freezes and notice allow is Tue 2026-12-08 06:00 Europe/Stockholm (2026-12-08T05:00:00Z)"
    );
    assert!(at(&rules, "2026-12-08T05:00:00Z").is_open());
    // Other stages do not wait for the notice.
    let qa = ScheduleInput {
        stage: "qa",
        is_last_stage: false,
        ..rules
    };
    assert!(decide(&qa).is_open());
    // Not announced: no time can be given.
    let unannounced = ScheduleInput {
        announced_at: None,
        ..rules
    };
    let message = assert_waits(&decide(&unannounced), WaitReason::NotAnnounced, None);
    assert_eq!(
        message,
        "a major release enters prod no earlier than 72h after it was announced, and it has not been announced yet"
    );
    // Without windows the notice's end is the answer.
    let no_windows = ScheduleInput {
        windows: &[],
        ..rules
    };
    assert_waits(
        &decide(&no_windows),
        WaitReason::Notice,
        Some("2026-12-03T10:00:00Z"),
    );
    assert!(at(&no_windows, "2026-12-03T10:00:00Z").is_open());
    assert!(!at(&no_windows, "2026-12-03T09:59:59Z").is_open());
}

#[test]
fn several_windows_in_several_zones() {
    // Monday 2026-12-07: 06:00-09:00 in Stockholm (05:00-08:00 UTC) and 09:00-10:00 in
    // New York (14:00-15:00 UTC).
    let windows = [
        window(&[Mon], "06:00", "09:00", STOCKHOLM),
        window(&[Mon], "09:00", "10:00", "America/New_York"),
    ];
    let rules = input(&windows, &[], "2026-12-07T10:00:00Z");
    let message = assert_waits(
        &decide(&rules),
        WaitReason::OutsideWindow,
        Some("2026-12-07T14:00:00Z"),
    );
    assert!(
        message.ends_with(
            "the next opens Mon 2026-12-07 09:00 America/New_York (2026-12-07T14:00:00Z)"
        ),
        "{message}"
    );
    assert!(at(&rules, "2026-12-07T07:00:00Z").is_open());
    assert!(at(&rules, "2026-12-07T14:30:00Z").is_open());
    assert_waits(
        &at(&rules, "2026-12-07T15:00:00Z"),
        WaitReason::OutsideWindow,
        Some("2026-12-14T05:00:00Z"),
    );
    // Back-to-back windows leave no gap.
    let adjacent = [
        window(&[Mon], "06:00", "09:00", STOCKHOLM),
        window(&[Mon], "09:00", "12:00", STOCKHOLM),
    ];
    assert!(decide(&input(&adjacent, &[], "2026-12-07T08:00:00Z")).is_open());
    assert!(decide(&input(&adjacent, &[], "2026-12-07T10:59:59Z")).is_open());
}

#[test]
fn windows_of_other_stages_do_not_apply() {
    let mut windows = [window(&[Mon], "06:00", "09:00", STOCKHOLM)];
    windows[0].stages = vec!["qa".into()];
    assert!(decide(&input(&windows, &[], "2026-12-08T12:00:00Z")).is_open());
    assert!(decide(&input(&[], &[], "2026-12-08T12:00:00Z")).is_open());
    windows[0].stages = vec!["qa".into(), "prod".into()];
    assert!(!decide(&input(&windows, &[], "2026-12-08T12:00:00Z")).is_open());
}

#[test]
fn an_unknown_zone_never_opens_and_says_so() {
    let windows = [window(
        &[Mon, Tue, Wed, Thu, Fri, Sat, Sun],
        "00:00",
        "24:00",
        "Mars/Olympus_Mons",
    )];
    let rules = input(&windows, &[], "2026-12-07T10:00:00Z");
    let message = assert_waits(&decide(&rules), WaitReason::OutsideWindow, None);
    assert_eq!(
        message,
        "outside the release windows for minor releases; no window can be read, so none opens; window 1 is ignored: unknown time zone 'Mars/Olympus_Mons'"
    );
    // A readable window next to it still opens.
    let both = [
        windows[0].clone(),
        window(&[Tue], "06:00", "09:00", STOCKHOLM),
    ];
    let message = assert_waits(
        &decide(&input(&both, &[], "2026-12-07T10:00:00Z")),
        WaitReason::OutsideWindow,
        Some("2026-12-08T05:00:00Z"),
    );
    assert!(message.ends_with("; window 1 is ignored: unknown time zone 'Mars/Olympus_Mons'"));
}

#[test]
fn unreadable_windows_never_open() {
    let cases = [
        (
            window(&[Mon], "9:00", "10:00", "UTC"),
            "start '9:00' is not a time HH:MM",
        ),
        (
            window(&[Mon], "25:00", "26:00", "UTC"),
            "start '25:00' is not a time HH:MM",
        ),
        (
            window(&[Mon], "24:00", "24:00", "UTC"),
            "start '24:00' is not a time HH:MM",
        ),
        (
            window(&[Mon], "08:00", "08:60", "UTC"),
            "end '08:60' is not a time HH:MM or 24:00",
        ),
        (
            window(&[Mon], "０8:00", "09:00", "UTC"),
            "is not a time HH:MM",
        ),
        (
            window(&[Mon], "09:00", "08:00", "UTC"),
            "end 08:00 is not after start 09:00",
        ),
        (
            window(&[Mon], "09:00", "09:00", "UTC"),
            "end 09:00 is not after start 09:00",
        ),
        (window(&[], "09:00", "10:00", "UTC"), "it has no days"),
    ];
    for (window, why) in cases {
        let windows = [window];
        let message = assert_waits(
            &decide(&input(&windows, &[], "2026-12-07T09:30:00Z")),
            WaitReason::OutsideWindow,
            None,
        );
        assert!(message.contains(why), "{message}");
    }
}

#[test]
fn extreme_instants_do_not_panic() {
    let windows = [window(&[Mon], "06:00", "09:00", "Pacific/Kiritimati")];
    let forever = [Freeze {
        from: DateTime::<Utc>::MIN_UTC,
        to: DateTime::<Utc>::MAX_UTC,
        reason: None,
        stages: Vec::new(),
    }];
    let rules = input(&windows, &forever, "2026-12-07T10:00:00Z");
    let message = assert_waits(&decide(&rules), WaitReason::Frozen, None);
    assert!(
        message.ends_with("the rules allow no start within 400 days"),
        "{message}"
    );
    assert_waits(
        &decide(&input(&[], &forever, "2026-12-07T10:00:00Z")),
        WaitReason::Frozen,
        Some(&rfc3339(DateTime::<Utc>::MAX_UTC)),
    );
    for now in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
        let rules = ScheduleInput {
            now,
            ..input(&windows, &[], "2026-12-07T10:00:00Z")
        };
        assert_eq!(decide(&rules).until(now), None);
    }
    let huge_notice = ScheduleInput {
        notice: Some(Duration::MAX),
        announced_at: Some(utc("2026-12-01T00:00:00Z")),
        ..input(&[], &[], "2026-12-07T10:00:00Z")
    };
    assert_waits(&decide(&huge_notice), WaitReason::Notice, None);
    let inverted = [freeze(
        "2026-12-10T00:00:00Z",
        "2026-12-01T00:00:00Z",
        "backwards",
    )];
    assert!(decide(&input(&[], &inverted, "2026-12-07T10:00:00Z")).is_open());
}

#[test]
fn durations_and_reasons_for_people() {
    assert_eq!(format_duration(Duration::from_secs(72 * 3600)), "72h");
    assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    assert_eq!(format_duration(Duration::from_secs(45)), "45s");
    assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(WaitReason::OutsideWindow.as_str(), "OutsideWindow");
    assert_eq!(WaitReason::NotAnnounced.as_str(), "NotAnnounced");
}

// Property tests, against an independent reading of the rules: a window is open while the
// latest time a wall clock in its zone has shown so far lies in it. Where the clock never
// went back that is the time it shows; in a repeated hour it is the time shown just before
// the clocks went back. This is the DST rule of the module documentation put another way
// (a local time stands for the first instant at which that reading reaches it).

const ZONES: [&str; 6] = [
    "Europe/Stockholm",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "UTC",
];

/// The latest time a wall clock in `tz` has shown up to `t`, to the second. The clocks of
/// the zones tested go back at most an hour, so looking three hours back suffices.
fn latest_wall_clock(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    let offset = |u: DateTime<Utc>| tz.offset_from_utc_datetime(&u.naive_utc()).fix();
    let shown = |u: DateTime<Utc>| u.with_timezone(&tz).naive_local();
    let mut latest = shown(t);
    let step = TimeDelta::minutes(30);
    let mut u = t - TimeDelta::hours(3);
    while u < t {
        let next = (u + step).min(t);
        if offset(u) != offset(next) {
            // A change in (u, next]: find it, and take the last second before it.
            let (mut before, mut after) = (u, next);
            while after - before > TimeDelta::seconds(1) {
                let mid = before + (after - before) / 2;
                if offset(mid) == offset(before) {
                    before = mid;
                } else {
                    after = mid;
                }
            }
            latest = latest.max(shown(before));
        }
        u = next;
    }
    latest
}

/// Whether `window` is open at `t` by that reading.
fn wall_clock_open(window: &Window, t: DateTime<Utc>) -> bool {
    let tz: Tz = window.time_zone.parse().unwrap();
    let clock = latest_wall_clock(tz, t);
    let time = clock.time();
    let start = NaiveTime::parse_from_str(&window.start, "%H:%M").unwrap();
    let before_end =
        window.end == "24:00" || time < NaiveTime::parse_from_str(&window.end, "%H:%M").unwrap();
    let day = window.days.iter().any(|d| d.to_chrono() == clock.weekday());
    day && start <= time && before_end
}

/// Whether every rule lets the stage start at `t`.
fn oracle(input: &ScheduleInput, t: DateTime<Utc>) -> bool {
    let applies = |stages: &[String]| stages.is_empty() || stages.iter().any(|s| s == input.stage);
    if let (true, Some(notice)) = (input.is_last_stage, input.notice) {
        match input.announced_at {
            Some(announced) if t >= announced + TimeDelta::from_std(notice).unwrap() => {}
            _ => return false,
        }
    }
    let frozen = input
        .freezes
        .iter()
        .any(|f| applies(&f.stages) && f.from <= t && t < f.to);
    let mut windows = input
        .windows
        .iter()
        .filter(|w| applies(&w.stages))
        .peekable();
    !frozen && (windows.peek().is_none() || windows.any(|w| wall_clock_open(w, t)))
}

#[test]
fn the_wall_clock_reading_of_the_fall_back_night() {
    let tz = stockholm();
    let read = |t| latest_wall_clock(tz, utc(t)).format("%H:%M:%S").to_string();
    assert_eq!(read("2026-10-25T00:59:59Z"), "02:59:59");
    assert_eq!(read("2026-10-25T01:00:00Z"), "02:59:59");
    assert_eq!(read("2026-10-25T01:59:59Z"), "02:59:59");
    assert_eq!(read("2026-10-25T02:00:00Z"), "03:00:00");
    assert_eq!(read("2026-03-29T01:00:00Z"), "03:00:00");
}

fn clock(minutes: u32) -> String {
    if minutes == 24 * 60 {
        "24:00".into()
    } else {
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    }
}

fn stages() -> impl Strategy<Value = Vec<String>> {
    prop::sample::select(vec![vec![], vec!["prod".to_owned()], vec!["qa".to_owned()]])
}

fn window_strategy() -> impl Strategy<Value = Window> {
    let start = prop_oneof![
        0u32..24 * 60,
        (0u32..24, prop::sample::select(vec![0u32, 15, 30, 45])).prop_map(|(h, m)| h * 60 + m),
        // Around the nights the clocks change.
        60u32..5 * 60,
    ];
    let days = prop::collection::btree_set(
        prop::sample::select(vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun]),
        1..=7,
    );
    (
        days,
        start,
        1u32..=15 * 60,
        prop::sample::select(ZONES.to_vec()),
        stages(),
    )
        .prop_map(|(days, start, length, zone, stages)| Window {
            days: days.into_iter().collect(),
            start: clock(start),
            end: clock((start + length).min(24 * 60)),
            time_zone: zone.into(),
            stages,
        })
}

fn clock_change_day() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        (Just(3u32), 5u32..=31),
        (Just(4), 1u32..=7),
        (Just(9), 20u32..=30),
        (Just(10), 1u32..=31),
        (Just(11), 1u32..=7),
    ]
}

fn instant_strategy() -> impl Strategy<Value = DateTime<Utc>> {
    let from = utc("2000-01-01T00:00:00Z").timestamp();
    let to = utc("2041-01-01T00:00:00Z").timestamp();
    prop_oneof![
        (from..to).prop_map(|ts| DateTime::from_timestamp(ts, 0).unwrap()),
        // In or just before the weeks in which these zones change their clocks.
        (2000i32..=2040, clock_change_day(), 0i64..86_400).prop_map(|(y, (m, d), s)| {
            NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                + TimeDelta::seconds(s)
        }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    windows: Vec<Window>,
    freezes: Vec<Freeze>,
    is_last_stage: bool,
    notice: Option<Duration>,
    announced_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl Case {
    fn input(&self) -> ScheduleInput<'_> {
        ScheduleInput {
            stage: "prod",
            is_last_stage: self.is_last_stage,
            release_type: ReleaseType::Major,
            windows: &self.windows,
            freezes: &self.freezes,
            notice: self.notice,
            announced_at: self.announced_at,
            now: self.now,
        }
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let freeze = (-5 * 86_400i64..30 * 86_400, 3600i64..20 * 86_400, stages());
    (
        prop::collection::vec(window_strategy(), 0..=3),
        prop::collection::vec(freeze, 0..=3),
        any::<bool>(),
        prop::option::of(0u64..100 * 3600),
        prop::option::weighted(0.9, 0i64..200 * 3600),
        instant_strategy(),
    )
        .prop_map(
            |(windows, freezes, is_last_stage, notice, announced, now)| Case {
                windows,
                freezes: freezes
                    .into_iter()
                    .map(|(start, length, stages)| Freeze {
                        from: now + TimeDelta::seconds(start),
                        to: now + TimeDelta::seconds(start + length),
                        reason: None,
                        stages,
                    })
                    .collect(),
                is_last_stage,
                notice: notice.map(Duration::from_secs),
                announced_at: announced.map(|ago| now - TimeDelta::seconds(ago)),
                now,
            },
        )
}

/// The clock changes of `tz` in `year`.
fn clock_changes(tz: Tz, year: i32) -> Vec<DateTime<Utc>> {
    let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    let start = NaiveDate::from_ymd_opt(year, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let step = TimeDelta::hours(6);
    let mut changes = Vec::new();
    let mut t = start;
    while t.year() == year {
        if offset(t) != offset(t + step) {
            let (mut before, mut after) = (t, t + step);
            while after - before > TimeDelta::seconds(1) {
                let mid = before + (after - before) / 2;
                if offset(mid) == offset(before) {
                    before = mid;
                } else {
                    after = mid;
                }
            }
            changes.push(after);
        }
        t += step;
    }
    changes
}

/// Windows starting or ending near the moment a zone changes its clocks, on that day and
/// others, looked at from two days before the change to a few hours after it.
fn dst_night_strategy() -> impl Strategy<Value = Case> {
    let zones = prop::sample::select(vec![
        "Europe/Stockholm",
        "America/New_York",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
    ]);
    let window = (
        prop::collection::btree_set(
            prop::sample::select(vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun]),
            0..=3,
        ),
        // Start relative to the wall-clock time of the change, in minutes.
        -150i32..=90,
        prop_oneof![1u32..=180, Just(24 * 60)],
    );
    (
        zones,
        2000i32..=2040,
        any::<prop::sample::Index>(),
        -2 * 86_400i64..6 * 3600,
        prop::collection::vec(window, 1..=2),
    )
        .prop_map(|(zone, year, which, offset, windows)| {
            let tz: Tz = zone.parse().unwrap();
            let change = *which.get(&clock_changes(tz, year));
            // The wall clock just before the change: 02:00 or 03:00 in Stockholm.
            let before = (change - TimeDelta::seconds(1))
                .with_timezone(&tz)
                .naive_local()
                + TimeDelta::seconds(1);
            let minute_of_day =
                i32::try_from(before.time().num_seconds_from_midnight() / 60).unwrap();
            let day = [Mon, Tue, Wed, Thu, Fri, Sat, Sun]
                [before.weekday().num_days_from_monday() as usize];
            let windows = windows
                .into_iter()
                .map(|(days, start, length)| {
                    let start =
                        u32::try_from((minute_of_day + start).clamp(0, 24 * 60 - 1)).unwrap();
                    Window {
                        days: days
                            .into_iter()
                            .chain([day])
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        start: clock(start),
                        end: clock((start + length).min(24 * 60)),
                        time_zone: zone.into(),
                        stages: Vec::new(),
                    }
                })
                .collect();
            Case {
                windows,
                freezes: Vec::new(),
                is_last_stage: false,
                notice: None,
                announced_at: None,
                now: change + TimeDelta::seconds(offset),
            }
        })
}

/// Open at `now` exactly when the wall-clock reading of the rules allows it.
fn check_open_matches_the_rules(case: &Case) -> Result<(), TestCaseError> {
    let input = case.input();
    let decision = decide(&input);
    prop_assert_eq!(
        decision.is_open(),
        oracle(&input, case.now),
        "{:?}",
        decision
    );
    Ok(())
}

/// `until` is allowed, later than `now`, and nothing between is.
fn check_until_is_earliest(case: &Case) -> Result<(), TestCaseError> {
    let input = case.input();
    let at = |t: DateTime<Utc>| decide(&ScheduleInput { now: t, ..input });
    let ScheduleDecision::Wait { until, reason, .. } = decide(&input) else {
        return Ok(());
    };
    let Some(until) = until else {
        // Weekly windows and freezes of at most 20 days always leave an opening.
        prop_assert_eq!(reason, WaitReason::NotAnnounced);
        return Ok(());
    };
    prop_assert!(until > case.now);
    prop_assert!(at(until).is_open());
    prop_assert!(oracle(&input, until));
    let span = until - case.now;
    let samples = (0..50)
        .map(|i| case.now + span * i / 50)
        .chain([until - TimeDelta::seconds(1)])
        .filter(|t| *t >= case.now);
    for t in samples {
        let decision = at(t);
        prop_assert!(!decision.is_open(), "open at {t}, before {until}");
        prop_assert_eq!(decision.until(t), Some(until), "at {}", t);
        prop_assert!(!oracle(&input, t), "allowed at {}, before {}", t, until);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn open_exactly_when_every_rule_allows(case in case_strategy()) {
        check_open_matches_the_rules(&case)?;
    }

    #[test]
    fn until_is_the_earliest_allowed_instant(case in case_strategy()) {
        check_until_is_earliest(&case)?;
    }

    #[test]
    fn on_the_nights_clocks_change(case in dst_night_strategy()) {
        check_open_matches_the_rules(&case)?;
        check_until_is_earliest(&case)?;
    }

    #[test]
    fn deterministic_and_independent_of_order(case in case_strategy()) {
        let input = case.input();
        let decision = decide(&input);
        prop_assert_eq!(&decision, &decide(&input));
        let mut reversed = case.clone();
        reversed.windows.reverse();
        reversed.freezes.reverse();
        let other = decide(&reversed.input());
        prop_assert_eq!(decision.until(case.now), other.until(case.now));
        if let (
            ScheduleDecision::Wait { reason, .. },
            ScheduleDecision::Wait { reason: other_reason, .. },
        ) = (&decision, &other)
        {
            prop_assert_eq!(reason, other_reason);
        }
    }
}
