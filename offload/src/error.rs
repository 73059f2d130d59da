//! Hot-path errors: small `Copy` enums, one per job or per submission.
//!
//! [`JobError`] is what a completion carries when a record could not be sealed or opened;
//! the TLS layer maps it to an alert (RFC 8446 §6.2). [`SubmitError`] is ring-level
//! back-pressure or misuse reported at submission: nothing was queued, nothing was lost,
//! the caller may retry after reaping.

/// Why one job failed. Reported in its completion; the other jobs are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Authentication failed: flipped bit, wrong key or wrong sequence number
    /// (TLS alert `bad_record_mac`).
    #[error("record failed authentication (bad_record_mac)")]
    BadRecordMac,
    /// Fewer bytes than the header says, or too few to hold a tag.
    #[error("record is truncated")]
    Truncated,
    /// More bytes handed in than the header's length covers (open takes one record).
    #[error("record length does not match its header")]
    LengthMismatch,
    /// Plaintext over 2^14 bytes, or ciphertext over 2^14 + 256 (`record_overflow`).
    #[error("record exceeds the TLS size limit (record_overflow)")]
    RecordOverflow,
    /// Outer or inner content type not allowed here (`unexpected_message`).
    #[error("unexpected record content type")]
    BadContentType,
    /// Legacy record version is not 0x0303.
    #[error("unexpected record version")]
    BadVersion,
    /// The 64-bit sequence number would wrap: the connection must rekey or close
    /// (RFC 8446 §5.3).
    #[error("sequence numbers exhausted: rekey or close the connection")]
    SequenceExhausted,
    /// The session was destroyed before the job ran.
    #[error("crypto session no longer exists")]
    SessionGone,
    /// The crypto library or device failed for a reason unrelated to the input.
    #[error("crypto backend failure")]
    Crypto,
}

/// Why a submission was refused. Nothing was queued; retry after reaping completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// Every job slot is in use: reap completions first.
    #[error("submission ring is full")]
    RingFull,
    /// This session already has its limit of jobs in flight.
    #[error("session in-flight limit reached")]
    InFlightLimit,
    /// The session id is unknown or was destroyed.
    #[error("unknown crypto session")]
    UnknownSession,
}
