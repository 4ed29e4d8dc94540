//! `agentfleet-bench`: the benchmark suite. Runs every scenario against the real RabbitMQ and
//! Redis on this machine, with the dispatcher and worker binaries as separate processes and
//! the stub LLM and webhook receiver in this process, all on loopback; prints a markdown
//! table and writes JSON. Goals are reported, not asserted: the exit code is non-zero only
//! when a scenario could not run.
//!
//! `scripts/bench.sh [--short] [--soak] [--only 1,3] [--json PATH]`

mod baseline;
mod bullmq;
mod fleet;
mod load;
mod procfs;
mod report;
mod scenarios;
mod stats;
mod suite;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use fleet::Binaries;
use suite::{Ctx, Settings};

#[derive(Parser)]
#[command(about = "agentfleet benchmark suite (RabbitMQ and Redis on 127.0.0.1)")]
struct Args {
    /// Smaller sizes: the whole suite in about two minutes, bounded at three (what CI runs).
    #[arg(long)]
    short: bool,
    /// Also run the soak scenario (7).
    #[arg(long)]
    soak: bool,
    /// Soak duration in minutes.
    #[arg(long, default_value_t = 30.0)]
    soak_minutes: f64,
    /// Run only these scenarios (comma-separated ids, 1–9).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// Where each process's log goes (one file per process and run; emptied at start).
    #[arg(long, default_value = "target/bench-logs")]
    logs: PathBuf,
    /// Also write the markdown (machine line, table, notes) to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Scenario 3's size: jobs queued [default: 5,000] …
    #[arg(long)]
    slow_jobs: Option<usize>,
    /// … and the agent's concurrency [default: 2,000] (the issue's own size: 2,000 at 1,000).
    #[arg(long)]
    slow_concurrency: Option<u16>,
    /// The dispatcher binary [default: agentfleet-dispatcher beside this binary].
    #[arg(long)]
    dispatcher_bin: Option<PathBuf>,
    /// The worker binary [default: agentfleet-worker beside this binary].
    #[arg(long)]
    worker_bin: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let beside = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let bins = Binaries {
        dispatcher: args
            .dispatcher_bin
            .unwrap_or_else(|| beside.join("agentfleet-dispatcher")),
        worker: args
            .worker_bin
            .unwrap_or_else(|| beside.join("agentfleet-worker")),
        logs: args.logs,
    };
    bins.check()?;
    let soak = (args.soak || args.only.contains(&7))
        .then(|| Duration::from_secs_f64(args.soak_minutes * 60.0));
    let mut settings = Settings::new(args.short, soak);
    settings.slow_jobs = args.slow_jobs.unwrap_or(settings.slow_jobs);
    settings.slow_concurrency = args.slow_concurrency.unwrap_or(settings.slow_concurrency);
    let ctx = Ctx { settings, bins };
    let mode = if args.short { "short" } else { "full" };
    let machine = report::machine(mode).await;
    if machine.compiler_running_at_start {
        eprintln!("bench: warning: a compiler is running; figures will be disturbed");
    }

    // Ctrl-C drops the running scenario, whose guards stop its processes and delete its
    // queues and keys.
    let report = tokio::select! {
        report = suite::run(ctx, machine, &args.only) => report,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("bench: interrupted");
            return Ok(ExitCode::from(130));
        }
    };
    let markdown = report.markdown();
    println!("{markdown}");
    report.write_json(&args.json)?;
    eprintln!("bench: JSON written to {}", args.json.display());
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)?;
    }
    let errors = report.errors();
    if errors > 0 {
        eprintln!("bench: {errors} scenario(s) could not run");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
