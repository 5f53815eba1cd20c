//! flagd's JavaScript evaluator as a test oracle: `@openfeature/flagd-core` (pinned in
//! tests/flagd-js/package.json), the core of flagd's in-process JavaScript providers, run by
//! Node on tests/flagd-js/resolve.cjs. Each flag set is resolved twice, with
//! json-logic-engine compiling the targeting (flagd-core's default) and interpreting it.
//!
//! `cargo xtask test` installs it (`npm ci`) and sets [`ENV`] to the script's path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The path of tests/flagd-js/resolve.cjs, with its node_modules installed.
pub const ENV: &str = "STAGECOACH_FLAGD_JS";

/// What to do when [`ENV`] is not set.
pub const HOW_TO_RUN: &str = "this test needs flagd's JavaScript evaluator: run `cargo xtask test`, \
     or `npm ci --prefix tests/flagd-js` and then \
     `STAGECOACH_FLAGD_JS=$PWD/tests/flagd-js/resolve.cjs cargo test -p stagecoach-engine --test toggle_flagd -- --ignored`";

/// flagd-core's resolution of one flag for one context.
#[derive(Clone, Debug, PartialEq)]
pub struct JsAnswer {
    pub variant: Option<String>,
    pub value: Value,
    pub reason: Option<String>,
    pub error_code: Option<String>,
}

impl JsAnswer {
    fn from_json(answer: &Value) -> Self {
        let text = |field: &str| answer[field].as_str().map(String::from);
        Self {
            variant: text("variant"),
            value: answer["value"].clone(),
            reason: text("reason"),
            error_code: text("errorCode"),
        }
    }
}

/// One flag set and the (flag key, context) pairs to resolve in it.
pub struct Batch {
    pub flag_set: Value,
    pub evaluations: Vec<(String, Value)>,
}

/// Both of flagd-core's answers (compiled, interpreted) for every evaluation of every batch,
/// in input order.
pub fn resolve(batches: &[Batch]) -> Vec<Vec<[JsAnswer; 2]>> {
    let script = std::env::var_os(ENV).unwrap_or_else(|| panic!("{ENV} is not set: {HOW_TO_RUN}"));
    let request = json!({"flagSets": batches.iter().map(|batch| json!({
        "flagSet": batch.flag_set,
        "evaluations": batch.evaluations.iter()
            .map(|(flag, context)| json!({"flag": flag, "context": context}))
            .collect::<Vec<_>>(),
    })).collect::<Vec<_>>()});
    let mut child = Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("starting `node {}`: {error}", script.display()));
    // The script reads all of stdin before it writes anything.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.to_string().as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "node {} failed ({})",
        script.display(),
        output.status
    );
    let response: Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = response["results"].as_array().unwrap();
    assert_eq!(results.len(), batches.len());
    results
        .iter()
        .zip(batches)
        .map(|(answers, batch)| {
            let answers = answers.as_array().unwrap();
            assert_eq!(answers.len(), batch.evaluations.len());
            answers
                .iter()
                .map(|both| {
                    [
                        JsAnswer::from_json(&both["compiled"]),
                        JsAnswer::from_json(&both["interpreted"]),
                    ]
                })
                .collect()
        })
        .collect()
}
