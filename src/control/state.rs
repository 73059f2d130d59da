//! The control plane's state: the running [`Config`], its generation, the published
//! [`Routes`], the [`StatsRegistry`], the [`SocketPool`] and the state directory, and the
//! four operations on them.
//!
//! Every change follows one path: merge → validate the whole resulting config → compile
//! (which binds new listener sockets) → persist → swap. Any failure before the swap
//! changes nothing: the running table, config, generation and persisted file stay as
//! they were, and the caller gets every problem with its field path (and line, where
//! the applied text has one). Changes are serialized by one mutex; the data plane never
//! takes it — workers only `load()` the published table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cli::GetWhat;
use crate::cluster::{active, dns, health, outlier};
use crate::config::{self, Config, ConfigError, Discovery, EndpointAddress, Format, Kind, Problem};
use crate::net::SocketPool;
use crate::route::{self, RouteTable, Routes, Target};
use crate::telemetry::{CounterReport, StatsRegistry};

use super::persist::StateDir;
use super::protocol::{
    Action, Change, ChangeResult, ClusterStatsView, ClusterView, CounterMap, EndpointHealthView,
    EndpointStatsView, GetResult, ListenerStatsView, PacketStatsView, RouteTarget, RouteView,
    StatsResult,
};

/// A refused request: what to tell the operator, and each config problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub message: String,
    pub problems: Vec<Problem>,
}

impl Rejected {
    fn new(message: impl Into<String>) -> Rejected {
        Rejected {
            message: message.into(),
            problems: Vec::new(),
        }
    }

    fn config(message: impl Into<String>, e: ConfigError) -> Rejected {
        Rejected {
            message: message.into(),
            problems: e.problems,
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}

struct State {
    config: Config,
    generation: u64,
    pool: SocketPool,
    store: Option<StateDir>,
}

/// The control plane of one daemon. Cheap to share (`Arc`); every method is safe to call
/// from any thread.
pub struct ControlPlane {
    state: Mutex<State>,
    routes: Arc<Routes>,
    stats: Arc<StatsRegistry>,
    /// When each `strict_dns` name is next due for resolution.
    dns_due: Mutex<HashMap<(String, u16), Instant>>,
    /// TLS file stamps whose reload failed (not retried until they change again).
    rotation_failed: Mutex<Option<Vec<crate::tls::FileStamp>>>,
    /// Certificates already warned about (path, expiry).
    expiry_warned: Mutex<std::collections::HashSet<(std::path::PathBuf, i64)>>,
    /// Active health-check probes (tokio tasks on the control thread).
    checker: Mutex<active::Checker>,
    /// A packet engine (DPDK) serving the listeners from tables of its own; then the
    /// route table is compiled without listeners (no kernel socket is bound for a VIP).
    packet: Option<Arc<dyn PacketTables>>,
}

/// An engine that serves the config's listeners from tables of its own instead of the
/// socket route table: the DPDK packet balancer. Every config the control plane accepts
/// is compiled by it in the same step as the route table (its errors reject the change
/// like any compile error) and published after the change is persisted.
pub trait PacketTables: Send + Sync {
    /// Compile `cfg` (already validated) for `generation`; nothing is published yet.
    fn compile(
        &self,
        cfg: &Config,
        generation: u64,
        stats: &StatsRegistry,
    ) -> Result<Box<dyn StagedTables>, ConfigError>;
}

/// Tables compiled by a [`PacketTables`], published by the control plane once the
/// change is committed (dropped unpublished when a later step fails).
pub trait StagedTables: Send {
    fn publish(self: Box<Self>);
}

/// The config the route table is compiled from: in packet-engine mode its listeners are
/// the packet engine's VIPs, so the route table gets none (and binds no socket).
fn routed(packet: bool, cfg: &Config) -> std::borrow::Cow<'_, Config> {
    if packet {
        std::borrow::Cow::Owned(Config {
            listeners: Vec::new(),
            ..cfg.clone()
        })
    } else {
        std::borrow::Cow::Borrowed(cfg)
    }
}

impl ControlPlane {
    /// Compile `config` as `generation` and publish it. With `persist`, store it in
    /// `store` first (an explicit `--config` is persisted; a resumed or default one is
    /// not rewritten).
    pub fn new(
        workers: usize,
        config: Config,
        generation: u64,
        store: Option<StateDir>,
        persist: bool,
    ) -> Result<ControlPlane, Rejected> {
        Self::with_packet_engine(workers, config, generation, store, persist, None)
    }

    /// [`ControlPlane::new`] for a packet engine (DPDK): `packet` compiles every accepted
    /// config into its own tables; the first one is published before this returns.
    pub fn with_packet_engine(
        workers: usize,
        config: Config,
        generation: u64,
        store: Option<StateDir>,
        persist: bool,
        packet: Option<Arc<dyn PacketTables>>,
    ) -> Result<ControlPlane, Rejected> {
        let stats = Arc::new(StatsRegistry::new(workers));
        let mut pool = SocketPool::new(workers);
        let dns_due = Mutex::new(HashMap::new());
        resolve_names(&config, &dns_due);
        let table = route::compile(
            &routed(packet.is_some(), &config),
            generation,
            &stats,
            &mut pool,
        )
        .map_err(|e| Rejected::config("the config cannot be served", e))?;
        let staged = match &packet {
            Some(p) => Some(p.compile(&config, generation, &stats).map_err(|e| {
                Rejected::config("the config cannot be served by the packet engine", e)
            })?),
            None => None,
        };
        if persist {
            if let Some(s) = &store {
                s.store(generation, &config).map_err(|e| {
                    Rejected::new(format!(
                        "cannot persist the config in {}: {e}",
                        s.path().display()
                    ))
                })?;
            }
        }
        let plane = ControlPlane {
            state: Mutex::new(State {
                config,
                generation,
                pool,
                store,
            }),
            routes: Arc::new({
                count_split_as(&table);
                Routes::new(table)
            }),
            stats,
            dns_due,
            rotation_failed: Mutex::new(None),
            expiry_warned: Mutex::new(Default::default()),
            checker: Mutex::default(),
            packet,
        };
        if let Some(s) = staged {
            s.publish();
        }
        Ok(plane)
    }

    /// The counter registry (a packet engine's workers take their blocks from it).
    pub fn stats_registry(&self) -> Arc<StatsRegistry> {
        self.stats.clone()
    }

    /// What the engine's workers read.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated: every field is
        // assigned only after all fallible steps succeeded.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `kubectl apply`: upsert every resource in `text` (with `prune`: make it the whole
    /// config). A config equal to the running one is a no-op that keeps the generation.
    pub fn apply(&self, text: &str, format: Format, prune: bool) -> Result<ChangeResult, Rejected> {
        let patch = config::parse_only(text, format)
            .map_err(|e| Rejected::config("the config does not parse", e))?;
        duplicates_in(&patch, text, format)
            .map_err(|e| Rejected::config("the config names a resource twice", e))?;
        // Before taking the lock: a slow resolver delays this apply, not other requests.
        resolve_names(&patch, &self.dns_due);
        let mut st = self.lock();
        let next = st.config.applied(&patch, prune);
        let before = resources(&st.config);
        let mut changes: Vec<Change> = resources(&patch)
            .into_iter()
            .map(|r| {
                let action = match before.iter().find(|b| b.kind == r.kind && b.name == r.name) {
                    None => Action::Created,
                    Some(b) if b.value == r.value => Action::Unchanged,
                    Some(_) => Action::Configured,
                };
                Change {
                    kind: r.kind,
                    name: r.name,
                    action,
                }
            })
            .collect();
        if prune {
            let after = resources(&next);
            for b in before {
                if !after.iter().any(|r| r.kind == b.kind && r.name == b.name) {
                    changes.push(Change {
                        kind: b.kind,
                        name: b.name,
                        action: Action::Pruned,
                    });
                }
            }
        }
        if next == st.config {
            return Ok(ChangeResult {
                generation: st.generation,
                changes,
            });
        }
        let relocate = |e: ConfigError| ConfigError {
            problems: e
                .problems
                .into_iter()
                .map(|p| relocate(p, &next, &patch, text, format))
                .collect(),
        };
        config::validate(&next).map_err(|e| {
            Rejected::config(
                "the config this apply would produce is invalid; nothing was changed",
                relocate(e),
            )
        })?;
        let generation = self.commit(&mut st, &next).map_err(|r| Rejected {
            problems: relocate(ConfigError {
                problems: r.problems,
            })
            .problems,
            ..r
        })?;
        Ok(ChangeResult {
            generation,
            changes,
        })
    }

    /// Remove one resource. A cluster that a listener still routes to is not removed: the
    /// error names the listener.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<ChangeResult, Rejected> {
        let mut st = self.lock();
        let Some(next) = st.config.without(kind, name) else {
            return Err(Rejected::new(format!(
                "there is no {} named `{name}`; `tickmesh get` lists what is running",
                kind_label(kind)
            )));
        };
        if kind == Kind::Cluster {
            let mut problems = Vec::new();
            for (i, l) in st.config.listeners.iter().enumerate() {
                if l.cluster.as_deref() == Some(name) {
                    problems.push(Problem {
                        path: format!("listeners[{i}].cluster"),
                        line: None,
                        message: format!("listener `{}` routes to cluster `{name}`", l.name),
                    });
                }
                for (j, w) in l.weighted_clusters.iter().enumerate() {
                    if w.cluster == name {
                        problems.push(Problem {
                            path: format!("listeners[{i}].weighted_clusters[{j}].cluster"),
                            line: None,
                            message: format!(
                                "listener `{}` sends weight {} to cluster `{name}`",
                                l.name, w.weight
                            ),
                        });
                    }
                }
            }
            if !problems.is_empty() {
                return Err(Rejected {
                    message: format!(
                        "cluster `{name}` is still in use; route its listeners elsewhere (or delete them) first"
                    ),
                    problems,
                });
            }
        }
        config::validate(&next).map_err(|e| {
            Rejected::config(
                "the config without it would be invalid; nothing was changed",
                e,
            )
        })?;
        let generation = self.commit(&mut st, &next)?;
        Ok(ChangeResult {
            generation,
            changes: vec![Change {
                kind,
                name: name.to_string(),
                action: Action::Deleted,
            }],
        })
    }

    /// Compile `next` as the next generation, persist it, swap it in. Nothing changes
    /// unless every step succeeds.
    fn commit(&self, st: &mut State, next: &Config) -> Result<u64, Rejected> {
        let generation = st.generation + 1;
        let compile_failed = |e| {
            Rejected::config(
                "the config cannot be served (compiling it failed); nothing was changed",
                e,
            )
        };
        let table = route::compile(
            &routed(self.packet.is_some(), next),
            generation,
            &self.stats,
            &mut st.pool,
        )
        .map_err(compile_failed)?;
        let staged = match &self.packet {
            Some(p) => Some(
                p.compile(next, generation, &self.stats)
                    .map_err(compile_failed)?,
            ),
            None => None,
        };
        if let Some(store) = &st.store {
            if let Err(e) = store.store(generation, next) {
                drop((table, staged));
                st.pool.prune();
                return Err(Rejected::new(format!(
                    "cannot persist the config in {} ({e}); nothing was changed",
                    store.path().display()
                )));
            }
        }
        count_split_as(&table);
        self.routes.store(table);
        if let Some(s) = staged {
            s.publish();
        }
        st.config = next.clone();
        st.generation = generation;
        // Blocks and sockets that only the old table used go once the last worker lets
        // go of it; these drop the registry's and pool's own references.
        self.stats.prune();
        st.pool.prune();
        Ok(generation)
    }

    /// Resolve again the `strict_dns` names whose refresh interval has passed, and when an
    /// answer changed, recompile the running config (same generation) so new connections
    /// see the new addresses. Blocking (the system resolver): call it off the request
    /// path. Returns whether the table was swapped.
    pub fn refresh_dns(&self) -> bool {
        let names = dns_names(&self.lock().config);
        if names.is_empty() {
            return false;
        }
        let now = Instant::now();
        let mut changed = false;
        for (host, port, every) in names {
            let key = (host, port);
            let due = self
                .dns_due
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .copied();
            if due.is_some_and(|d| d > now) {
                continue;
            }
            match dns::refresh(&key.0, key.1) {
                Ok(c) => changed |= c,
                Err(e) => tracing::warn!(
                    "resolving {}:{} failed ({e}); keeping its last answer",
                    key.0,
                    key.1
                ),
            }
            self.dns_due
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, now + every);
        }
        if !changed {
            return false;
        }
        match self.recompile_in_place() {
            Ok(generation) => {
                tracing::info!("DNS answers changed; routes recompiled (generation {generation})");
                true
            }
            Err(e) => {
                tracing::warn!(
                    "DNS answers changed but recompiling failed; keeping the old routes: {e}"
                );
                false
            }
        }
    }

    /// Recompile the running config at its own generation, for what changed underneath
    /// it (DNS answers, TLS files), and publish it; the generation it serves. On an error
    /// nothing is published: the running table stays.
    fn recompile_in_place(&self) -> Result<u64, ConfigError> {
        let mut st = self.lock();
        let st = &mut *st;
        let table = route::compile(
            &routed(self.packet.is_some(), &st.config),
            st.generation,
            &self.stats,
            &mut st.pool,
        )?;
        count_split_as(&table);
        self.routes.store(table);
        self.stats.prune();
        st.pool.prune();
        Ok(st.generation)
    }

    /// Refuse new TCP connections in the kernel: shut down every listening TCP socket of
    /// the running table, so clients get a refusal (and fail over) instead of waiting in
    /// an accept queue nobody serves. For draining at shutdown, after the engine stopped
    /// accepting; established connections are untouched. UDP sockets stay: draining
    /// sessions still reply through them.
    pub fn close_listeners(&self) {
        let t = self.routes.load_full();
        for l in t.listeners.iter() {
            if l.protocol == config::Protocol::Udp {
                continue;
            }
            for w in 0..l.sockets.len() {
                // shutdown(2) on a listening socket stops it listening (Linux).
                if let Err(e) =
                    socket2::SockRef::from(&l.sockets.fd(w)).shutdown(std::net::Shutdown::Read)
                {
                    tracing::warn!("closing listener {} failed: {e}", l.name);
                }
            }
        }
    }

    pub fn get(&self, what: Option<GetWhat>) -> GetResult {
        let st = self.lock();
        let table = self.routes.load_full();
        let mut config = None;
        let mut routes = None;
        let mut clusters = None;
        match what {
            None => {
                config = Some(st.config.clone());
                routes = Some(route_views(&st.config, &table));
                clusters = Some(cluster_views(&table));
            }
            Some(GetWhat::Listeners) => {
                config = Some(Config {
                    listeners: st.config.listeners.clone(),
                    ..Config::default()
                })
            }
            Some(GetWhat::Clusters) => {
                config = Some(Config {
                    clusters: st.config.clusters.clone(),
                    ..Config::default()
                });
                clusters = Some(cluster_views(&table));
            }
            Some(GetWhat::Routes) => routes = Some(route_views(&st.config, &table)),
        }
        GetResult {
            generation: st.generation,
            config,
            routes,
            clusters,
        }
    }

    /// The health tick (every [`outlier::TICK`], on the control thread): outlier
    /// ejections and returns, and an exact recount of each cluster's unusable endpoints.
    pub fn health_tick(&self) {
        let table = self.routes.load();
        let now = health::now_ms();
        for c in table.clusters.iter() {
            let eps = c.endpoints.iter().map(|e| &*e.health);
            match &c.outlier {
                Some(p) => outlier::sweep(p, &c.health, eps.clone(), now, |i| {
                    use crate::telemetry::UpstreamCounter::{
                        RqError, RqLocalOriginError, RqLocalOriginSuccess, RqSuccess,
                    };
                    let s = &c.endpoints[i].stats;
                    outlier::Volumes {
                        success: s.get(RqSuccess),
                        error: s.get(RqError),
                        local_success: s.get(RqLocalOriginSuccess),
                        local_error: s.get(RqLocalOriginError),
                    }
                }),
                // Outlier detection was configured away: nobody stays ejected, and
                // outcomes count in one bucket again.
                None => {
                    c.health
                        .uneject_on_check
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    eps.clone().for_each(|e| {
                        e.set_split(false);
                        if e.flags() & health::EJECTED != 0 {
                            e.uneject(&c.health);
                        }
                    })
                }
            }
            c.health.recount(eps);
            c.refresh_plan();
            c.refresh_slow_start(now);
        }
        self.checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reconcile(&table);
    }

    /// Counters of everything in the running table. Reads the workers' slots without
    /// stopping them: each number is exact, the set is not one instant.
    pub fn stats(&self) -> StatsResult {
        let table = self.routes.load_full();
        let now = health::now_ms();
        StatsResult {
            generation: table.generation,
            workers: self.stats.workers(),
            listeners: table
                .listeners
                .iter()
                .map(|l| {
                    let r = l.stats.report();
                    let active = match l.protocol {
                        config::Protocol::Udp => r
                            .get("udp_sessions_total")
                            .saturating_sub(r.get("udp_sessions_expired")),
                        _ => r.get("cx_total").saturating_sub(r.get("cx_closed")),
                    };
                    ListenerStatsView {
                        name: l.name.to_string(),
                        protocol: l.protocol,
                        address: l.sockets.address,
                        active,
                        counters: totals(&r),
                        per_worker: per_worker(&r),
                    }
                })
                .collect(),
            clusters: table
                .clusters
                .iter()
                .map(|c| {
                    let r = c.stats.report();
                    ClusterStatsView {
                        name: c.name.to_string(),
                        active: upstream_active(&r),
                        counters: totals(&r),
                        per_worker: per_worker(&r),
                        endpoints: c
                            .endpoints
                            .iter()
                            .map(|e| {
                                let r = e.stats.report();
                                EndpointStatsView {
                                    address: e.address,
                                    active: upstream_active(&r),
                                    counters: totals(&r),
                                    per_worker: per_worker(&r),
                                    health: health_view(&e.health, now),
                                    priority: e.priority,
                                }
                            })
                            .collect(),
                        ejections_overflow: c.health.ejections_overflow(),
                        ejections_success_rate: c.health.ejections_success_rate(),
                        ejections_failure_percentage: c.health.ejections_failure_percentage(),
                        ejections_local_origin: c.health.ejections_local_origin(),
                        unejections_by_check: c.health.unejections_by_check(),
                        ejections_local_origin_success_rate: c
                            .health
                            .ejections_local_origin_success_rate(),
                        ejections_local_origin_failure_percentage: c
                            .health
                            .ejections_local_origin_failure_percentage(),
                    }
                })
                .collect(),
            offload: self.offload_view(),
            certificates: {
                let warn = self.expiry_warning();
                crate::tls::table_certs(&table)
                    .into_iter()
                    .map(|(owner, c)| {
                        let left = c.seconds_remaining();
                        super::protocol::CertificateView {
                            owner,
                            path: c.path,
                            subject: c.subject,
                            not_after: c.not_after,
                            seconds_remaining: left,
                            warning: left < warn,
                        }
                    })
                    .collect()
            },
            packets: match self.packet {
                Some(_) => self
                    .stats
                    .packet_reports()
                    .into_iter()
                    .map(|(name, r)| PacketStatsView {
                        name,
                        counters: totals(&r),
                        per_worker: per_worker(&r),
                    })
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    /// The offload engines' counters, once any worker built one.
    fn offload_view(&self) -> Option<super::protocol::OffloadView> {
        let r = self.stats.offload().report();
        let per = per_worker(&r);
        let backends: Vec<String> = per
            .iter()
            .map(|m| {
                match m.get("backend").copied().unwrap_or(0) {
                    1 => "software-inline",
                    2 => "software-threaded",
                    3 => "ktls",
                    4 => "cryptodev",
                    _ => "none",
                }
                .to_string()
            })
            .collect();
        if backends.iter().all(|b| b == "none") {
            return None;
        }
        let mut counters = totals(&r);
        counters.remove("backend");
        Some(super::protocol::OffloadView {
            backends,
            counters,
            per_worker: per,
        })
    }

    /// Seconds of remaining validity below which a certificate is warned about.
    fn expiry_warning(&self) -> i64 {
        self.lock()
            .config
            .offload
            .as_ref()
            .and_then(|o| o.expiry_warning)
            .unwrap_or(DEFAULT_EXPIRY_WARNING)
            .as_secs() as i64
    }

    /// Certificate hot rotation: when a certificate, key or CA file of the running
    /// table changed (and has been left alone for [`ROTATION_SETTLE`], so a writer is
    /// done), recompile the running config (same generation). New handshakes use the
    /// new files; established connections keep the sessions they have. A pair that fails
    /// to load (half-written, key not matching) keeps the old table and is logged once
    /// per change. Also warns, once per certificate, about expiry within the threshold.
    /// Blocking (reads files): call it off the request path. Returns whether the table
    /// was swapped.
    pub fn refresh_certs(&self) -> bool {
        let table = self.routes.load_full();
        self.warn_expiry(&table);
        let loaded = crate::tls::watched_files(&table);
        if loaded.is_empty() {
            return false;
        }
        let now = crate::tls::restamp(&loaded);
        if now == loaded {
            return false;
        }
        let settling = now.iter().any(|(_, m)| {
            m.and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age < ROTATION_SETTLE)
        });
        let mut failed = self
            .rotation_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if settling || failed.as_ref() == Some(&now) {
            return false;
        }
        match self.recompile_in_place() {
            Ok(generation) => {
                *failed = None;
                tracing::info!(
                    "TLS files changed; certificates reloaded (generation {generation})"
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    "TLS files changed but do not load; new handshakes keep the previous certificates: {e}"
                );
                *failed = Some(now);
                false
            }
        }
    }

    fn warn_expiry(&self, table: &RouteTable) {
        let warn = self.expiry_warning();
        let mut warned = self.expiry_warned.lock().unwrap_or_else(|p| p.into_inner());
        for (owner, c) in crate::tls::table_certs(table) {
            let left = c.seconds_remaining();
            if left < warn && warned.insert((c.path.clone(), c.not_after)) {
                tracing::warn!(
                    "certificate {} ({owner}, {}) expires in {}s{}: rotate it",
                    c.path.display(),
                    c.subject,
                    left,
                    if left < 0 { " (already expired)" } else { "" }
                );
            }
        }
    }
}

/// Default `offload.expiry_warning`: a week.
const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// A changed TLS file is reloaded once it has not changed for this long.
const ROTATION_SETTLE: Duration = Duration::from_millis(200);

/// A patch naming one resource twice would silently keep only the last: refuse it.
fn duplicates_in(patch: &Config, text: &str, format: Format) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let all = resources(patch);
    for (i, r) in all.iter().enumerate() {
        if all[..i]
            .iter()
            .any(|x| x.kind == r.kind && x.name == r.name)
        {
            let path = format!("{}[{}].{}", field_of(r.kind), r.index, name_field(r.kind));
            problems.push(Problem {
                line: config::locate(text, format, &path),
                path,
                message: format!("duplicate {} name `{}`", kind_label(r.kind), r.name),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// Validation speaks in indices of the merged config; the operator wrote the patch. Point
/// each problem at the patch (path and line) when the resource is in it, else say which
/// running resource it is.
fn relocate(p: Problem, merged: &Config, patch: &Config, text: &str, format: Format) -> Problem {
    let Some((kind, index, rest)) = split_path(&p.path) else {
        return p;
    };
    let merged = resources(merged);
    let Some(r) = merged.iter().find(|r| r.kind == kind && r.index == index) else {
        return p;
    };
    match resources(patch)
        .iter()
        .find(|x| x.kind == kind && x.name == r.name)
    {
        Some(x) => {
            let path = format!("{}[{}]{rest}", field_of(kind), x.index);
            Problem {
                line: config::locate(text, format, &path),
                path,
                message: p.message,
            }
        }
        None => Problem {
            message: format!(
                "running {} `{}` (not in this file): {}",
                kind_label(kind),
                r.name,
                p.message
            ),
            ..p
        },
    }
}

/// `listeners[3].cluster` → (Listener, 3, ".cluster").
fn split_path(path: &str) -> Option<(Kind, usize, &str)> {
    KINDS.iter().find_map(|&(kind, field)| {
        let rest = path.strip_prefix(field)?.strip_prefix('[')?;
        let close = rest.find(']')?;
        Some((kind, rest[..close].parse().ok()?, &rest[close + 1..]))
    })
}

/// Every kind of named resource, with its field in [`Config`].
const KINDS: &[(Kind, &str)] = &[
    (Kind::Listener, "listeners"),
    (Kind::Cluster, "clusters"),
    (Kind::RouteConfig, "route_configs"),
    (Kind::VirtualService, "virtual_services"),
    (Kind::DestinationRule, "destination_rules"),
    (Kind::PeerAuthentication, "peer_authentications"),
];

fn field_of(kind: Kind) -> &'static str {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("resources", |(_, f)| f)
}

/// Where a resource of `kind` keeps its name.
fn name_field(kind: Kind) -> &'static str {
    match kind {
        Kind::VirtualService | Kind::DestinationRule | Kind::PeerAuthentication => "metadata.name",
        _ => "name",
    }
}

/// How the operator names a kind (`tickmesh delete KIND`).
pub(crate) fn kind_label(kind: Kind) -> String {
    use clap::ValueEnum;
    kind.to_possible_value()
        .map_or_else(|| format!("{kind:?}"), |v| v.get_name().to_string())
}

fn health_view(h: &health::EndpointHealth, now: u64) -> EndpointHealthView {
    let f = h.flags();
    let state = match (f & health::EJECTED != 0, f & health::CHECK_FAILED != 0) {
        (false, false) => "healthy",
        (true, false) => "ejected",
        (false, true) => "unhealthy",
        (true, true) => "ejected,unhealthy",
    };
    let (checks_total, checks_failed) = h.checks();
    EndpointHealthView {
        state: state.into(),
        consecutive_5xx: h.consecutive_5xx(),
        consecutive_gateway_errors: h.consecutive_gateway(),
        consecutive_local_origin_failures: h.consecutive_local_origin(),
        times_ejected: h.times_ejected(),
        ejections_total: h.ejections_total(),
        ejected_remaining_ms: if f & health::EJECTED != 0 {
            h.ejected_until_ms().saturating_sub(now)
        } else {
            0
        },
        checks_total,
        checks_failed,
        success_rate: h.last_success_rate(),
        local_origin_success_rate: h.last_local_success_rate(),
    }
}

/// One named resource of a config, in a shape that compares by value.
struct Resource {
    kind: Kind,
    name: String,
    /// Position among the resources of its kind.
    index: usize,
    value: serde_json::Value,
}

/// Every named resource of `cfg`, kind by kind, in config order. Going through JSON keeps
/// this one function for every kind (resource types differ; their JSON does not).
fn resources(cfg: &Config) -> Vec<Resource> {
    let Ok(v) = serde_json::to_value(cfg) else {
        return Vec::new(); // a Config is plain data; encoding it does not fail
    };
    let mut out = Vec::new();
    for &(kind, field) in KINDS {
        let Some(items) = v.get(field).and_then(|a| a.as_array()) else {
            continue;
        };
        for (index, item) in items.iter().enumerate() {
            let name = item
                .get("name")
                .or_else(|| item.get("metadata").and_then(|m| m.get("name")))
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            out.push(Resource {
                kind,
                name,
                index,
                value: item.clone(),
            });
        }
    }
    out
}

/// Every `strict_dns` name in `cfg` with its refresh interval.
fn dns_names(cfg: &Config) -> Vec<(String, u16, Duration)> {
    let mut out = Vec::new();
    for c in &cfg.clusters {
        if c.discovery != Discovery::StrictDns {
            continue;
        }
        let every = c.dns_refresh_rate.unwrap_or(DEFAULT_DNS_REFRESH);
        for e in &c.endpoints {
            if let EndpointAddress::Dns { host, port } = &e.address {
                out.push((host.clone(), *port, every));
            }
        }
    }
    out
}

/// Resolve the `strict_dns` names of `cfg` that have no answer yet, so that a compile
/// right after sees them. A name that does not resolve leaves its cluster without those
/// endpoints until a later refresh succeeds (Envoy's STRICT_DNS behaviour).
fn resolve_names(cfg: &Config, due: &Mutex<HashMap<(String, u16), Instant>>) {
    for (host, port, every) in dns_names(cfg) {
        if !dns::cached(&host, port).is_empty() {
            continue;
        }
        if let Err(e) = dns::refresh(&host, port) {
            tracing::warn!("resolving {host}:{port} failed ({e}); its cluster has no endpoints for it until it resolves");
        }
        due.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((host, port), Instant::now() + every);
    }
}

/// `strict_dns` clusters without `dns_refresh_rate` resolve again this often.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

fn cluster_views(table: &RouteTable) -> Vec<ClusterView> {
    use crate::route::HashOn;
    table
        .clusters
        .iter()
        .map(|c| {
            let lb = match &c.hash_on {
                _ if !c.balancer.is_hashing() => c.balancer.name().to_string(),
                HashOn::SourceIp => format!("{} on source ip", c.balancer.name()),
                HashOn::Header(h) => format!("{} on header {h}", c.balancer.name()),
                HashOn::Cookie(k) => format!("{} on cookie {k}", c.balancer.name()),
                HashOn::Query(q) => format!("{} on query parameter {q}", c.balancer.name()),
            };
            let b = &c.breakers;
            let mut policy = format!(
                "lb {lb}; max connections {}, pending {}, requests {}, retries {}{}; connect timeout {}",
                b.max_connections,
                b.max_pending_requests,
                b.max_requests,
                b.max_retries,
                match b.max_requests_per_connection {
                    0 => String::new(),
                    n => format!(", requests per connection {n}"),
                },
                humantime::format_duration(c.connect_timeout)
            );
            if let Some(o) = &c.outlier {
                policy.push_str(&format!(
                    "; outlier 5xx {} ({}%), gateway {} ({}%), interval {}ms, base ejection {}ms, max {}%",
                    o.consecutive_5xx,
                    o.enforcing_5xx,
                    o.consecutive_gateway,
                    o.enforcing_gateway,
                    o.interval_ms,
                    o.base_ejection_ms,
                    o.max_ejection_percent
                ));
                let (sr, fp) = (&o.success_rate, &o.failure_percentage);
                policy.push_str(&format!(
                    ", success rate stdev×{:.3} ({}%; {} hosts of ≥ {} requests), failure ≥ {}% ({}%; {} hosts of ≥ {} requests)",
                    f64::from(sr.threshold) / 1000.0,
                    sr.enforcing,
                    sr.minimum_hosts,
                    sr.request_volume,
                    fp.threshold,
                    fp.enforcing,
                    fp.minimum_hosts,
                    fp.request_volume
                ));
                if o.jitter_ms > 0 {
                    policy.push_str(&format!(", ejection jitter ≤ {}ms", o.jitter_ms));
                }
                if !o.always_eject_one {
                    policy.push_str(", the cap holds for the first ejection");
                }
                if !o.uneject_on_check {
                    policy.push_str(", a passing check does not end an ejection");
                }
                if let Some(l) = &o.local_origin {
                    policy.push_str(&format!(
                        ", split local origin: {} in a row ({}%), success rate {}%, failure {}%",
                        l.consecutive,
                        l.enforcing_consecutive,
                        l.enforcing_success_rate,
                        l.enforcing_failure_percentage
                    ));
                }
            }
            if c.balancer.is_hashing() && c.hash_by_name {
                policy.push_str("; endpoints hashed by host name");
            }
            if c.hash_balance > 0.0 {
                policy.push_str(&format!(
                    "; bounded loads {}% of the average",
                    (c.hash_balance * 100.0).round()
                ));
            }
            if let Some(s) = &c.slow_start {
                policy.push_str(&format!(
                    "; slow start {} (aggression {}, min weight {}%), {} endpoint(s) ramping",
                    humantime::format_duration(std::time::Duration::from_millis(s.window_ms)),
                    s.aggression,
                    s.min_weight * 100.0,
                    c.health.slow_starting()
                ));
            }
            policy.push_str(&format!("; panic threshold {}%", c.panic_threshold));
            let localities: Vec<String> = c
                .levels
                .iter()
                .flat_map(|l| {
                    l.localities.iter().zip(l.locality_weights.iter()).map(|(g, w)| {
                        match l.priority {
                            0 => format!("{} {w}", g.name),
                            p => format!("{} {w} (priority {p})", g.name),
                        }
                    })
                })
                .collect();
            if !localities.is_empty() {
                policy.push_str(&format!("; locality weights {}", localities.join(", ")));
            }
            if let Some(h) = &c.health_check {
                policy.push_str(&format!(
                    "; check {} every {} ({} down, {} up)",
                    if h.tcp {
                        "TCP connect".to_string()
                    } else {
                        format!("GET {}", h.path)
                    },
                    humantime::format_duration(h.interval),
                    h.unhealthy_threshold,
                    h.healthy_threshold
                ));
            }
            ClusterView {
                name: c.name.to_string(),
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| match e.priority {
                        0 => e.address.to_string(),
                        p => format!("{} (priority {p})", e.address),
                    })
                    .collect(),
                policy,
            }
        })
        .collect()
}

fn route_views(cfg: &Config, table: &RouteTable) -> Vec<RouteView> {
    let endpoints = |name: &str| {
        table
            .cluster(name)
            .map(|(_, c)| c.endpoints.iter().map(|e| e.address).collect())
            .unwrap_or_default()
    };
    table
        .listeners
        .iter()
        .map(|l| {
            let clusters = match &l.target {
                // An http listener without TCP fallback: its routes are HTTP routes.
                None => Vec::new(),
                Some(Target::Cluster(c)) => {
                    let name = table.clusters[*c as usize].name.to_string();
                    vec![RouteTarget {
                        endpoints: endpoints(&name),
                        cluster: name,
                        weight: 1,
                    }]
                }
                Some(Target::Weighted { .. }) => cfg
                    .listeners
                    .iter()
                    .find(|x| *x.name == *l.name)
                    .map(|x| {
                        x.weighted_clusters
                            .iter()
                            .map(|w| RouteTarget {
                                cluster: w.cluster.clone(),
                                weight: w.weight,
                                endpoints: endpoints(&w.cluster),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            RouteView {
                listener: l.name.to_string(),
                protocol: l.protocol,
                address: l.sockets.address,
                clusters,
            }
        })
        .collect()
}

fn totals(r: &CounterReport) -> CounterMap {
    r.totals.iter().cloned().collect()
}

fn per_worker(r: &CounterReport) -> Vec<CounterMap> {
    r.per_worker
        .iter()
        .map(|v| {
            r.names
                .iter()
                .zip(v)
                .map(|(n, v)| (n.to_string(), *v))
                .collect()
        })
        .collect()
}

fn upstream_active(r: &CounterReport) -> u64 {
    r.get("cx_total").saturating_sub(r.get("cx_closed"))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

/// Tell each endpoint whether its outcomes count split by origin under `table`'s policy,
/// before workers see the table (the health tick keeps it so afterwards): counted by the
/// tick alone, exchanges in the first tick after an apply were counted unsplit
/// (`rq_success` without `rq_local_origin_success`).
fn count_split_as(table: &route::RouteTable) {
    for c in table.clusters.iter() {
        let on = c.outlier.as_ref().is_some_and(|p| p.local_origin.is_some());
        for e in c.endpoints.iter() {
            e.health.set_split(on);
        }
    }
}
