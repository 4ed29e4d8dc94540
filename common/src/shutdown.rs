//! Signal plumbing shared by the binaries: a future that resolves on SIGTERM or SIGINT, and
//! a configuration reload on SIGHUP. Libraries take a `CancellationToken` and a reload handle
//! instead, so tests can drive them without signals.

use std::path::PathBuf;

use crate::config::{Config, ConfigError};

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn token_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown signal received");
        child.cancel();
    });
    token
}

/// On every SIGHUP until `stop`: loads the configuration at `path` again and hands it to
/// `apply`. A file that does not load or validate, or a change `apply` refuses, is logged and
/// the running configuration stays.
pub fn reload_on_sighup<F>(path: PathBuf, stop: CancellationToken, apply: F)
where
    F: Fn(Config) -> Result<(), ConfigError> + Send + 'static,
{
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; configuration reload disabled");
            return;
        };
        loop {
            tokio::select! {
                got = hangups.recv() => if got.is_none() { return },
                () = stop.cancelled() => return,
            }
            tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
            match Config::load(&path).and_then(&apply) {
                Ok(()) => {}
                Err(err) => {
                    tracing::error!(error = %err, "configuration not reloaded; the running one stays");
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (path, stop, apply);
}
