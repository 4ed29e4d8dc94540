//! The suite's output: one row per figure (value, the baseline measured in the same run, the
//! ratio, the goal and whether it was met), a markdown table for people and JSON for tools,
//! both headed by the machine the run was on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Whether a figure met its goal. Goals are reported, never asserted: the suite's exit code
/// only says whether every scenario ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// No goal: the figure is there to be read (scaling, breakdowns).
    Info,
}

impl Verdict {
    pub fn check(met: bool) -> Self {
        if met {
            Self::Pass
        } else {
            Self::Fail
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "**FAIL**",
            Self::Info => "info",
        }
    }
}

/// One figure of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured, e.g. "whole-path jobs/s".
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// How the value reads in the table, when not just "value unit".
    #[serde(skip)]
    pub display: Option<String>,
    pub baseline: Option<BaselineFigure>,
    pub ratio: Option<f64>,
    pub goal: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaselineFigure {
    pub what: String,
    pub value: f64,
    pub unit: String,
}

impl Row {
    pub fn new(metric: &str, value: f64, unit: &str) -> Self {
        Self {
            metric: metric.to_owned(),
            value,
            unit: unit.to_owned(),
            display: None,
            baseline: None,
            ratio: None,
            goal: "—".to_owned(),
            verdict: Verdict::Info,
        }
    }

    pub fn display(mut self, text: String) -> Self {
        self.display = Some(text);
        self
    }

    /// Compares with a baseline of the same unit; sets the ratio value / baseline.
    pub fn baseline(mut self, what: &str, value: f64, unit: &str) -> Self {
        self.ratio = (value > 0.0).then(|| self.value / value);
        self.baseline = Some(BaselineFigure {
            what: what.to_owned(),
            value,
            unit: unit.to_owned(),
        });
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    pub fn goal(mut self, goal: &str, met: bool) -> Self {
        self.goal = goal.to_owned();
        self.verdict = Verdict::check(met);
        self
    }

    pub fn info(mut self, note: &str) -> Self {
        self.goal = note.to_owned();
        self.verdict = Verdict::Info;
        self
    }
}

/// What a scenario hands back.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    /// Sentences for the notes under the table (where the CPU went, caveats).
    pub notes: Vec<String>,
    /// Everything measured, for the JSON.
    pub details: Value,
}

#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub id: u8,
    pub name: String,
    pub elapsed_secs: f64,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub details: Value,
    /// Set when the scenario could not run to the end (the suite then exits non-zero).
    pub error: Option<String>,
}

/// The machine and the conditions of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date: String,
    pub mode: String,
    pub nproc: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub rabbitmq: String,
    pub redis: String,
    pub load_average_at_start: Option<f64>,
    pub compiler_running_at_start: bool,
    pub compiler_running_at_end: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub elapsed_secs: f64,
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.scenarios.iter().filter(|s| s.error.is_some()).count()
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} ({} mode, {:.0} s): {} cores ({}), {:.1} GiB, Linux {}, RabbitMQ {}, Redis {}; \
             load average {} at start; compiler running at start/end: {}/{}.\n",
            m.date,
            m.mode,
            self.elapsed_secs,
            m.nproc,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.rabbitmq,
            m.redis,
            m.load_average_at_start
                .map_or("?".to_owned(), |l| format!("{l:.2}")),
            yes_no(m.compiler_running_at_start),
            yes_no(m.compiler_running_at_end),
        );
        out.push_str("| scenario | figure | baseline (same run) | ratio | goal | result |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for s in &self.scenarios {
            let name = format!("{}. {}", s.id, s.name);
            for row in &s.rows {
                let figure = row.display.clone().unwrap_or_else(|| {
                    format!("{}: {} {}", row.metric, number(row.value), row.unit)
                });
                let baseline = row.baseline.as_ref().map_or("—".to_owned(), |b| {
                    format!("{}: {} {}", b.what, number(b.value), b.unit)
                });
                let ratio = row.ratio.map_or("—".to_owned(), |r| format!("{r:.2}"));
                let _ = writeln!(
                    out,
                    "| {name} | {figure} | {baseline} | {ratio} | {} | {} |",
                    row.goal,
                    row.verdict.label()
                );
            }
            if let Some(err) = &s.error {
                let err = err.replace('|', "/").replace('\n', " ");
                let _ = writeln!(out, "| {name} | error: {err} | — | — | — | **ERROR** |");
            }
        }
        let notes: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| s.notes.iter().map(move |n| format!("- {}. {n}", s.id)))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for note in notes {
                out.push_str(&note);
                out.push('\n');
            }
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Three significant figures or so, without noise.
pub fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || (x.fract() == 0.0 && a < 1e9) {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Describes the machine; the versions come from the services themselves.
pub async fn machine(mode: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown".to_owned(), |(_, model)| model.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".to_owned(), |k| k.trim().to_owned());
    Machine {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        mode: mode.to_owned(),
        nproc: cores(),
        memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        cpu_model,
        kernel,
        rabbitmq: rabbitmq_version().await,
        redis: redis_version().await,
        load_average_at_start: crate::procfs::load_average(),
        compiler_running_at_start: crate::procfs::compiler_running(),
        compiler_running_at_end: false,
    }
}

/// `rabbitmqctl version` when it is installed here (not when the broker runs in a container).
async fn rabbitmq_version() -> String {
    let run = tokio::task::spawn_blocking(|| {
        std::process::Command::new("rabbitmqctl")
            .arg("version")
            .stderr(std::process::Stdio::null())
            .output()
    });
    match tokio::time::timeout(Duration::from_secs(15), run).await {
        Ok(Ok(Ok(out))) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
        _ => "unknown".to_owned(),
    }
}

async fn redis_version() -> String {
    let info = async {
        let client = redis::Client::open(agentfleet_tests::REDIS_URL)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), info).await {
        Ok(Ok(info)) => info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map_or("unknown".to_owned(), |v| v.trim().to_owned()),
        _ => "unknown".to_owned(),
    }
}
