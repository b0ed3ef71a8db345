//! The completion record: what the platform's upload-complete API receives.

use crate::protocol::Protocol;
use serde::{Serialize, Serializer};
use std::time::SystemTime;

/// One file that is whole in S3. Serialises to the contract's JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct CompletedUpload {
    /// Always "upload.completed".
    pub event: &'static str,
    /// Unique per completed file; the same on every retry (UUIDv7).
    pub id: String,
    /// ftp | ftps | sftp
    pub protocol: Protocol,
    /// Who uploaded.
    pub username: String,
    /// Client address and port.
    pub remote_addr: String,
    /// The path as the client named it, from its home.
    pub path: String,
    /// Bucket.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// S3 ETag, quotes included.
    pub etag: String,
    /// SHA-256 of the whole content, hex.
    pub sha256: String,
    /// MIME type stored with the object.
    pub content_type: String,
    /// First byte received.
    #[serde(serialize_with = "rfc3339_millis")]
    pub started_at: SystemTime,
    /// Object complete.
    #[serde(serialize_with = "rfc3339_millis")]
    pub completed_at: SystemTime,
    /// The user's configured metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The event name of every completion.
pub const UPLOAD_COMPLETED: &str = "upload.completed";

fn rfc3339_millis<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

/// A new time-ordered, unique event id.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
