//! Capturing what a process would log: a test runs on a runtime of its own whose threads
//! (workers and blocking pool) have the binaries' telemetry subscriber, writing JSON at
//! `trace` into a buffer, as their default — so the lines of tests running in parallel on
//! other runtimes never mix in.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentfleet_common::config::{LogFormat, TelemetryConfig};
use agentfleet_common::telemetry;

/// Runs `test` on a runtime of its own, every thread of which logs through the telemetry
/// subscriber into a buffer; answers what `test` returned and every line logged.
pub fn captured<F, Fut, T>(test: F) -> anyhow::Result<(T, Vec<String>)>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let buffer = buffer.clone();
        move || Capture(buffer.clone())
    };
    let config = TelemetryConfig {
        log_level: "trace".into(),
        log_format: LogFormat::Json,
    };
    let dispatch = tracing::Dispatch::new(telemetry::subscriber(&config, writer));
    forward_log_records();
    let runtime = {
        let dispatch = dispatch.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // For the thread's life: the runtime's threads end with the runtime.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .build()?
    };
    let result = tracing::dispatcher::with_default(&dispatch, || runtime.block_on(test()));
    runtime.shutdown_timeout(Duration::from_secs(10));
    let text =
        String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    Ok((result?, text.lines().map(str::to_owned).collect()))
}

/// Libraries that log through the `log` crate (reqwest, rustls) reach a binary's subscriber
/// through the bridge its `init` installs; this installs the same bridge, under a global
/// subscriber that keeps nothing (so other tests print nothing, as before).
fn forward_log_records() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::OFF)
            .try_init();
    });
}

/// One writer per line the subscriber writes, appending to the shared buffer.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
