//! Gate providers, the pure part: what an answer means. The operator does the IO (it
//! sends the Prometheus query, calls the URL, creates the Job and reads its pod's log)
//! and hands the answer to these functions, which turn it into a [`Measurement`]; the
//! planner folds measurements into the gate's tally ([`super::gate`]).
//!
//! The rule throughout: an answer that cannot be read as a verdict is Inconclusive, never
//! Passing. Failing is kept for answers that say the release is bad, or that the gate as
//! written can never pass (Prometheus refusing the query as unparsable, an HTTP field
//! that is missing or cannot be compared).

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use stagecoach_api::parse_duration;
use stagecoach_api::release::{Comparison, Gate, GateVerdict, HttpGate, JobGate, PrometheusGate};

use super::gate::Measurement;

/// Time between two evaluations of a gate without `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Longest wait for a Prometheus or HTTP answer without `timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest run of a Job gate without `timeout`.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// A finished gate Job is deleted by Kubernetes this long after it finished.
pub const JOB_TTL_SECONDS: u64 = 600;
/// Lines of a Job's log kept in the gate's message.
pub const LOG_TAIL_LINES: usize = 10;
/// Characters of a Job's log kept in the gate's message.
pub const LOG_TAIL_CHARS: usize = 1000;
/// Characters of a response body quoted in a message.
pub const BODY_EXCERPT_CHARS: usize = 300;
/// Characters of a measured value kept (a JSON field may be a whole object).
pub const VALUE_CHARS: usize = 256;
/// Name of the Job's one container.
pub const JOB_CONTAINER: &str = "gate";
/// Labels of gate Jobs and their pods.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const RELEASE_LABEL: &str = "stagecoach.dev/release";
pub const GATE_LABEL: &str = "stagecoach.dev/gate";
pub const STAGE_LABEL: &str = "stagecoach.dev/stage";
/// Annotation of a gate Job: the evaluation it runs (as given to [`job_manifest`]).
pub const EVALUATION_ANNOTATION: &str = "stagecoach.dev/evaluation";

/// What a gate is evaluated for: the placeholders of queries, URLs and bodies, and the
/// environment of a Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateContext<'a> {
    pub stage: &'a str,
    pub namespace: &'a str,
    pub release: &'a str,
    pub version: &'a str,
}

impl GateContext<'_> {
    fn placeholder(&self, key: &str) -> Option<&str> {
        match key {
            "stage" => Some(self.stage),
            "namespace" => Some(self.namespace),
            "release" => Some(self.release),
            "version" => Some(self.version),
            _ => None,
        }
    }
}

/// Replaces {{stage}}, {{namespace}}, {{release}}, {{version}} (also with spaces inside the braces).
/// Anything else between double braces is left as it is.
pub fn render(template: &str, ctx: &GateContext<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let inner = &rest[open + 2..];
        let known = inner
            .find("}}")
            .and_then(|close| Some((close, ctx.placeholder(inner[..close].trim())?)));
        if let Some((close, value)) = known {
            out.push_str(value);
            rest = &inner[close + 2..];
        } else {
            // Not a placeholder: keep one brace and look again from the next one, so
            // `{{{stage}}}` still finds `{{stage}}`.
            out.push('{');
            rest = &rest[open + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether `value` compares true against `expected`.
pub fn compare(value: f64, comparison: Comparison, expected: f64) -> bool {
    #[allow(clippy::float_cmp)] // Equal and NotEqual mean exactly that
    match comparison {
        Comparison::LessThan => value < expected,
        Comparison::LessOrEqual => value <= expected,
        Comparison::GreaterThan => value > expected,
        Comparison::GreaterOrEqual => value >= expected,
        Comparison::Equal => value == expected,
        Comparison::NotEqual => value != expected,
    }
}

/// The comparison in words: "below", "at least"...
fn phrase(comparison: Comparison) -> &'static str {
    match comparison {
        Comparison::LessThan => "below",
        Comparison::LessOrEqual => "at most",
        Comparison::GreaterThan => "above",
        Comparison::GreaterOrEqual => "at least",
        Comparison::Equal => "equal to",
        Comparison::NotEqual => "other than",
    }
}

fn measurement(
    verdict: GateVerdict,
    message: String,
    value: Option<String>,
    at: DateTime<Utc>,
) -> Measurement {
    Measurement {
        verdict,
        message,
        value: value.map(|v| head(&v, VALUE_CHARS)),
        at,
    }
}

/// The URL of the instant-query endpoint under a Prometheus `address` (a path prefix,
/// such as Google Cloud Managed Service for Prometheus's, is kept).
pub fn query_url(address: &str) -> String {
    format!("{}/api/v1/query", address.trim_end_matches('/'))
}

/// Prometheus /api/v1/query answer -> measurement. 200 with status=success and exactly one
/// sample (vector of 1 or scalar) that parses as a finite number: compare with threshold
/// -> Passing/Failing, value = the number. Empty vector, NaN/Inf, >1 series,
/// matrix/string result: Inconclusive with a message saying which. 400 (bad_data, e.g.
/// unparsable query): Failing with Prometheus's error message (the query is wrong and
/// will never pass). 422 (execution error)/5xx/other: Inconclusive with the error.
pub fn prometheus_measurement(
    http_status: u16,
    body: &str,
    gate: &PrometheusGate,
    at: DateTime<Utc>,
) -> Measurement {
    let inconclusive = |message: String| measurement(GateVerdict::Inconclusive, message, None, at);
    let answer: Option<Value> = serde_json::from_str(body).ok();
    let field = |key: &str| {
        answer
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error = || field("error").unwrap_or_else(|| excerpt(body));
    match http_status {
        200 => {}
        400 => {
            return measurement(
                GateVerdict::Failing,
                format!(
                    "Prometheus refused the query ({}): {}; the query as written can never pass",
                    field("errorType").unwrap_or_else(|| "bad_data".into()),
                    error()
                ),
                None,
                at,
            );
        }
        422 => {
            return inconclusive(format!(
                "Prometheus could not run the query ({}): {}",
                field("errorType").unwrap_or_else(|| "execution".into()),
                error()
            ));
        }
        status => return inconclusive(format!("Prometheus answered HTTP {status}: {}", error())),
    }
    let Some(answer) = &answer else {
        return inconclusive(format!(
            "Prometheus's answer is not JSON: {}",
            excerpt(body)
        ));
    };
    if answer.get("status").and_then(Value::as_str) != Some("success") {
        return inconclusive(format!(
            "Prometheus answered status {}: {}",
            field("status").unwrap_or_else(|| "(none)".into()),
            error()
        ));
    }
    let text = match single_sample(&answer["data"]) {
        Ok(text) => text,
        Err(why) => return inconclusive(why),
    };
    let Ok(number) = text.trim().parse::<f64>() else {
        return inconclusive(format!("the query returned {text:?}, not a number"));
    };
    if !number.is_finite() {
        return measurement(
            GateVerdict::Inconclusive,
            format!("the query returned {text}, not a finite number"),
            Some(text.to_owned()),
            at,
        );
    }
    let comparison = phrase(gate.comparison);
    let threshold = gate.threshold;
    if compare(number, gate.comparison, threshold) {
        measurement(
            GateVerdict::Passing,
            format!("query result {text} is {comparison} the threshold {threshold}"),
            Some(text.to_owned()),
            at,
        )
    } else {
        measurement(
            GateVerdict::Failing,
            format!("query result {text} is not {comparison} the threshold {threshold}"),
            Some(text.to_owned()),
            at,
        )
    }
}

/// The one sample of a query's data (a vector of one series, or a scalar), as text; why
/// not, when the result is anything else.
fn single_sample(data: &Value) -> Result<&str, String> {
    let sample = match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => match data
            .get("result")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([]) => {
                return Err(
                    "the query returned no data (an empty vector): nothing to judge".into(),
                );
            }
            Some([one]) => &one["value"][1],
            Some(many) => {
                return Err(format!(
                    "the query returned {} series, expected one (aggregate it, with sum or max say)",
                    many.len()
                ));
            }
            None => return Err("the answer's vector has no result list".into()),
        },
        Some("scalar") => &data["result"][1],
        Some(other) => {
            return Err(format!(
                "the query returned a {other}, expected one number (a vector of one series or a scalar)"
            ));
        }
        None => return Err("the answer has no resultType".into()),
    };
    sample
        .as_str()
        .ok_or_else(|| "the answer's sample has no value".into())
}

/// HTTP answer -> measurement. A status other than `expectedStatus` (default 200) is
/// Failing, except 429 and 5xx, which are Inconclusive (the service is overloaded or
/// down; that says nothing about the release). With `jsonPointer` the body must be JSON
/// and the field must exist (else Failing, saying why); it is compared with `value`
/// using `comparison` (default Equal): as numbers when both are numbers (a JSON number,
/// or a string holding one), else as text, where only Equal and NotEqual apply (another
/// comparison is Failing: "cannot compare"). With a pointer and no `value`, the field
/// must be neither false nor null. With `value` and no pointer, the whole body (trimmed)
/// is the field. The measured value is the field, or the status code without one.
pub fn http_measurement(
    http_status: u16,
    body: &str,
    gate: &HttpGate,
    at: DateTime<Utc>,
) -> Measurement {
    let expected_status = gate.expected_status.unwrap_or(200);
    let code = http_status.to_string();
    if i32::from(http_status) != expected_status {
        let verdict = if http_status == 429 || (500..600).contains(&http_status) {
            GateVerdict::Inconclusive
        } else {
            GateVerdict::Failing
        };
        return measurement(
            verdict,
            format!(
                "HTTP {http_status}, expected {expected_status}: {}",
                excerpt(body)
            ),
            Some(code),
            at,
        );
    }
    let failing = |message: String, value: Option<String>| {
        measurement(GateVerdict::Failing, message, value, at)
    };
    let (field, name) = match (gate.json_pointer.as_deref(), gate.value.as_deref()) {
        (None, None) => {
            return measurement(
                GateVerdict::Passing,
                format!("HTTP {http_status}"),
                Some(code),
                at,
            );
        }
        (Some(pointer), _) => match json_field(http_status, body, pointer) {
            Ok(found) => found,
            Err(why) => return failing(why, None),
        },
        (None, Some(_)) => (Value::String(body.trim().to_owned()), "the body".to_owned()),
    };
    let text = match &field {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let Some(expected) = gate.value.as_deref() else {
        return if matches!(field, Value::Null | Value::Bool(false)) {
            failing(format!("{name} is {text}"), Some(text))
        } else {
            measurement(
                GateVerdict::Passing,
                format!("{name} is {text}"),
                Some(text),
                at,
            )
        };
    };
    let comparison = gate.comparison.unwrap_or(Comparison::Equal);
    let field_number = match &field {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite());
    let expected_number = expected
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite());
    let holds = match (field_number, expected_number, comparison) {
        (Some(a), Some(b), _) => compare(a, comparison, b),
        (_, _, Comparison::Equal) => text == expected,
        (_, _, Comparison::NotEqual) => text != expected,
        _ => {
            return failing(
                format!(
                    "cannot compare {name} {text:?} with {expected:?} using {comparison:?}: \
                     text compares with Equal or NotEqual only"
                ),
                Some(text),
            );
        }
    };
    let comparison = phrase(comparison);
    if holds {
        measurement(
            GateVerdict::Passing,
            format!("{name} is {text}, {comparison} {expected}"),
            Some(text),
            at,
        )
    } else {
        failing(
            format!("{name} is {text}, expected {comparison} {expected}"),
            Some(text),
        )
    }
}

/// The field at `pointer` in a JSON body, and how to name it; why not, when the body is
/// not JSON or has no such field.
fn json_field(http_status: u16, body: &str, pointer: &str) -> Result<(Value, String), String> {
    let Ok(document) = serde_json::from_str::<Value>(body) else {
        return Err(format!(
            "HTTP {http_status}, but the body is not JSON, so {} cannot be read: {}",
            describe_pointer(pointer),
            excerpt(body)
        ));
    };
    match document.pointer(pointer) {
        Some(field) => Ok((field.clone(), describe_pointer(pointer))),
        None => Err(format!(
            "HTTP {http_status}, but the response has no {}",
            describe_pointer(pointer)
        )),
    }
}

fn describe_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        "the document".into()
    } else {
        format!("field {pointer}")
    }
}

/// A request that got no answer (timeout, connection refused, TLS error): Inconclusive,
/// message names the cause.
pub fn unreachable_measurement(what: &str, error: &str, at: DateTime<Utc>) -> Measurement {
    measurement(
        GateVerdict::Inconclusive,
        format!("no answer from {what}: {error}"),
        None,
        at,
    )
}

/// Where a gate's Job is, as the operator reads it from the Job's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not finished yet.
    Running,
    /// Condition Complete.
    Succeeded,
    /// Condition Failed, for any reason but its deadline.
    Failed,
    /// Condition Failed with reason DeadlineExceeded: Kubernetes stopped it at
    /// `activeDeadlineSeconds` (the gate's timeout). Inconclusive, like a Job still
    /// running past its timeout: the test did not say the release is bad.
    DeadlineExceeded,
}

/// A Job evaluation: Succeeded -> Passing, Failed -> Failing, Running past `timeout` since
/// `started` (or DeadlineExceeded) -> Inconclusive ("did not finish within 10m"), Running
/// before -> None (no measurement yet). `log_tail` (last lines of the pod log, may be
/// empty) is appended to the message, cut to the last [`LOG_TAIL_LINES`] lines and
/// [`LOG_TAIL_CHARS`] characters.
pub fn job_measurement(
    state: JobState,
    started: DateTime<Utc>,
    timeout: Duration,
    log_tail: &str,
    at: DateTime<Utc>,
) -> Option<Measurement> {
    let late = || format!("the Job did not finish within {}", human(timeout));
    let (verdict, message) = match state {
        JobState::Succeeded => (GateVerdict::Passing, "the Job succeeded".to_owned()),
        JobState::Failed => (GateVerdict::Failing, "the Job failed".to_owned()),
        JobState::DeadlineExceeded => (GateVerdict::Inconclusive, late()),
        JobState::Running => {
            let ran = (at - started).to_std().unwrap_or(Duration::ZERO);
            if ran < timeout {
                return None;
            }
            (GateVerdict::Inconclusive, late())
        }
    };
    let tail = tail(log_tail);
    let message = if tail.is_empty() {
        message
    } else {
        format!("{message}; last log lines:\n{tail}")
    };
    Some(measurement(verdict, message, None, at))
}

/// The last [`LOG_TAIL_LINES`] lines of a log, at most [`LOG_TAIL_CHARS`] characters
/// (the end is kept).
fn tail(log: &str) -> String {
    let log = log.trim_end();
    let lines: Vec<&str> = log.lines().collect();
    let kept = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    let count = kept.chars().count();
    if count <= LOG_TAIL_CHARS {
        kept
    } else {
        kept.chars().skip(count - LOG_TAIL_CHARS).collect()
    }
}

/// The name of the Job of one evaluation: `<release>-<gate>-<hash>`, a DNS label of at
/// most 63 characters; the hash (of release, gate, stage and evaluation) keeps names of
/// different evaluations apart even when the readable part is cut.
pub fn job_name(release: &str, gate_name: &str, stage: &str, evaluation: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [release, gate_name, stage, evaluation] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hash: String = digest[..4].iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    });
    let readable: String = format!("{release}-{gate_name}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let readable = readable.trim_matches('-');
    let readable: String = readable.chars().take(63 - 1 - hash.len()).collect();
    let readable = readable.trim_end_matches('-');
    if readable.is_empty() {
        format!("gate-{hash}")
    } else {
        format!("{readable}-{hash}")
    }
}

/// A label value from any text: at most 63 characters of letters, digits, '-', '_' and
/// '.', starting and ending with a letter or digit.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Environment variables every gate Job gets (they override the gate's own).
pub const JOB_ENV: [&str; 4] = [
    "STAGECOACH_RELEASE",
    "STAGECOACH_VERSION",
    "STAGECOACH_STAGE",
    "STAGECOACH_NAMESPACE",
];

/// The Job manifest (JSON) for one evaluation: name from [`job_name`], namespace = stage
/// namespace, labels app.kubernetes.io/managed-by=stagecoach, stagecoach.dev/release,
/// stagecoach.dev/gate, stagecoach.dev/stage (also on its pod), the evaluation in an
/// annotation; backoffLimit 0, activeDeadlineSeconds = timeout, ttlSecondsAfterFinished
/// [`JOB_TTL_SECONDS`]; restartPolicy Never; one container `gate` with image, command,
/// args and env from the gate plus STAGECOACH_RELEASE, STAGECOACH_VERSION,
/// STAGECOACH_STAGE, STAGECOACH_NAMESPACE.
pub fn job_manifest(
    gate_name: &str,
    job: &JobGate,
    ctx: &GateContext<'_>,
    evaluation: &str,
) -> Value {
    let name = job_name(ctx.release, gate_name, ctx.stage, evaluation);
    let timeout = duration_or(job.timeout.as_deref(), DEFAULT_JOB_TIMEOUT);
    let labels = json!({
        MANAGED_BY_LABEL: "stagecoach",
        RELEASE_LABEL: label_value(ctx.release),
        GATE_LABEL: label_value(gate_name),
        STAGE_LABEL: label_value(ctx.stage),
    });
    let ours = [ctx.release, ctx.version, ctx.stage, ctx.namespace];
    let env: Vec<Value> = job
        .env
        .iter()
        .filter(|e| !JOB_ENV.contains(&e.name.as_str()))
        .map(|e| json!({"name": e.name, "value": e.value}))
        .chain(
            JOB_ENV
                .iter()
                .zip(ours)
                .map(|(name, value)| json!({"name": name, "value": value})),
        )
        .collect();
    let mut container = Map::new();
    container.insert("name".into(), JOB_CONTAINER.into());
    container.insert("image".into(), job.image.clone().into());
    if !job.command.is_empty() {
        container.insert("command".into(), json!(job.command));
    }
    if !job.args.is_empty() {
        container.insert("args".into(), json!(job.args));
    }
    container.insert("env".into(), Value::Array(env));
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "labels": labels,
            "annotations": {EVALUATION_ANNOTATION: evaluation},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout.as_secs().max(1),
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [Value::Object(container)],
                },
            },
        },
    })
}

/// Default interval (30s) parsed from the gate (also when it does not parse, which
/// admission refuses).
pub fn interval_of(gate: &Gate) -> Duration {
    duration_or(gate.interval.as_deref(), DEFAULT_INTERVAL).max(Duration::from_secs(1))
}

/// The gate's timeout: its provider's `timeout`, else 10s for Prometheus and HTTP, 10m
/// for a Job.
pub fn timeout_of(gate: &Gate) -> Duration {
    if let Some(job) = &gate.job {
        duration_or(job.timeout.as_deref(), DEFAULT_JOB_TIMEOUT)
    } else {
        let text = gate
            .prometheus
            .as_ref()
            .and_then(|p| p.timeout.as_deref())
            .or_else(|| gate.http.as_ref().and_then(|h| h.timeout.as_deref()));
        duration_or(text, DEFAULT_REQUEST_TIMEOUT)
    }
}

fn duration_or(text: Option<&str>, default: Duration) -> Duration {
    text.and_then(|t| parse_duration(t).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

/// A duration as people write it: 10m, 90s, 1h30m.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// The first [`BODY_EXCERPT_CHARS`] characters of a body, on one line.
fn excerpt(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "(empty body)".into()
    } else {
        head(&one_line, BODY_EXCERPT_CHARS)
    }
}

fn head(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(chars).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests;
