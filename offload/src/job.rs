//! Job slots: the unit that travels through the submission and completion rings.
//!
//! A [`Job`] is preallocated by the engine with its own record-sized buffer and reused
//! forever: submitting fills it, a backend processes it in place, reaping hands the result
//! to the caller and returns the slot to the free list. Ownership moves with the `Box`
//! (engine → backend/device → engine), so exactly one party can touch a job at a time and
//! no lock is needed. Never allocates after the engine is built.

use std::sync::Arc;

use crate::error::JobError;
use crate::record::{ContentType, RecordKey, MAX_RECORD};

/// Identifies a crypto session. The generation makes a stale id (of a destroyed session
/// whose slot was reused) miss instead of hitting the new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Content type + payload in, full protected record (header included) out.
    Seal,
    /// Full protected record in, content type + plaintext out.
    Open,
}

/// One record job in a preallocated slot.
pub struct Job {
    pub(crate) tag: u64,
    pub(crate) session: SessionId,
    pub(crate) op: Op,
    /// Seal: the requested content type. Open: the inner type once opened.
    pub(crate) content_type: ContentType,
    pub(crate) seq: u64,
    /// Position among its session's jobs of the same op (reaping order).
    pub(crate) order: u16,
    /// Held for the job's life so a key update cannot change the key under it.
    pub(crate) key: Option<Arc<RecordKey>>,
    /// `MAX_RECORD` bytes, allocated once with the slot.
    pub(crate) buf: Box<[u8]>,
    /// Seal: payload length (placed at `key.payload_offset()`). Open: record length.
    pub(crate) input_len: usize,
    /// Where the output lies in `buf` once done.
    pub(crate) out_start: usize,
    pub(crate) out_len: usize,
    pub(crate) result: Result<(), JobError>,
}

impl Job {
    pub(crate) fn new_slot() -> Box<Job> {
        Box::new(Job {
            tag: 0,
            session: SessionId {
                index: u32::MAX,
                generation: 0,
            },
            op: Op::Seal,
            content_type: ContentType::ApplicationData,
            seq: 0,
            order: 0,
            key: None,
            buf: vec![0u8; MAX_RECORD].into_boxed_slice(),
            input_len: 0,
            out_start: 0,
            out_len: 0,
            result: Err(JobError::Crypto),
        })
    }

    pub fn op(&self) -> Op {
        self.op
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The record key this job runs under.
    pub fn key(&self) -> Option<&RecordKey> {
        self.key.as_deref()
    }

    /// The job's buffer (a device backend maps or copies it).
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Process the job on this CPU with `ring`. The software backends call this; a device
    /// backend may call it for a job its device refuses. Never panics.
    pub fn run_software(&mut self) {
        let Some(key) = self.key.as_deref() else {
            self.result = Err(JobError::SessionGone);
            return;
        };
        match self.op {
            Op::Seal => {
                match key.seal_in_place(self.seq, self.content_type, &mut self.buf, self.input_len)
                {
                    Ok(len) => {
                        self.out_start = 0;
                        self.out_len = len;
                        self.result = Ok(());
                    }
                    Err(e) => self.result = Err(e),
                }
            }
            Op::Open => match key.open_in_place(self.seq, &mut self.buf, self.input_len) {
                Ok((content_type, range)) => {
                    self.content_type = content_type;
                    self.out_start = range.start;
                    self.out_len = range.len();
                    self.result = Ok(());
                }
                Err(e) => self.result = Err(e),
            },
        }
    }
}

/// A finished job as the caller sees it while reaping. Borrowed from the slot: copy out
/// what you need; the slot is recycled when the reap callback returns.
#[derive(Debug)]
pub struct Completion<'a> {
    /// The caller's tag from submission.
    pub tag: u64,
    pub session: SessionId,
    pub op: Op,
    /// The record sequence number the job used.
    pub seq: u64,
    pub result: Result<Output<'a>, JobError>,
}

/// A successful job's output.
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    /// Seal: the type that was sealed. Open: the record's (inner) content type.
    pub content_type: ContentType,
    /// Seal: the full record, header included. Open: the plaintext.
    pub data: &'a [u8],
}
