//! A proxy's *busy* cores during a run: the part of its CPU time that did work.
//!
//! A proxy that busy-polls (tickmesh `--idle spin`, HAProxy `busy-polling`, the floor)
//! uses a whole core whatever the load, so "requests per CPU-second" of a spinning proxy
//! measures the load generator, not the proxy. Each proxy that spins says which share
//! of its time went to work, and we read it the way it reports it:
//!
//! - **tickmesh `spin`**: its workers time every loop turn that submitted or completed
//!   any I/O (the system call included) and publish `busy_ns` against their own clock
//!   (`clock_ns`) in `stats` (`worker_loops`); share = Σ over workers of
//!   Δbusy_ns ÷ Δclock_ns between a `stats` before and after the run.
//! - **HAProxy `busy-polling`**: `show info`'s `Idle_pct` on its stats socket — the share
//!   of wall time spent inside its poller (the busy-polling loop is inside it, and so is
//!   the `epoll_wait` that returns events: HAProxy's rule is the more lenient one),
//!   averaged over threads, recomputed every ≥ 0.5 s. Sampled every 250 ms; samples
//!   taken ≥ 1 s after the load started (their window lies inside the load) are
//!   averaged; share = (1 − idle) × threads. Integer percent: ±0.5 point.
//!
//! Both shares are of *wall* time, and on a shared CPU a spinner is also preempted —
//! in busy and idle turns alike, since it is always running. So busy cores = share ×
//! the proxy's CPU utilization (CPU time ÷ wall time): on a CPU of its own that factor
//! is 1, on a contended one it removes the time the proxy did not have the CPU.
//!
//! - **nginx, HAProxy without busy-polling, tickmesh `park`** sleep when idle: their
//!   CPU time is their work, busy cores = CPU utilization (the turn meter would miss
//!   the kernel work done inside a sleeping `io_uring_enter`).
//! - tickmesh `adaptive` (spins, then sleeps) and the floor (spins, keeps no count):
//!   none.
//!
//! Never fails a run: a stats read that does not answer leaves the figure out (`None`)
//! with the reason in `note`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a peer's busy time comes from.
#[derive(Debug, Clone)]
pub enum BusySource {
    /// A spinning tickmesh's control socket (`stats` → `worker_loops`) and its worker
    /// count.
    Tickmesh { control: PathBuf, workers: u32 },
    /// A busy-polling HAProxy's stats socket (`show info` → `Idle_pct`) and its thread
    /// count.
    Haproxy { socket: PathBuf, threads: u32 },
    /// A proxy that sleeps when idle: busy = its CPU time.
    CpuTime,
}

/// How long a stats read may take.
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// HAProxy: time between `show info` samples, and how long after the start a sample's
/// window (≥ 0.5 s) lies inside the load.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_secs(1);

/// One run's watch over a peer's busy time.
pub struct BusyWatch {
    source: BusySource,
    next_sample: Instant,
    /// tickmesh: (busy_ns, clock_ns) per worker at the start.
    start: Vec<(u64, u64)>,
    /// HAProxy: Idle_pct samples (percent).
    samples: Vec<f64>,
    /// Why the figure is missing, if it is.
    pub note: Option<String>,
}

impl BusyWatch {
    /// Start watching (call right before the load starts).
    pub fn start(source: BusySource) -> BusyWatch {
        let now = Instant::now();
        let mut w = BusyWatch {
            source,
            next_sample: now + SETTLE,
            start: Vec::new(),
            samples: Vec::new(),
            note: None,
        };
        if let BusySource::Tickmesh { control, .. } = &w.source {
            match tickmesh_busy(control) {
                Ok(v) => w.start = v,
                Err(e) => w.note = Some(format!("tickmesh stats: {e:#}")),
            }
        }
        w
    }

    /// Call often (every ~100 ms) while the load runs.
    pub fn tick(&mut self) {
        let BusySource::Haproxy { socket, .. } = &self.source else {
            return;
        };
        let now = Instant::now();
        if now < self.next_sample {
            return;
        }
        self.next_sample = now + SAMPLE_EVERY;
        match haproxy_idle_pct(socket) {
            Ok(p) => self.samples.push(p),
            Err(e) => self.note = Some(format!("HAProxy show info: {e:#}")),
        }
    }

    /// Busy cores over the run (call right after the load ended); `cpu_utilization` is
    /// the proxy's CPU time ÷ wall time over the same span.
    pub fn finish(&mut self, cpu_utilization: Option<f64>) -> Option<f64> {
        if matches!(self.source, BusySource::CpuTime) {
            return cpu_utilization;
        }
        // A spinner: its busy share of wall time × the share of wall time it ran (per
        // thread: its CPU utilization over its spinning threads).
        let threads = match &self.source {
            BusySource::Tickmesh { workers, .. } => *workers,
            BusySource::Haproxy { threads, .. } => *threads,
            BusySource::CpuTime => 1,
        };
        let share = self.share()?;
        match cpu_utilization {
            Some(u) => Some(share * (u / f64::from(threads.max(1))).min(1.0)),
            None => {
                self.note = Some("no CPU time for the proxy".into());
                None
            }
        }
    }

    /// A spinner's busy share of wall time (threads summed).
    fn share(&mut self) -> Option<f64> {
        match &self.source {
            BusySource::CpuTime => None,
            BusySource::Tickmesh { control, .. } => {
                if self.start.is_empty() {
                    return None;
                }
                let end = match tickmesh_busy(control) {
                    Ok(v) => v,
                    Err(e) => {
                        self.note = Some(format!("tickmesh stats: {e:#}"));
                        return None;
                    }
                };
                busy_cores(&self.start, &end)
            }
            BusySource::Haproxy { threads, .. } => {
                if self.samples.is_empty() {
                    self.note.get_or_insert_with(|| {
                        format!(
                            "no HAProxy Idle_pct sample: the run was shorter than {} s",
                            SETTLE.as_secs_f64() + SAMPLE_EVERY.as_secs_f64()
                        )
                    });
                    return None;
                }
                let idle = self.samples.iter().sum::<f64>() / self.samples.len() as f64;
                Some((1.0 - idle / 100.0).max(0.0) * f64::from(*threads))
            }
        }
    }
}

/// Σ over workers of Δbusy ÷ Δclock (workers missing at either end are skipped).
pub fn busy_cores(start: &[(u64, u64)], end: &[(u64, u64)]) -> Option<f64> {
    let mut cores = 0.0;
    let mut any = false;
    for (&(b0, c0), &(b1, c1)) in start.iter().zip(end) {
        if c1 > c0 {
            cores += b1.saturating_sub(b0) as f64 / (c1 - c0) as f64;
            any = true;
        }
    }
    any.then_some(cores)
}

/// One request line to a Unix socket, the whole answer back.
fn ask(path: &Path, line: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", path.display()))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(line.as_bytes())?;
    Ok(match line.starts_with('{') {
        // tickmesh answers one line and keeps the connection.
        true => {
            let mut out = String::new();
            BufReader::new(s).read_line(&mut out)?;
            out
        }
        // HAProxy answers and closes.
        false => {
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            out
        }
    })
}

/// tickmesh's `stats`: (busy_ns, clock_ns) per worker.
pub fn tickmesh_busy(control: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    parse_tickmesh_busy(&ask_stats(control)?)
}

/// One `stats` request on tickmesh's control socket; the answer line.
fn ask_stats(control: &Path) -> anyhow::Result<String> {
    ask(control, "{\"op\":\"stats\"}\n")
}

/// A `stats` answer line as JSON, refused by name when malformed or not `ok`.
fn stats_answer(text: &str) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| anyhow::anyhow!("malformed stats answer ({e}): {}", clip(text)))?;
    if v.get("ok").and_then(|o| o.as_bool()) != Some(true) {
        anyhow::bail!("stats refused: {}", clip(text));
    }
    Ok(v)
}

/// The `worker_loops` of a `stats` response line.
pub fn parse_tickmesh_busy(text: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let v = stats_answer(text)?;
    let per = v
        .pointer("/result/worker_loops/per_worker")
        .and_then(|p| p.as_array())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no worker_loops in the stats answer (a tickmesh without busy-time accounting?)"
            )
        })?;
    per.iter()
        .map(|m| {
            let n = |k: &str| m.get(k).and_then(|x| x.as_u64());
            match (n("busy_ns"), n("clock_ns")) {
                (Some(b), Some(c)) => Ok((b, c)),
                _ => Err(anyhow::anyhow!("a worker without busy_ns/clock_ns: {m}")),
            }
        })
        .collect()
}

/// tickmesh's `stats`: the offload backend of each worker (`none` before its first TLS
/// connection).
pub fn tickmesh_offload_backends(control: &Path) -> anyhow::Result<Vec<String>> {
    parse_offload_backends(&ask_stats(control)?)
}

/// The `offload.backends` of a `stats` response line (empty: no worker built one).
pub fn parse_offload_backends(text: &str) -> anyhow::Result<Vec<String>> {
    Ok(stats_answer(text)?
        .pointer("/result/offload/backends")
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// HAProxy's `show info` → `Idle_pct`.
pub fn haproxy_idle_pct(socket: &Path) -> anyhow::Result<f64> {
    parse_idle_pct(&ask(socket, "show info\n")?)
}

/// The `Idle_pct: N` line of a `show info` answer.
pub fn parse_idle_pct(text: &str) -> anyhow::Result<f64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Idle_pct:"))
        .ok_or_else(|| anyhow::anyhow!("no Idle_pct in show info: {}", clip(text)))?;
    let p: f64 = line
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("Idle_pct `{}` is not a number", line.trim()))?;
    if !(0.0..=100.0).contains(&p) {
        anyhow::bail!("Idle_pct {p} is not a percentage");
    }
    Ok(p)
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cores_sum_each_workers_share() {
        let a = [(100, 1_000), (0, 1_000)];
        let b = [(600, 2_000), (250, 2_000)];
        let c = busy_cores(&a, &b).unwrap();
        assert!((c - 0.75).abs() < 1e-9, "{c}");
        // A worker whose clock did not move is skipped; none at all: no figure.
        assert_eq!(busy_cores(&[(0, 5)], &[(0, 5)]), None);
    }

    #[test]
    fn tickmesh_stats_answers_are_read_or_refused_by_name() {
        let ok = r#"{"ok":true,"result":{"generation":1,"worker_loops":{"per_worker":[{"busy_ns":5,"clock_ns":9,"busy_turns":1,"events":2}]}}}"#;
        assert_eq!(parse_tickmesh_busy(ok).unwrap(), vec![(5, 9)]);
        let old = r#"{"ok":true,"result":{"generation":1}}"#;
        assert!(parse_tickmesh_busy(old)
            .unwrap_err()
            .to_string()
            .contains("no worker_loops"));
        let refused = r#"{"ok":false,"error":"nope"}"#;
        assert!(parse_tickmesh_busy(refused)
            .unwrap_err()
            .to_string()
            .contains("refused"));
        assert!(parse_tickmesh_busy("{not json")
            .unwrap_err()
            .to_string()
            .contains("malformed"));
        let partial = r#"{"ok":true,"result":{"worker_loops":{"per_worker":[{"busy_ns":5}]}}}"#;
        assert!(parse_tickmesh_busy(partial).is_err());
    }

    #[test]
    fn offload_backends_are_read_or_refused() {
        let ok = r#"{"ok":true,"result":{"offload":{"backends":["software-inline","none"],"counters":{},"per_worker":[]}}}"#;
        assert_eq!(
            parse_offload_backends(ok).unwrap(),
            vec!["software-inline".to_string(), "none".to_string()]
        );
        // No worker built an engine yet: no offload block at all.
        assert!(parse_offload_backends(r#"{"ok":true,"result":{}}"#)
            .unwrap()
            .is_empty());
        let e = parse_offload_backends(r#"{"ok":false,"error":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("stats refused"), "{e}");
        let e = parse_offload_backends("{").unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }

    #[test]
    fn idle_pct_is_read_or_refused_by_name() {
        let info = "Name: HAProxy\nRun_queue: 0\nIdle_pct: 73\nnode: x\n";
        assert_eq!(parse_idle_pct(info).unwrap(), 73.0);
        assert!(parse_idle_pct("Name: HAProxy\n")
            .unwrap_err()
            .to_string()
            .contains("no Idle_pct"));
        assert!(parse_idle_pct("Idle_pct: lots\n")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!(parse_idle_pct("Idle_pct: 140\n").is_err());
    }

    #[test]
    fn a_spinners_share_is_scaled_by_the_time_it_ran() {
        // No sample (the run was too short): no figure, and why.
        let mut w = BusyWatch::start(BusySource::Haproxy {
            socket: "/nonexistent/haproxy.sock".into(),
            threads: 2,
        });
        assert_eq!(w.finish(Some(1.0)), None);
        assert!(
            w.note.as_deref().unwrap().contains("shorter"),
            "{:?}",
            w.note
        );
        // 40% idle on average over 2 threads that each ran half the wall time.
        w.samples = vec![30.0, 50.0];
        let b = w.finish(Some(1.0)).unwrap();
        assert!((b - 0.6).abs() < 1e-9, "{b}");
        // An unreachable control socket: no figure, the reason kept.
        let mut t = BusyWatch::start(BusySource::Tickmesh {
            control: "/nonexistent/control.sock".into(),
            workers: 1,
        });
        assert_eq!(t.finish(Some(1.0)), None);
        assert!(
            t.note.as_deref().unwrap().contains("tickmesh stats"),
            "{:?}",
            t.note
        );
    }

    #[test]
    fn sleeping_proxies_are_busy_for_their_cpu_time() {
        let mut w = BusyWatch::start(BusySource::CpuTime);
        w.tick();
        assert_eq!(w.finish(Some(0.4)), Some(0.4));
    }
}
