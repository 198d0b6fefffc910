//! Graceful shutdown: one [`Shutdown`] per process, triggered by SIGINT/SIGTERM (or a test),
//! that every server awaits so that all of them stop together.

use std::future::Future;

/// A shutdown signal that any number of servers can wait on.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// The trigger of a [`Shutdown`].
#[derive(Debug)]
pub struct Trigger(tokio::sync::watch::Sender<bool>);

impl Trigger {
    /// Tells every waiter to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (Trigger, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Trigger(tx), Self(rx))
    }

    /// A signal fired when `cause` resolves (e.g. [`os_signal`]).
    pub fn on(cause: impl Future<Output = ()> + Send + 'static) -> Self {
        let (trigger, shutdown) = Self::new();
        tokio::spawn(async move {
            cause.await;
            trigger.fire();
        });
        shutdown
    }

    /// Resolves once shutdown was asked for.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (Kubernetes stopping the pod).
pub async fn os_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
