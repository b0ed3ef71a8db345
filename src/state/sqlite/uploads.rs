//! The upload state database (`data_dir/uploads.sqlite3`): one file and one connection for
//! cut uploads, temporary names, quota usage and reservations, and made directories, each implemented in its own module.
//! `synchronous = NORMAL`: a lost mark after a power cut only means the client resends one
//! more part.

use super::Db;
use crate::state::StateError;
use std::path::Path;

/// File name of the store inside `data_dir`.
pub const UPLOADS_FILE: &str = "uploads.sqlite3";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS partials (
        key TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        path TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        content_type TEXT NOT NULL,
        id TEXT NOT NULL,
        fields TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        durable_bytes INTEGER NOT NULL DEFAULT 0,
        durable_parts INTEGER NOT NULL DEFAULT 0,
        hash_state BLOB,
        active INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS part_marks (
        upload_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        end_offset INTEGER NOT NULL,
        hash_state BLOB NOT NULL,
        PRIMARY KEY (upload_id, number)
    );
    CREATE TABLE IF NOT EXISTS temp_objects (
        key TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        id TEXT NOT NULL,
        fields TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        completed_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS quota_usage (
        username TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        files INTEGER NOT NULL,
        counted_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS quota_claims (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        owner TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        files INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS quota_claims_user ON quota_claims (username, expires_ms);
    CREATE TABLE IF NOT EXISTS made_dirs (
        prefix TEXT PRIMARY KEY,
        parent TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS made_dirs_parent ON made_dirs (parent, prefix);";

/// The upload state in SQLite; cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteUploads {
    pub(super) db: Db,
    /// The uploads this process writes: the running records it did not begin were left by
    /// an earlier process.
    pub(super) writing: crate::state::Writing,
}

impl SqliteUploads {
    /// Opens (creating) `data_dir/uploads.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<SqliteUploads, StateError> {
        let db = Db::open("upload state", &data_dir.join(UPLOADS_FILE), "NORMAL")?;
        db.now(|c| c.execute_batch(SCHEMA))?;
        // One bridge uses these files: reservations left by a previous run belong to uploads
        // that ended with it.
        db.now(|c| c.execute("DELETE FROM quota_claims", []))?;
        Ok(SqliteUploads {
            db,
            writing: Default::default(),
        })
    }
}
