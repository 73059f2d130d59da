//! The control plane end to end: the real `tickmesh` binary as daemon (`run`) and as
//! client (`apply`, `delete`, `get`, `stats`), real Unix control sockets, real listeners
//! on 127.0.0.1 with echo backends behind them.
//!
//! Each daemon gets its own temporary control socket and state directory; listeners use
//! ports the kernel just handed out. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tickmesh");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP backend on loopback that answers every read with `<name>:` + the bytes read.
struct Backend {
    addr: SocketAddr,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        let mut out = format!("{name}:").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Backend { addr }
    }
}

/// One request/response through `listener`; returns what came back.
fn exchange(listener: SocketAddr, msg: &str) -> String {
    let mut s = TcpStream::connect_timeout(&listener, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to listener {listener}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg.as_bytes()).unwrap();
    let want = msg.len() + 2; // "a:" or "b:" prefix
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading from listener {listener}: {e}"));
        assert!(
            n > 0,
            "listener {listener} closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// A temporary directory holding a daemon's control socket, state and config files.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn sock(&self) -> PathBuf {
        self.tmp.path().join("run/control.sock")
    }
    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// The client binary against `dir`'s socket.
fn cli(dir: &Dir, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--control")
        .arg(dir.sock())
        .env("TICKMESH_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(o: Output) -> String {
    assert!(
        !o.status.success(),
        "should have failed\nstdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

fn get_json(dir: &Dir) -> Value {
    serde_json::from_str(&ok(cli(dir, &["get", "-o", "json"]))).unwrap()
}

/// One raw line to the control socket; the one-line answer.
fn raw(sock: &Path, line: &[u8]) -> Value {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let line = line.to_vec();
    // Write from another thread: an 8 MiB line is answered before it is all sent.
    let writer = std::thread::spawn(move || w.write_all(&line));
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    let _ = writer.join();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
}

/// A `tickmesh run` child process.
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn start(dir: &Dir, config: Option<&Path>) -> Daemon {
        Daemon::start_with(dir, config, "auto")
    }

    fn start_with(dir: &Dir, config: Option<&Path>, engine: &str) -> Daemon {
        let d = Daemon::spawn_with(dir, config, engine);
        d.wait_ready(dir)
    }

    fn spawn(dir: &Dir, config: Option<&Path>) -> Daemon {
        Daemon::spawn_with(dir, config, "auto")
    }

    fn spawn_with(dir: &Dir, config: Option<&Path>, engine: &str) -> Daemon {
        let stderr = dir.tmp.path().join(format!("daemon-{}.log", free_port()));
        let mut cmd = Command::new(BIN);
        cmd.args([
            "run",
            "--workers",
            "2",
            "--drain-timeout",
            "2s",
            "--engine",
            engine,
        ])
        .arg("--control")
        .arg(dir.sock())
        .arg("--state-dir")
        .arg(dir.state())
        .env("TICKMESH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_ready(mut self, dir: &Dir) -> Daemon {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Bound is not yet serving: wait for an answer.
            if let Ok(mut s) = UnixStream::connect(dir.sock()) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut answer = String::new();
                if s.write_all(b"{\"op\":\"stats\"}\n").is_ok()
                    && BufReader::new(s).read_line(&mut answer).is_ok()
                    && answer.starts_with("{\"ok\":true")
                {
                    return self;
                }
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("the daemon exited ({st}) before serving:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not serve its control socket in 20s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) for the process to exit.
    fn stop_wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "no exit in {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `signal` (TERM or INT) and return the exit status.
    fn stop(mut self, signal: &str) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 15s after SIG{signal}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(listener: u16, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: front
    address: 127.0.0.1:{listener}
    cluster: a
clusters:
  - name: a
    endpoints: ["{a}"]
  - name: b
    lb_policy: least_request
    endpoints: ["{b}"]
"#
    )
}

// === tests that need no daemon process ===

#[test]
fn the_client_says_when_no_daemon_runs() {
    let dir = Dir::new();
    for args in [
        &["get"][..],
        &["stats"],
        &["delete", "cluster", "x"],
        &["apply", "-f", "/dev/null"],
    ] {
        let e = fails(cli(&dir, args));
        assert!(e.contains("daemon is not running at"), "{args:?}: {e}");
        assert!(e.contains("control.sock"), "{e}");
    }
}

#[test]
fn run_rejects_an_invalid_config_file_naming_line_and_field() {
    let dir = Dir::new();
    let bad = dir.file(
        "bad.yaml",
        "listeners:\n  - name: front\n    address: 127.0.0.1:1\n    cluster: nowhere\n",
    );
    let out = Command::new(BIN)
        .args(["run", "--workers", "1"])
        .arg("--control")
        .arg(dir.sock())
        .arg("--state-dir")
        .arg(dir.state())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let e = fails(out);
    assert!(
        e.contains("bad.yaml: line 4: listeners[0].cluster: cluster `nowhere` is not defined"),
        "{e}"
    );
    assert!(
        !dir.sock().exists(),
        "a failed start leaves no socket behind"
    );
    assert!(!dir.state().join("config.json").exists());
}

// === daemon tests ===

#[test]
fn apply_get_delete_round_trip() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = Dir::new();
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let file = dir.file("base.yaml", &config(port, a.addr, b.addr));
    let d = Daemon::start(&dir, Some(&file));
    assert!(d.log().contains("generation 1"), "{}", d.log());
    assert_eq!(exchange(front, "hi"), "a:hi");

    let g = get_json(&dir);
    assert_eq!(g["generation"], 1);
    assert_eq!(g["routes"][0]["listener"], "front");
    assert_eq!(g["routes"][0]["clusters"][0]["cluster"], "a");

    // Route `front` to `b` and add a cluster; `a` is untouched.
    let patch = dir.file(
        "patch.yaml",
        &format!(
            "listeners:\n  - name: front\n    address: 127.0.0.1:{port}\n    cluster: b\nclusters:\n  - name: c\n    endpoints: [\"{}\"]\n",
            a.addr
        ),
    );
    let out = ok(cli(&dir, &["apply", "-f", patch.to_str().unwrap()]));
    assert_eq!(
        out,
        "listener/front configured\ncluster/c created\ngeneration 2\n"
    );
    assert_eq!(
        exchange(front, "hi"),
        "b:hi",
        "new connections take the new route"
    );
    let out = ok(cli(&dir, &["apply", "-f", patch.to_str().unwrap()]));
    assert!(out.ends_with("generation 2 (no change)\n"), "{out}");

    let routes = ok(cli(&dir, &["get", "routes"]));
    assert!(routes.starts_with("# generation 2\n"), "{routes}");
    assert!(routes.contains("listener: front"), "{routes}");
    let listeners = ok(cli(&dir, &["get", "listeners"]));
    assert!(listeners.contains("cluster: b") && !listeners.contains("clusters:"));

    // `get` prints apply-able YAML: applying it back with --prune changes nothing.
    let all = ok(cli(&dir, &["get"]));
    let saved = dir.file("saved.yaml", &all);
    let out = ok(cli(
        &dir,
        &["apply", "--prune", "-f", saved.to_str().unwrap()],
    ));
    assert!(out.ends_with("generation 2 (no change)\n"), "{out}");

    let e = fails(cli(&dir, &["delete", "cluster", "b"]));
    assert!(e.contains("cluster `b` is still in use"), "{e}");
    assert!(e.contains("listener `front` routes to cluster `b`"), "{e}");
    assert_eq!(
        ok(cli(&dir, &["delete", "cluster", "c"])),
        "cluster/c deleted\ngeneration 3\n"
    );
    let e = fails(cli(&dir, &["delete", "listener", "nope"]));
    assert!(e.contains("no listener named `nope`"), "{e}");

    // Two connections of 2 bytes each way went through `front`. Workers may count bytes
    // a moment after relaying them: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(3);
    let stats = loop {
        let s: Value = serde_json::from_str(&ok(cli(&dir, &["stats", "--json"]))).unwrap();
        if s["listeners"][0]["counters"]["bytes_from_downstream"] == 4 || Instant::now() > deadline
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stats["generation"], 3);
    assert_eq!(stats["workers"], 2);
    let l = &stats["listeners"][0];
    assert_eq!(l["name"], "front");
    assert_eq!(l["counters"]["cx_total"], 2, "{l}");
    assert_eq!(l["counters"]["bytes_from_downstream"], 4, "{l}");
    assert_eq!(l["per_worker"].as_array().unwrap().len(), 2);
    let b_stats = &stats["clusters"][1];
    assert_eq!(b_stats["name"], "b");
    assert_eq!(
        b_stats["endpoints"][0]["counters"]["cx_total"], 1,
        "{b_stats}"
    );
    let table = ok(cli(&dir, &["stats"]));
    assert!(
        table.contains("LISTENER") && table.contains("front"),
        "{table}"
    );
    assert!(table.contains(&format!("  {}", b.addr)), "{table}");

    let st = d.stop("TERM");
    assert!(st.success(), "SIGTERM exits 0: {st}");
    assert!(!dir.sock().exists(), "the socket is removed on exit");
}

#[test]
fn bad_input_is_refused_and_the_old_config_keeps_serving() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = Dir::new();
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let file = dir.file("base.yaml", &config(port, a.addr, b.addr));
    let _d = Daemon::start(&dir, Some(&file));
    let still_serving = |what: &str| {
        let g = get_json(&dir);
        assert_eq!(g["generation"], 1, "after {what}");
        assert_eq!(
            g["routes"][0]["clusters"][0]["cluster"], "a",
            "after {what}"
        );
        assert_eq!(exchange(front, "x"), "a:x", "traffic after {what}");
    };

    // An invalid config file: every problem on its own line with file, line and field.
    let bad = dir.file(
        "bad.yaml",
        "listeners:\n  - name: front\n    address: 127.0.0.1:1\n    cluster: b\n    colour: red\n",
    );
    let e = fails(cli(&dir, &["apply", "-f", bad.to_str().unwrap()]));
    assert!(e.contains("bad.yaml: line 5"), "{e}");
    assert!(e.contains("unknown field `colour`"), "{e}");
    still_serving("an invalid file");

    // A route to a missing cluster.
    let bad = dir.file(
        "missing.yaml",
        &format!(
            "listeners:\n  - name: front\n    address: 127.0.0.1:{port}\n    cluster: ghost\n"
        ),
    );
    let e = fails(cli(&dir, &["apply", "-f", bad.to_str().unwrap()]));
    assert!(
        e.contains("missing.yaml: line 4: listeners[0].cluster: cluster `ghost` is not defined"),
        "{e}"
    );
    assert!(e.contains("nothing was changed"), "{e}");
    still_serving("a route to a missing cluster");

    // A listener on a port someone else holds.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = dir.file(
        "taken.yaml",
        &format!(
            "listeners:\n  - name: other\n    address: {}\n    cluster: a\n",
            taken.local_addr().unwrap()
        ),
    );
    let e = fails(cli(&dir, &["apply", "-f", bad.to_str().unwrap()]));
    assert!(e.contains("listeners[0].address: cannot bind"), "{e}");
    still_serving("a bind failure");

    // Protocol garbage on the socket itself.
    let r = raw(&dir.sock(), b"{\"op\":\"shutdown\"}\n");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("unknown op `shutdown`"),
        "{r}"
    );
    let r = raw(
        &dir.sock(),
        b"{\"op\":\"apply\",\"config\":\"listeners: [\n",
    );
    assert!(
        r["error"].as_str().unwrap().contains("malformed JSON"),
        "{r}"
    );
    let mut huge = b"{\"op\":\"apply\",\"config\":\"".to_vec();
    huge.resize(8 << 20, b'#');
    huge.extend_from_slice(b"\"}\n");
    let r = raw(&dir.sock(), &huge);
    assert!(
        r["error"].as_str().unwrap().contains("request too large"),
        "{r}"
    );
    still_serving("protocol garbage");
}

/// Run `args` of the client as uid/gid 65534 (nobody). `None` when this test cannot
/// change uid (not root, or no setpriv).
fn as_nobody(dir: &Dir, args: &[&str]) -> Option<Output> {
    let probe = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--version",
        ])
        .output();
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        return None;
    }
    Some(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .arg("--control")
            .arg(dir.sock())
            .output()
            .unwrap(),
    )
}

#[test]
fn a_peer_of_another_uid_is_refused() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = Dir::new();
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let file = dir.file("base.yaml", &config(port, a.addr, b.addr));
    let _d = Daemon::start(&dir, Some(&file));
    let patch = dir.file("patch.yaml", &config(port, b.addr, a.addr));
    use std::os::unix::fs::PermissionsExt;
    // The other uid must be able to reach the file to be refused by the file mode.
    for p in [dir.tmp.path(), dir.sock().parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&patch, std::fs::Permissions::from_mode(0o644)).unwrap();
    let apply = ["apply", "-f", patch.to_str().unwrap()];
    let Some(out) = as_nobody(&dir, &apply) else {
        eprintln!("SKIPPED a_peer_of_another_uid_is_refused: needs root and setpriv to run the client as another uid");
        return;
    };
    // First line of defence: the socket is 0600, so connect() itself is refused.
    let e = fails(out);
    assert!(e.contains("permission denied"), "{e}");
    // Second: with the mode loosened by mistake, SO_PEERCRED still refuses the uid.
    std::fs::set_permissions(dir.sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = fails(as_nobody(&dir, &apply).unwrap());
    assert!(
        e.contains("uid 65534 may not use this control socket"),
        "{e}"
    );
    assert_eq!(get_json(&dir)["generation"], 1);
    assert_eq!(exchange(front, "x"), "a:x");
}

#[test]
fn restart_resumes_the_persisted_config_and_config_replaces_it() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = Dir::new();
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let file = dir.file("base.yaml", &config(port, a.addr, b.addr));
    let d = Daemon::start(&dir, Some(&file));
    let to_b = dir.file("to-b.yaml", &config(port, b.addr, a.addr));
    ok(cli(&dir, &["apply", "-f", to_b.to_str().unwrap()]));
    assert_eq!(get_json(&dir)["generation"], 2);
    assert!(d.stop("INT").success(), "SIGINT exits 0");

    // No --config: the persisted generation 2 is what runs.
    let d = Daemon::start(&dir, None);
    assert!(
        d.log().contains("persisted config (generation 2"),
        "{}",
        d.log()
    );
    let g = get_json(&dir);
    assert_eq!(g["generation"], 2);
    assert_eq!(exchange(front, "r"), "b:r");
    let extra = dir.file(
        "extra.yaml",
        &format!("clusters:\n  - name: z\n    endpoints: [\"{}\"]\n", a.addr),
    );
    ok(cli(&dir, &["apply", "-f", extra.to_str().unwrap()]));
    assert_eq!(get_json(&dir)["generation"], 3, "generations continue");
    assert!(d.stop("TERM").success());

    // An explicit --config replaces the persisted one as the next generation.
    let d = Daemon::start(&dir, Some(&file));
    let g = get_json(&dir);
    assert_eq!(g["generation"], 4);
    assert!(g["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["name"] != "z"));
    assert_eq!(exchange(front, "s"), "a:s");
    // A second daemon on the same control socket is refused before it binds anything.
    let second = Daemon::spawn(&dir, None);
    let mut second = second;
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = second.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the second daemon did not give up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!st.success());
    assert!(
        second.log().contains("already listening"),
        "{}",
        second.log()
    );
    assert_eq!(exchange(front, "t"), "a:t");
    drop(d);
}

#[test]
fn a_daemon_runs_in_process_and_shuts_down() {
    use tickmesh::control::{client, protocol::Request};
    use tickmesh::daemon::{ConfigSource, Daemon, DaemonOptions};
    use tickmesh::engine::{EngineKind, EngineOptions, Idle};
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = Dir::new();
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let d = Daemon::start(DaemonOptions {
        engine: EngineOptions {
            kind: EngineKind::Auto,
            workers: 1,
            pin: false,
            idle: Idle::Park,
            spin: Duration::ZERO,
        },
        control: dir.sock(),
        state_dir: dir.state(),
        config: ConfigSource::Text {
            text: config(port, a.addr, b.addr),
            format: tickmesh::config::Format::Yaml,
            origin: "the test's config".into(),
        },
        drain_timeout: Duration::from_secs(1),
    })
    .unwrap();
    assert_ne!(d.engine_kind(), EngineKind::Auto);
    assert_eq!(exchange(front, "x"), "a:x");
    // Over the socket, as another process would.
    let r = client::request(
        d.control_path(),
        &Request::Apply {
            config: config(port, b.addr, a.addr),
            format: tickmesh::config::Format::Yaml,
            prune: false,
        },
    )
    .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(exchange(front, "y"), "b:y");
    // In-process, the same operations.
    let g = d.control_plane().get(None);
    assert_eq!(g.generation, 2);
    d.shutdown();
    assert!(!dir.sock().exists());
    assert!(
        TcpStream::connect_timeout(&front, Duration::from_secs(1)).is_err(),
        "the listener is closed after shutdown"
    );
}

#[test]
fn sigterm_drains_open_connections_then_exits_0_epoll() {
    sigterm_drains("epoll");
}

#[test]
fn sigterm_drains_open_connections_then_exits_0_uring() {
    if let Err(e) = tickmesh::engine::uring_available() {
        eprintln!("SKIP sigterm_drains_open_connections_then_exits_0_uring: io_uring unavailable here: {e}");
        return;
    }
    sigterm_drains("uring");
}

fn sigterm_drains(engine: &str) {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = Dir::new();
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let file = dir.file("base.yaml", &config(port, a.addr, b.addr));
    let mut d = Daemon::start_with(&dir, Some(&file), engine);
    assert!(d.log().contains(&format!("engine {engine}")), "{}", d.log());
    let mut open = TcpStream::connect(front).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    open.write_all(b"1").unwrap();
    assert_eq!(open.read(&mut buf).unwrap(), 3);
    let st = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // Draining: new connections are refused once the daemon has taken the signal (its
    // listeners close; polled, bounded — a loaded host may take a while to get there);
    // the open connection still works.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !d.log().contains("SIGTERM: stopping") {
        assert!(Instant::now() < deadline, "SIGTERM not taken\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = (0..50).any(|_| {
        let r = TcpStream::connect_timeout(&front, Duration::from_millis(200)).is_err();
        if !r {
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    });
    assert!(refused, "new connections are refused while draining");
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "exited before draining"
    );
    open.write_all(b"2").unwrap();
    assert_eq!(open.read(&mut buf).unwrap(), 3, "{:?}", &buf[..3]);
    drop(open);
    let st = d.stop_wait(Duration::from_secs(5));
    assert!(st.success(), "exit status {st}\n{}", d.log());
    assert!(d.log().contains("SIGTERM"), "{}", d.log());
}

/// A plain echo backend that counts the connections it accepted.
struct Echo {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Echo {
    fn start() -> Echo {
        use std::sync::atomic::Ordering::Relaxed;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                count.fetch_add(1, Relaxed);
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        Echo { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn applies_over_the_socket_while_traffic_flows_lose_nothing() {
    const CONNS: usize = 16;
    const RUN: Duration = Duration::from_secs(2);
    let (a, b) = (Echo::start(), Echo::start());
    // tmpfs when there is one: on a disk every apply waits for two fsyncs.
    let shm = Path::new("/dev/shm");
    let dir = Dir {
        tmp: if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        },
    };
    let port = free_port();
    let front: SocketAddr = ([127, 0, 0, 1], port).into();
    let file = dir.file("base.yaml", &config(port, a.addr, b.addr));
    let _d = Daemon::start(&dir, Some(&file));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = (0..CONNS)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let mut s = TcpStream::connect(front).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.set_nodelay(true).unwrap();
                let (mut sent, mut k) = (0u64, 0u64);
                let mut back = vec![0u8; 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let chunk: Vec<u8> = (0..1024u64)
                        .map(|j| (i as u64 * 7919 + k * 31 + j) as u8)
                        .collect();
                    s.write_all(&chunk)
                        .map_err(|e| format!("conn {i} write: {e}"))?;
                    s.read_exact(&mut back)
                        .map_err(|e| format!("conn {i} read after {sent} bytes: {e}"))?;
                    if back != chunk {
                        return Err(format!("conn {i}: chunk {k} came back different"));
                    }
                    sent += 1024;
                    k += 1;
                }
                Ok(sent)
            })
        })
        .collect();

    // One control connection, applies back to back, alternating the route.
    let ctl = UnixStream::connect(dir.sock()).unwrap();
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = ctl.try_clone().unwrap();
    let mut r = BufReader::new(ctl);
    let to = |cluster: &str| {
        let text = format!(
            "listeners:\n  - name: front\n    address: 127.0.0.1:{port}\n    cluster: {cluster}\n"
        );
        let mut line =
            serde_json::to_vec(&serde_json::json!({"op": "apply", "config": text})).unwrap();
        line.push(b'\n');
        line
    };
    let (to_a, to_b) = (to("a"), to("b"));
    let start = Instant::now();
    let mut applies = 0u64;
    while start.elapsed() < RUN {
        w.write_all(if applies % 2 == 0 { &to_b } else { &to_a })
            .unwrap();
        let mut answer = String::new();
        r.read_line(&mut answer).unwrap();
        assert!(
            answer.starts_with("{\"ok\":true"),
            "apply {applies}: {answer}"
        );
        applies += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in streams {
        total += t.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(total > 0);

    // The last apply routed to `a` or `b`; new connections go there, all of them.
    let last_b = applies % 2 == 1;
    let (a0, b0) = (a.accepted(), b.accepted());
    for _ in 0..5 {
        assert_eq!(exchange_echo(front, b"ping"), b"ping");
    }
    let want = if last_b { (0, 5) } else { (5, 0) };
    assert_eq!((a.accepted() - a0, b.accepted() - b0), want);
    let g = get_json(&dir);
    assert_eq!(g["generation"], 1 + applies);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.state().join("config.json")).unwrap()).unwrap();
    assert_eq!(
        saved["generation"],
        1 + applies,
        "the last apply is persisted"
    );
    eprintln!(
        "{applies} applies over the control socket in {RUN:?} while {CONNS} connections echoed {total} bytes intact"
    );
}

fn exchange_echo(to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    back
}
