//! Prometheus metrics of the operator. Every label has a small, fixed set of values:
//! `kind` is Release or FeatureToggle, `category` comes from
//! [`ReconcileError::category`](crate::error::ReconcileError::category). `stage` and
//! `gate` are names from the Releases' configuration (dev, qa, demo, prod by default;
//! workload-health and the configured gates), never a release's name or version.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Kinds of object the operator reconciles: the values of the `kind` label.
pub const KINDS: [&str; 2] = ["Release", "FeatureToggle"];

/// Values of the `outcome` label of `stagecoach_notifications_total`.
pub const NOTIFICATION_OUTCOMES: [&str; 2] = ["delivered", "failed"];

/// The operator's metrics and the registry that owns them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_duration: HistogramVec,
    status_writes: IntCounterVec,
    leader: prometheus::IntGauge,
    notifications: IntCounterVec,
    gate_evaluations: HistogramVec,
    releases: ReleaseMetrics,
    toggles: ToggleMetrics,
}

/// Release-specific metrics. Labels: `reason` and `phase` take values from the engine's
/// fixed reason and phase names.
#[derive(Clone)]
pub struct ReleaseMetrics {
    pub rollbacks: IntCounterVec,
    pub stage_transitions: IntCounterVec,
    pub step_duration: prometheus::Histogram,
    pub lead_time: prometheus::Histogram,
    pub by_phase: prometheus::IntGaugeVec,
    pub stale_views: prometheus::IntCounter,
    pub starts_paced: prometheus::IntCounter,
    pub gate_verdicts: IntCounterVec,
    pub rollouts_in_progress: prometheus::IntGaugeVec,
}

impl ReleaseMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "stagecoach_rollbacks_total",
                "Stages rolled back to their stable revision, by reason.",
            ),
            &["reason"],
        )?;
        let stage_transitions = IntCounterVec::new(
            Opts::new(
                "stagecoach_stage_transitions_total",
                "Stages entering a phase, by phase.",
            ),
            &["phase"],
        )?;
        let step_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "stagecoach_step_duration_seconds",
                "Time from a rollout step's start to its completion.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
        )?;
        let lead_time = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "stagecoach_deployment_lead_time_seconds",
                "Deployment lead time: from a Release's creation until its last stage reached 100%.",
            )
            .buckets(vec![60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 259_200.0]),
        )?;
        let by_phase = prometheus::IntGaugeVec::new(
            Opts::new(
                "stagecoach_releases",
                "Releases known to the operator, by phase.",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(stage_transitions.clone()))?;
        registry.register(Box::new(step_duration.clone()))?;
        registry.register(Box::new(lead_time.clone()))?;
        let stale_views = prometheus::IntCounter::new(
            "stagecoach_stale_cache_waits_total",
            "Release reconciles that waited because a cache had not yet seen the operator's own last write.",
        )?;
        let starts_paced = prometheus::IntCounter::new(
            "stagecoach_release_starts_paced_total",
            "Times a new release was told to wait before starting because the API server was \
             answering the operator's writes slowly (see controller::pacer).",
        )?;
        registry.register(Box::new(by_phase.clone()))?;
        registry.register(Box::new(stale_views.clone()))?;
        registry.register(Box::new(starts_paced.clone()))?;
        let gate_verdicts = IntCounterVec::new(
            Opts::new(
                "stagecoach_gate_verdicts_total",
                "Gate verdicts recorded in Release status, by stage, gate and verdict \
                 (Passing, Failing, Inconclusive). The built-in workload-health gate records \
                 changes of its verdict only.",
            ),
            &["stage", "gate", "verdict"],
        )?;
        let rollouts_in_progress = prometheus::IntGaugeVec::new(
            Opts::new(
                "stagecoach_stage_rollouts_in_progress",
                "Stages being rolled out now (stage phase Progressing, pauses included), by \
                 stage name.",
            ),
            &["stage"],
        )?;
        registry.register(Box::new(gate_verdicts.clone()))?;
        registry.register(Box::new(rollouts_in_progress.clone()))?;
        Ok(Self {
            rollbacks,
            stage_transitions,
            step_duration,
            lead_time,
            by_phase,
            stale_views,
            starts_paced,
            gate_verdicts,
            rollouts_in_progress,
        })
    }

    /// Sets `stagecoach_stage_rollouts_in_progress` from the Releases' statuses: per stage
    /// name, the Releases whose stage of that name is Progressing. Stages with none drop
    /// out of the gauge.
    pub fn count_rollouts<'a>(
        &self,
        statuses: impl IntoIterator<Item = Option<&'a stagecoach_api::ReleaseStatus>>,
    ) {
        let mut counts: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for status in statuses.into_iter().flatten() {
            for stage in &status.stages {
                if stage.phase == stagecoach_api::release::StagePhase::Progressing {
                    *counts.entry(stage.name.as_str()).or_default() += 1;
                }
            }
        }
        self.rollouts_in_progress.reset();
        for (stage, count) in counts {
            self.rollouts_in_progress
                .with_label_values(&[stage])
                .set(count);
        }
    }
}

/// Feature-toggle metrics. Labels: `action` is apply or delete; `direction` is
/// activated or deactivated; `endpoint` is single, bulk or other (an unknown path);
/// `code` is the HTTP status.
#[derive(Clone)]
pub struct ToggleMetrics {
    pub flag_set_writes: IntCounterVec,
    pub coupling_transitions: IntCounterVec,
    pub ofrep_requests: IntCounterVec,
    pub ofrep_duration: HistogramVec,
}

impl ToggleMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let flag_set_writes = IntCounterVec::new(
            Opts::new(
                "stagecoach_flag_set_writes_total",
                "Flag-set ConfigMaps applied or deleted. Stays flat while nothing changes.",
            ),
            &["action"],
        )?;
        let coupling_transitions = IntCounterVec::new(
            Opts::new(
                "stagecoach_coupling_transitions_total",
                "Toggle rules coupled to a release that became active or inactive, per toggle stage.",
            ),
            &["direction"],
        )?;
        let ofrep_requests = IntCounterVec::new(
            Opts::new(
                "stagecoach_ofrep_requests_total",
                "OFREP requests answered (rejections included), by endpoint and HTTP status.",
            ),
            &["endpoint", "code"],
        )?;
        registry.register(Box::new(flag_set_writes.clone()))?;
        registry.register(Box::new(coupling_transitions.clone()))?;
        // From 100 µs: an evaluation from the index takes tens of microseconds; a bulk
        // answer for a thousand flags a few milliseconds.
        let ofrep_duration = HistogramVec::new(
            HistogramOpts::new(
                "stagecoach_ofrep_request_duration_seconds",
                "Time to answer one OFREP request (rejections included), from its head \
                 until the answer is ready (reading the body included), by endpoint.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["endpoint"],
        )?;
        registry.register(Box::new(ofrep_requests.clone()))?;
        registry.register(Box::new(ofrep_duration.clone()))?;
        for action in ["apply", "delete"] {
            flag_set_writes.with_label_values(&[action]);
        }
        Ok(Self {
            flag_set_writes,
            coupling_transitions,
            ofrep_requests,
            ofrep_duration,
        })
    }
}

impl Metrics {
    /// Creates the metrics and registers them in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "stagecoach_reconciles_total",
                "Reconciles started, by kind of object.",
            ),
            &["kind"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "stagecoach_reconcile_errors_total",
                "Reconciles that failed, by kind of object and the step that failed.",
            ),
            &["kind", "category"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "stagecoach_reconcile_duration_seconds",
                "Time one reconcile took, by kind of object.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "stagecoach_status_writes_total",
                "Status patches sent to the API server, by kind of object. \
                 Stays flat while nothing changes.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        let leader = prometheus::IntGauge::new(
            "stagecoach_leader",
            "1 while this replica holds the leader Lease (reconciles and writes), else 0. \
             Every replica serves OFREP.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "stagecoach_notifications_total",
                "Notification delivery attempts that ended, by event (Announced, StageStarted, ...) \
                 and outcome (delivered or failed).",
            ),
            &["event", "outcome"],
        )?;
        registry.register(Box::new(notifications.clone()))?;
        for event in stagecoach_engine::notify::EVENTS {
            for outcome in NOTIFICATION_OUTCOMES {
                notifications
                    .with_label_values(&[stagecoach_engine::notify::event_name(event), outcome]);
            }
        }
        let gate_evaluations = HistogramVec::new(
            HistogramOpts::new(
                "stagecoach_gate_evaluation_duration_seconds",
                "Time one gate evaluation took (a query, a request, a Job from creation to \
                 its end), by provider (prometheus, http, job) and verdict.",
            )
            .buckets(vec![
                0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            ]),
            &["provider", "verdict"],
        )?;
        registry.register(Box::new(gate_evaluations.clone()))?;
        // Every kind shows up from the start, with 0, so that a scrape before the first
        // reconcile (or a test comparing before and after) finds the series.
        for kind in KINDS {
            reconciles.with_label_values(&[kind]);
            reconcile_duration.with_label_values(&[kind]);
            status_writes.with_label_values(&[kind]);
        }
        let releases = ReleaseMetrics::new(&registry)?;
        let toggles = ToggleMetrics::new(&registry)?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            leader,
            notifications,
            gate_evaluations,
            releases,
            toggles,
        })
    }

    /// Counts a finished reconcile and records how long it took.
    pub fn reconciled(&self, kind: &str, took: Duration) {
        self.reconciles.with_label_values(&[kind]).inc();
        self.reconcile_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, kind: &str, category: &'static str) {
        self.reconcile_errors
            .with_label_values(&[kind, category])
            .inc();
    }

    /// Counts a status patch about to be sent.
    pub fn status_written(&self, kind: &str) {
        self.status_writes.with_label_values(&[kind]).inc();
    }

    /// Counts a notification delivery attempt that ended: `outcome` is one of
    /// [`NOTIFICATION_OUTCOMES`].
    pub fn notified(&self, event: &str, outcome: &str) {
        self.notifications
            .with_label_values(&[event, outcome])
            .inc();
    }

    /// Records a finished gate evaluation: `provider` is prometheus, http or job, `verdict`
    /// Passing, Failing or Inconclusive.
    pub fn gate_evaluated(&self, provider: &str, verdict: &str, took: Duration) {
        self.gate_evaluations
            .with_label_values(&[provider, verdict])
            .observe(took.as_secs_f64());
    }

    /// Sets the `stagecoach_leader` gauge.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Whether the `stagecoach_leader` gauge says this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// The release metrics.
    pub fn releases(&self) -> &ReleaseMetrics {
        &self.releases
    }

    /// The feature-toggle and OFREP metrics.
    pub fn toggles(&self) -> &ToggleMetrics {
        &self.toggles
    }

    /// Registers metrics owned by another module (the DORA gauges of `archive`).
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|err| prometheus::Error::Msg(err.to_string()))
    }

    /// Content type of [`Metrics::render`]'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_start_at_zero() {
        let text = Metrics::new().unwrap().render().unwrap();
        for kind in KINDS {
            assert!(
                text.contains(&format!(
                    "stagecoach_status_writes_total{{kind=\"{kind}\"}} 0"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!("stagecoach_reconciles_total{{kind=\"{kind}\"}} 0")),
                "{text}"
            );
        }
    }

    #[test]
    fn renders_every_metric_with_its_labels() {
        let metrics = Metrics::new().unwrap();
        metrics.reconciled("Release", Duration::from_millis(3));
        metrics.reconcile_failed("Release", "patch_status");
        metrics.status_written("FeatureToggle");
        metrics.status_written("FeatureToggle");
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("stagecoach_notifications_total{event=\"Closed\",outcome=\"failed\"} 0")
        );
        metrics.notified("Announced", "delivered");
        assert!(metrics.render().unwrap().contains("stagecoach_leader 0"));
        metrics.set_leader(true);
        assert!(metrics.is_leader());
        let text = metrics.render().unwrap();
        assert!(text.contains("stagecoach_leader 1"), "{text}");
        assert!(
            text.contains("stagecoach_reconciles_total{kind=\"Release\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "stagecoach_reconcile_errors_total{category=\"patch_status\",kind=\"Release\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("stagecoach_reconcile_duration_seconds_count{kind=\"Release\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("stagecoach_status_writes_total{kind=\"FeatureToggle\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "stagecoach_notifications_total{event=\"Announced\",outcome=\"delivered\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn rollouts_in_progress_count_progressing_stages_by_name() {
        let metrics = Metrics::new().unwrap();
        let status = |phases: &[(&str, &str)]| -> stagecoach_api::ReleaseStatus {
            let stages: Vec<serde_json::Value> = phases
                .iter()
                .map(|(name, phase)| serde_json::json!({"name": name, "namespace": name, "phase": phase}))
                .collect();
            serde_json::from_value(serde_json::json!({ "stages": stages })).unwrap()
        };
        let a = status(&[("dev", "Succeeded"), ("prod", "Progressing")]);
        let b = status(&[("dev", "Progressing"), ("prod", "Pending")]);
        let c = status(&[("dev", "Succeeded"), ("prod", "Progressing")]);
        metrics
            .releases()
            .count_rollouts([Some(&a), Some(&b), None, Some(&c)]);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("stagecoach_stage_rollouts_in_progress{stage=\"prod\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("stagecoach_stage_rollouts_in_progress{stage=\"dev\"} 1"),
            "{text}"
        );
        metrics.releases().count_rollouts([Some(&a)]);
        let text = metrics.render().unwrap();
        assert!(
            !text.contains("stagecoach_stage_rollouts_in_progress{stage=\"dev\"}"),
            "a stage with none drops out: {text}"
        );
    }
}
