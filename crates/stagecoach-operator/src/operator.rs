//! `stagecoach run`: wires the client, both controllers, the admin server and the OFREP
//! server together and runs them until a shutdown signal.
//!
//! With leader election (the default) every replica runs all of it, but only the holder
//! of the Lease writes: the Release reconcile is skipped on a follower, and the toggle
//! reconcile stops after planning (which keeps the follower's OFREP index current). On
//! becoming the leader both controllers reconcile everything again. Losing the Lease
//! drops everything at once and starts again as a follower (see [`run`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use stagecoach_api::{Approval, FeatureToggle, Pipeline, Release};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::admin::{self, Readiness};
use crate::archive;
use crate::cli::RunArgs;
use crate::context::Context;
use crate::controller::cached::{CachedDeployment, CachedPod, CachedRevision};
use crate::controller::scoped::Cache;
use crate::controller::{self, pipeline, release, toggle, workloads};
use crate::gates;
use crate::leader::{self, Elector, Leadership, LeaseConfig, LeaseLost};
use crate::metrics::Metrics;
use crate::notify;
use crate::ofrep::{self, FlagIndex};
use crate::reporting;
use crate::shutdown::Shutdown;

/// Most applications' toggle reconciles running at once.
const TOGGLE_CONCURRENCY: u16 = 16;

/// How long in-flight reconciles and admin requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the operator until SIGTERM or Ctrl-C; returns once everything has stopped.
///
/// When leadership is lost, everything started for it (client, caches, controllers with
/// their reconciles in flight, servers) is dropped at once, which is what exiting would
/// do, and started again from nothing as a follower: the same as a restart by the
/// Deployment, without depending on one (a lone operator whose API server was away
/// longer than the renew deadline takes its Lease back when the API server returns).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    loop {
        match Box::pin(run_once(args.clone())).await {
            Err(error) if error.is::<LeaseLost>() => {
                error!(
                    error = format!("{error:#}"),
                    "leadership lost: stopped everything at once; starting again as a follower"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            outcome => return outcome,
        }
    }
}

#[allow(clippy::too_many_lines)] // the wiring of every part, in one place
async fn run_once(args: RunArgs) -> anyhow::Result<()> {
    // Client::try_default, plus a test-only layer when STAGECOACH_TEST_KILL_AFTER_WRITES is set.
    let limit = crate::kill_after_writes::limit_from_env()?;
    let client = crate::kill_after_writes::client(limit).await.context(
        "cannot configure the Kubernetes client: set KUBECONFIG, or run in a pod with a \
         service account",
    )?;
    let metrics = Metrics::new().context("cannot register metrics")?;
    let listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-addr)", args.admin_addr))?;
    let ofrep_listener = TcpListener::bind(args.ofrep_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--ofrep-addr)", args.ofrep_addr))?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        admin_addr = %args.admin_addr,
        ofrep_addr = %args.ofrep_addr,
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "starting"
    );

    let lease = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace(),
        identity: args
            .identity
            .clone()
            .unwrap_or_else(leader::default_identity),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    let leadership = if args.leader_elect {
        lease.validate().context("bad leader election settings")?;
        Leadership::follower()
    } else {
        metrics.set_leader(true);
        Leadership::always()
    };

    let shutdown = Shutdown::default();
    let signals = shutdown
        .on_signals()
        .context("cannot install handlers for SIGTERM and SIGINT")?;
    let readiness = Readiness::default();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        leadership.clone(),
    ));

    let namespace = args.namespace.as_deref();
    let (release_sync, toggle_sync) = (
        readiness.cache(release::KIND),
        readiness.cache(toggle::KIND),
    );
    // The toggle controller also learns from the Release and toggle watches which
    // applications changed (see controller::toggle::triggers).
    let (app_changes, app_change_reports) = toggle::changes();
    let (release_cache, release_changes) = toggle::watch_releases(
        scoped_api::<Release>(&client, namespace),
        release_sync.clone(),
        app_changes.clone(),
    );
    let (toggle_cache, toggle_applications, toggle_changes) = toggle::watch_toggles(
        scoped_api::<FeatureToggle>(&client, namespace),
        toggle_sync.clone(),
        app_changes.clone(),
    );
    // Pipelines: the release controller's policy, and the stages toggles are served in.
    let pipeline_sync = readiness.cache(pipeline::KIND);
    let (pipelines_deleted, mut deleted_pipelines) = tokio::sync::mpsc::unbounded_channel();
    let (pipeline_cache, pipeline_changes) = toggle::watch_pipelines(
        scoped_api::<Pipeline>(&client, namespace),
        pipeline_sync.clone(),
        app_changes.clone(),
        pipelines_deleted,
    );
    let epochs = app_changes.epochs();
    let flag_set_sync = readiness.cache("ConfigMap");
    let (flag_set_cache, flag_set_events) =
        toggle::watch_flag_sets(&client, flag_set_sync.clone(), app_changes);
    // The release controller also watches the stage namespaces: Deployments, their pods
    // and the ControllerRevisions it records. Any change there re-plans the releases whose
    // stages live in that namespace, which is what makes a failing pod reach a rollback
    // within a reconcile. With --namespace only the stage namespaces its Releases name
    // are watched (one watch each, see controller::scoped), else the whole cluster.
    // Only the pods the operator rolled out (canary pods, and stable pods running a
    // release) carry the rollout label: memory grows with releases, not with the cluster.
    let per_namespace = namespace.is_some();
    let (deployment_cache, deployment_changes) = Cache::<CachedDeployment>::new(
        &client,
        per_namespace,
        kube::runtime::watcher::Config::default(),
        readiness.cache("Deployment"),
        controller::ManagedFields::ManagersOnly,
    );
    let (pod_cache, pod_changes) = Cache::<CachedPod>::new(
        &client,
        per_namespace,
        kube::runtime::watcher::Config::default()
            .labels(stagecoach_engine::release::rollout::ROLLOUT_LABEL),
        readiness.cache("Pod"),
        controller::ManagedFields::Drop,
    );
    let (revision_cache, revision_changes) = Cache::<CachedRevision>::new(
        &client,
        per_namespace,
        kube::runtime::watcher::Config::default().labels("app.kubernetes.io/managed-by=stagecoach"),
        readiness.cache("ControllerRevision"),
        controller::ManagedFields::Drop,
    );
    // The policy side of releases: Pipelines and Approvals in the watched namespaces.

    let approval_sync = readiness.cache("Approval");
    let (approval_cache, approval_changes) = controller::cached_watch_with(
        scoped_api::<Approval>(&client, namespace),
        kube::runtime::watcher::Config::default(),
        approval_sync.clone(),
        controller::ManagedFields::Drop,
    );
    let flag_index = FlagIndex::new(toggle_cache.clone());
    let toggle_ctx = Arc::new(toggle::ToggleContext::new(
        ctx.clone(),
        toggle_cache.clone(),
        release_cache.clone(),
        pipeline_cache.clone(),
        flag_set_cache,
        flag_index.clone(),
        epochs,
        toggle::Synced {
            toggles: toggle_sync.clone(),
            releases: release_sync.clone(),
            flag_sets: flag_set_sync,
        },
    ));
    let (toggle_retriggers, toggle_triggers) = toggle::fan_out(
        app_change_reports,
        flag_set_events,
        toggle_ctx.clone(),
        args.namespace.clone(),
        shutdown.wait(),
    );
    // Notifications: a reconcile queues what is due; this run's worker (so the leader's
    // only) POSTs it and asks for a reconcile of the release when an attempt has ended.
    let (notifier, notify_worker, notification_triggers) = notify::Notifier::new(
        client.clone(),
        metrics.clone(),
        args.notification_max_backoff,
    )
    .context("cannot set up the HTTP client for notifications")?;
    let _notify_worker = notify::spawn(notify_worker);
    // Audit records: the release reconcile writes a release's record when it has ended;
    // a watch of the records keeps the DORA gauges, and the leader applies the
    // Pipelines' retention (see archive).
    let (archiver, _archive_tasks) = archive::Archiver::start(
        client.clone(),
        namespace,
        &metrics,
        readiness.cache("Record"),
        pipeline_cache.clone(),
        leadership.clone(),
    )
    .context("cannot register the DORA metrics")?;
    // Gates: the reconcile says which gates its release's stage and step want; this run's
    // evaluator (so the leader's only) measures them in the background and asks for a
    // reconcile of the release with each new measurement.
    let (gate_evaluator, gate_triggers) =
        gates::GateEvaluator::new(client.clone(), metrics.clone(), release_cache.clone())
            .context("cannot set up the HTTP client for gates")?;
    let release_ctx = Arc::new(release::ReleaseContext {
        base: ctx.clone(),
        releases: release_cache.clone(),
        pipelines: pipeline_cache.clone(),
        approvals: approval_cache,
        policy_synced: [pipeline_sync.clone(), approval_sync],
        caches: workloads::WorkloadCaches {
            deployments: deployment_cache,
            pods: pod_cache,
            revisions: revision_cache,
        },
        fence: controller::fence::WriteFence::default(),
        notifier,
        archiver,
        gates: gate_evaluator,
        pacer: controller::pacer::StartPacer::new(std::time::Instant::now()),
        progress: controller::pacer::ProgressWrites::default(),
        event_tasks: std::sync::Mutex::default(),
    });
    let by_namespace = |store: kube::runtime::reflector::Store<Release>| {
        move |namespace: Option<String>| {
            let namespace = namespace.unwrap_or_default();
            store
                .state()
                .iter()
                .filter(|r| workloads::WorkloadCaches::release_in_namespace(r, &namespace))
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let deployment_mapper = by_namespace(release_cache.clone());
    let pod_mapper = by_namespace(release_cache.clone());
    let revision_mapper = by_namespace(release_cache.clone());
    // A Pipeline re-plans every release of its application (through the Pipeline
    // controller, which keeps the Pipeline's status first); an Approval its release.
    let (release_triggers, release_retriggers) = pipeline::trigger_channel::<Release>();
    let (pipeline_triggers, pipeline_retriggers) = pipeline::trigger_channel::<Pipeline>();
    let pipeline_ctx = Arc::new(pipeline::PipelineContext {
        base: ctx.clone(),
        pipelines: pipeline_cache.clone(),
        releases: release_cache.clone(),
        release_triggers,
        pipeline_triggers,
    });
    // A deleted Pipeline: its application's releases and the other Pipelines claiming
    // it look again (the second of two claimants is in force again, say).
    let pipeline_deletions =
        {
            let (releases, pipelines) = (release_cache.clone(), pipeline_cache.clone());
            let (release_triggers, pipeline_triggers) = (
                pipeline_ctx.release_triggers.clone(),
                pipeline_ctx.pipeline_triggers.clone(),
            );
            async move {
                while let Some(gone) = deleted_pipelines.recv().await {
                    let application = gone.application().to_owned();
                    for r in releases.state().iter().filter(|r| {
                        r.namespace() == gone.namespace() && r.spec.application == application
                    }) {
                        let _ = release_triggers.send(ObjectRef::from_obj(r.as_ref()));
                    }
                    for p in pipelines.state().iter().filter(|p| {
                        p.namespace() == gone.namespace() && p.application() == application
                    }) {
                        let _ = pipeline_triggers.send(ObjectRef::from_obj(p.as_ref()));
                    }
                }
            }
        };
    let pipelines = Controller::for_stream(pipeline_changes, pipeline_cache.clone())
        .reconcile_on(pipeline_retriggers)
        .reconcile_all_on(leadership.promotions())
        .graceful_shutdown_on(shutdown.wait());
    let approval_mapper = |a: Approval| {
        a.namespace()
            .map(|ns| ObjectRef::<Release>::new(&a.spec.release).within(&ns))
    };
    let releases = Controller::for_stream(release_changes, release_cache)
        .watches_stream(deployment_changes, move |d: CachedDeployment| {
            deployment_mapper(d.namespace())
        })
        .watches_stream(pod_changes, move |p: CachedPod| pod_mapper(p.namespace()))
        .watches_stream(revision_changes, move |r: CachedRevision| {
            revision_mapper(r.namespace())
        })
        .watches_stream(approval_changes, approval_mapper)
        .reconcile_on(notification_triggers)
        .reconcile_on(gate_triggers)
        .reconcile_on(release_retriggers)
        .reconcile_all_on(leadership.promotions())
        .graceful_shutdown_on(shutdown.wait());
    // Keyed by application (see controller::toggle::unit). Bounded: thousands of status
    // patches in flight at once only queue up in the API server (and in memory).
    let toggles = Controller::for_stream(toggle_changes, toggle_applications)
        .with_config(ControllerConfig::default().concurrency(TOGGLE_CONCURRENCY))
        .reconcile_on(toggle_retriggers)
        .reconcile_all_on(leadership.promotions())
        .graceful_shutdown_on(shutdown.wait());

    let release_loop = controller::drain(
        release::KIND,
        releases.run(
            {
                let leadership = leadership.clone();
                move |object, ctx| {
                    // Decided when the reconcile starts: a leader that loses the Lease
                    // mid-reconcile ends the process (see the election below).
                    let leading = leadership.is_leader();
                    async move {
                        if leading {
                            let subject = reporting::Subject::Release(object.clone());
                            reporting::reported(subject, release::reconcile(object, ctx)).await
                        } else {
                            Ok(kube::runtime::controller::Action::await_change())
                        }
                    }
                }
            },
            release::error_policy,
            release_ctx,
        ),
        shutdown.clone(),
        release_sync,
    );
    let pipeline_loop = controller::drain(
        pipeline::KIND,
        pipelines.run(
            {
                let leadership = leadership.clone();
                move |object, ctx| {
                    let leading = leadership.is_leader();
                    async move {
                        if leading {
                            pipeline::reconcile(object, ctx).await
                        } else {
                            Ok(kube::runtime::controller::Action::await_change())
                        }
                    }
                }
            },
            pipeline::error_policy,
            pipeline_ctx,
        ),
        shutdown.clone(),
        pipeline_sync,
    );
    let toggle_loop = controller::drain(
        toggle::KIND,
        toggles.run(
            |object, ctx| {
                let subject = reporting::Subject::Toggles(object.clone());
                reporting::reported(subject, toggle::reconcile(object, ctx))
            },
            toggle::error_policy,
            toggle_ctx,
        ),
        shutdown.clone(),
        toggle_sync,
    );
    // The labelled token Secrets in the toggle namespaces (see ofrep::Tokens).
    let (ofrep_tokens, token_watch) =
        ofrep::Tokens::watch(scoped_api(&client, namespace), readiness.cache("Secret"));
    let ofrep_cors = ofrep::Cors::new(args.ofrep_cors_origins.clone());
    let ofrep_limit = ofrep::RateLimit::new(args.ofrep_rate_limit);
    let ofrep_server = {
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        async move {
            let token_watch = tokio::spawn(token_watch);
            let served = ofrep::serve(
                ofrep_listener,
                flag_index,
                ofrep_tokens,
                ofrep_cors,
                ofrep_limit,
                metrics.toggles(),
                shutdown.wait(),
            )
            .await;
            if let Err(error) = &served {
                error!(%error, "OFREP server failed; shutting down");
            }
            shutdown.trigger(); // a stopped OFREP server stops the operator
            token_watch.abort();
            served
        }
    };
    let admin_server = {
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        async move {
            let served = admin::serve(listener, readiness, metrics, shutdown.wait()).await;
            if let Err(error) = &served {
                error!(%error, "admin server failed; shutting down");
            }
            shutdown.trigger(); // a stopped admin server stops the operator
            served
        }
    };
    let signals = tokio::spawn(signals);
    let pipeline_deletions = tokio::spawn(pipeline_deletions);
    // The election runs until the controllers have stopped (then the leader releases the
    // Lease), or ends early with an error when leadership is lost.
    let (stop_electing, electing_stopped) = tokio::sync::oneshot::channel::<()>();
    let election = async {
        if args.leader_elect {
            Elector::new(client.clone(), lease, leadership.clone(), metrics.clone())
                .run(async {
                    let _ = electing_stopped.await;
                })
                .await
        } else {
            let _ = electing_stopped.await;
            Ok(())
        }
    };
    let mut election = std::pin::pin!(election);

    let all = async {
        tokio::join!(
            release_loop,
            pipeline_loop,
            toggle_loop,
            toggle_triggers,
            admin_server,
            ofrep_server
        )
    };
    let grace_over = async {
        shutdown.wait().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let outcome = tokio::select! {
        ((), (), (), (), admin, ofrep) = all => admin
            .context("admin server failed")
            .and(ofrep.context("OFREP server failed")),
        () = grace_over => Err(anyhow::anyhow!(
            "did not stop within {}s of the shutdown signal", SHUTDOWN_GRACE.as_secs()
        )),
        // Returns early only when leadership is lost: stop at once, dropping reconciles
        // in flight, so that this replica writes nothing once another may lead.
        lost = &mut election => {
            signals.abort();
            pipeline_deletions.abort();
            return lost.and(Err(anyhow::anyhow!("leader election stopped")));
        }
    };
    // Everything stopped: no more writes, so the Lease can go to a successor now.
    let _ = stop_electing.send(());
    let outcome = outcome.and(election.await);

    signals.abort();
    pipeline_deletions.abort();
    if outcome.is_ok() {
        info!("stopped");
    }
    outcome
}

/// The API for a namespaced kind, in one namespace or in all.
fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}
