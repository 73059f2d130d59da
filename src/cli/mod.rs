//! The command line: one binary, one subcommand per job. Parses arguments and hands off;
//! no logic of its own beyond `validate`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Format, Kind};
use crate::engine::{EngineKind, Idle};

#[derive(Parser, Debug)]
#[command(
    name = "tickmesh",
    version,
    about = "Service-mesh data plane for latency-critical systems"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// Upsert the resources of a config file into the running daemon.
    Apply(ApplyArgs),
    /// Remove one resource from the running daemon.
    Delete(DeleteArgs),
    /// Show the running config.
    Get(GetArgs),
    /// Show traffic counters.
    Stats(StatsArgs),
    /// Check a config file offline.
    Validate(ValidateArgs),
    /// See tickmesh work: echo backends, the daemon, traffic, a live route change.
    Demo(DemoArgs),
    /// Show and tune the NIC: offloads, queues, coalescing, RSS, IRQs, busy polling, hugepages, vfio.
    Nic(crate::nic::NicArgs),
    /// Measure latency/throughput through tickmesh, HAProxy, nginx and the floor, side by side.
    Bench(tickmesh_perf::BenchArgs),
}

/// Where the control socket is: `$XDG_RUNTIME_DIR/tickmesh/control.sock`, else
/// `/run/tickmesh/control.sock`.
pub fn default_control_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("tickmesh/control.sock"),
        _ => PathBuf::from("/run/tickmesh/control.sock"),
    }
}

#[derive(Args, Debug, Clone)]
pub struct ControlArg {
    /// Control socket path [default: $XDG_RUNTIME_DIR/tickmesh/control.sock, else /run/tickmesh/control.sock]
    #[arg(long, value_name = "PATH", global = true)]
    pub control: Option<PathBuf>,
}

impl ControlArg {
    pub fn path(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(default_control_path)
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Config file (YAML or TOML). Without it: the persisted config, else the embedded default.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where accepted configs are persisted [default: the --control socket's directory when
    /// --control is given; else /var/lib/tickmesh as root, ~/.local/state/tickmesh otherwise]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub dpdk: Box<crate::engine::dpdk::DpdkArgs>,
    /// How long SIGTERM/SIGINT waits for open connections to finish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// I/O engine: auto picks uring when the kernel allows it, else epoll.
    #[arg(long, value_enum, default_value_t = EngineKind::Auto)]
    pub engine: EngineKind,
    /// Worker threads [default: one per CPU]
    #[arg(long, short = 'w', value_name = "N")]
    pub workers: Option<usize>,
    /// Pin worker i to CPU i (of the CPUs this process may use).
    #[arg(long)]
    pub pin: bool,
    /// What an idle worker does: spin (never sleeps), adaptive (spin, then wait in the kernel), park (wait at once).
    #[arg(long, value_enum, default_value_t = Idle::Adaptive)]
    pub idle: Idle,
    /// Adaptive idle: how long to spin before waiting in the kernel.
    #[arg(long, value_name = "MICROS", default_value_t = 50)]
    pub spin_us: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// Config file to apply (YAML or TOML; `-` reads stdin as YAML).
    #[arg(long = "filename", short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Make the file the whole config: resources it does not name are removed.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    #[arg(value_enum)]
    pub kind: Kind,
    pub name: String,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// What to show [default: everything]
    #[arg(value_enum)]
    pub what: Option<GetWhat>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GetWhat {
    Listeners,
    Clusters,
    Routes,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone)]
pub struct StatsArgs {
    /// Print machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Config file to check (YAML or TOML by extension).
    #[arg(long = "filename", short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub control: ControlArg,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long to drive traffic.
    #[arg(long, value_name = "DURATION", default_value = "6s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub control: ControlArg,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (write e.g. 500ms, 10s)"))
}

/// Read a config file as `apply`/`validate` see it: text plus its format.
pub fn read_config_file(path: &std::path::Path) -> anyhow::Result<(String, Format)> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        return Ok((s, Format::Yaml));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((text, Format::from_path(path)))
}

pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let (text, format) = read_config_file(&args.file)?;
    match config::parse(&text, format) {
        Ok(c) => {
            println!(
                "{}: ok ({} listeners, {} clusters)",
                args.file.display(),
                c.listeners.len(),
                c.clusters.len()
            );
            Ok(())
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{}: {p}", args.file.display());
            }
            anyhow::bail!(
                "{} is not a valid config ({} problem(s))",
                args.file.display(),
                e.problems.len()
            )
        }
    }
}

/// Dispatch a parsed command line.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "dpdk")]
        Command::Run(a) if a.engine.engine == EngineKind::Dpdk => crate::engine::dpdk::run(&a),
        Command::Run(a) => crate::daemon::run(&a),
        Command::Apply(a) => crate::control::client::apply(&a),
        Command::Delete(a) => crate::control::client::delete(&a),
        Command::Get(a) => crate::control::client::get(&a),
        Command::Stats(a) => crate::control::client::stats(&a),
        Command::Validate(a) => validate(&a),
        Command::Demo(a) => crate::demo::run(&a),
        Command::Nic(a) => crate::nic::run(&a),
        Command::Bench(a) => tickmesh_perf::run(&a, env!("CARGO_PKG_VERSION")),
    }
}
