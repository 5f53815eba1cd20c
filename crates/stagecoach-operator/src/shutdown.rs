//! Graceful shutdown: one trigger (SIGTERM, Ctrl-C, or a part of the operator that
//! stopped), many listeners.

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

/// Shared shutdown switch. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    /// Starts the shutdown; later calls do nothing.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Completes once the shutdown has started.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = receiver.wait_for(|stopping| *stopping).await;
        }
    }

    /// Listens for SIGTERM and Ctrl-C (SIGINT); the returned future triggers the shutdown
    /// on the first of them, or ends when the shutdown was triggered otherwise. Fails when
    /// the signal handlers cannot be installed.
    pub fn on_signals(&self) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let shutdown = self.clone();
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM received; shutting down"),
                _ = interrupt.recv() => info!("interrupt received; shutting down"),
                () = shutdown.wait() => return,
            }
            shutdown.trigger();
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_waiter_wakes_up() {
        let shutdown = Shutdown::default();
        let early = tokio::spawn(shutdown.wait());
        let not_yet = tokio::time::timeout(Duration::from_millis(20), shutdown.wait()).await;
        assert!(not_yet.is_err());
        shutdown.trigger();
        early.await.unwrap();
        shutdown.wait().await; // after the trigger too
    }
}
