//! The proxies under test: their configs, how they are started on loopback ports, pinned,
//! checked for readiness, measured and stopped.
//!
//! Each peer gets the same worker count and its own best low-latency settings (what its
//! docs recommend: no logging, connection reuse to the upstream, `TCP_NODELAY`, and
//! HAProxy's `busy-polling` when it has a CPU of its own); the settings are returned in
//! words for the report. A missing binary, a port in use or a peer that dies is an error
//! naming the cause and the fix — never a hang: every wait here is bounded.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::args::{Layout, Settings, Target, Workload};
use crate::floor::FloorSpec;
use crate::sys;

/// Where Debian's nginx keeps the stream module.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// What every peer needs to know.
pub struct PeerEnv<'a> {
    pub settings: &'a Settings,
    pub backend: SocketAddr,
    /// Fixed proxy port (from `--base-port`), else a free one is taken.
    pub fixed_port: Option<u16>,
    /// The tickmesh binary (tickmesh targets and the floor relay).
    pub tickmesh_bin: Option<PathBuf>,
    /// A scratch folder for configs, logs and sockets; removed by the caller.
    pub dir: &'a Path,
    /// `tls-echo`: certificates, the generator's client, the TLS echo backend.
    pub tls: Option<TlsEnv>,
}

/// What the TLS workload adds: the proxies terminate with `certs`, `direct` and the
/// floor reach the TLS-terminating echo backend.
pub struct TlsEnv {
    pub certs: crate::tls::Certs,
    pub client: Arc<rustls::ClientConfig>,
    /// The TLS echo backend (rustls): `direct`'s target and the floor's upstream.
    pub backend: SocketAddr,
}

/// How a peer was set up, for the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct PeerInfo {
    pub binary: Option<String>,
    pub version: Option<String>,
    pub command: Option<String>,
    /// The tuning applied, one line each.
    pub settings: Vec<String>,
    /// The generated config file.
    pub config: Option<String>,
}

/// A started peer (or `direct`, which starts nothing).
pub struct Peer {
    pub target: Target,
    pub listen: SocketAddr,
    pub info: PeerInfo,
    /// Where its busy time comes from (`None`: not known — `direct`, the floor).
    pub busy: Option<crate::busy::BusySource>,
    child: Option<Child>,
    stderr: Option<PathBuf>,
}

impl Peer {
    /// The process ids whose CPU and memory are the proxy's (empty for `direct`).
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map(|c| sys::process_tree(c.id()))
            .unwrap_or_default()
    }

    /// An error if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(c) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(st) = c.try_wait()? {
            bail!(
                "{} exited during the run ({st}){}",
                self.target,
                tail(self.stderr.as_deref())
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 3 s; reaps the process.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of a peer's stderr, for an error message.
fn tail(path: Option<&Path>) -> String {
    let Some(text) = path.and_then(|p| fs::read_to_string(p).ok()) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let from = lines.len().saturating_sub(5);
    format!("; its stderr ends:\n    {}", lines[from..].join("\n    "))
}

/// A free loopback port for the workload's protocol (bound and released: a tiny race
/// with other programs, reported clearly by the peer if it loses it).
pub fn free_port(udp: bool) -> anyhow::Result<u16> {
    Ok(if udp {
        UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    })
}

/// Check that a fixed port is free before a peer tries it.
fn check_port_free(addr: SocketAddr, udp: bool) -> anyhow::Result<()> {
    let r = if udp {
        UdpSocket::bind(addr).map(drop)
    } else {
        TcpListener::bind(addr).map(drop)
    };
    r.map_err(|e| crate::backend::bind_error(addr, e))
}

/// The tickmesh binary: `--tickmesh-bin`, else this executable when it is tickmesh, else
/// `tickmesh` next to it (or one folder up, for test binaries in `target/*/deps`).
pub fn locate_tickmesh(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--tickmesh-bin {}: no such file", p.display());
    }
    let me = std::env::current_exe().context("finding the current executable")?;
    if me.file_name().is_some_and(|n| n == "tickmesh") {
        return Ok(me);
    }
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    for d in [Some(dir.clone()), dir.parent().map(Path::to_path_buf)]
        .into_iter()
        .flatten()
    {
        let p = d.join("tickmesh");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no tickmesh binary next to {}: build it (cargo build --release) or pass --tickmesh-bin",
        me.display()
    )
}

fn need_binary(name: &str) -> anyhow::Result<PathBuf> {
    sys::find_binary(name).ok_or_else(|| {
        anyhow::anyhow!(
            "{name} is not installed (looked on PATH and in /usr/sbin): run scripts/setup --bench"
        )
    })
}

/// One line of version text from `bin args` (stdout or stderr).
pub fn version_of(bin: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin).args(args).output().ok()?;
    let text = [out.stdout, out.stderr].concat();
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// Start `target` in front of the backend and wait until a request goes through it.
pub fn start(target: Target, env: &PeerEnv) -> anyhow::Result<Peer> {
    let s = env.settings;
    let udp = s.workload.is_udp();
    if target == Target::Direct {
        let (listen, what) = match &env.tls {
            Some(t) if s.workload.is_http() => (
                t.backend,
                "no proxy: the generator's TLS ends at the bench's TLS HTTP backend (rustls, ring)",
            ),
            Some(t) => (
                t.backend,
                "no proxy: the generator's TLS ends at the bench's TLS echo backend (rustls, ring)",
            ),
            None => (env.backend, "no proxy: the generator talks to the backend"),
        };
        let mut settings = vec![what.to_string()];
        if env.tls.is_some() {
            settings.push(crate::tls::describe());
        }
        return Ok(Peer {
            target,
            listen,
            info: PeerInfo {
                settings,
                ..PeerInfo::default()
            },
            busy: None,
            child: None,
            stderr: None,
        });
    }
    let port = match env.fixed_port {
        Some(p) => {
            let a = SocketAddr::from(([127, 0, 0, 1], p));
            check_port_free(a, udp)?;
            p
        }
        None => free_port(udp)?,
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = env.dir.join(target.name());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spinning = s.layout == Layout::Split;
    let workers = s.proxy_workers;
    let (bin, args, info, busy) = match target {
        Target::Direct => unreachable!("handled above"),
        Target::Floor => {
            let bin = locate_tickmesh(env.tickmesh_bin.as_deref())?;
            let spec = FloorSpec {
                udp,
                listen,
                upstream: env.tls.as_ref().map_or(env.backend, |t| t.backend),
                yield_when_idle: !spinning,
            };
            let mut info = PeerInfo {
                settings: vec![
                    "one thread; epoll_wait(timeout 0) + non-blocking recv/send".into(),
                    format!("idle: {}", if spinning { "spin" } else { "sched_yield" }),
                    "TCP_NODELAY on both sides; one upstream connection per client connection"
                        .into(),
                    "single-threaded by design (ignores --proxy-workers)".into(),
                ],
                ..PeerInfo::default()
            };
            if env.tls.is_some() {
                info.settings.push("TLS passthrough: relays the TLS bytes to the TLS backend (TLS ends at client and backend, as for direct)".into());
            }
            (
                bin,
                vec!["bench".into(), "--internal-floor".into(), spec.to_arg()],
                info,
                // Spins (split layout) and keeps no count of its work.
                (!spinning).then_some(crate::busy::BusySource::CpuTime),
            )
        }
        Target::TickmeshUring | Target::TickmeshEpoll => {
            let http = s.workload.is_http();
            let bin = locate_tickmesh(env.tickmesh_bin.as_deref())?;
            let engine = if target == Target::TickmeshUring {
                "uring"
            } else {
                "epoll"
            };
            let idle = s.tickmesh_idle.as_str();
            let spin_us = s.tickmesh_spin_us.to_string();
            let offload = s.tickmesh_offload.as_str();
            let config = if let (true, Some(t)) = (http, &env.tls) {
                tickmesh_https_config(listen, env.backend, &t.certs, offload)
            } else if http {
                tickmesh_http_config(listen, env.backend)
            } else if let Some(t) = &env.tls {
                tickmesh_tls_config(listen, env.backend, &t.certs, offload)
            } else {
                tickmesh_config(listen, env.backend, udp)
            };
            let cfg_path = dir.join("tickmesh.yaml");
            fs::write(&cfg_path, &config)?;
            let args: Vec<String> = vec![
                "run".into(),
                "--config".into(),
                cfg_path.display().to_string(),
                "--engine".into(),
                engine.into(),
                "--workers".into(),
                workers.to_string(),
                "--idle".into(),
                idle.into(),
                "--spin-us".into(),
                spin_us.clone(),
                "--control".into(),
                dir.join("control.sock").display().to_string(),
                "--state-dir".into(),
                dir.join("state").display().to_string(),
            ];
            let info = PeerInfo {
                settings: vec![
                    if idle == "adaptive" {
                        format!("engine {engine}, {workers} worker(s), idle adaptive (spin {spin_us} µs, then wait)")
                    } else {
                        format!("engine {engine}, {workers} worker(s), idle {idle}")
                    },
                    if http && env.tls.is_some() {
                        format!("HTTP listener terminating TLS (rustls handshake; records on the worker's offload engine, `offload.backend: {offload}`), one catch-all route → plaintext HTTP to a one-endpoint cluster")
                    } else if http {
                        "HTTP listener, one catch-all route → one-endpoint cluster".into()
                    } else if env.tls.is_some() {
                        format!("L4 listener terminating TLS (rustls handshake; records sealed/opened by the worker's offload engine, `offload.backend: {offload}`) → plaintext to a one-endpoint cluster")
                    } else {
                        "L4 listener → one-endpoint cluster".into()
                    },
                ],
                config: Some(config),
                ..PeerInfo::default()
            };
            // Spinning: its turn meter; parked: its CPU time; adaptive mixes both.
            let busy = match idle {
                "spin" => Some(crate::busy::BusySource::Tickmesh {
                    control: dir.join("control.sock"),
                    workers,
                }),
                "park" => Some(crate::busy::BusySource::CpuTime),
                _ => None,
            };
            (bin, args, info, busy)
        }
        Target::Haproxy => {
            if udp {
                bail!("HAProxy does not proxy UDP (its UDP support is limited to syslog/DNS frontends): udp-echo skips it");
            }
            let bin = need_binary("haproxy")?;
            let stats = dir.join("haproxy.sock");
            let (config, settings) = haproxy_config(
                listen,
                env.backend,
                s.workload,
                workers,
                spinning,
                env.tls.as_ref().map(|t| t.certs.combined.as_path()),
                Some(&stats),
            );
            let cfg_path = dir.join("haproxy.cfg");
            fs::write(&cfg_path, &config)?;
            let info = PeerInfo {
                settings,
                config: Some(config),
                ..PeerInfo::default()
            };
            let busy = if spinning {
                crate::busy::BusySource::Haproxy {
                    socket: stats,
                    threads: workers,
                }
            } else {
                crate::busy::BusySource::CpuTime
            };
            (
                bin,
                vec!["-db".into(), "-f".into(), cfg_path.display().to_string()],
                info,
                Some(busy),
            )
        }
        Target::Nginx => {
            let bin = need_binary("nginx")?;
            if !s.workload.is_http() && !Path::new(NGINX_STREAM_MODULE).exists() {
                bail!("nginx's stream module ({NGINX_STREAM_MODULE}) is missing: run scripts/setup --bench (package libnginx-mod-stream)");
            }
            let (config, settings) = nginx_config(
                listen,
                env.backend,
                s.workload,
                workers,
                &dir,
                env.tls.as_ref().map(|t| &t.certs),
            );
            let cfg_path = dir.join("nginx.conf");
            fs::write(&cfg_path, &config)?;
            let info = PeerInfo {
                settings,
                config: Some(config),
                ..PeerInfo::default()
            };
            let args = vec![
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                "stderr".into(),
                "-c".into(),
                cfg_path.display().to_string(),
            ];
            // Sleeps in epoll_wait when idle: its CPU time is its work.
            (bin, args, info, Some(crate::busy::BusySource::CpuTime))
        }
    };
    let stderr_path = dir.join("stderr.log");
    let stderr = fs::File::create(&stderr_path)?;
    let mut cmd = Command::new(&bin);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(stderr.try_clone()?)
        .stderr(stderr)
        .env("TICKMESH_LOG", "warn");
    let child = spawn_pinned(cmd, &s.cpus.proxy)
        .with_context(|| format!("starting {} ({})", target, bin.display()))?;
    let mut info = info;
    info.binary = Some(bin.display().to_string());
    info.command = Some(format!("{} {}", bin.display(), args.join(" ")));
    let mut peer = Peer {
        target,
        listen,
        info,
        busy,
        child: Some(child),
        stderr: Some(stderr_path),
    };
    wait_ready(&mut peer, s, env.tls.as_ref().map(|t| &t.client))?;
    let tickmesh = matches!(target, Target::TickmeshUring | Target::TickmeshEpoll);
    if tickmesh && env.tls.is_some() {
        check_offload(&mut peer, &dir.join("control.sock"), s.tickmesh_offload)?;
    }
    Ok(peer)
}

/// After the first request: the worker that served it runs the requested offload
/// backend, or the run stops here — tickmesh falls back to `software` (and says so in its
/// log) when a backend is missing from the binary or the host, and a comparison must not
/// carry the wrong name.
fn check_offload(
    peer: &mut Peer,
    control: &Path,
    wanted: crate::args::TickmeshOffload,
) -> anyhow::Result<()> {
    let used = crate::busy::tickmesh_offload_backends(control)
        .with_context(|| format!("{}: reading its offload backend", peer.target))?;
    let used: Vec<String> = used.into_iter().filter(|b| b != "none").collect();
    // Every worker that built an engine (the others have seen no TLS yet) runs the one
    // asked for.
    if !used.is_empty() && used.iter().all(|b| b == wanted.stats_name()) {
        peer.info.settings.push(format!(
            "offload backend in use (tickmesh stats): {}",
            used.join(", ")
        ));
        return Ok(());
    }
    let msg = format!(
        "{} runs its TLS records on `{}`, not the requested `offload.backend: {}` (missing from this binary or host){}",
        peer.target,
        if used.is_empty() { "no backend".to_string() } else { used.join(", ") },
        wanted.as_str(),
        tail(peer.stderr.as_deref())
    );
    peer.stop();
    bail!(msg)
}

/// Spawn from a short-lived thread pinned to `cpus`: the child inherits the mask from
/// the forking thread, so it is placed before its first instruction (what `taskset`
/// does), with no `unsafe` pre-exec hook.
fn spawn_pinned(mut cmd: Command, cpus: &[usize]) -> anyhow::Result<Child> {
    let cpus = cpus.to_vec();
    std::thread::scope(|sc| {
        sc.spawn(move || {
            sys::pin_current_thread(&cpus)?;
            cmd.spawn().map_err(anyhow::Error::from)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the spawning thread panicked"))?
    })
}

/// Wait (≤ 10 s) until one request goes through the peer, or it dies.
fn wait_ready(
    peer: &mut Peer,
    s: &Settings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_err = None;
    while Instant::now() < deadline {
        if let Some(c) = peer.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                let msg = format!(
                    "{} failed to start: it exited ({st}){}",
                    peer.target,
                    tail(peer.stderr.as_deref())
                );
                peer.child = None;
                bail!(msg);
            }
        }
        match crate::loadgen::probe(
            s.workload,
            s.size,
            s.http_method,
            peer.listen,
            tls,
            Duration::from_millis(300),
        ) {
            Ok(()) => return Ok(()),
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let why = last_err.map(|e| format!("{e:#}")).unwrap_or_default();
    peer.stop();
    bail!(
        "{} did not pass a request within 10 s (last try: {why}){}",
        peer.target,
        tail(peer.stderr.as_deref())
    )
}

/// tickmesh's native config: one listener, one cluster of the backend.
pub fn tickmesh_config(listen: SocketAddr, backend: SocketAddr, udp: bool) -> String {
    format!(
        "# generated by tickmesh bench\nlisteners:\n  - name: bench\n    address: {listen}\n    protocol: {}\n    cluster: backend\nclusters:\n  - name: backend\n    endpoints: [\"{backend}\"]\n",
        if udp { "udp" } else { "tcp" }
    )
}

/// tickmesh terminating TLS on an L4 listener (record crypto on the `offload` backend),
/// plaintext to the backend.
pub fn tickmesh_tls_config(
    listen: SocketAddr,
    backend: SocketAddr,
    certs: &crate::tls::Certs,
    offload: &str,
) -> String {
    format!(
        "# generated by tickmesh bench\noffload:\n  backend: {offload}\nlisteners:\n  - name: bench\n    address: {listen}\n    protocol: tcp\n    tls:\n      cert: {}\n      key: {}\n      mode: STRICT\n    cluster: backend\nclusters:\n  - name: backend\n    endpoints: [\"{backend}\"]\n",
        certs.cert.display(),
        certs.key.display()
    )
}

/// tickmesh as an HTTP/1.1 proxy: one virtual host, one route to the backend.
pub fn tickmesh_http_config(listen: SocketAddr, backend: SocketAddr) -> String {
    tickmesh_http_with(listen, backend, "", "")
}

/// [`tickmesh_http_config`] with the listener terminating TLS (records on the `offload`
/// backend), plaintext HTTP to the backend.
pub fn tickmesh_https_config(
    listen: SocketAddr,
    backend: SocketAddr,
    certs: &crate::tls::Certs,
    offload: &str,
) -> String {
    let tls = format!(
        "\n    tls: {{cert: {}, key: {}, mode: STRICT}}",
        certs.cert.display(),
        certs.key.display()
    );
    tickmesh_http_with(
        listen,
        backend,
        &format!("offload:\n  backend: {offload}\n"),
        &tls,
    )
}

/// One http listener (`tls`: its `tls:` line, or nothing) after `head`.
fn tickmesh_http_with(listen: SocketAddr, backend: SocketAddr, head: &str, tls: &str) -> String {
    format!(
        "# generated by tickmesh bench\n{head}listeners:\n  - name: bench\n    address: {listen}\n    protocol: http{tls}\nclusters:\n  - name: backend\n    endpoints: [\"{backend}\"]\nroute_configs:\n  - name: bench\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{prefix: \"/\"}}\n            route: {{cluster: backend}}\n"
    )
}

/// HAProxy 2.6, tuned per its configuration manual for latency.
pub fn haproxy_config(
    listen: SocketAddr,
    backend: SocketAddr,
    workload: Workload,
    workers: u32,
    busy_polling: bool,
    tls_pem: Option<&Path>,
    stats_socket: Option<&Path>,
) -> (String, Vec<String>) {
    let http = workload.is_http();
    let mut settings = vec![
        format!("nbthread {workers}"),
        "no logging".into(),
        "TCP_NODELAY: HAProxy sets it on its sockets itself".into(),
    ];
    if busy_polling {
        settings.push("busy-polling (spins instead of sleeping in epoll: its best latency on a CPU of its own)".into());
    } else {
        settings.push("no busy-polling (shared CPU: it must sleep when idle)".into());
    }
    let mut c = String::from("# generated by tickmesh bench\nglobal\n");
    c += &format!("    nbthread {workers}\n    maxconn 4096\n");
    if busy_polling {
        c += "    busy-polling\n";
    }
    if let Some(p) = stats_socket {
        // Read for `Idle_pct` (its busy time) a few times a second; never on the
        // request path.
        c += &format!("    stats socket {} mode 600 level user\n", p.display());
        settings.push("stats socket (the bench reads Idle_pct from `show info`)".into());
    }
    c += "\ndefaults\n";
    if http {
        c += "    mode http\n    option http-keep-alive\n    option http-no-delay\n    http-reuse always\n    timeout http-keep-alive 60s\n";
        settings.push(
            "mode http, keep-alive both sides, http-reuse always, option http-no-delay".into(),
        );
    } else {
        c += "    mode tcp\n";
        settings.push("mode tcp".into());
    }
    c += "    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\n";
    let ssl = match tls_pem {
        Some(pem) => {
            settings.push(format!(
                "TLS terminated by HAProxy (OpenSSL): bind ... ssl crt {}, plaintext to the backend",
                pem.display()
            ));
            format!(" ssl crt {}", pem.display())
        }
        None => String::new(),
    };
    c += &format!("frontend bench\n    bind {listen}{ssl}\n    default_backend upstream\n\n");
    c += &format!("backend upstream\n    server backend {backend}\n");
    (c, settings)
}

/// nginx 1.22: `stream` for TCP/UDP, `http` with upstream keep-alive for http1.
pub fn nginx_config(
    listen: SocketAddr,
    backend: SocketAddr,
    workload: Workload,
    workers: u32,
    dir: &Path,
    tls: Option<&crate::tls::Certs>,
) -> (String, Vec<String>) {
    let d = dir.display();
    let mut settings = vec![
        format!("worker_processes {workers}"),
        "no access log, error log at `error` to stderr".into(),
        "tcp_nodelay on".into(),
        "no busy-polling option exists: workers sleep in epoll_wait".into(),
    ];
    let mut c = String::from("# generated by tickmesh bench\n");
    if !workload.is_http() {
        c += &format!("load_module {NGINX_STREAM_MODULE};\n");
    }
    // nginx 1.22 enables only TLS 1.2 and older by default: 1.3 is asked for.
    let (ssl, ssl_conf) = match tls {
        Some(t) => {
            settings.push("TLS terminated by nginx (OpenSSL): listen ... ssl, ssl_protocols TLSv1.2 TLSv1.3, plaintext to the backend".into());
            (
                " ssl",
                format!(
                    "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
                    t.cert.display(),
                    t.key.display()
                ),
            )
        }
        None => ("", String::new()),
    };
    c += &format!(
        "daemon off;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log stderr error;\nevents {{\n    worker_connections 4096;\n    multi_accept on;\n}}\n"
    );
    match workload {
        Workload::Http1 | Workload::Https1 => {
            settings.push("http proxy, upstream keepalive 64, proxy_http_version 1.1, keepalive_requests 1000000".into());
            c += &format!(
                "http {{\n    access_log off;\n    tcp_nodelay on;\n    keepalive_timeout 60s;\n    keepalive_requests 1000000;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    upstream backend {{\n        server {backend};\n        keepalive 64;\n        keepalive_requests 1000000;\n    }}\n    server {{\n        listen {listen}{ssl};\n{ssl_conf}        location / {{\n            proxy_pass http://backend;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n"
            );
        }
        Workload::TcpEcho | Workload::UdpEcho | Workload::TlsEcho | Workload::TlsHandshake => {
            let udp = if workload.is_udp() { " udp" } else { "" };
            settings.push(format!("stream proxy{udp}"));
            c += &format!(
                "stream {{\n    tcp_nodelay on;\n    upstream backend {{\n        server {backend};\n    }}\n    server {{\n        listen {listen}{udp}{ssl};\n{ssl_conf}        proxy_pass backend;\n        proxy_timeout 60s;\n    }}\n}}\n"
            );
        }
    }
    (c, settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https1_configs_terminate_tls_and_speak_http() {
        let l: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let certs = crate::tls::Certs {
            ca: "/c/ca.pem".into(),
            cert: "/c/leaf.pem".into(),
            key: "/c/leaf.key".into(),
            combined: "/c/combined.pem".into(),
        };
        let t = tickmesh_https_config(l, b, &certs, "software");
        assert!(
            t.contains(
                "protocol: http\n    tls: {cert: /c/leaf.pem, key: /c/leaf.key, mode: STRICT}"
            ),
            "{t}"
        );
        assert!(
            t.contains("backend: software") && t.contains("route: {cluster: backend}"),
            "{t}"
        );
        let (h, _) = haproxy_config(l, b, Workload::Https1, 1, true, Some(&certs.combined), None);
        assert!(
            h.contains("mode http") && h.contains("bind 127.0.0.1:7000 ssl crt /c/combined.pem"),
            "{h}"
        );
        let (n, _) = nginx_config(l, b, Workload::Https1, 1, Path::new("/tmp/x"), Some(&certs));
        assert!(
            n.contains("listen 127.0.0.1:7000 ssl;") && n.contains("proxy_pass http://backend;"),
            "{n}"
        );
        assert!(!n.contains("load_module"), "{n}");
    }

    #[test]
    fn configs_name_the_addresses_and_tuning() {
        let l: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let (h, s) = haproxy_config(
            l,
            b,
            Workload::TcpEcho,
            2,
            true,
            None,
            Some(Path::new("/tmp/x/h.sock")),
        );
        assert!(
            h.contains("busy-polling")
                && h.contains("nbthread 2")
                && h.contains("bind 127.0.0.1:7000")
        );
        assert!(h.contains("server backend 127.0.0.1:9000") && h.contains("mode tcp"));
        assert!(s.iter().any(|l| l.contains("busy-polling")));
        assert!(h.contains("stats socket /tmp/x/h.sock mode 600"), "{h}");
        let (h, _) = haproxy_config(l, b, Workload::Http1, 1, false, None, None);
        assert!(!h.contains("busy-polling") && h.contains("http-reuse always"));
        let (n, _) = nginx_config(l, b, Workload::UdpEcho, 1, Path::new("/tmp/x"), None);
        assert!(n.contains("listen 127.0.0.1:7000 udp;") && n.contains("ngx_stream_module.so"));
        let (n, _) = nginx_config(l, b, Workload::Http1, 1, Path::new("/tmp/x"), None);
        assert!(n.contains("keepalive 64") && !n.contains("load_module"));
        let t = tickmesh_config(l, b, false);
        assert!(t.contains("address: 127.0.0.1:7000") && t.contains("127.0.0.1:9000"));
        // tls-echo: every proxy terminates with the run's certificate, plaintext upstream.
        let certs = crate::tls::Certs {
            ca: "/c/ca.pem".into(),
            cert: "/c/leaf.pem".into(),
            key: "/c/leaf.key".into(),
            combined: "/c/leaf-with-key.pem".into(),
        };
        let (h, s) = haproxy_config(
            l,
            b,
            Workload::TlsEcho,
            1,
            true,
            Some(Path::new("/c/leaf-with-key.pem")),
            None,
        );
        assert!(
            h.contains("bind 127.0.0.1:7000 ssl crt /c/leaf-with-key.pem"),
            "{h}"
        );
        assert!(h.contains("mode tcp") && h.contains("server backend 127.0.0.1:9000"));
        assert!(s.iter().any(|l| l.contains("TLS terminated")));
        let (n, _) = nginx_config(
            l,
            b,
            Workload::TlsEcho,
            1,
            Path::new("/tmp/x"),
            Some(&certs),
        );
        assert!(n.contains("listen 127.0.0.1:7000 ssl;"), "{n}");
        assert!(
            n.contains("ssl_certificate /c/leaf.pem;")
                && n.contains("ssl_certificate_key /c/leaf.key;")
        );
        assert!(n.contains("TLSv1.3") && n.contains("server 127.0.0.1:9000;"));
        // (tests/bench.rs runs this config through the real daemon.)
        let t = tickmesh_tls_config(l, b, &certs, "software");
        assert!(
            t.contains("backend: software") && t.contains("cert: /c/leaf.pem"),
            "{t}"
        );
        assert!(t.contains("key: /c/leaf.key") && t.contains("endpoints: [\"127.0.0.1:9000\"]"));
    }

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let e = need_binary("haproxy-that-does-not-exist").unwrap_err();
        assert!(e.to_string().contains("scripts/setup --bench"));
        assert!(locate_tickmesh(Some(Path::new("/nonexistent/tickmesh")))
            .unwrap_err()
            .to_string()
            .contains("no such file"));
    }
}
