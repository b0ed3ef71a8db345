//! The protocol-agnostic streaming pipeline: client bytes in, one S3 object and one queued
//! completion out — or nothing at all.
//!
//! ```text
//! begin() ─► write()/fill_from() ─► probe buffer ─► part buffers ─► UploadPart × concurrency
//!                 │ SHA-256 as bytes pass        (reserved from the MemoryBudget first)
//!                 ▼
//! finish() ─► PutObject (fits in one part) | CompleteMultipartUpload ─► Notifier::enqueue ─► Ok
//! client gone, stalled, shutdown ─► whole parts kept for resume (partials), the rest dropped
//! refused, too large, S3 failure ─► AbortMultipartUpload, no completion
//! ```
//!
//! Success is said last: `finish` returns only after the object is whole in S3 and its
//! completion is durably queued. Uploads under temporary names (`upload.temp_patterns`)
//! queue nothing: their completion comes with the rename to a final name (see
//! [`crate::files`]).
//!
//! The pieces, in the order an upload meets them: the [`Pipeline`] shares the budget and
//! S3 client (`pipeline.rs`); admission checks and starts an upload (`admission.rs`) and
//! enters it in the running-upload registry (`registry.rs`); the write path fills budgeted
//! buffers (`write.rs`) that leave as multipart parts (`multipart.rs`); the commit makes the
//! object whole and queues its completion, or closes it without success (`commit.rs`).
//! Errors and their outcomes are in `error.rs`; resuming cut uploads in `resume.rs`.

mod admission;
mod budget;
mod buffers;
mod client_message;
mod commit;
mod content_type;
mod error;
mod live;
mod multipart;
mod part_size;
pub mod partials;
mod pipeline;
mod quota;
mod registry;
mod resume;
mod transfer;
mod write;

pub use budget::{
    MemoryBudget, OpenSessionGuard, OpenSessions, PROBE_SIZE, Reservation, SessionCharge,
    session_share,
};
pub use client_message::{NOT_RECORDED, SERVER_FAULT, STORAGE_UNAVAILABLE};
pub use error::UploadError;
pub use live::{TransferInfo, TransferView};
pub use part_size::{MAX_PARTS, PartSizes, S3_MAX_OBJECT};
pub use partials::PartialStore;
pub use pipeline::{CommitCheck, Pipeline, UploadRequest};
pub use quota::{QuotaExceeded, QuotaTicket, Quotas};
pub use transfer::Upload;

/// The content type of a file from its name and first bytes (also for renamed files).
pub(crate) use content_type::detect as content_type_of;
