//! Provider answers as the servers give them, and what they mean.

#![allow(clippy::unwrap_used)] // test fixtures

use chrono::TimeZone;
use proptest::prelude::*;
use stagecoach_api::release::EnvVar;

use super::*;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap()
}

fn ctx() -> GateContext<'static> {
    GateContext {
        stage: "prod",
        namespace: "billing-prod",
        release: "billing-2.4.0",
        version: "2.4.0",
    }
}

fn prometheus(comparison: Comparison, threshold: f64) -> PrometheusGate {
    PrometheusGate {
        address: "http://prometheus:9090".into(),
        query: "sum(rate(errors[5m]))".into(),
        comparison,
        threshold,
        bearer_token_secret_ref: None,
        ca_secret_ref: None,
        timeout: None,
    }
}

fn vector(samples: &[&str]) -> String {
    let result: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"metric": {"pod": format!("api-{i}")}, "value": [1_800_000_000.5, v]}))
        .collect();
    json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
}

fn http(pointer: Option<&str>, comparison: Option<Comparison>, value: Option<&str>) -> HttpGate {
    HttpGate {
        url: "https://sentry.example/api/0/issues".into(),
        method: None,
        headers: vec![],
        body: None,
        expected_status: None,
        json_pointer: pointer.map(str::to_owned),
        comparison,
        value: value.map(str::to_owned),
        timeout: None,
    }
}

// ----- render -----------------------------------------------------------------------------

#[test]
fn render_replaces_the_four_placeholders_with_or_without_spaces() {
    let query = r#"sum(rate(http_errors{namespace="{{namespace}}", stage="{{ stage }}"}[5m])) / {{release}}@{{  version}}"#;
    assert_eq!(
        render(query, &ctx()),
        r#"sum(rate(http_errors{namespace="billing-prod", stage="prod"}[5m])) / billing-2.4.0@2.4.0"#
    );
}

#[test]
fn render_leaves_anything_else_alone() {
    for text in [
        "",
        "no placeholders",
        "{{unknown}}",
        "{{ stage",
        "up{job=\"api\"}",
        "}} {{",
        "{{{}}}",
    ] {
        assert_eq!(render(text, &ctx()), text);
    }
    // Something that is not a placeholder does not hide one after it.
    assert_eq!(render("{{x {{stage}}", &ctx()), "{{x prod");
    assert_eq!(render("up{{{stage}}}", &ctx()), "up{prod}");
}

proptest! {
    #[test]
    fn render_without_double_braces_is_the_identity(text in "[^{]*") {
        prop_assert_eq!(render(&text, &ctx()), text);
    }

    /// No placeholder survives, whatever braces surround it.
    #[test]
    fn render_leaves_no_placeholder(parts in proptest::collection::vec(prop_oneof![
        Just("{{stage}}"), Just("{{ version }}"), Just("{{release}}"), Just("{{namespace}}"),
        Just("{"), Just("}"), Just("{{"), Just("}}"), Just(" "), Just("x"), Just("stage"),
    ], 0..16)) {
        let text: String = parts.concat();
        let out = render(&text, &ctx());
        for key in ["stage", "namespace", "release", "version"] {
            prop_assert!(!out.contains(&format!("{{{{{key}}}}}")), "{{{{{}}}}} left in {}", key, out);
            prop_assert!(!out.contains(&format!("{{{{ {key} }}}}")), "{} left in {}", key, out);
        }
    }
}

// ----- prometheus -----------------------------------------------------------------------------

#[test]
fn one_sample_compares_with_the_threshold() {
    let gate = prometheus(Comparison::LessThan, 0.05);
    let ok = prometheus_measurement(200, &vector(&["0.01"]), &gate, at());
    assert_eq!(ok.verdict, GateVerdict::Passing, "{}", ok.message);
    assert_eq!(ok.value.as_deref(), Some("0.01"));
    assert_eq!(ok.at, at());
    assert!(
        ok.message.contains("0.01") && ok.message.contains("0.05"),
        "{}",
        ok.message
    );
    let bad = prometheus_measurement(200, &vector(&["0.07"]), &gate, at());
    assert_eq!(bad.verdict, GateVerdict::Failing, "{}", bad.message);
    assert_eq!(bad.value.as_deref(), Some("0.07"));
    assert!(bad.message.contains("not below"), "{}", bad.message);
}

#[test]
fn every_comparison_of_a_sample() {
    use Comparison::{Equal, GreaterOrEqual, GreaterThan, LessOrEqual, LessThan, NotEqual};
    let cases = [
        (LessThan, "1", false),
        (LessOrEqual, "1", true),
        (GreaterThan, "1", false),
        (GreaterOrEqual, "1", true),
        (Equal, "1", true),
        (NotEqual, "1", false),
        (GreaterThan, "2", true),
        (NotEqual, "2", true),
    ];
    for (comparison, sample, passes) in cases {
        let m = prometheus_measurement(200, &vector(&[sample]), &prometheus(comparison, 1.0), at());
        let expected = if passes {
            GateVerdict::Passing
        } else {
            GateVerdict::Failing
        };
        assert_eq!(
            m.verdict, expected,
            "{comparison:?} {sample}: {}",
            m.message
        );
    }
}

#[test]
fn a_scalar_result_is_one_sample() {
    let body = json!({"status": "success", "data": {"resultType": "scalar", "result": [1_800_000_000, "3"]}});
    let m = prometheus_measurement(
        200,
        &body.to_string(),
        &prometheus(Comparison::GreaterOrEqual, 3.0),
        at(),
    );
    assert_eq!(m.verdict, GateVerdict::Passing, "{}", m.message);
    assert_eq!(m.value.as_deref(), Some("3"));
}

#[test]
fn results_that_are_not_one_number_are_inconclusive_and_say_which() {
    let gate = prometheus(Comparison::LessThan, 0.05);
    let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[1, "0.01"], [2, "0.02"]]}
    ]}});
    let string =
        json!({"status": "success", "data": {"resultType": "string", "result": [1, "hello"]}});
    let cases = [
        (vector(&[]), "empty vector"),
        (vector(&["NaN"]), "NaN"),
        (vector(&["+Inf"]), "+Inf"),
        (vector(&["-Inf"]), "-Inf"),
        (vector(&["0.01", "0.02"]), "2 series"),
        (matrix.to_string(), "matrix"),
        (string.to_string(), "string"),
        (vector(&["abc"]), "not a number"),
        ("<html>proxy</html>".to_owned(), "not JSON"),
        (
            json!({"status": "error", "error": "oops"}).to_string(),
            "oops",
        ),
    ];
    for (body, why) in cases {
        let m = prometheus_measurement(200, &body, &gate, at());
        assert_eq!(m.verdict, GateVerdict::Inconclusive, "{why}: {}", m.message);
        assert!(m.message.contains(why), "{why}: {}", m.message);
    }
}

#[test]
fn an_unparsable_query_fails_with_prometheus_own_words() {
    let body = json!({
        "status": "error",
        "errorType": "bad_data",
        "error": "invalid parameter \"query\": 1:6: parse error: unexpected right parenthesis ')'"
    });
    let m = prometheus_measurement(
        400,
        &body.to_string(),
        &prometheus(Comparison::LessThan, 1.0),
        at(),
    );
    assert_eq!(m.verdict, GateVerdict::Failing);
    assert!(m.message.contains("bad_data"), "{}", m.message);
    assert!(
        m.message.contains("unexpected right parenthesis"),
        "{}",
        m.message
    );
    assert_eq!(m.value, None);
}

#[test]
fn execution_errors_and_server_errors_are_inconclusive() {
    let gate = prometheus(Comparison::LessThan, 1.0);
    let timeout = json!({"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"});
    let execution = json!({"status": "error", "errorType": "execution", "error": "many-to-many matching not allowed"});
    let cases = [
        (422, execution.to_string(), "many-to-many"),
        (503, timeout.to_string(), "timed out"),
        (502, "Bad Gateway".to_owned(), "HTTP 502"),
        (401, String::new(), "HTTP 401"),
    ];
    for (status, body, why) in cases {
        let m = prometheus_measurement(status, &body, &gate, at());
        assert_eq!(
            m.verdict,
            GateVerdict::Inconclusive,
            "{status}: {}",
            m.message
        );
        assert!(m.message.contains(why), "{status}: {}", m.message);
    }
}

#[test]
fn the_query_url_keeps_a_path_prefix() {
    assert_eq!(
        query_url("http://prometheus:9090"),
        "http://prometheus:9090/api/v1/query"
    );
    assert_eq!(
        query_url("https://monitoring.googleapis.com/v1/projects/p/location/global/prometheus/"),
        "https://monitoring.googleapis.com/v1/projects/p/location/global/prometheus/api/v1/query"
    );
}

proptest! {
    /// Whatever a server answers, a Prometheus gate passes only on a 200 with one finite
    /// sample that meets the threshold.
    #[test]
    fn prometheus_passes_only_on_one_good_sample(status in prop_oneof![Just(200u16), 100u16..600], body in ".{0,80}", sample in prop_oneof![Just("NaN".to_owned()), Just("0.5".to_owned()), "[-+0-9.eInfa]{0,6}"]) {
        let gate = prometheus(Comparison::LessThan, 1.0);
        let m = prometheus_measurement(status, &body, &gate, at());
        prop_assert_ne!(m.verdict, GateVerdict::Passing);
        let m = prometheus_measurement(status, &vector(&[&sample]), &gate, at());
        if m.verdict == GateVerdict::Passing {
            prop_assert_eq!(status, 200);
            let n: f64 = sample.parse().unwrap();
            prop_assert!(n.is_finite() && n < 1.0);
        }
    }
}

// ----- http -------------------------------------------------------------------------------

#[test]
fn the_status_code_decides_without_a_pointer() {
    let gate = http(None, None, None);
    let ok = http_measurement(200, "fine", &gate, at());
    assert_eq!(
        (ok.verdict, ok.value.as_deref()),
        (GateVerdict::Passing, Some("200"))
    );
    let not_found = http_measurement(404, "no such page", &gate, at());
    assert_eq!(not_found.verdict, GateVerdict::Failing);
    assert!(
        not_found
            .message
            .contains("HTTP 404, expected 200: no such page"),
        "{}",
        not_found.message
    );
    for busy in [429, 500, 503] {
        let m = http_measurement(busy, "", &gate, at());
        assert_eq!(m.verdict, GateVerdict::Inconclusive, "{busy}");
        assert_eq!(m.value, Some(busy.to_string()));
    }
    // The expected status may be anything, a 204 or even a 503.
    let mut no_content = gate.clone();
    no_content.expected_status = Some(204);
    assert_eq!(
        http_measurement(204, "", &no_content, at()).verdict,
        GateVerdict::Passing
    );
    assert_eq!(
        http_measurement(200, "", &no_content, at()).verdict,
        GateVerdict::Failing
    );
}

#[test]
fn a_json_field_compares_as_a_number_when_both_sides_are_numbers() {
    use Comparison::{Equal, GreaterThan, LessOrEqual, LessThan};
    let cases = [
        (r#"{"count": 0}"#, Some(Equal), "0", GateVerdict::Passing),
        (r#"{"count": 0.0}"#, Some(Equal), "0", GateVerdict::Passing),
        (r#"{"count": "0"}"#, None, "0.0", GateVerdict::Passing),
        (r#"{"count": 3}"#, Some(LessThan), "5", GateVerdict::Passing),
        (
            r#"{"count": 12}"#,
            Some(LessThan),
            "5",
            GateVerdict::Failing,
        ),
        (
            r#"{"count": "12"}"#,
            Some(LessOrEqual),
            "12",
            GateVerdict::Passing,
        ),
        (
            r#"{"count": 12}"#,
            Some(GreaterThan),
            " 5 ",
            GateVerdict::Passing,
        ),
    ];
    for (body, comparison, value, verdict) in cases {
        let m = http_measurement(
            200,
            body,
            &http(Some("/count"), comparison, Some(value)),
            at(),
        );
        assert_eq!(
            m.verdict, verdict,
            "{body} {comparison:?} {value}: {}",
            m.message
        );
        assert!(m.message.contains("/count"), "{}", m.message);
    }
    let m = http_measurement(
        200,
        r#"{"count": 12}"#,
        &http(Some("/count"), Some(LessThan), Some("5")),
        at(),
    );
    assert_eq!(m.value.as_deref(), Some("12"));
    assert!(m.message.contains("expected below 5"), "{}", m.message);
}

#[test]
fn a_json_field_compares_as_text_otherwise() {
    use Comparison::{Equal, GreaterThan, NotEqual};
    let body = r#"{"data": [{"status": "ok", "healthy": true, "errors": null}]}"#;
    let cases = [
        ("/data/0/status", None, "ok", GateVerdict::Passing),
        (
            "/data/0/status",
            Some(Equal),
            "degraded",
            GateVerdict::Failing,
        ),
        (
            "/data/0/status",
            Some(NotEqual),
            "degraded",
            GateVerdict::Passing,
        ),
        ("/data/0/healthy", None, "true", GateVerdict::Passing),
        ("/data/0/errors", Some(Equal), "null", GateVerdict::Passing),
    ];
    for (pointer, comparison, value, verdict) in cases {
        let m = http_measurement(
            200,
            body,
            &http(Some(pointer), comparison, Some(value)),
            at(),
        );
        assert_eq!(
            m.verdict, verdict,
            "{pointer} {comparison:?} {value}: {}",
            m.message
        );
    }
    let m = http_measurement(
        200,
        body,
        &http(Some("/data/0/status"), Some(GreaterThan), Some("5")),
        at(),
    );
    assert_eq!(m.verdict, GateVerdict::Failing);
    assert!(m.message.contains("cannot compare"), "{}", m.message);
    assert_eq!(m.value.as_deref(), Some("ok"));
}

#[test]
fn a_missing_field_or_a_body_that_is_not_json_fails_and_says_why() {
    let gate = http(Some("/count"), None, Some("0"));
    let missing = http_measurement(200, r#"{"total": 0}"#, &gate, at());
    assert_eq!(missing.verdict, GateVerdict::Failing);
    assert!(
        missing.message.contains("no field /count"),
        "{}",
        missing.message
    );
    let html = http_measurement(200, "<html>login</html>", &gate, at());
    assert_eq!(html.verdict, GateVerdict::Failing);
    assert!(
        html.message.contains("not JSON") && html.message.contains("login"),
        "{}",
        html.message
    );
}

#[test]
fn a_pointer_without_value_wants_the_field_present_and_not_false_or_null() {
    let gate = http(Some("/healthy"), None, None);
    assert_eq!(
        http_measurement(200, r#"{"healthy": true}"#, &gate, at()).verdict,
        GateVerdict::Passing
    );
    assert_eq!(
        http_measurement(200, r#"{"healthy": "yes"}"#, &gate, at()).verdict,
        GateVerdict::Passing
    );
    assert_eq!(
        http_measurement(200, r#"{"healthy": false}"#, &gate, at()).verdict,
        GateVerdict::Failing
    );
    assert_eq!(
        http_measurement(200, r#"{"healthy": null}"#, &gate, at()).verdict,
        GateVerdict::Failing
    );
    // The empty pointer is the whole document.
    let whole = http(Some(""), None, Some("7"));
    assert_eq!(
        http_measurement(200, "7", &whole, at()).verdict,
        GateVerdict::Passing
    );
}

#[test]
fn a_value_without_pointer_compares_the_body() {
    let gate = http(None, None, Some("OK"));
    assert_eq!(
        http_measurement(200, "OK\n", &gate, at()).verdict,
        GateVerdict::Passing
    );
    let m = http_measurement(200, "DEGRADED", &gate, at());
    assert_eq!(m.verdict, GateVerdict::Failing);
    assert!(m.message.contains("the body is DEGRADED"), "{}", m.message);
}

#[test]
fn long_values_and_bodies_are_cut() {
    let big = "x".repeat(5000);
    let m = http_measurement(404, &big, &http(None, None, None), at());
    assert!(
        m.message.chars().count() < BODY_EXCERPT_CHARS + 50,
        "{}",
        m.message.len()
    );
    let body = json!({"blob": big}).to_string();
    let m = http_measurement(200, &body, &http(Some("/blob"), None, Some("y")), at());
    assert!(m.value.unwrap().chars().count() <= VALUE_CHARS + 1);
}

#[test]
fn no_answer_is_inconclusive_and_names_the_cause() {
    let m = unreachable_measurement(
        "Prometheus at http://prometheus:9090",
        "operation timed out after 10s",
        at(),
    );
    assert_eq!(m.verdict, GateVerdict::Inconclusive);
    assert!(
        m.message.contains("http://prometheus:9090") && m.message.contains("timed out"),
        "{}",
        m.message
    );
}

// ----- job --------------------------------------------------------------------------------

#[test]
fn a_job_passes_when_it_succeeds_and_fails_when_it_fails() {
    let started = at() - chrono::Duration::minutes(2);
    let ten = Duration::from_secs(600);
    let ok = job_measurement(JobState::Succeeded, started, ten, "", at()).unwrap();
    assert_eq!(
        (ok.verdict, ok.message.as_str()),
        (GateVerdict::Passing, "the Job succeeded")
    );
    let failed =
        job_measurement(JobState::Failed, started, ten, "1 passed\n2 failed\n", at()).unwrap();
    assert_eq!(failed.verdict, GateVerdict::Failing);
    assert!(
        failed
            .message
            .ends_with("last log lines:\n1 passed\n2 failed"),
        "{}",
        failed.message
    );
}

#[test]
fn a_job_that_runs_past_its_timeout_is_inconclusive() {
    let started = at();
    let ten = Duration::from_secs(600);
    assert_eq!(
        job_measurement(
            JobState::Running,
            started,
            ten,
            "",
            at() + chrono::Duration::minutes(9)
        ),
        None
    );
    let late = job_measurement(
        JobState::Running,
        started,
        ten,
        "still waiting",
        at() + chrono::Duration::minutes(10),
    )
    .unwrap();
    assert_eq!(late.verdict, GateVerdict::Inconclusive);
    assert!(
        late.message.contains("did not finish within 10m"),
        "{}",
        late.message
    );
    assert!(late.message.contains("still waiting"), "{}", late.message);
    let stopped = job_measurement(
        JobState::DeadlineExceeded,
        started,
        Duration::from_secs(90),
        "",
        at(),
    )
    .unwrap();
    assert_eq!(stopped.verdict, GateVerdict::Inconclusive);
    assert!(
        stopped.message.contains("within 1m30s"),
        "{}",
        stopped.message
    );
}

#[test]
fn the_log_tail_is_bounded_and_keeps_the_end() {
    let log = (1..=50)
        .map(|i| format!("line {i}\n"))
        .collect::<Vec<_>>()
        .concat();
    let m = job_measurement(JobState::Failed, at(), Duration::from_secs(60), &log, at()).unwrap();
    let tail = m.message.split_once("last log lines:\n").unwrap().1;
    assert_eq!(tail.lines().count(), LOG_TAIL_LINES);
    assert!(
        tail.starts_with("line 41") && tail.ends_with("line 50"),
        "{tail}"
    );
    let wide = format!("{}END", "é".repeat(3000));
    let m = job_measurement(JobState::Failed, at(), Duration::from_secs(60), &wide, at()).unwrap();
    let tail = m.message.split_once("last log lines:\n").unwrap().1;
    assert_eq!(tail.chars().count(), LOG_TAIL_CHARS);
    assert!(tail.ends_with("END"));
}

fn job() -> JobGate {
    JobGate {
        image: "registry.example/billing-e2e:7".into(),
        command: vec!["/bin/run-suite".into()],
        args: vec!["--fast".into()],
        env: vec![
            EnvVar {
                name: "SUITE".into(),
                value: "smoke".into(),
            },
            EnvVar {
                name: "STAGECOACH_STAGE".into(),
                value: "spoofed".into(),
            },
        ],
        timeout: Some("15m".into()),
    }
}

#[test]
fn the_job_manifest_runs_the_gate_once_with_the_release_in_its_environment() {
    let manifest = job_manifest("e2e", &job(), &ctx(), "prod/2/1");
    let name = manifest["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("billing-2-4-0-e2e-") && name.len() <= 63,
        "{name}"
    );
    assert_eq!(manifest["apiVersion"], "batch/v1");
    assert_eq!(manifest["kind"], "Job");
    assert_eq!(manifest["metadata"]["namespace"], "billing-prod");
    assert_eq!(
        manifest["metadata"]["annotations"][EVALUATION_ANNOTATION],
        "prod/2/1"
    );
    let labels = json!({
        "app.kubernetes.io/managed-by": "stagecoach",
        "stagecoach.dev/release": "billing-2.4.0",
        "stagecoach.dev/gate": "e2e",
        "stagecoach.dev/stage": "prod",
    });
    assert_eq!(manifest["metadata"]["labels"], labels);
    let spec = &manifest["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 900);
    assert_eq!(spec["ttlSecondsAfterFinished"], 600);
    assert_eq!(spec["template"]["metadata"]["labels"], labels);
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
    let containers = spec["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "gate");
    assert_eq!(c["image"], "registry.example/billing-e2e:7");
    assert_eq!(c["command"], json!(["/bin/run-suite"]));
    assert_eq!(c["args"], json!(["--fast"]));
    assert_eq!(
        c["env"],
        json!([
            {"name": "SUITE", "value": "smoke"},
            {"name": "STAGECOACH_RELEASE", "value": "billing-2.4.0"},
            {"name": "STAGECOACH_VERSION", "value": "2.4.0"},
            {"name": "STAGECOACH_STAGE", "value": "prod"},
            {"name": "STAGECOACH_NAMESPACE", "value": "billing-prod"},
        ])
    );
    // Without command and args the image's entrypoint runs; the default timeout is 10m.
    let plain = JobGate {
        command: vec![],
        args: vec![],
        env: vec![],
        timeout: None,
        ..job()
    };
    let manifest = job_manifest("e2e", &plain, &ctx(), "prod/2/1");
    let c = &manifest["spec"]["template"]["spec"]["containers"][0];
    assert!(c.get("command").is_none() && c.get("args").is_none());
    assert_eq!(manifest["spec"]["activeDeadlineSeconds"], 600);
}

#[test]
fn job_names_differ_per_evaluation_and_stay_dns_labels() {
    let a = job_name("billing-2.4.0", "e2e", "prod", "prod/2/1");
    assert_eq!(
        a,
        job_name("billing-2.4.0", "e2e", "prod", "prod/2/1"),
        "deterministic"
    );
    assert_ne!(a, job_name("billing-2.4.0", "e2e", "prod", "prod/2/2"));
    assert_ne!(a, job_name("billing-2.4.0", "e2e", "qa", "prod/2/1"));
    let long = "a".repeat(200);
    let x = job_name(&long, "load-test", "demo", "1");
    let y = job_name(&long, "smoke-test", "demo", "1");
    assert_ne!(x, y, "cut names still differ by their hash");
}

proptest! {
    #[test]
    fn job_names_are_dns_labels(release in "[a-z0-9.\\-]{1,253}", gate in "[a-z0-9\\-]{1,63}", stage in "[a-z0-9]{1,20}", evaluation in ".{0,20}") {
        let name = job_name(&release, &gate, &stage, &evaluation);
        prop_assert!(name.len() <= 63, "{}", name);
        prop_assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{}", name);
        prop_assert!(!name.starts_with('-') && !name.ends_with('-'), "{}", name);
        let manifest = job_manifest(&gate, &job(), &GateContext { release: &release, stage: &stage, namespace: "ns", version: "1.0.0" }, &evaluation);
        for value in manifest["metadata"]["labels"].as_object().unwrap().values() {
            let value = value.as_str().unwrap();
            prop_assert!(value.len() <= 63, "{}", value);
            prop_assert!(value.is_empty() || (value.starts_with(|c: char| c.is_ascii_alphanumeric()) && value.ends_with(|c: char| c.is_ascii_alphanumeric())), "{}", value);
        }
    }
}

// ----- intervals and timeouts -------------------------------------------------------------

#[test]
fn intervals_and_timeouts_default_per_provider() {
    let gate = |value: Value| -> Gate { serde_json::from_value(value).unwrap() };
    let prom = gate(
        json!({"name": "p", "prometheus": {"address": "http://p:9090", "query": "up", "comparison": "Equal", "threshold": 1}}),
    );
    assert_eq!(interval_of(&prom), Duration::from_secs(30));
    assert_eq!(timeout_of(&prom), Duration::from_secs(10));
    let web =
        gate(json!({"name": "h", "interval": "1s", "http": {"url": "http://h", "timeout": "3s"}}));
    assert_eq!(interval_of(&web), Duration::from_secs(1));
    assert_eq!(timeout_of(&web), Duration::from_secs(3));
    let suite = gate(json!({"name": "j", "interval": "2m", "job": {"image": "e2e:1"}}));
    assert_eq!(interval_of(&suite), Duration::from_secs(120));
    assert_eq!(timeout_of(&suite), Duration::from_secs(600));
}
