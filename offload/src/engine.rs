//! The offload engine: crypto sessions, job slots, the submission and completion rings.
//!
//! One `Engine` per worker thread (it is `Send`, not shared). The control side creates,
//! rekeys and destroys sessions (allocation allowed there); the data side submits seal /
//! open jobs, rings the doorbell with [`Engine::poll`], and reaps completions, each
//! carrying the caller's tag: across sessions in whatever order the backend finished them,
//! within one session and op always in submission order (early finishers are held back).
//!
//! Invariants: the number of jobs in existence is fixed at construction (`slots`); a job is
//! always in exactly one place (free list, submission ring, backend, completion ring);
//! sequence numbers are assigned at submission in submission order, per session and
//! direction, so completion order never changes what goes on the wire. Nothing here
//! blocks, allocates or panics on the steady path; back-pressure is an error the caller
//! sees at submission, and bad records are per-job errors in their completion.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::backend::{self, BackendChoice, BackendError, BackendKind};
use crate::error::{JobError, SubmitError};
use crate::job::{Completion, Job, Op, Output, SessionId};
use crate::record::{ContentType, RecordKey, MAX_PLAINTEXT, MAX_RECORD};
use crate::suite::{CipherSuite, Direction, SessionError, SessionParams, TlsVersion, TrafficKeys};

/// Most jobs one session may have in flight (keeps its 16-bit order numbers unambiguous).
pub const MAX_IN_FLIGHT: u32 = 1 << 15;

/// Engine sizing and backend choice.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub backend: BackendChoice,
    /// Job slots (each owns a `MAX_RECORD` buffer): the most jobs in flight at once.
    pub slots: usize,
    /// Most jobs a backend processes or hands back per `poll`.
    pub batch: usize,
    /// Per-session in-flight limit when the session does not set one.
    pub default_in_flight_limit: u32,
    /// Most live sessions.
    pub max_sessions: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            backend: BackendChoice::Auto,
            slots: 256,
            batch: 32,
            default_in_flight_limit: 64,
            max_sessions: 4096,
        }
    }
}

/// Counters for `tickmesh stats` (read by the owning worker; plain integers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub sessions: u64,
    pub records_sealed: u64,
    pub records_opened: u64,
    pub bytes_sealed: u64,
    pub bytes_opened: u64,
    pub jobs_failed: u64,
    pub submit_refused: u64,
    pub in_flight: u64,
}

struct Session {
    suite: CipherSuite,
    version: TlsVersion,
    tx: Arc<RecordKey>,
    rx: Arc<RecordKey>,
    tx_seq: u64,
    rx_seq: u64,
    in_flight: u32,
    limit: u32,
    /// Per op (seal, open): the order number the next submission gets, and the next one
    /// to hand to the caller. Completions are reaped in this order per session and op.
    /// 16 bits suffice: the in-flight limit (≤ `MAX_IN_FLIGHT`) bounds how far apart
    /// the two can be, and they wrap together.
    order: [u16; 2],
    deliver: [u16; 2],
}

struct SessionSlot {
    generation: u32,
    session: Option<Session>,
}

/// Errors building an engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("offload engine needs at least one job slot and a batch of at least one")]
    Sizing,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The submission/completion ring engine.
pub struct Engine {
    backend: Box<dyn backend::Backend>,
    kind: BackendKind,
    reason: String,
    ktls: bool,
    /// The backend runs jobs on the caller's CPU: run them at submission ([`Engine::queue`]).
    at_submit: bool,
    cfg: EngineConfig,
    sessions: Vec<SessionSlot>,
    free_sessions: Vec<u32>,
    // Boxed on purpose: a job moves between rings and threads as one pointer, and its
    // 16 KiB buffer never moves.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Job>>,
    sq: VecDeque<Box<Job>>,
    cq: VecDeque<Box<Job>>,
    /// Completions that came back ahead of an earlier job of the same session and op;
    /// held until that one is reaped (capacity `slots`: never reallocates).
    #[allow(clippy::vec_box)]
    parked: Vec<Box<Job>>,
    stats: EngineStats,
}

impl Engine {
    /// Build an engine: allocate every job slot and pick the backend (logged).
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        if cfg.slots == 0 || cfg.batch == 0 {
            return Err(EngineError::Sizing);
        }
        let sel = backend::select(cfg.backend, cfg.slots, cfg.batch)?;
        Ok(Engine {
            at_submit: sel.backend.runs_at_submit(),
            backend: sel.backend,
            kind: sel.kind,
            reason: sel.reason,
            ktls: sel.ktls,
            cfg,
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            free: (0..cfg.slots).map(|_| Job::new_slot()).collect(),
            sq: VecDeque::with_capacity(cfg.slots),
            cq: VecDeque::with_capacity(cfg.slots),
            parked: Vec::with_capacity(cfg.slots),
            stats: EngineStats::default(),
        })
    }

    /// Which backend serves this engine.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Why that backend was picked.
    pub fn backend_reason(&self) -> &str {
        &self.reason
    }

    /// Whether connections of this engine should hand their keys to the kernel
    /// ([`crate::ktls`]).
    pub fn ktls_enabled(&self) -> bool {
        self.ktls
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats;
        s.in_flight = (self.cfg.slots - self.free.len()) as u64;
        s
    }

    /// Sessions alive (a field read, for callers that poll it per batch).
    #[inline]
    pub fn sessions(&self) -> u64 {
        self.stats.sessions
    }

    /// Jobs submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.cfg.slots - self.free.len()
    }

    // === control side ===

    /// Create a crypto session for one connection.
    pub fn create_session(&mut self, p: &SessionParams) -> Result<SessionId, SessionError> {
        let tx = Arc::new(self.record_key(p.suite, p.version, Direction::Tx, &p.tx)?);
        let rx = Arc::new(self.record_key(p.suite, p.version, Direction::Rx, &p.rx)?);
        let session = Session {
            suite: p.suite,
            version: p.version,
            tx,
            rx,
            tx_seq: p.tx.seq,
            rx_seq: p.rx.seq,
            in_flight: 0,
            order: [0; 2],
            deliver: [0; 2],
            limit: if p.in_flight_limit == 0 {
                self.cfg.default_in_flight_limit.max(1)
            } else {
                p.in_flight_limit
            }
            .min(MAX_IN_FLIGHT),
        };
        let index = match self.free_sessions.pop() {
            Some(i) => i,
            None => {
                if self.sessions.len() >= self.cfg.max_sessions {
                    return Err(SessionError::TableFull(self.cfg.max_sessions));
                }
                self.sessions.push(SessionSlot {
                    generation: 0,
                    session: None,
                });
                (self.sessions.len() - 1) as u32
            }
        };
        let slot = &mut self.sessions[index as usize];
        slot.session = Some(session);
        self.stats.sessions += 1;
        Ok(SessionId {
            index,
            generation: slot.generation,
        })
    }

    /// Destroy a session. Jobs already in flight still complete (with the keys they were
    /// submitted under); new submissions for it are refused.
    pub fn destroy_session(&mut self, id: SessionId) -> Result<(), SessionError> {
        let slot = self.slot_mut(id).ok_or(SessionError::UnknownSession)?;
        let old = slot.session.take();
        slot.generation = slot.generation.wrapping_add(1);
        if let Some(old) = old {
            self.forget_key(old.tx);
            self.forget_key(old.rx);
        }
        self.free_sessions.push(id.index);
        self.stats.sessions -= 1;
        Ok(())
    }

    /// Install new keys for one direction (TLS 1.3 KeyUpdate; `keys.seq` is normally 0).
    /// Jobs already submitted keep the old key.
    pub fn update_keys(
        &mut self,
        id: SessionId,
        dir: Direction,
        keys: &TrafficKeys,
    ) -> Result<(), SessionError> {
        let (suite, version) = {
            let s = self.session(id).ok_or(SessionError::UnknownSession)?;
            (s.suite, s.version)
        };
        let key = Arc::new(self.record_key(suite, version, dir, keys)?);
        let s = self.session_mut(id).ok_or(SessionError::UnknownSession)?;
        let old = match dir {
            Direction::Tx => {
                s.tx_seq = keys.seq;
                std::mem::replace(&mut s.tx, key)
            }
            Direction::Rx => {
                s.rx_seq = keys.seq;
                std::mem::replace(&mut s.rx, key)
            }
        };
        self.forget_key(old);
        Ok(())
    }

    /// A record key plus the backend's device session for it (control side).
    fn record_key(
        &mut self,
        suite: CipherSuite,
        version: TlsVersion,
        dir: Direction,
        keys: &TrafficKeys,
    ) -> Result<RecordKey, SessionError> {
        let key = RecordKey::new(suite, version, keys)?;
        let device = self.backend.device_key(suite, version, dir, keys)?;
        Ok(key.with_device(device))
    }

    /// The next sequence number per direction (tx, rx), e.g. to hand over to kTLS.
    pub fn sequence_numbers(&self, id: SessionId) -> Option<(u64, u64)> {
        self.session(id).map(|s| (s.tx_seq, s.rx_seq))
    }

    fn slot_mut(&mut self, id: SessionId) -> Option<&mut SessionSlot> {
        self.sessions
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.session.is_some())
    }

    fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.session.as_ref())
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        lookup(&mut self.sessions, id)
    }

    /// Drop cached references to `key` (the session's, handed in) from free slots, so a
    /// replaced or destroyed key is freed now. In-flight jobs keep theirs until reaped.
    /// The free list is a stack: the slots this session used last are on top, so the scan
    /// runs from the top and stops once no other reference is left (O(slots) only while
    /// jobs under the key are still in flight).
    fn forget_key(&mut self, key: Arc<RecordKey>) {
        for job in self.free.iter_mut().rev() {
            if Arc::strong_count(&key) == 1 {
                break;
            }
            if job.key.as_ref().is_some_and(|k| Arc::ptr_eq(k, &key)) {
                job.key = None;
            }
        }
    }

    // === data side: submission ===

    /// Queue a seal job: `payload` becomes one record of `content_type`. The result (the
    /// full record) arrives in a completion tagged `tag`.
    #[inline]
    pub fn submit_seal(
        &mut self,
        id: SessionId,
        tag: u64,
        content_type: ContentType,
        payload: &[u8],
    ) -> Result<(), SubmitError> {
        self.submit_seal_with(id, tag, content_type, payload.len(), |buf| {
            buf.copy_from_slice(payload)
        })
    }

    /// Like [`Engine::submit_seal`], but `fill` writes the `len`-byte payload straight into
    /// the job's buffer (saves a copy when the payload comes from a socket read).
    /// `fill` is not called if the job fails before running (e.g. `len` over 2^14).
    #[inline]
    pub fn submit_seal_with(
        &mut self,
        id: SessionId,
        tag: u64,
        content_type: ContentType,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), SubmitError> {
        let (mut job, s) = self.take_slot(id, Op::Seal)?;
        job.op = Op::Seal;
        job.tag = tag;
        job.session = id;
        job.content_type = content_type;
        job.input_len = len;
        job.seq = s.tx_seq;
        let early = if content_type == ContentType::ChangeCipherSpec {
            Some(JobError::BadContentType)
        } else if len > MAX_PLAINTEXT {
            Some(JobError::RecordOverflow)
        } else if s.tx_seq == u64::MAX {
            // u64::MAX is never used, so the counter can never wrap (RFC 8446 §5.3).
            Some(JobError::SequenceExhausted)
        } else {
            None
        };
        match early {
            Some(e) => {
                job.key = None;
                job.result = Err(e);
                self.cq.push_back(job);
            }
            None => {
                s.tx_seq += 1;
                let off = s.tx.payload_offset();
                set_key(&mut job, &s.tx);
                fill(&mut job.buf[off..off + len]);
                self.queue(job);
            }
        }
        Ok(())
    }

    /// Queue an open job: `record` is one full record (header included) as received.
    /// The result (content type + plaintext) arrives in a completion tagged `tag`.
    #[inline]
    pub fn submit_open(
        &mut self,
        id: SessionId,
        tag: u64,
        record: &[u8],
    ) -> Result<(), SubmitError> {
        let (mut job, s) = self.take_slot(id, Op::Open)?;
        job.op = Op::Open;
        job.tag = tag;
        job.session = id;
        job.input_len = record.len();
        job.seq = s.rx_seq;
        let early = if record.len() > MAX_RECORD {
            Some(JobError::RecordOverflow)
        } else if s.rx_seq == u64::MAX {
            Some(JobError::SequenceExhausted)
        } else {
            None
        };
        match early {
            Some(e) => {
                job.key = None;
                job.result = Err(e);
                self.cq.push_back(job);
            }
            None => {
                s.rx_seq += 1;
                set_key(&mut job, &s.rx);
                job.buf[..record.len()].copy_from_slice(record);
                self.queue(job);
            }
        }
        Ok(())
    }

    /// Hand a framed job on: to the submission ring, or — for a backend that runs jobs on
    /// the caller's CPU anyway — run it now, while the bytes just copied into its slot are
    /// still in L1, and put it straight on the completion ring. Either way the caller sees
    /// it only through `poll`/`reap`, in the same order.
    #[inline]
    fn queue(&mut self, mut job: Box<Job>) {
        if self.at_submit {
            job.run_software();
            self.cq.push_back(job);
        } else {
            self.sq.push_back(job);
        }
    }

    /// Check the session and its budget and take a free slot. Returns the slot and the
    /// session (one lookup; disjoint fields of `self`).
    fn take_slot(
        &mut self,
        id: SessionId,
        op: Op,
    ) -> Result<(Box<Job>, &mut Session), SubmitError> {
        let Some(s) = lookup(&mut self.sessions, id) else {
            return Err(SubmitError::UnknownSession);
        };
        if s.in_flight >= s.limit {
            self.stats.submit_refused += 1;
            return Err(SubmitError::InFlightLimit);
        }
        let Some(mut job) = self.free.pop() else {
            self.stats.submit_refused += 1;
            return Err(SubmitError::RingFull);
        };
        s.in_flight += 1;
        let k = op_index(op);
        job.order = s.order[k];
        s.order[k] = s.order[k].wrapping_add(1);
        Ok((job, s))
    }

    // === data side: progress and completion ===

    /// Ring the doorbell and let the backend make progress: hands submitted jobs to the
    /// backend (one burst) and collects up to one batch of finished jobs (a backend that
    /// runs jobs at submission has put them on the completion ring already). Returns the
    /// number of completions now waiting to be reaped. Never blocks.
    pub fn poll(&mut self) -> usize {
        if !self.sq.is_empty() {
            self.backend.enqueue(&mut self.sq);
        }
        if self.backend.in_device() > 0 {
            self.backend.dequeue(&mut self.cq, self.cfg.batch);
        }
        self.cq.len()
    }

    /// Hand up to `max` completions to `f`. Across sessions in completion order (which
    /// may differ from submission order); within one session and op (seal or open) always
    /// in submission order: a job that finished ahead of an earlier one of its session is
    /// held back until that one was reaped. Each slot is recycled when `f` returns.
    /// Returns how many.
    pub fn reap(&mut self, max: usize, mut f: impl FnMut(Completion<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut job) = self.cq.pop_front() else {
                break;
            };
            let k = op_index(job.op);
            // One session lookup per job: ordering, in-flight count and key check.
            match lookup(&mut self.sessions, job.session) {
                Some(s) => {
                    if job.order != s.deliver[k] {
                        self.parked.push(job);
                        continue;
                    }
                    s.deliver[k] = s.deliver[k].wrapping_add(1);
                    // The caller cannot submit while reaping, so the budget is returned now.
                    s.in_flight -= 1;
                    let current = match job.op {
                        Op::Seal => &s.tx,
                        Op::Open => &s.rx,
                    };
                    if !job
                        .key
                        .as_ref()
                        .is_some_and(|key| Arc::ptr_eq(key, current))
                    {
                        job.key = None; // replaced by a key update: let it go now
                    }
                    if !self.parked.is_empty() {
                        let next = s.deliver[k];
                        let (sid, op) = (job.session, job.op);
                        if let Some(i) = self
                            .parked
                            .iter()
                            .position(|j| j.session == sid && j.op == op && j.order == next)
                        {
                            // Capacity `slots` bounds every job: no reallocation.
                            self.cq.push_front(self.parked.swap_remove(i));
                        }
                    }
                }
                None => job.key = None, // session destroyed
            }
            let result = match job.result {
                Ok(()) => {
                    let data = &job.buf[job.out_start..job.out_start + job.out_len];
                    match job.op {
                        Op::Seal => {
                            self.stats.records_sealed += 1;
                            self.stats.bytes_sealed += job.input_len as u64;
                        }
                        Op::Open => {
                            self.stats.records_opened += 1;
                            self.stats.bytes_opened += job.out_len as u64;
                        }
                    }
                    Ok(Output {
                        content_type: job.content_type,
                        data,
                    })
                }
                Err(e) => {
                    self.stats.jobs_failed += 1;
                    Err(e)
                }
            };
            f(Completion {
                tag: job.tag,
                session: job.session,
                op: job.op,
                seq: job.seq,
                result,
            });
            // The slot keeps its key reference: the next job of the same session reuses it
            // without touching the reference count (`forget_key` clears stale ones).
            job.result = Err(JobError::Crypto);
            self.free.push(job);
            n += 1;
        }
        n
    }

    /// Poll until every submitted job has completed or `max_polls` polls passed; for
    /// tests, shutdown and calibration. Returns the completions waiting.
    pub fn poll_until_idle(&mut self, max_polls: usize) -> usize {
        for _ in 0..max_polls {
            self.poll();
            if self.sq.is_empty() && self.backend.in_device() == 0 {
                break;
            }
            std::hint::spin_loop();
        }
        self.cq.len()
    }
}

#[inline]
fn op_index(op: Op) -> usize {
    match op {
        Op::Seal => 0,
        Op::Open => 1,
    }
}

fn lookup(sessions: &mut [SessionSlot], id: SessionId) -> Option<&mut Session> {
    sessions
        .get_mut(id.index as usize)
        .filter(|s| s.generation == id.generation)
        .and_then(|s| s.session.as_mut())
}

/// Point the job at `key`, reusing the slot's cached reference when it is the same key
/// (no atomic reference-count traffic on the steady path).
fn set_key(job: &mut Job, key: &Arc<RecordKey>) {
    if !job.key.as_ref().is_some_and(|k| Arc::ptr_eq(k, key)) {
        job.key = Some(Arc::clone(key));
    }
}

/// Measure a backend: seal `jobs` records of `record_len` bytes through a fresh engine at
/// batch 32 and return the mean nanoseconds per record. `auto` uses it at start to compare
/// accelerators against software; benchmarks and tests may call it too.
pub fn calibrate(
    choice: BackendChoice,
    record_len: usize,
    jobs: usize,
) -> Result<f64, EngineError> {
    let batch = 32;
    let mut e = Engine::new(EngineConfig {
        backend: choice,
        slots: batch * 2,
        batch,
        default_in_flight_limit: (batch * 2) as u32,
        max_sessions: 1,
    })?;
    let suite = CipherSuite::Aes128Gcm;
    let keys =
        TrafficKeys::new(suite, &[0x11; 16], [0x22; 12], 0).map_err(|_| EngineError::Sizing)?;
    let id = e
        .create_session(&SessionParams {
            suite,
            version: TlsVersion::Tls13,
            tx: keys.clone(),
            rx: keys,
            in_flight_limit: 0,
        })
        .map_err(|_| EngineError::Sizing)?;
    let payload = vec![0x5au8; record_len.min(MAX_PLAINTEXT)];
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_secs(2);
    let mut done = 0;
    while done < jobs {
        let mut submitted = 0;
        while submitted < batch
            && e.submit_seal(id, 0, ContentType::ApplicationData, &payload)
                .is_ok()
        {
            submitted += 1;
        }
        e.poll();
        done += e.reap(usize::MAX, |_| {});
        if std::time::Instant::now() > deadline {
            // A device this slow has lost the comparison anyway.
            return Ok(f64::INFINITY);
        }
    }
    Ok(start.elapsed().as_nanos() as f64 / done as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-connection state must not creep (STYLE: assert the size of per-connection state).
    #[test]
    fn per_session_state_stays_small() {
        assert!(
            std::mem::size_of::<SessionSlot>() <= 64,
            "{}",
            std::mem::size_of::<SessionSlot>()
        );
        // A job slot is its header plus one MAX_RECORD buffer, allocated once.
        assert!(
            std::mem::size_of::<Job>() <= 128,
            "{}",
            std::mem::size_of::<Job>()
        );
    }

    /// Free slots cache the key of their last job; a replaced or destroyed key must not
    /// stay alive in them.
    #[test]
    fn replaced_and_destroyed_keys_are_released() {
        let mut e = Engine::new(EngineConfig {
            backend: BackendChoice::Software,
            slots: 8,
            ..Default::default()
        })
        .unwrap();
        let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[1; 16], [2; 12], 0).unwrap();
        let p = SessionParams {
            suite: CipherSuite::Aes128Gcm,
            version: TlsVersion::Tls13,
            tx: keys.clone(),
            rx: keys.clone(),
            in_flight_limit: 0,
        };
        let id = e.create_session(&p).unwrap();
        for tag in 0..4 {
            e.submit_seal(id, tag, ContentType::ApplicationData, b"x")
                .unwrap();
        }
        let old = Arc::clone(&e.session(id).unwrap().tx);
        e.update_keys(id, Direction::Tx, &keys).unwrap();
        e.poll_until_idle(100);
        assert_eq!(e.reap(8, |c| assert!(c.result.is_ok())), 4);
        assert_eq!(Arc::strong_count(&old), 1, "old key still referenced");
        // Steady state: slots reuse the current key; destroying the session releases it.
        e.submit_seal(id, 9, ContentType::ApplicationData, b"y")
            .unwrap();
        e.poll_until_idle(100);
        e.reap(8, |_| {});
        let current = Arc::clone(&e.session(id).unwrap().tx);
        assert_eq!(
            Arc::strong_count(&current),
            3,
            "session + cached slot + this test"
        );
        e.destroy_session(id).unwrap();
        assert_eq!(Arc::strong_count(&current), 1);
    }

    /// A device may finish jobs in any order; one session's completions still reach the
    /// caller in submission order (per op), other sessions' pass in between.
    #[test]
    fn completions_are_reaped_in_order_per_session() {
        let mut e = Engine::new(EngineConfig {
            backend: BackendChoice::Software,
            slots: 16,
            ..Default::default()
        })
        .unwrap();
        let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[1; 16], [2; 12], 0).unwrap();
        let p = SessionParams {
            suite: CipherSuite::Aes128Gcm,
            version: TlsVersion::Tls13,
            tx: keys.clone(),
            rx: keys,
            in_flight_limit: 0,
        };
        let a = e.create_session(&p).unwrap();
        let b = e.create_session(&p).unwrap();
        for tag in 0..4 {
            e.submit_seal(a, tag, ContentType::ApplicationData, b"a")
                .unwrap();
            e.submit_seal(b, 100 + tag, ContentType::ApplicationData, b"b")
                .unwrap();
        }
        e.poll_until_idle(100);
        // Simulate a device that completed everything backwards.
        e.cq.make_contiguous().reverse();
        let mut seen = Vec::new();
        assert_eq!(e.reap(16, |c| seen.push(c.tag)), 8);
        let a_tags: Vec<u64> = seen.iter().copied().filter(|t| *t < 100).collect();
        let b_tags: Vec<u64> = seen.iter().copied().filter(|t| *t >= 100).collect();
        assert_eq!(a_tags, [0, 1, 2, 3]);
        assert_eq!(b_tags, [100, 101, 102, 103]);
        assert!(e.parked.is_empty());
        assert_eq!(e.in_flight(), 0);
    }

    /// An engine moves to its worker thread at start-up.
    #[test]
    fn engine_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Engine>();
    }
}
