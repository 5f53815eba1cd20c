//! When a release may start a stage: release windows, freezes and the notice a major
//! release gives before its last stage.
//!
//! [`decide`] takes everything it needs, the time included, and answers either
//! [`ScheduleDecision::Open`] (the stage may start now) or [`ScheduleDecision::Wait`] with
//! the earliest instant at which every rule lets it start (what `status.nextWindow`
//! shows), why it waits now, and a sentence for people. The rules only gate the *start* of
//! a stage: a stage that has started finishes, and a rollback is never asked.
//!
//! # The rules
//!
//! - **Windows** (of the release's type; a window with an empty `stages` list applies to
//!   every stage). A window is open, on each of its days, from its local start time up to,
//!   not including, its local end time in its IANA time zone; `24:00` is the end of the
//!   day, that is midnight starting the next local day. With several windows the stage may
//!   start when any of them is open. When no window applies to the stage it may start at
//!   any time (freezes and notice still apply). A window that cannot be read (unknown
//!   zone, malformed time, end not after start, no days) never opens, and the message
//!   says so; admission refuses such windows, so this is a safety net, not a feature.
//! - **Freezes** (`stages` empty = every stage): no stage starts in `[from, to)`.
//! - **Notice**: on the last stage only, not before `announced_at + notice`; a release
//!   that has not been announced cannot enter it at all yet, so no instant is given.
//!
//! # Daylight-saving time
//!
//! Each occurrence of a window is the interval of instants from its start to its end,
//! both read as local times on the window's local day and mapped to instants with
//! the tz database (chrono-tz):
//!
//! - a local time that does not exist, because the clocks jump forward over it (02:30 on
//!   the last Sunday of March in Europe/Stockholm), is read as the first instant after the
//!   gap (03:00 local, 01:00 UTC). A window from 02:30 to 04:00 is open from 03:00 to
//!   04:00 that night; a window lying wholly in the gap (02:00 to 02:45) does not open
//!   that night; a day a zone skipped altogether (Pacific/Apia, 30 December 2011) has no
//!   window either;
//! - a local time that occurs twice, because the clocks go back (02:30 on the last Sunday
//!   of October in Europe/Stockholm), is read as its earlier occurrence. A window from
//!   02:30 to 04:00 is then open from the first 02:30 (00:30 UTC) to 04:00 (03:00 UTC),
//!   two and a half hours, the repeated hour included; a window from 01:00 to 02:30 closes
//!   at the first 02:30 and does not reopen when the clocks go back.
//!
//! Put differently, a local time is read as the earliest instant at which a clock on the
//! wall in that zone shows it or a later time of that day. Instants are therefore never
//! ambiguous, each window's occurrences are disjoint and in order, and the earliest start
//! is well defined.
//!
//! # The earliest start
//!
//! `until` is the earliest instant at or after `now` at which a window is open, no freeze
//! holds and the notice has passed, all together. It is found by stepping forward through
//! the instants where something changes: from `max(now, end of notice)`, past the end of
//! any freeze holding, to the next window opening, and again, until an instant satisfies
//! all rules. Each step looks for the next window opening at most [`SEARCH_DAYS`] days
//! ahead; a window that opens nowhere in that time never opens, and `until` is `None`.

use std::cmp::max;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, SecondsFormat, TimeDelta, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;
use stagecoach_api::pipeline::{Freeze, Window};
use stagecoach_api::release::ReleaseType;

/// How far ahead, in days, the next opening of a window is looked for.
pub const SEARCH_DAYS: i64 = 400;

/// Everything [`decide`] needs to know about one release entering one stage.
#[derive(Clone, Copy, Debug)]
pub struct ScheduleInput<'a> {
    /// The stage the release would start.
    pub stage: &'a str,
    /// Whether that is the pipeline's last stage (the only one the notice applies to).
    pub is_last_stage: bool,
    /// The kind of release, for the message.
    pub release_type: ReleaseType,
    /// All windows of the release's type; those whose `stages` do not name `stage` (when
    /// not empty) are left out here.
    pub windows: &'a [Window],
    /// All freezes of the pipeline; filtered by `stages` the same way.
    pub freezes: &'a [Freeze],
    /// The notice of the release's type, if it has one. Applies to the last stage only.
    pub notice: Option<Duration>,
    /// When the release was announced. With a notice and on the last stage, `None` means
    /// it cannot start yet and no time can be given.
    pub announced_at: Option<DateTime<Utc>>,
    /// The current time.
    pub now: DateTime<Utc>,
}

/// Whether a release may start a stage now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleDecision {
    /// The stage may start now.
    Open,
    /// The stage may not start now.
    Wait {
        /// The earliest instant at or after `now` at which every rule lets it start;
        /// `None` when none can be computed (not announced yet, no window opens within
        /// [`SEARCH_DAYS`] days, no window can be read).
        until: Option<DateTime<Utc>>,
        /// What holds the release back now (the first that applies of: not announced,
        /// frozen, notice, outside the windows).
        reason: WaitReason,
        /// One line for people, such as "outside the release windows for minor releases;
        /// the next opens Tue 2026-12-01 06:00 Europe/Stockholm (2026-12-01T05:00:00Z)".
        message: String,
    },
}

impl ScheduleDecision {
    /// Whether the stage may start now.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// When it may start: `now` when open, the earliest allowed instant when waiting.
    pub fn until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Open => Some(now),
            Self::Wait { until, .. } => *until,
        }
    }
}

/// What holds a release back at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WaitReason {
    /// No window of the release's type is open for the stage.
    OutsideWindow,
    /// A freeze holds.
    Frozen,
    /// The release was announced less than the notice ago.
    Notice,
    /// The release has to give notice and has not been announced yet.
    NotAnnounced,
}

impl WaitReason {
    /// The reason as a word, for a condition's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutsideWindow => "OutsideWindow",
            Self::Frozen => "Frozen",
            Self::Notice => "Notice",
            Self::NotAnnounced => "NotAnnounced",
        }
    }
}

/// Whether the release may start the stage at `input.now`, and if not, from when.
pub fn decide(input: &ScheduleInput) -> ScheduleDecision {
    let rules = Rules::new(input);
    let now = input.now;
    let kind = release_type_name(input.release_type);

    let notice = match (input.is_last_stage, input.notice) {
        (true, Some(notice)) => Some(notice),
        _ => None,
    };
    // The end of the notice: None when there is none, Some(None) when it cannot be
    // represented (it never ends).
    let notice_end = match (notice, input.announced_at) {
        (None, _) => None,
        (Some(notice), Some(announced)) => Some(
            TimeDelta::from_std(notice)
                .ok()
                .and_then(|d| announced.checked_add_signed(d)),
        ),
        (Some(notice), None) => {
            let mut message = format!(
                "a {kind} release enters {} no earlier than {} after it was announced, and it has not been announced yet",
                input.stage,
                format_duration(notice),
            );
            rules.note_unreadable(&mut message);
            return ScheduleDecision::Wait {
                until: None,
                reason: WaitReason::NotAnnounced,
                message,
            };
        }
    };

    let until = match notice_end {
        None => rules.earliest(now),
        Some(None) => None,
        Some(Some(end)) => rules.earliest(max(now, end)),
    };
    if until == Some(now) {
        return ScheduleDecision::Open;
    }

    let (reason, mut message, said) = if let Some(freeze) = rules.freeze_at(now) {
        let mut message = format!("frozen until {}", rfc3339(freeze.to));
        if let Some(why) = freeze.reason.as_deref().filter(|r| !r.is_empty()) {
            message.push_str(": ");
            message.push_str(why);
        }
        (WaitReason::Frozen, message, Some(freeze.to))
    } else if let Some(end) = notice_end.filter(|end| end.is_none_or(|end| end > now)) {
        let (notice, announced) = (
            notice.map(format_duration).unwrap_or_default(),
            input.announced_at.map(rfc3339).unwrap_or_default(),
        );
        let mut message = format!(
            "a {kind} release enters {} no earlier than {notice} after it was announced (at {announced})",
            input.stage,
        );
        if let Some(end) = end {
            let _ = write!(message, ", that is at {}", rfc3339(end));
        }
        (WaitReason::Notice, message, end)
    } else {
        let mut message = format!("outside the release windows for {kind} releases");
        let next = rules.next_window_open(now);
        if let Some(next) = next {
            let _ = write!(message, "; the next opens {}", rules.describe(next));
        }
        (WaitReason::OutsideWindow, message, next)
    };
    match until {
        Some(until) if said != Some(until) => {
            let _ = write!(
                message,
                "; the earliest start the windows, freezes and notice allow is {}",
                rules.describe(until)
            );
        }
        Some(_) => {}
        None if rules.windows_apply && rules.windows.is_empty() => {
            message.push_str("; no window can be read, so none opens");
        }
        None => {
            let _ = write!(
                message,
                "; the rules allow no start within {SEARCH_DAYS} days"
            );
        }
    }
    rules.note_unreadable(&mut message);
    ScheduleDecision::Wait {
        until,
        reason,
        message,
    }
}

/// The windows and freezes that apply to one stage.
struct Rules<'a> {
    /// Whether any window applies to the stage (readable or not).
    windows_apply: bool,
    /// The readable windows that apply.
    windows: Vec<LocalWindow>,
    /// Why the others cannot be read, one line each.
    unreadable: Vec<String>,
    freezes: Vec<&'a Freeze>,
}

impl<'a> Rules<'a> {
    fn new(input: &ScheduleInput<'a>) -> Self {
        let applies =
            |stages: &[String]| stages.is_empty() || stages.iter().any(|s| s == input.stage);
        let mut windows = Vec::new();
        let mut unreadable = Vec::new();
        let mut windows_apply = false;
        for (index, window) in input.windows.iter().enumerate() {
            if !applies(&window.stages) {
                continue;
            }
            windows_apply = true;
            match LocalWindow::parse(window) {
                Ok(window) => windows.push(window),
                Err(why) => unreadable.push(format!("window {} is ignored: {why}", index + 1)),
            }
        }
        let freezes = input
            .freezes
            .iter()
            .filter(|f| applies(&f.stages))
            .collect();
        Self {
            windows_apply,
            windows,
            unreadable,
            freezes,
        }
    }

    /// The earliest instant at or after `from` at which a window is open and no freeze
    /// holds.
    fn earliest(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = from;
        // Each freeze is stepped over at most once, and a step to a window opening is
        // followed by a success or by a freeze: the bound is never reached.
        for _ in 0..2 * self.freezes.len() + 4 {
            if let Some(freeze) = self.freeze_at(t) {
                t = freeze.to;
                continue;
            }
            let open = self.next_window_open(t)?;
            if open == t {
                return Some(t);
            }
            t = open;
        }
        None
    }

    /// The freeze holding at `t` that ends last.
    fn freeze_at(&self, t: DateTime<Utc>) -> Option<&'a Freeze> {
        self.freezes
            .iter()
            .copied()
            .filter(|f| f.from <= t && t < f.to)
            .max_by_key(|f| f.to)
    }

    /// The earliest instant at or after `t` at which a window is open (freezes aside).
    fn next_window_open(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.windows_apply {
            return Some(t);
        }
        let limit = t.checked_add_signed(TimeDelta::days(SEARCH_DAYS))?;
        self.windows
            .iter()
            .filter_map(|w| w.next_open(t, limit))
            .min()
    }

    /// An instant for people: in the zone of a window open then, and in UTC.
    fn describe(&self, t: DateTime<Utc>) -> String {
        match self.windows.iter().find(|w| w.is_open(t)) {
            Some(w) => {
                let local = t.with_timezone(&w.tz);
                let format = if local.second() == 0 {
                    "%a %Y-%m-%d %H:%M"
                } else {
                    "%a %Y-%m-%d %H:%M:%S"
                };
                format!("{} {} ({})", local.format(format), w.tz.name(), rfc3339(t))
            }
            None => rfc3339(t),
        }
    }

    fn note_unreadable(&self, message: &mut String) {
        for line in &self.unreadable {
            message.push_str("; ");
            message.push_str(line);
        }
    }
}

/// Instants outside these years are not computed with (chrono cannot always represent
/// their local time); nothing a pipeline says comes near them.
const SUPPORTED_YEARS: std::ops::Range<i32> = 1000..9000;

/// The longest run of local time a zone has skipped is a day (Pacific/Apia, 2011); this
/// many minutes comfortably cover it.
const LONGEST_GAP_MINUTES: i64 = 48 * 60;

/// A readable window.
struct LocalWindow {
    tz: Tz,
    /// Indexed by days from Monday.
    days: [bool; 7],
    /// Minutes after local midnight.
    start: u32,
    /// Minutes after local midnight, up to 1440 (24:00).
    end: u32,
}

impl LocalWindow {
    fn parse(window: &Window) -> Result<Self, String> {
        let tz = stagecoach_api::tz::parse(&window.time_zone)
            .ok_or_else(|| format!("unknown time zone '{}'", window.time_zone))?;
        let start = parse_clock(&window.start, false)
            .ok_or_else(|| format!("start '{}' is not a time HH:MM", window.start))?;
        let end = parse_clock(&window.end, true)
            .ok_or_else(|| format!("end '{}' is not a time HH:MM or 24:00", window.end))?;
        if end <= start {
            return Err(format!(
                "end {} is not after start {}",
                window.end, window.start
            ));
        }
        if window.days.is_empty() {
            return Err("it has no days".to_owned());
        }
        let mut days = [false; 7];
        for day in &window.days {
            days[day.to_chrono().num_days_from_monday() as usize] = true;
        }
        Ok(Self {
            tz,
            days,
            start,
            end,
        })
    }

    /// The window's occurrence on local day `day`, if it opens that day.
    fn occurrence(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days[day.weekday().num_days_from_monday() as usize] {
            return None;
        }
        let start = to_instant(self.tz, local_time(day, self.start)?)?;
        let end = to_instant(self.tz, local_time(day, self.end)?)?;
        (start < end).then_some((start, end))
    }

    /// The earliest instant at or after `t`, and not after `limit`, at which the window is
    /// open.
    fn next_open(&self, t: DateTime<Utc>, limit: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Occurrences are disjoint and in order of their day, and the one containing `t`
        // (if any) belongs to t's local day or, after clocks went back over midnight, to
        // the next: the first that ends after `t` is the answer.
        let mut day = local_date(self.tz, t)?.pred_opt()?;
        let last = local_date(self.tz, limit)?.succ_opt()?;
        while day <= last {
            if let Some((start, end)) = self.occurrence(day)
                && end > t
            {
                let open = max(start, t);
                return (open <= limit).then_some(open);
            }
            day = day.succ_opt()?;
        }
        None
    }

    fn is_open(&self, t: DateTime<Utc>) -> bool {
        self.next_open(t, t) == Some(t)
    }
}

/// Minutes after midnight of "HH:MM" (00:00 to 23:59, and 24:00 when `end_of_day`).
fn parse_clock(text: &str, end_of_day: bool) -> Option<u32> {
    let bytes = text.as_bytes();
    let digit = |i: usize| {
        bytes
            .get(i)
            .filter(|b| b.is_ascii_digit())
            .map(|b| u32::from(b - b'0'))
    };
    if bytes.len() != 5 || bytes[2] != b':' {
        return None;
    }
    let hours = digit(0)? * 10 + digit(1)?;
    let minutes = digit(3)? * 10 + digit(4)?;
    match (hours, minutes) {
        (0..=23, 0..=59) => Some(hours * 60 + minutes),
        (24, 0) if end_of_day => Some(24 * 60),
        _ => None,
    }
}

/// The local date and time `minutes` after the start of `day` (1440: the next midnight).
fn local_time(day: NaiveDate, minutes: u32) -> Option<NaiveDateTime> {
    if minutes >= 24 * 60 {
        return day.succ_opt()?.and_hms_opt(0, 0, 0);
    }
    day.and_hms_opt(minutes / 60, minutes % 60, 0)
}

/// The local date at `t` in `tz`, for supported instants.
fn local_date(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDate> {
    SUPPORTED_YEARS
        .contains(&t.year())
        .then(|| t.with_timezone(&tz).date_naive())
}

/// The instant a local time stands for: itself when it occurs once, its earlier
/// occurrence when the clocks went back over it, the first instant after the gap when
/// they jumped forward over it.
fn to_instant(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    if !SUPPORTED_YEARS.contains(&local.year()) {
        return None;
    }
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return Some(t.with_timezone(&Utc));
    }
    // In a gap. The first local minute after it that exists tells the offset after the
    // jump; the jump happened after `local` read with that offset (the gap starts at or
    // before `local`) and at or before that minute.
    let after = (1..=LONGEST_GAP_MINUTES).find_map(|m| {
        let later = local.checked_add_signed(TimeDelta::minutes(m))?;
        tz.from_local_datetime(&later).earliest()
    })?;
    let offset_after = after.offset().fix();
    let has_offset_after = |ts: i64| {
        DateTime::from_timestamp(ts, 0)
            .is_some_and(|u| tz.offset_from_utc_datetime(&u.naive_utc()).fix() == offset_after)
    };
    let mut before = local.and_utc().timestamp() - i64::from(offset_after.local_minus_utc());
    let mut jump = after.timestamp();
    if has_offset_after(before) {
        // Not a single jump; the first whole minute after the gap is near enough.
        return Some(after.with_timezone(&Utc));
    }
    // Transitions fall on whole seconds: search them.
    while jump - before > 1 {
        let mid = before + (jump - before) / 2;
        if has_offset_after(mid) {
            jump = mid;
        } else {
            before = mid;
        }
    }
    DateTime::from_timestamp(jump, 0)
}

fn release_type_name(release_type: ReleaseType) -> &'static str {
    match release_type {
        ReleaseType::Patch => "patch",
        ReleaseType::Minor => "minor",
        ReleaseType::Major => "major",
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A duration as people write it in a spec: 72h, 1h30m, 45s.
fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    if total == 0 {
        return format!("{}ms", duration.subsec_millis());
    }
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if value > 0 {
            let _ = write!(text, "{value}{unit}");
        }
    }
    text
}

#[cfg(test)]
mod tests;
