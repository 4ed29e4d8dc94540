//! What the suite reads from `/proc`: a process's memory (VmRSS, VmHWM), its CPU time and
//! open sockets, the machine's CPU time, and the pids of the broker and Redis, so every figure
//! can say where the two cores went. Linux only, like the deployment.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second in `/proc/*/stat`: `USER_HZ`, 100 on every Linux architecture we
/// run on (the kernel converts to it for userspace whatever `CONFIG_HZ` is).
const USER_HZ: f64 = 100.0;

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss: u64,
    /// VmHWM: the peak resident size over the process's life.
    pub hwm: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// Samples `pid`'s memory and `in_flight()` (runs in flight, as the suite's servers see
/// them) every 20 ms until `stop`: answers the most runs seen in flight and the process's
/// RSS when they were.
pub async fn rss_at_peak(
    pid: u32,
    stop: Arc<AtomicBool>,
    in_flight: impl Fn() -> u64 + Send + 'static,
) -> (u64, u64) {
    let (mut peak_in_flight, mut rss_at_peak) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let now_in_flight = in_flight();
        if let Some(mem) = memory(pid) {
            if now_in_flight >= peak_in_flight {
                peak_in_flight = now_in_flight;
                rss_at_peak = rss_at_peak.max(mem.rss);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (peak_in_flight, rss_at_peak)
}

/// Open sockets of a process (file descriptors that are sockets): TCP connections to the
/// broker, Redis, the provider and webhook receivers, and listeners.
pub fn sockets(pid: u32) -> Option<usize> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count(),
    )
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Busy CPU time of the whole machine (every state but idle and iowait), in seconds.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle) / USER_HZ)
}

/// Pids of processes whose command name (`/proc/<pid>/comm`) is `comm`.
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
        .collect()
}

/// Whether a build is running (cargo, a compiler, clippy): it disturbs every figure.
pub fn compiler_running() -> bool {
    ["rustc", "cargo", "clippy-driver", "rustdoc"]
        .iter()
        .any(|name| !pids_named(name).is_empty())
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Named groups of processes whose CPU use a scenario accounts for.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    groups: BTreeMap<String, Vec<u32>>,
}

impl Groups {
    /// The bench itself (load clients, stub LLM, webhook receiver), RabbitMQ and Redis.
    pub fn standard() -> Self {
        let mut groups = Self::default();
        groups.add("bench (clients, stub, receiver)", std::process::id());
        for pid in pids_named("beam.smp") {
            groups.add("rabbitmq", pid);
        }
        for pid in pids_named("redis-server") {
            groups.add("redis", pid);
        }
        groups
    }

    pub fn add(&mut self, group: &str, pid: u32) {
        self.groups.entry(group.to_owned()).or_default().push(pid);
    }

    fn snapshot(&self) -> BTreeMap<String, f64> {
        self.groups
            .iter()
            .map(|(name, pids)| {
                let used = pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum();
                (name.clone(), used)
            })
            .collect()
    }
}

/// CPU use over an interval: per group and for the whole machine, in cores (CPU-seconds per
/// second of wall time).
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub wall_secs: f64,
    pub machine_cores: f64,
    pub cores: BTreeMap<String, f64>,
}

/// Started before a measured interval, finished after it.
pub struct CpuMeter {
    groups: Groups,
    started: Instant,
    machine: f64,
    per_group: BTreeMap<String, f64>,
}

impl CpuMeter {
    pub fn start(groups: Groups) -> Self {
        Self {
            per_group: groups.snapshot(),
            machine: machine_busy_seconds().unwrap_or_default(),
            started: Instant::now(),
            groups,
        }
    }

    pub fn finish(&self) -> CpuUse {
        let wall = self.started.elapsed().max(Duration::from_millis(1));
        let wall_secs = wall.as_secs_f64();
        let now = self.groups.snapshot();
        let mut cores: BTreeMap<String, f64> = now
            .iter()
            .map(|(name, used)| {
                let before = self.per_group.get(name).copied().unwrap_or_default();
                (name.clone(), round2((used - before) / wall_secs))
            })
            .collect();
        let machine = (machine_busy_seconds().unwrap_or_default() - self.machine) / wall_secs;
        let accounted: f64 = cores.values().sum();
        cores.insert("other".to_owned(), round2((machine - accounted).max(0.0)));
        CpuUse {
            wall_secs: round2(wall_secs),
            machine_cores: round2(machine),
            cores,
        }
    }
}

impl CpuUse {
    /// Several measured intervals as one: each group's cores weighted by its interval's length.
    pub fn over(parts: &[CpuUse]) -> CpuUse {
        let wall_secs: f64 = parts.iter().map(|p| p.wall_secs).sum();
        let weighted = |of: &dyn Fn(&CpuUse) -> f64| {
            let busy: f64 = parts.iter().map(|p| of(p) * p.wall_secs).sum();
            round2(busy / wall_secs.max(1e-9))
        };
        let names: std::collections::BTreeSet<&String> =
            parts.iter().flat_map(|p| p.cores.keys()).collect();
        let cores = names
            .into_iter()
            .map(|name| {
                let of = |p: &CpuUse| p.cores.get(name).copied().unwrap_or_default();
                (name.clone(), weighted(&of))
            })
            .collect();
        CpuUse {
            wall_secs: round2(wall_secs),
            machine_cores: weighted(&|p| p.machine_cores),
            cores,
        }
    }

    /// "workers 0.41, rabbitmq 0.30, …": CPU milliseconds per job of each group over `jobs`
    /// jobs, the biggest first ("other" left out: it is not the system's own).
    pub fn per_job_ms(&self, jobs: usize) -> String {
        let mut by_use: Vec<(&String, &f64)> = self
            .cores
            .iter()
            .filter(|(name, _)| *name != "other")
            .collect();
        by_use.sort_by(|a, b| b.1.total_cmp(a.1));
        let per_job = |cores: f64| cores * self.wall_secs * 1000.0 / jobs.max(1) as f64;
        let parts: Vec<String> = by_use
            .iter()
            .map(|(name, &cores)| format!("{name} {:.2}", per_job(cores)))
            .collect();
        parts.join(", ")
    }

    /// "rabbitmq 0.9, worker 0.5, …" — the biggest users first.
    pub fn summary(&self) -> String {
        let mut by_use: Vec<(&String, &f64)> = self.cores.iter().collect();
        by_use.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = by_use
            .iter()
            .filter(|(_, &cores)| cores >= 0.01)
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        format!(
            "machine {:.2} of {} cores: {}",
            self.machine_cores,
            crate::report::cores(),
            parts.join(", ")
        )
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        let mem = memory(pid).expect("own status");
        assert!(mem.rss > 0 && mem.hwm >= mem.rss);
        assert!(cpu_seconds(pid).is_some());
        assert!(sockets(pid).is_some());
        assert!(machine_busy_seconds().is_some());
    }

    #[test]
    fn intervals_combine_weighted_by_their_length() {
        let use_of = |wall_secs, machine_cores, pairs: &[(&str, f64)]| CpuUse {
            wall_secs,
            machine_cores,
            cores: pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
        };
        let one = use_of(1.0, 2.0, &[("dispatcher", 1.0)]);
        let three = use_of(3.0, 1.0, &[("dispatcher", 0.2), ("redis", 0.4)]);
        let both = CpuUse::over(&[one, three]);
        assert_eq!(both.wall_secs, 4.0);
        assert_eq!(both.machine_cores, 1.25);
        assert_eq!(both.cores["dispatcher"], 0.4);
        assert_eq!(both.cores["redis"], 0.3);
    }
}
