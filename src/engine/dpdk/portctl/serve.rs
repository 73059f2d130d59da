//! Where port control is served: the engine's Unix socket, or once in the CLI's own EAL.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::super::eal::{eal_args, Eal};
use super::super::port::{port_socket, probed_ports, Mempool, Port};
use super::super::DpdkArgs;
use super::PortCtl;
use crate::nic::dpdk::{DpdkAccess, Request, Response, DEFAULT_SOCKET, MAX_LINE};

// === the engine's port-control socket ===

/// The engine's hook: serve its started `ports` (each with the pool of its NUMA socket)
/// for `workers` polling workers on `path` (default [`DEFAULT_SOCKET`]) until `stop`.
pub fn serve_engine(
    ports: &[Port],
    pools: &[Mempool],
    workers: usize,
    path: Option<PathBuf>,
    stop: &'static AtomicBool,
) -> Option<PortCtlServer> {
    let mut ctl = PortCtl::new(
        format!("tickmesh run --engine dpdk (pid {})", std::process::id()),
        workers,
    );
    for p in ports {
        let Some(pool) = pools.iter().find(|m| m.socket == p.socket) else {
            tracing::warn!(
                "dpdk: port {} has no mbuf pool on its socket; port control leaves it out",
                p.name
            );
            continue;
        };
        ctl.add_port(p.id, &p.name, pool, Some((p.rx_queues, p.tx_queues)));
    }
    serve(path.unwrap_or_else(|| DEFAULT_SOCKET.into()), ctl, stop)
}

/// The running port-control thread. Dropping it stops the thread and waits for it, which
/// destroys the rte_flow rules made through it: drop it before the ports close.
pub struct PortCtlServer {
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PortCtlServer {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve `ctl` on a Unix socket (mode 0600) until `stop` is set or the returned server is
/// dropped; the socket file is removed at the end and the rte_flow rules made through it
/// are destroyed. Returns `None` (with a warning) when the socket cannot be made: the
/// engine runs without it.
pub fn serve(path: PathBuf, ctl: PortCtl, stop: &'static AtomicBool) -> Option<PortCtlServer> {
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("dpdk: port control (tickmesh nic on dpdk: ports) is off: {e:#}");
            return None;
        }
    };
    tracing::info!("dpdk: port control on {}", path.display());
    let mut ctl = ctl;
    let quit = Arc::new(AtomicBool::new(false));
    let q = quit.clone();
    let thread = std::thread::Builder::new()
        .name("tm-dpdk-nic".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) && !q.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Err(e) = one_request(s, &mut ctl) {
                            tracing::warn!("dpdk: port control request: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!("dpdk: port control accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
            drop(ctl);
        })
        .map_err(|e| tracing::warn!("dpdk: port control thread: {e}"))
        .ok()?;
    Some(PortCtlServer {
        quit,
        thread: Some(thread),
    })
}

fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another process serves {} (give this engine its own with --dpdk-nic-socket)",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path); // stale, from a process that died
    }
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn one_request(s: UnixStream, ctl: &mut PortCtl) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_LINE as u64)).read_line(&mut line)?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => ctl.handle(&req),
        Err(e) => Response::error(format!("not a port-control request ({e})")),
    };
    let mut out = serde_json::to_string(&resp).map_err(std::io::Error::other)?;
    out.push('\n');
    (&s).write_all(out.as_bytes())
}

// === `tickmesh nic --dpdk-vdev ...`: a port of our own ===

/// Start an EAL with the given devices, open the port with one queue pair, run the
/// request (and, after a change, show the port) and tear everything down.
pub fn standalone(access: &DpdkAccess, req: &Request) -> anyhow::Result<Response> {
    let mut eal_extra = vec!["--log-level=error".to_string()];
    eal_extra.extend(access.dpdk_eal_arg.iter().cloned());
    let args = DpdkArgs {
        dpdk_vdev: access.dpdk_vdev.clone(),
        dpdk_allow: access.dpdk_allow.clone(),
        dpdk_no_huge: !access.dpdk_huge,
        dpdk_eal_arg: eal_extra,
        ..Default::default()
    };
    let prefix = format!("tickmesh-nic-{}", std::process::id());
    let eal = Eal::init(eal_args(&args, 1, &prefix), args.dpdk_no_huge)?;
    let probed = probed_ports();
    let (id, name) = probed
        .iter()
        .find(|(id, n)| *n == req.port || req.port.parse::<u16>().is_ok_and(|x| x == *id))
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no DPDK port `{}` among the devices given (ports: {})",
                req.port,
                probed
                    .iter()
                    .map(|(i, n)| format!("dpdk:{n} (dpdk:{i})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let pool = Mempool::new("tm_nic_pool", 8191, port_socket(id))?;
    let port = Port::start(id, &name, 1, 1, &pool)?;
    let mut ctl = PortCtl::new(
        "this command only (its own EAL; what it changes ends when it exits)".into(),
        0,
    );
    ctl.add_port(id, &name, &pool, None);
    let mut resp = ctl.handle(req);
    // After a change — made, or refused and rolled back — show the port as it is now.
    if !req.words.is_empty() && ctl.find(&req.port).is_ok() {
        let show = ctl.handle(&Request {
            port: req.port.clone(),
            words: Vec::new(),
        });
        resp.report = show.report;
    }
    // Order: rules, then the port, the pool and the EAL.
    drop(ctl);
    drop(port);
    drop(pool);
    drop(eal);
    Ok(resp)
}
