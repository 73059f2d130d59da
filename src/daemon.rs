//! `tickmesh run`: the daemon. Resolves which config to serve, compiles it, starts the
//! engine's workers and the control socket, and on SIGTERM/SIGINT stops accepting,
//! drains, and exits 0.
//!
//! Owns start-up order and shutdown only; it never touches the data path. [`Daemon`] is
//! the same thing as a library value, so `tickmesh demo` (and tests) can run a daemon
//! inside their own process.
//!
//! Which config is served, in order:
//! 1. `--config FILE`: replaces whatever was persisted, persisted as the next generation;
//! 2. the config persisted in the state directory (the last accepted apply), as it was;
//! 3. the embedded default ([`config::DEFAULT_CONFIG`]), generation 1, not persisted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::RunArgs;
use crate::config::{self, Config, Format};
use crate::control::{ControlPlane, ControlServer, ControlSocket, StateDir};
use crate::engine::{Engine, EngineKind, EngineOptions, ShutdownReport};

/// Where the config to serve comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The persisted config, else the embedded default.
    Resume,
    /// A config file (YAML or TOML by extension) that replaces the persisted one.
    File(PathBuf),
    /// Config text that replaces the persisted one; `origin` names it in logs and errors.
    Text {
        text: String,
        format: Format,
        origin: String,
    },
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub engine: EngineOptions,
    pub control: PathBuf,
    pub state_dir: PathBuf,
    pub config: ConfigSource,
    /// How long [`Daemon::shutdown`] waits for open connections.
    pub drain_timeout: Duration,
}

impl DaemonOptions {
    pub fn from_args(a: &RunArgs) -> DaemonOptions {
        DaemonOptions {
            engine: EngineOptions::from_args(&a.engine),
            control: a.control.path(),
            state_dir: a
                .state_dir
                .clone()
                .unwrap_or_else(|| default_state_dir(a.control.control.as_deref())),
            config: match &a.config {
                Some(f) => ConfigSource::File(f.clone()),
                None => ConfigSource::Resume,
            },
            drain_timeout: a.drain_timeout,
        }
    }
}

/// The state directory when `--state-dir` is not given:
/// - with an explicit `--control PATH`: the socket's directory, so that daemons on
///   different sockets never share state;
/// - else as root `/var/lib/tickmesh`; else `$XDG_STATE_HOME/tickmesh` (by default
///   `~/.local/state/tickmesh`). Both survive a reboot, unlike the socket's `/run`.
pub fn default_state_dir(control: Option<&Path>) -> PathBuf {
    if let Some(dir) = control.and_then(Path::parent) {
        if !dir.as_os_str().is_empty() {
            return dir.to_path_buf();
        }
        return PathBuf::from(".");
    }
    // The owner of /proc/self is this process's effective uid (no unsafe getuid needed).
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/tickmesh");
    }
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("tickmesh"),
        _ => match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".local/state/tickmesh"),
            _ => PathBuf::from("/var/lib/tickmesh"),
        },
    }
}

/// A running daemon: workers, control plane and control socket.
pub struct Daemon {
    /// Stops its thread when the daemon is dropped.
    _nic_watch: Option<NicWatch>,
    plane: Arc<ControlPlane>,
    engine: Option<Engine>,
    server: Option<ControlServer>,
    control: PathBuf,
    state_dir: PathBuf,
    drain_timeout: Duration,
}

impl Daemon {
    /// Claim the control socket, resolve and compile the config (binding its listeners),
    /// start the engine, then serve the control socket. Any failure undoes what was done.
    pub fn start(opts: DaemonOptions) -> anyhow::Result<Daemon> {
        // First, so a second daemon on the same socket fails before it binds a listener
        // (SO_REUSEPORT would let it share the first one's ports).
        let socket = ControlSocket::bind(&opts.control)?;
        let store = StateDir::open(&opts.state_dir)?;
        let (cfg, generation, persist, origin) = resolve(&opts.config, &store)?;
        // NIC tuning goes first: traffic should never see the host half-tuned. A profile
        // that fails has been rolled back by `nic` and stops the start.
        let nic_watch = match &cfg.nic {
            Some(n) => Some(NicWatch::start(n).with_context(|| format!("{origin}: nic"))?),
            None => None,
        };
        let plane = ControlPlane::new(opts.engine.workers, cfg, generation, Some(store), persist)
            .map_err(|e| {
            let hint = if persist || !origin.starts_with("the persisted") {
                ""
            } else {
                "\n(start with --config FILE to replace the persisted config)"
            };
            anyhow::anyhow!("{origin}: {e}{hint}")
        })?;
        let plane = Arc::new(plane);
        let engine =
            Engine::start(opts.engine.clone(), plane.routes()).context("starting the engine")?;
        tracing::info!(
            "tickmesh {} running: engine {}, {} worker(s); config generation {generation} from {origin}; control socket {}; state dir {}",
            env!("CARGO_PKG_VERSION"),
            format!("{:?}", engine.kind()).to_lowercase(),
            opts.engine.workers,
            opts.control.display(),
            opts.state_dir.display(),
        );
        log_routes(&plane);
        let server = match socket.serve(plane.clone()) {
            Ok(s) => s,
            Err(e) => {
                engine.shutdown(Duration::ZERO);
                return Err(e);
            }
        };
        Ok(Daemon {
            _nic_watch: nic_watch,
            plane,
            engine: Some(engine),
            server: Some(server),
            control: opts.control,
            state_dir: opts.state_dir,
            drain_timeout: opts.drain_timeout,
        })
    }

    pub fn control_path(&self) -> &Path {
        &self.control
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The control plane, for callers in the same process (the same operations the
    /// control socket offers).
    pub fn control_plane(&self) -> &Arc<ControlPlane> {
        &self.plane
    }

    /// The engine actually running.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine.as_ref().map_or(EngineKind::Auto, Engine::kind)
    }

    /// Close the control socket, stop accepting, wait up to the drain timeout for open
    /// connections, close the rest and join the workers.
    pub fn shutdown(mut self) -> ShutdownReport {
        self.stop(self.drain_timeout)
    }

    fn stop(&mut self, drain: Duration) -> ShutdownReport {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        match self.engine.take() {
            Some(e) => {
                e.stop_accepting();
                self.plane.close_listeners();
                e.shutdown(drain)
            }
            None => ShutdownReport::default(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// The config's NIC profile: applied at start, then compared with the host every
/// `drift_check`; any difference is logged as a warning (never changed back behind the
/// operator's back). Uses the profile of the config the daemon started with. The DPDK
/// engine uses it too (before its EAL starts, so a profile's hugepages are there for it).
pub(crate) struct NicWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NicWatch {
    pub(crate) fn start(n: &config::NicSettings) -> anyhow::Result<NicWatch> {
        use std::sync::atomic::{AtomicBool, Ordering};
        for note in crate::nic::apply_profile(&n.profile, &n.devices)
            .with_context(|| format!("applying NIC profile `{}`", n.profile))?
        {
            tracing::info!("nic: {note}");
        }
        tracing::info!("nic: profile `{}` applied", n.profile);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, settings) = (stop.clone(), n.clone());
        let every = n.drift_check.unwrap_or(Duration::from_secs(60));
        let thread = std::thread::Builder::new()
            .name("tickmesh-nic".into())
            .spawn(move || {
                let mut last = Vec::new();
                'watch: loop {
                    // Sleep in short steps so shutdown does not wait a whole period.
                    let until = std::time::Instant::now() + every;
                    while std::time::Instant::now() < until {
                        if flag.load(Ordering::Relaxed) {
                            break 'watch;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    match crate::nic::drift(&settings.profile, &settings.devices) {
                        Ok(d) if d != last => {
                            for line in &d {
                                tracing::warn!(
                                    "nic drift from profile `{}`: {line}",
                                    settings.profile
                                );
                            }
                            last = d;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            "nic: cannot compare the host with `{}`: {e:#}",
                            settings.profile
                        ),
                    }
                }
            })?;
        Ok(NicWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NicWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The config to start with: (config, generation, persist it?, where it came from).
pub(crate) fn resolve(
    source: &ConfigSource,
    store: &StateDir,
) -> anyhow::Result<(Config, u64, bool, String)> {
    let replace = |text: &str, format: Format, origin: String| {
        let cfg = match config::parse(text, format) {
            Ok(c) => c,
            Err(e) => {
                let lines: Vec<String> = e
                    .problems
                    .iter()
                    .map(|p| format!("{origin}: {p}"))
                    .collect();
                bail!(
                    "{origin} is not a valid config ({} problem(s)):\n{}",
                    lines.len(),
                    lines.join("\n")
                )
            }
        };
        // A corrupt state file does not stop an explicit replacement; generations restart.
        let previous = match store.load() {
            Ok(p) => p.map_or(0, |p| p.generation),
            Err(e) => {
                tracing::warn!("{e:#}; replacing it with {origin}");
                0
            }
        };
        Ok((cfg, previous + 1, true, origin))
    };
    match source {
        ConfigSource::File(path) => {
            let (text, format) = crate::cli::read_config_file(path)?;
            replace(&text, format, path.display().to_string())
        }
        ConfigSource::Text {
            text,
            format,
            origin,
        } => replace(text, *format, origin.clone()),
        ConfigSource::Resume => match store.load()? {
            Some(p) => {
                let origin = format!(
                    "the persisted config (generation {}, {})",
                    p.generation,
                    store.file().display()
                );
                Ok((p.config, p.generation, false, origin))
            }
            None => {
                // The embedded default is checked by a unit test; an error here is a bug.
                let cfg = config::parse(config::DEFAULT_CONFIG, Format::Yaml)
                    .map_err(|e| anyhow::anyhow!("the embedded default config: {e}"))?;
                Ok((cfg, 1, false, "the embedded default config".into()))
            }
        },
    }
}

fn log_routes(plane: &ControlPlane) {
    for r in plane
        .get(Some(crate::cli::GetWhat::Routes))
        .routes
        .unwrap_or_default()
    {
        let targets: Vec<String> = r
            .clusters
            .iter()
            .map(|t| {
                if r.clusters.len() == 1 {
                    t.cluster.clone()
                } else {
                    format!("{} (weight {})", t.cluster, t.weight)
                }
            })
            .collect();
        tracing::info!(
            "listener {}: {} {} -> {}",
            r.listener,
            r.protocol,
            r.address,
            targets.join(", ")
        );
    }
}

/// `tickmesh run`: start, wait for SIGTERM or SIGINT, drain, exit 0.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let opts = DaemonOptions::from_args(args);
    // Signal handlers go in before anything is announced, so a SIGTERM right after the
    // control socket appears is already ours. This runtime only waits for signals.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let daemon = Daemon::start(opts)?;
    let name = rt.block_on(async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    });
    tracing::info!(
        "{name}: stopping; open connections have {} to finish",
        humantime::format_duration(daemon.drain_timeout)
    );
    let report = daemon.shutdown();
    if report.open_at_deadline > 0 {
        tracing::warn!(
            "{} connection(s) were still open at the drain deadline and were closed",
            report.open_at_deadline
        );
    }
    tracing::info!("stopped");
    Ok(())
}
