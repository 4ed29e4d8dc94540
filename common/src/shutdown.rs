//! Signal plumbing shared by the binaries, and the shape of a bounded shutdown.
//!
//! - The first SIGTERM or SIGINT cancels a `CancellationToken`. Libraries take that token
//!   (and a reload handle) instead of signals, so tests can drive them without signals.
//! - A second SIGTERM or SIGINT ends the process at once, with status 128 + the signal's
//!   number: whoever sends it wants the process gone now, and a process still draining would
//!   otherwise swallow it (its handler has replaced the default action).
//! - A watchdog thread ends the process, with status 1, if it is still there a given time
//!   after the first signal: the backstop for a shutdown step that does not keep its
//!   deadline, and it works even when the async runtime is wedged.
//! - [`Grace`] shares a process's grace period out among the steps of its shutdown.
//!
//! Also a configuration reload on SIGHUP.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    Signals::install().next().await;
}

/// A token cancelled on the first SIGTERM or SIGINT. After it, a second one ends the process
/// at once, and so does `watchdog` passing (see the module docs). The handlers are in place
/// when this returns, so call it (inside the runtime) before the process announces that it
/// is up: a signal sent right after that is not lost to the default action.
pub fn token_on_signal(watchdog: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut signals = Signals::install();
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(signal = first.name(), ?watchdog, "shutdown signal received");
        cancel.cancel();
        start_watchdog(watchdog);
        let second = signals.next().await;
        tracing::warn!(
            signal = second.name(),
            "second signal: exiting now, without finishing the shutdown"
        );
        std::process::exit(second.exit_status());
    });
    token
}

/// Ends the process (status 1) if it is still running `after` from now. A thread, not a task,
/// so that it fires even when a task blocks the runtime or the runtime's teardown hangs.
fn start_watchdog(after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                ?after,
                "shutdown did not finish in time; exiting without finishing it"
            );
            std::process::exit(1);
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "no shutdown watchdog: the thread did not start");
    }
}

#[derive(Debug, Clone, Copy)]
enum Received {
    Terminate,
    Interrupt,
}

impl Received {
    fn name(self) -> &'static str {
        match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        }
    }

    /// 128 + the signal's number (POSIX: SIGTERM is 15, SIGINT 2), as a shell reports a
    /// process ended by it.
    fn exit_status(self) -> i32 {
        match self {
            Self::Terminate => 128 + 15,
            Self::Interrupt => 128 + 2,
        }
    }
}

/// The SIGTERM and SIGINT handlers, installed once and read for every signal.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    #[cfg(not(unix))]
    fn install() -> Self {
        Self {}
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Received {
        async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
            if let Some(signal) = signal {
                if signal.recv().await.is_some() {
                    return;
                }
            }
            // No handler, or no more signals: never.
            std::future::pending().await
        }
        tokio::select! {
            () = recv(self.terminate.as_mut()) => Received::Terminate,
            () = recv(self.interrupt.as_mut()) => Received::Interrupt,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Received {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        Received::Interrupt
    }
}

/// A process's grace period after the signal, shared out among the steps of its shutdown so
/// that the last one ends with it. The first part is for the work in hand (requests to
/// answer, runs to finish); the rest, the closing part, for giving back what did not finish
/// (half of it) and closing connections. The closing part is the broker's connect timeout
/// (closing is a handshake too), but at most a quarter of the grace period.
#[derive(Debug, Clone, Copy)]
pub struct Grace {
    /// Until when the work in hand may go on.
    pub work: Deadline,
    /// Until when work stopped at `work` may give itself back.
    pub give_back: Deadline,
    /// The end of the grace period: connections are closed by then.
    pub end: Deadline,
}

impl Grace {
    /// A grace period of `grace` from now, `closing` (at most a quarter of it) of which is
    /// kept for closing.
    pub fn start(grace: Duration, closing: Duration) -> Self {
        let now = Instant::now();
        let closing = Self::closing_part(grace, closing);
        Self {
            work: Deadline(now + (grace - closing)),
            give_back: Deadline(now + (grace - closing / 2)),
            end: Deadline(now + grace),
        }
    }

    /// When the watchdog of a process with this grace period fires: a closing part after it.
    pub fn watchdog(grace: Duration, closing: Duration) -> Duration {
        grace + Self::closing_part(grace, closing)
    }

    fn closing_part(grace: Duration, closing: Duration) -> Duration {
        closing.min(grace / 4)
    }
}

/// When a step of a shutdown must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Runs `step` until the deadline: `None` if it was cut short there (the caller says what
    /// that leaves undone).
    pub async fn bound<F: Future>(self, step: F) -> Option<F::Output> {
        tokio::time::timeout_at(self.0, step).await.ok()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `d` less what a test's own steps may have taken since the deadline was set.
    fn about(deadline: Deadline, d: Duration) -> bool {
        let left = deadline.remaining();
        left <= d && left + Duration::from_millis(500) > d
    }

    #[test]
    fn the_closing_part_is_the_connect_timeout_but_at_most_a_quarter_of_the_grace() {
        let secs = Duration::from_secs;
        let grace = Grace::start(secs(30), secs(3));
        assert!(about(grace.work, secs(27)));
        assert!(about(grace.give_back, Duration::from_millis(28_500)));
        assert!(about(grace.end, secs(30)));
        assert_eq!(Grace::watchdog(secs(30), secs(3)), secs(33));

        let grace = Grace::start(secs(2), secs(3));
        assert!(about(grace.work, Duration::from_millis(1_500)));
        assert!(about(grace.give_back, Duration::from_millis(1_750)));
        assert!(about(grace.end, secs(2)));
        assert_eq!(
            Grace::watchdog(secs(2), secs(3)),
            Duration::from_millis(2_500)
        );
    }
}
