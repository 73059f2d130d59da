//! The Unix control socket: accepts operator connections, checks who they are, reads one
//! JSON request per line and answers each with one JSON line.
//!
//! Runs a current-thread tokio runtime on its own thread (`tickmesh-control`); nothing
//! here runs on a worker. One client's garbage never affects another: an over-long line
//! (> [`MAX_REQUEST`]) is answered with an error at once and skipped up to its newline,
//! malformed JSON or an unknown op gets an error response, and the connection goes on.
//! A peer whose uid is neither root's nor the daemon's gets one error line and is closed
//! before anything it sends is read.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::protocol::{Request, Response, MAX_REQUEST};
use super::state::ControlPlane;

/// Control connections served at once; more get an error line and are closed.
const MAX_CLIENTS: usize = 64;

/// A connection that sends no complete request for this long is closed, so forgotten
/// clients cannot hold all [`MAX_CLIENTS`] slots.
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// A running control socket. Stops (and removes its socket file) on [`stop`](Self::stop)
/// or drop.
pub struct ControlServer {
    path: PathBuf,
    /// The socket file we created, to remove it only if it is still ours.
    inode: (u64, u64),
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A claimed control socket path, bound but not serving yet: the daemon claims it first
/// so that a second daemon on the same path fails before binding any listener.
pub struct ControlSocket {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
    inode: (u64, u64),
    /// The daemon's uid: the owner of the socket file it created.
    owner: u32,
}

impl ControlSocket {
    /// Create the socket at `path` (mode 0600; its directory, mode 0700, if missing). A
    /// stale socket file is replaced only when nothing listens on it.
    pub fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        let listener = bind(path)?;
        let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        Ok(ControlSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            // The file is created with our effective uid: that is "the daemon's uid".
            owner: meta.uid(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve `plane` on this socket from the control thread.
    pub fn serve(mut self, plane: Arc<ControlPlane>) -> anyhow::Result<ControlServer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Requests run there; applies take one lock anyway, so a few suffice.
            .max_blocking_threads(4)
            .thread_name("tickmesh-control-req")
            .build()
            .context("starting the control socket's runtime")?;
        let listener = {
            let _in_runtime = rt.enter();
            // Taken once: `serve` consumes self.
            let l = self
                .listener
                .take()
                .expect("an unserved socket has its listener");
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)?
        };
        let (stop, stopped) = oneshot::channel();
        let owner = self.owner;
        let thread = std::thread::Builder::new()
            .name("tickmesh-control".into())
            .spawn(move || rt.block_on(serve(listener, plane, owner, stopped)))
            .context("spawning the control thread")?;
        Ok(ControlServer {
            path: std::mem::take(&mut self.path),
            inode: self.inode,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if self.listener.is_some() {
            remove_if_ours(&self.path, self.inode);
        }
    }
}

fn remove_if_ours(path: &Path, inode: (u64, u64)) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if (m.dev(), m.ino()) == inode {
            let _ = fs::remove_file(path);
        }
    }
}

impl ControlServer {
    /// [`ControlSocket::bind`] then [`ControlSocket::serve`].
    pub fn start(path: &Path, plane: Arc<ControlPlane>) -> anyhow::Result<ControlServer> {
        ControlSocket::bind(path)?.serve(plane)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving: no new connections, open ones are closed, the socket file removed.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the control thread panicked");
            }
        }
        remove_if_ours(&self.path, self.inode);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the control socket's directory {}", dir.display()))?;
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => bail!(
            "{} exists and is not a socket; remove it or pass another --control PATH",
            path.display()
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "a daemon is already listening on {}; stop it or pass another --control PATH",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale control socket {}", path.display());
                fs::remove_file(path)
                    .with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("probing existing socket {}", path.display()))
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    }
    // Bind under a temporary name, restrict it, then rename it into place, so the final
    // path never exists with looser permissions (the uid check guards regardless).
    let temp = dir.join(format!(".tm{}.sock", std::process::id()));
    let _ = fs::remove_file(&temp);
    let l = std::os::unix::net::UnixListener::bind(&temp)
        .with_context(|| format!("binding the control socket {}", temp.display()))?;
    let placed = fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("creating the control socket {}", path.display()));
    }
    Ok(l)
}

async fn serve(
    listener: UnixListener,
    plane: Arc<ControlPlane>,
    owner: u32,
    mut stopped: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    // strict_dns re-resolution, off this thread (the resolver blocks); one at a time.
    let mut dns_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    dns_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dns_job: Option<tokio::task::JoinHandle<bool>> = None;
    // Outlier detection decisions (cheap: a few atomic loads per endpoint).
    let mut health_tick = tokio::time::interval(crate::cluster::outlier::TICK);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = health_tick.tick() => plane.health_tick(),
            _ = dns_tick.tick() => {
                if !matches!(&dns_job, Some(j) if !j.is_finished()) {
                    let plane = plane.clone();
                    dns_job = Some(tokio::task::spawn_blocking(move || {
                        // Certificate hot rotation rides the same 1 s tick.
                        let certs = plane.refresh_certs();
                        plane.refresh_dns() | certs
                    }));
                }
            }
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let slot = slots.clone().try_acquire_owned().ok();
                    tokio::spawn(connection(stream, plane.clone(), owner, slot));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn connection(
    stream: UnixStream,
    plane: Arc<ControlPlane>,
    owner: u32,
    slot: Option<OwnedSemaphorePermit>,
) {
    let cred = stream.peer_cred();
    let (rd, mut wr) = stream.into_split();
    if slot.is_none() {
        let msg = format!("too many control connections ({MAX_CLIENTS} open); try again");
        let _ = wr.write_all(&Response::error(msg).to_line()).await;
        return;
    }
    let refused = match cred {
        Ok(c) if c.uid() == 0 || c.uid() == owner => None,
        Ok(c) => Some(format!(
            "permission denied: uid {} may not use this control socket (only root and uid {owner}, the daemon's, may)",
            c.uid()
        )),
        Err(e) => Some(format!("cannot read the peer's credentials: {e}")),
    };
    if let Some(msg) = refused {
        tracing::warn!("control socket: {msg}");
        let _ = wr.write_all(&Response::error(msg).to_line()).await;
        return;
    }

    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut line = Vec::new();
    // Skipping the rest of an over-long line (its error already sent).
    let mut skipping = false;
    loop {
        let buf = match tokio::time::timeout(IDLE, rd.fill_buf()).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return,
            Err(_) => {
                let msg = format!(
                    "closing this control connection: no complete request for {}s",
                    IDLE.as_secs()
                );
                let _ = wr.write_all(&Response::error(msg).to_line()).await;
                return;
            }
        };
        if buf.is_empty() {
            // EOF: a last line without its newline is still a request.
            if !skipping && !line.is_empty() {
                let r = run(&plane, std::mem::take(&mut line)).await;
                let _ = wr.write_all(&r.to_line()).await;
            }
            return;
        }
        let (chunk, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let used = chunk.len() + usize::from(complete);
        let mut reply = None;
        let mut request = None;
        if !skipping {
            if line.len() + chunk.len() > MAX_REQUEST {
                reply = Some(Response::error(format!(
                    "request too large: over {MAX_REQUEST} bytes (the limit is 4 MiB per line); it was not read"
                )));
                line = Vec::new();
                skipping = !complete;
            } else {
                line.extend_from_slice(chunk);
                if complete {
                    request = Some(std::mem::take(&mut line));
                }
            }
        } else if complete {
            skipping = false;
        }
        rd.consume(used);
        if let Some(req) = request {
            reply = Some(run(&plane, req).await);
        }
        if let Some(r) = reply {
            if wr.write_all(&r.to_line()).await.is_err() {
                return;
            }
        }
    }
}

/// Handle one request on the blocking pool: an apply binds sockets, may resolve names
/// and fsyncs, and none of that may hold up other clients on this thread. A panic is
/// contained to its request.
async fn run(plane: &Arc<ControlPlane>, line: Vec<u8>) -> Response {
    let plane = plane.clone();
    match tokio::task::spawn_blocking(move || handle(&plane, &line)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("a control request failed internally: {e}");
            Response::error("internal error while handling the request; see the daemon's log")
        }
    }
}

/// One request line → one response. Blank lines are answered too (with an error), so a
/// client always gets one line per line it sent.
fn handle(plane: &ControlPlane, line: &[u8]) -> Response {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let req = match Request::parse(line) {
        Ok(r) => r,
        Err(e) => return Response::error(e),
    };
    match req {
        Request::Apply {
            config,
            format,
            prune,
        } => match plane.apply(&config, format, prune) {
            Ok(r) => {
                let changed = r
                    .changes
                    .iter()
                    .filter(|c| c.action != super::protocol::Action::Unchanged)
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>();
                if !changed.is_empty() {
                    tracing::info!(
                        "apply accepted, generation {}: {}",
                        r.generation,
                        changed.join(", ")
                    );
                }
                Response::ok(r)
            }
            Err(e) => {
                tracing::warn!("apply rejected: {e}");
                rejected(e)
            }
        },
        Request::Delete { kind, name } => match plane.delete(kind, &name) {
            Ok(r) => {
                tracing::info!(
                    "delete accepted, generation {}: {}",
                    r.generation,
                    r.changes[0]
                );
                Response::ok(r)
            }
            Err(e) => {
                tracing::warn!("delete rejected: {e}");
                rejected(e)
            }
        },
        Request::Get { what } => Response::ok(plane.get(what)),
        Request::Stats {} => Response::ok(plane.stats()),
    }
}

fn rejected(e: super::state::Rejected) -> Response {
    Response {
        problems: e.problems,
        ..Response::error(e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    fn start() -> (tempfile::TempDir, ControlServer, Arc<ControlPlane>) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = parse(
            "clusters:\n  - {name: a, endpoints: [\"127.0.0.1:1\"]}\n",
            Format::Yaml,
        )
        .unwrap();
        let plane = Arc::new(ControlPlane::new(1, cfg, 1, None, false).unwrap());
        let server = ControlServer::start(&tmp.path().join("run/ctl.sock"), plane.clone()).unwrap();
        (tmp, server, plane)
    }

    fn ask(c: &mut BufReader<UnixStream>, line: &[u8]) -> Response {
        c.get_mut().write_all(line).unwrap();
        let mut resp = String::new();
        c.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"))
    }

    fn client(s: &ControlServer) -> BufReader<UnixStream> {
        let c = UnixStream::connect(s.path()).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        BufReader::new(c)
    }

    #[test]
    fn the_socket_is_owner_only_and_replaces_only_a_stale_file() {
        let (_tmp, server, plane) = start();
        let m = fs::metadata(server.path()).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let e = ControlServer::start(server.path(), plane.clone())
            .err()
            .unwrap();
        assert!(e.to_string().contains("already listening"), "{e}");
        let path = server.path().to_path_buf();
        // A socket file nobody listens on is stale: the next start replaces it.
        let stale = std::os::unix::net::UnixListener::bind(path.with_extension("old")).unwrap();
        drop(stale);
        server.stop();
        assert!(!path.exists(), "stop removes the socket file");
        fs::rename(path.with_extension("old"), &path).unwrap();
        let again = ControlServer::start(&path, plane.clone()).unwrap();
        drop(again);
        fs::write(&path, b"x").unwrap();
        let e = ControlServer::start(&path, plane).err().unwrap();
        assert!(e.to_string().contains("is not a socket"), "{e}");
    }

    #[test]
    fn garbage_gets_an_error_and_the_connection_goes_on() {
        let (_tmp, server, _plane) = start();
        let mut c = client(&server);
        let r = ask(&mut c, b"{\"op\":\"get\"\n");
        assert!(r.error.unwrap().contains("malformed JSON"));
        let r = ask(&mut c, b"{\"op\":\"reboot\"}\n");
        assert!(r.error.unwrap().contains("unknown op `reboot`"));
        let r = ask(&mut c, b"\n");
        assert!(!r.ok);
        let r = ask(&mut c, b"{\"op\":\"get\",\"what\":\"clusters\"}\r\n");
        assert!(r.ok, "{r:?}");
        assert_eq!(r.result.unwrap()["generation"], 1);
    }

    #[test]
    fn an_oversized_request_is_refused_at_once_and_skipped() {
        let (_tmp, server, _plane) = start();
        let mut c = client(&server);
        let mut w = c.get_ref().try_clone().unwrap();
        // 8 MiB of one JSON string, then a newline and a good request.
        let writer = std::thread::spawn(move || {
            w.write_all(b"{\"op\":\"apply\",\"config\":\"").unwrap();
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..8 {
                w.write_all(&chunk).unwrap();
            }
            w.write_all(b"\"}\n{\"op\":\"stats\"}\n").unwrap();
        });
        let mut first = String::new();
        c.read_line(&mut first).unwrap();
        let r: Response = serde_json::from_str(&first).unwrap();
        assert!(r.error.unwrap().contains("request too large"), "{first}");
        let mut second = String::new();
        c.read_line(&mut second).unwrap();
        let r: Response = serde_json::from_str(&second).unwrap();
        assert!(r.ok, "the connection keeps serving: {second}");
        writer.join().unwrap();
    }

    #[test]
    fn a_half_sent_request_does_not_hold_up_other_clients() {
        let (_tmp, server, _plane) = start();
        let mut slow = UnixStream::connect(server.path()).unwrap();
        slow.write_all(b"{\"op\":").unwrap();
        let mut c = client(&server);
        let r = ask(&mut c, b"{\"op\":\"get\"}\n");
        assert!(r.ok, "{r:?}");
        // The slow one finishes its line later and gets its answer.
        slow.write_all(b"\"stats\"}\n").unwrap();
        let mut slow = BufReader::new(slow);
        let mut answer = String::new();
        slow.read_line(&mut answer).unwrap();
        assert!(answer.starts_with("{\"ok\":true"), "{answer}");
    }

    #[test]
    fn a_last_line_without_newline_is_answered_at_eof() {
        let (_tmp, server, _plane) = start();
        let mut c = UnixStream::connect(server.path()).unwrap();
        c.write_all(b"{\"op\":\"stats\"}").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("{\"ok\":true"), "{all}");
    }

    #[test]
    fn apply_and_delete_over_the_socket() {
        let (_tmp, server, plane) = start();
        let mut c = client(&server);
        let req = serde_json::json!({"op": "apply", "config": "clusters:\n  - {name: b, endpoints: [\"127.0.0.1:2\"]}\n"});
        let r = ask(&mut c, format!("{req}\n").as_bytes());
        assert!(r.ok, "{r:?}");
        assert_eq!(r.result.unwrap()["generation"], 2);
        let r = ask(
            &mut c,
            b"{\"op\":\"delete\",\"kind\":\"cluster\",\"name\":\"zz\"}\n",
        );
        assert!(r.error.unwrap().contains("no cluster named `zz`"));
        let req = serde_json::json!({"op": "apply", "config": "listeners:\n  - {name: l, address: \"127.0.0.1:0\", cluster: nope}\n"});
        let r = ask(&mut c, format!("{req}\n").as_bytes());
        assert!(!r.ok);
        assert_eq!(r.problems[0].path, "listeners[0].cluster");
        assert_eq!(r.problems[0].line, Some(2));
        assert_eq!(plane.generation(), 2);
    }
}
