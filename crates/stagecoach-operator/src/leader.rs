//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! Every replica watches, caches, plans and serves OFREP; only the holder of the Lease
//! writes (see [`Leadership`]). The election loop reads the Lease every retry period and
//! [`decide`]s: create it (absent), acquire it (free or expired: `renewTime +
//! leaseDurationSeconds` has passed), renew it (held by this replica), wait (held by
//! another, still valid) or give up (this replica led, but another holds it now). Every
//! write is a replace with the `resourceVersion` just read, so two replicas racing for an
//! expired Lease cannot both win: the loser gets a conflict and reads again.
//!
//! A leader that cannot renew for the renew deadline (shorter than the lease duration),
//! or finds the Lease held by another, has lost: [`Elector::run`] returns [`LeaseLost`]
//! and everything the operator runs is dropped at once, reconciles in flight included,
//! then started again from nothing as a follower, as a process restart would (see
//! [`crate::operator::run`]). On a graceful shutdown, after the controllers stopped,
//! the leader releases the Lease (no holder) so that a successor takes over at its next
//! retry instead of after the lease duration.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::Stream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Whether this replica holds the Lease: what the controllers ask before writing. Cheap
/// to clone; clones share state.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<watch::Sender<bool>>);

impl Leadership {
    /// Not (yet) the leader: the election decides.
    pub fn follower() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }

    /// Always the leader (leader election off).
    pub fn always() -> Self {
        Self(Arc::new(watch::Sender::new(true)))
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    fn set(&self, leading: bool) {
        self.0.send_replace(leading);
    }

    /// One item each time this replica becomes the leader (after this call): the
    /// controllers re-reconcile everything then, since as a follower they wrote nothing.
    pub fn promotions(&self) -> impl Stream<Item = ()> + Send + 'static {
        let receiver = self.0.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                receiver.changed().await.ok()?;
                if *receiver.borrow_and_update() {
                    return Some(((), receiver));
                }
            }
        })
    }
}

/// Leadership is lost: whatever runs must stop at once (see [`crate::operator::run`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LeaseLost(String);

/// What the election loop does after reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, held by this replica.
    Create,
    /// Free or expired: take it (replace, counting a transition).
    Acquire,
    /// Held by this replica: renew it.
    Renew,
    /// Held by another replica and valid: stay a follower.
    Wait { holder: String },
    /// This replica led, but the Lease is gone or held by another: stop writing now.
    Lost { holder: Option<String> },
}

/// The pure decision: given the Lease as read (`None`: absent), this replica's identity,
/// whether it currently leads, and the time now. A Lease without a duration counts as
/// lasting `default_duration`.
pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    leading: bool,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return if leading {
            Decision::Lost { holder: None }
        } else {
            Decision::Create
        };
    };
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    match holder {
        Some(holder) if holder == me => return Decision::Renew,
        Some(holder) if leading => {
            return Decision::Lost {
                holder: Some(holder.to_owned()),
            };
        }
        None => return Decision::Acquire,
        Some(_) => {}
    }
    let holder = holder.unwrap_or_default().to_owned();
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return Decision::Acquire;
    };
    let expired = SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| renewed.checked_add(d).ok())
        .is_none_or(|expiry| now >= expiry);
    if expired {
        Decision::Acquire
    } else {
        Decision::Wait { holder }
    }
}

/// Where the Lease is and how the election is timed.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Refuses timings that could let two replicas write at once: a leader must give up
    /// (renew deadline) before others may take over (lease duration), and must try to
    /// renew (retry period) more than once before it gives up.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.identity.is_empty() {
            bail!("--identity must not be empty");
        }
        if self.renew_deadline >= self.lease_duration {
            bail!("--renew-deadline must be shorter than --lease-duration");
        }
        if self.retry_period >= self.renew_deadline {
            bail!("--retry-period must be shorter than --renew-deadline");
        }
        if self.lease_duration < Duration::from_secs(1) {
            bail!("--lease-duration must be at least 1s");
        }
        Ok(())
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// The default identity: host name and process id, unique per process.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stagecoach".to_owned());
    format!("{host}_{}", std::process::id())
}

/// What one round of the election found.
enum Round {
    Held,
    Follower(String),
    Lost(Option<String>),
}

/// The election loop of one replica.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    leadership: Leadership,
    metrics: Metrics,
}

impl Elector {
    pub fn new(
        client: Client,
        config: LeaseConfig,
        leadership: Leadership,
        metrics: Metrics,
    ) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            leadership,
            metrics,
        }
    }

    /// Campaigns and renews until `stop` completes (then releases the Lease if held and
    /// returns `Ok`), or returns an error as soon as leadership is lost.
    pub async fn run(self, stop: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let mut stop = std::pin::pin!(stop);
        let mut renewed: Option<Instant> = None;
        let mut last_holder = None;
        info!(lease = %self.config.name, namespace = %self.config.namespace,
            identity = %self.config.identity, "leader election started");
        loop {
            let started = Instant::now();
            let round =
                tokio::time::timeout(self.config.renew_deadline, self.round(renewed.is_some()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("no answer within the renew deadline"))
                    });
            match round {
                Ok(Round::Held) => {
                    if renewed.is_none() {
                        info!(identity = %self.config.identity, "became the leader");
                        self.set(true);
                    }
                    renewed = Some(started);
                }
                Ok(Round::Follower(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(%holder, "another replica leads; following");
                        last_holder = Some(holder);
                    }
                }
                Ok(Round::Lost(holder)) => {
                    self.set(false);
                    return Err(LeaseLost(format!(
                        "lost the leader lease {}/{} to {}",
                        self.config.namespace,
                        self.config.name,
                        holder.as_deref().unwrap_or("nobody (it was deleted)")
                    ))
                    .into());
                }
                Err(error) => {
                    warn!(error = format!("{error:#}"), "leader election round failed");
                    if let Some(at) = renewed
                        && at.elapsed() >= self.config.renew_deadline
                    {
                        self.set(false);
                        return Err(LeaseLost(format!(
                            "could not renew the leader lease within the renew deadline ({}s)",
                            self.config.renew_deadline.as_secs_f64()
                        ))
                        .into());
                    }
                }
            }
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        if renewed.is_some() {
            self.set(false);
            match self.release().await {
                Ok(()) => info!("leader lease released"),
                Err(error) => {
                    warn!(
                        error = format!("{error:#}"),
                        "cannot release the leader lease; it expires by itself"
                    );
                }
            }
        }
        Ok(())
    }

    fn set(&self, leading: bool) {
        self.leadership.set(leading);
        self.metrics.set_leader(leading);
    }

    async fn round(&self, leading: bool) -> anyhow::Result<Round> {
        let name = &self.config.name;
        let lease = self
            .api
            .get_opt(name)
            .await
            .context("cannot read the Lease")?;
        let now = Timestamp::now();
        let decision = decide(
            lease.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            leading,
            now,
            self.config.lease_duration,
        );
        debug!(?decision, "leader election");
        let params = PostParams::default();
        match (decision, lease) {
            (Decision::Create, _) | (Decision::Acquire | Decision::Renew, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.held(None, now, 0)),
                };
                self.api
                    .create(&params, &lease)
                    .await
                    .context("cannot create the Lease")?;
                Ok(Round::Held)
            }
            (Decision::Acquire, Some(mut lease)) => {
                let transitions = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                lease.spec = Some(self.held(None, now, transitions.saturating_add(1)));
                self.api
                    .replace(name, &params, &lease)
                    .await
                    .context("cannot take the Lease")?;
                Ok(Round::Held)
            }
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.take().unwrap_or_default();
                lease.spec =
                    Some(self.held(spec.acquire_time, now, spec.lease_transitions.unwrap_or(0)));
                self.api
                    .replace(name, &params, &lease)
                    .await
                    .context("cannot renew the Lease")?;
                Ok(Round::Held)
            }
            (Decision::Wait { holder }, _) => Ok(Round::Follower(holder)),
            (Decision::Lost { holder }, _) => Ok(Round::Lost(holder)),
        }
    }

    fn held(&self, acquired: Option<MicroTime>, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration_seconds()),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up: no holder, so the next replica to look takes it.
    async fn release(&self) -> anyhow::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let name = lease.name_any();
        self.api
            .replace(&name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            lease_duration_seconds: duration,
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let wait = |h: &str| Decision::Wait { holder: h.into() };
        let lost = |h: Option<&str>| Decision::Lost {
            holder: h.map(str::to_owned),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<LeaseSpec>, bool, i64, Decision)> = vec![
            ("absent, follower: create", None, false, 0, Decision::Create),
            ("absent while leading: deleted under us", None, true, 0, lost(None)),
            ("mine: renew", Some(lease(Some("me"), Some(0), Some(15))), true, 5, Decision::Renew),
            ("mine though I thought not: renew", Some(lease(Some("me"), Some(0), Some(15))), false, 5, Decision::Renew),
            ("mine and expired: renew", Some(lease(Some("me"), Some(0), Some(15))), false, 60, Decision::Renew),
            ("other, valid: wait", Some(lease(Some("b"), Some(0), Some(15))), false, 14, wait("b")),
            ("other, just expired: acquire", Some(lease(Some("b"), Some(0), Some(15))), false, 15, Decision::Acquire),
            ("other, long expired: acquire", Some(lease(Some("b"), Some(0), Some(15))), false, 600, Decision::Acquire),
            ("other while leading: lost", Some(lease(Some("b"), Some(0), Some(15))), true, 1, lost(Some("b"))),
            ("other while leading, expired: still lost", Some(lease(Some("b"), Some(0), Some(15))), true, 60, lost(Some("b"))),
            ("released (no holder): acquire", Some(lease(None, Some(0), Some(1))), false, 0, Decision::Acquire),
            ("released (empty holder): acquire", Some(lease(Some(""), Some(0), Some(15))), false, 0, Decision::Acquire),
            ("no renew time: acquire", Some(lease(Some("b"), None, Some(15))), false, 0, Decision::Acquire),
            ("no duration: default 15s, valid", Some(lease(Some("b"), Some(0), None)), false, 10, wait("b")),
            ("no duration: default 15s, expired", Some(lease(Some("b"), Some(0), None)), false, 16, Decision::Acquire),
            ("short lease of another: acquire after it", Some(lease(Some("b"), Some(0), Some(4))), false, 4, Decision::Acquire),
            ("renewed in the future (skew): wait", Some(lease(Some("b"), Some(10), Some(4))), false, 5, wait("b")),
        ];
        for (name, spec, leading, now, expected) in cases {
            assert_eq!(
                decide(spec.as_ref(), "me", leading, at(now), DURATION),
                expected,
                "{name}"
            );
        }
    }

    fn config(duration: u64, deadline: u64, retry: u64) -> LeaseConfig {
        LeaseConfig {
            name: "stagecoach-leader".into(),
            namespace: "default".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn timings_are_checked() {
        assert!(config(15, 10, 2).validate().is_ok());
        assert!(config(4, 3, 1).validate().is_ok());
        assert!(config(10, 10, 2).validate().is_err(), "deadline = duration");
        assert!(config(15, 10, 10).validate().is_err(), "retry = deadline");
        let mut anonymous = config(15, 10, 2);
        anonymous.identity.clear();
        assert!(anonymous.validate().is_err());
    }

    #[test]
    fn identity_has_the_pid() {
        assert!(default_identity().ends_with(&format!("_{}", std::process::id())));
    }

    #[tokio::test]
    async fn promotions_fire_on_becoming_leader_only() {
        use futures::StreamExt as _;
        let leadership = Leadership::follower();
        let mut promotions = std::pin::pin!(leadership.promotions());
        assert!(!leadership.is_leader());
        leadership.set(true);
        assert!(leadership.is_leader());
        tokio::time::timeout(Duration::from_secs(1), promotions.next())
            .await
            .unwrap()
            .unwrap();
        leadership.set(false);
        let none = tokio::time::timeout(Duration::from_millis(50), promotions.next()).await;
        assert!(none.is_err(), "losing is no promotion");
        assert!(Leadership::always().is_leader());
    }
}
