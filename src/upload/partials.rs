//! What survives a cut upload: its S3 multipart upload id, the SHA-256 state at every part
//! boundary, and the bytes safely stored, in SQLite under `data_dir` — so a client can
//! resume where S3's parts end, even after the bridge restarted. Also remembers finished
//! uploads under temporary names, whose completion waits for the rename to a final name,
//! and what each user with a quota stores (see `quota`).
//!
//! Each part's mark (its end offset and the hash state there) is written before the part is
//! sent. What is durable is decided against S3 (ListParts) when an upload is cut or the
//! bridge starts: the longest run of whole parts from 1 that S3 holds and that have marks.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    );";

/// A cut (or running) upload that can be resumed.
#[derive(Debug, Clone)]
pub struct PartialRecord {
    /// The object key.
    pub key: String,
    /// Whose upload it is: only this user sees or resumes it.
    pub username: String,
    /// The client path, for logs.
    pub path: String,
    /// The S3 multipart upload.
    pub upload_id: String,
    /// Detected from the first part.
    pub content_type: String,
    /// The completion id, kept so a resumed upload reports under the id it started with.
    pub id: String,
    /// Fields the connector's `create` step extracted.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When the first byte arrived, ms since the epoch.
    pub started_at_ms: i64,
    /// Last change, ms since the epoch; the resume window runs from here.
    pub updated_ms: i64,
    /// Bytes safely in S3: where a resume must start.
    pub durable_bytes: u64,
    /// Whole parts (1..=n) making up `durable_bytes`.
    pub durable_parts: u32,
    /// SHA-256 state after `durable_bytes`.
    pub hash_state: Option<Vec<u8>>,
    /// A session is writing it now.
    pub active: bool,
}

/// A part's end offset and the hash state there, written before the part is sent.
#[derive(Debug, Clone)]
pub struct PartMark {
    /// Part number.
    pub number: u32,
    /// Offset just past the part.
    pub end: u64,
    /// Serialized SHA-256 state at `end`.
    pub hash_state: Vec<u8>,
}

/// A finished upload under a temporary name, waiting for its rename.
#[derive(Debug, Clone)]
pub struct TempRecord {
    /// The object key.
    pub key: String,
    /// Who uploaded it.
    pub username: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole content, hex.
    pub sha256: String,
    /// Detected content type.
    pub content_type: String,
    /// The completion id the rename will report.
    pub id: String,
    /// Fields the connector's `create` step extracted.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When the upload started, ms since the epoch.
    pub started_at_ms: i64,
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct PartialStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for PartialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("upload state {path}: {message}")]
pub struct StoreError {
    path: String,
    message: String,
}

/// Serializes a SHA-256 state for the store.
pub fn save_hash(hasher: &Sha256) -> Vec<u8> {
    hasher.serialize().to_vec()
}

/// Restores a SHA-256 state written by [`save_hash`].
pub fn load_hash(bytes: &[u8]) -> Option<Sha256> {
    let state = SerializedState::<Sha256>::try_from(bytes).ok()?;
    Sha256::deserialize(&state).ok()
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    crate::notify::now_ms()
}

fn fields_text(fields: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(fields.clone()).to_string()
}

fn fields_of(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

fn partial_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PartialRecord> {
    Ok(PartialRecord {
        key: r.get(0)?,
        username: r.get(1)?,
        path: r.get(2)?,
        upload_id: r.get(3)?,
        content_type: r.get(4)?,
        id: r.get(5)?,
        fields: fields_of(&r.get::<_, String>(6)?),
        started_at_ms: r.get(7)?,
        updated_ms: r.get(8)?,
        durable_bytes: r.get::<_, i64>(9)?.max(0) as u64,
        durable_parts: r.get::<_, i64>(10)?.clamp(0, i64::from(u32::MAX)) as u32,
        hash_state: r.get(11)?,
        active: r.get::<_, i64>(12)? != 0,
    })
}

const PARTIAL_COLUMNS: &str = "key, username, path, upload_id, content_type, id, fields, \
     started_at_ms, updated_ms, durable_bytes, durable_parts, hash_state, active";

impl PartialStore {
    /// Opens (creating) `data_dir/uploads.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<PartialStore, StoreError> {
        let path = data_dir.join(UPLOADS_FILE);
        let err = |e: rusqlite::Error| StoreError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // A lost mark after a power cut only means the client resends one more part.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(PartialStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| "the upload state lock is poisoned".to_string())?;
            f(&conn).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|message| StoreError { path, message })
    }

    /// What `username` stores (bytes, files), if it was counted before.
    pub async fn quota_usage(&self, username: String) -> Result<Option<(u64, u64)>, StoreError> {
        self.with(move |c| {
            c.query_row(
                "SELECT bytes, files FROM quota_usage WHERE username = ?1",
                params![username],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                    ))
                },
            )
            .optional()
        })
        .await
    }

    /// Records a fresh count of what `username` stores.
    pub async fn set_quota_usage(
        &self,
        username: String,
        bytes: u64,
        files: u64,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO quota_usage (username, bytes, files, counted_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(username) DO UPDATE SET bytes = ?2, files = ?3, counted_ms = ?4",
                params![username, clamp(bytes), clamp(files), now_ms()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Adds a change to what `username` stores; changes commute, so concurrent uploads
    /// may record in any order.
    pub async fn add_quota_usage(
        &self,
        username: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "UPDATE quota_usage SET bytes = max(0, bytes + ?2), files = max(0, files + ?3)
                 WHERE username = ?1",
                params![username, bytes, files],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forgets what `username` stores (their quota was taken away).
    pub async fn forget_quota_usage(&self, username: String) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM quota_usage WHERE username = ?1",
                params![username],
            )
            .map(|_| ())
        })
        .await
    }

    /// Records a new multipart upload as running; replaces any older record for the key.
    pub async fn begin(&self, rec: PartialRecord) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO partials (key, username, path, upload_id, content_type, id,
                    fields, started_at_ms, updated_ms, durable_bytes, durable_parts, hash_state, active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, 0, NULL, 1)",
                params![
                    rec.key,
                    rec.username,
                    rec.path,
                    rec.upload_id,
                    rec.content_type,
                    rec.id,
                    fields_text(&rec.fields),
                    rec.started_at_ms,
                    now_ms()
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Writes a part's mark before the part is sent.
    pub async fn mark(&self, upload_id: String, mark: PartMark) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO part_marks (upload_id, number, end_offset, hash_state)
                 VALUES (?1, ?2, ?3, ?4)",
                params![upload_id, mark.number, mark.end as i64, mark.hash_state],
            )
            .map(|_| ())
        })
        .await
    }

    /// The marks of an upload, by part number.
    pub async fn marks(&self, upload_id: String) -> Result<Vec<PartMark>, StoreError> {
        self.with(move |c| {
            let mut s = c.prepare(
                "SELECT number, end_offset, hash_state FROM part_marks
                 WHERE upload_id = ?1 ORDER BY number",
            )?;
            let rows = s.query_map([upload_id], |r| {
                Ok(PartMark {
                    number: r.get(0)?,
                    end: r.get::<_, i64>(1)?.max(0) as u64,
                    hash_state: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Marks the upload as cut with `durable` bytes in parts 1..=`parts`; false when the
    /// record belongs to a newer upload of the same key (this one must be aborted).
    pub async fn suspend(
        &self,
        key: String,
        upload_id: String,
        durable: u64,
        parts: u32,
        hash_state: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.with(move |c| {
            let n = c.execute(
                "UPDATE partials SET durable_bytes = ?3, durable_parts = ?4, hash_state = ?5,
                    active = 0, updated_ms = ?6
                 WHERE key = ?1 AND upload_id = ?2",
                params![key, upload_id, durable as i64, parts, hash_state, now_ms()],
            )?;
            c.execute(
                "DELETE FROM part_marks WHERE upload_id = ?1 AND number > ?2",
                params![upload_id, parts],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Claims a cut upload for a resuming session; false if another session has it.
    pub async fn activate(&self, key: String, upload_id: String) -> Result<bool, StoreError> {
        self.with(move |c| {
            c.execute(
                "UPDATE partials SET active = 1, updated_ms = ?3
                 WHERE key = ?1 AND upload_id = ?2 AND active = 0",
                params![key, upload_id, now_ms()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// Forgets an upload (completed or aborted).
    pub async fn remove(&self, key: String, upload_id: String) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM partials WHERE key = ?1 AND upload_id = ?2",
                params![key, upload_id],
            )?;
            c.execute("DELETE FROM part_marks WHERE upload_id = ?1", [upload_id])?;
            Ok(())
        })
        .await
    }

    /// The record for a key, running or cut.
    pub async fn get(&self, key: String) -> Result<Option<PartialRecord>, StoreError> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {PARTIAL_COLUMNS} FROM partials WHERE key = ?1"),
                [key],
                partial_row,
            )
            .optional()
        })
        .await
    }

    /// Cut uploads of `username` directly under `prefix` (a directory's key prefix).
    pub async fn cut_under(
        &self,
        prefix: String,
        username: String,
    ) -> Result<Vec<PartialRecord>, StoreError> {
        self.with(move |c| {
            let mut s = c.prepare(&format!(
                "SELECT {PARTIAL_COLUMNS} FROM partials
                 WHERE active = 0 AND username = ?2 AND substr(key, 1, length(?1)) = ?1
                   AND instr(substr(key, length(?1) + 1), '/') = 0"
            ))?;
            let rows = s.query_map(params![prefix, username], partial_row)?;
            rows.collect()
        })
        .await
    }

    /// Every record (for the start-up reconciliation).
    pub async fn all(&self) -> Result<Vec<PartialRecord>, StoreError> {
        self.with(|c| {
            let mut s = c.prepare(&format!("SELECT {PARTIAL_COLUMNS} FROM partials"))?;
            let rows = s.query_map([], partial_row)?;
            rows.collect()
        })
        .await
    }

    /// How many cut uploads are kept.
    pub async fn count_cut(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM partials WHERE active = 0", [], |r| {
                r.get(0)
            })
        })
        .await
    }

    /// Cut uploads untouched since before `before_ms`.
    pub async fn expired(&self, before_ms: i64) -> Result<Vec<PartialRecord>, StoreError> {
        self.with(move |c| {
            let mut s = c.prepare(&format!(
                "SELECT {PARTIAL_COLUMNS} FROM partials WHERE active = 0 AND updated_ms < ?1"
            ))?;
            let rows = s.query_map([before_ms], partial_row)?;
            rows.collect()
        })
        .await
    }

    /// Remembers a finished temporary upload (replacing an older one of the same key).
    pub async fn put_temp(&self, rec: TempRecord) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO temp_objects (key, username, size, sha256, content_type,
                    id, fields, started_at_ms, completed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    rec.key,
                    rec.username,
                    rec.size as i64,
                    rec.sha256,
                    rec.content_type,
                    rec.id,
                    fields_text(&rec.fields),
                    rec.started_at_ms,
                    now_ms()
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// The finished temporary upload at `key`, if any.
    pub async fn temp(&self, key: String) -> Result<Option<TempRecord>, StoreError> {
        self.with(move |c| {
            c.query_row(
                "SELECT key, username, size, sha256, content_type, id, fields, started_at_ms
                 FROM temp_objects WHERE key = ?1",
                [key],
                |r| {
                    Ok(TempRecord {
                        key: r.get(0)?,
                        username: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        sha256: r.get(3)?,
                        content_type: r.get(4)?,
                        id: r.get(5)?,
                        fields: fields_of(&r.get::<_, String>(6)?),
                        started_at_ms: r.get(7)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Forgets the temporary upload at `key`.
    pub async fn remove_temp(&self, key: String) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute("DELETE FROM temp_objects WHERE key = ?1", [key])
                .map(|_| ())
        })
        .await
    }

    /// Forgets temporary uploads finished before `before_ms` (never renamed).
    pub async fn prune_temp(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM temp_objects WHERE completed_ms < ?1",
                [before_ms],
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn a_saved_hash_state_continues_to_the_same_digest() {
        let mut whole = Sha256::new();
        whole.update(b"hello, ");
        whole.update(b"resumed world");
        let mut first = Sha256::new();
        first.update(b"hello, ");
        let saved = save_hash(&first);
        let mut resumed = load_hash(&saved).expect("state loads");
        resumed.update(b"resumed world");
        assert_eq!(resumed.finalize(), whole.finalize());
        assert!(load_hash(b"short").is_none());
    }

    #[tokio::test]
    async fn records_survive_reopening_and_list_per_user_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PartialStore::open(dir.path()).expect("open");
        let rec = |key: &str, user: &str| PartialRecord {
            key: key.into(),
            username: user.into(),
            path: key.into(),
            upload_id: format!("up-{key}"),
            content_type: "video/mp4".into(),
            id: "id".into(),
            fields: serde_json::Map::new(),
            started_at_ms: 1,
            updated_ms: 1,
            durable_bytes: 0,
            durable_parts: 0,
            hash_state: None,
            active: true,
        };
        for (k, u) in [
            ("a/x.mp4", "alice"),
            ("a/sub/y.mp4", "alice"),
            ("a/z.mp4", "bob"),
        ] {
            store.begin(rec(k, u)).await.expect("begin");
            store
                .suspend(k.into(), format!("up-{k}"), 10, 1, vec![1])
                .await
                .expect("suspend");
        }
        assert!(
            !store
                .suspend("a/x.mp4".into(), "other".into(), 1, 1, vec![])
                .await
                .expect("suspend")
        );
        drop(store);
        let store = PartialStore::open(dir.path()).expect("reopen");
        let listed = store
            .cut_under("a/".into(), "alice".into())
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "a/x.mp4");
        assert_eq!(listed[0].durable_bytes, 10);
        assert!(
            store
                .activate("a/x.mp4".into(), "up-a/x.mp4".into())
                .await
                .expect("activate")
        );
        assert!(
            !store
                .activate("a/x.mp4".into(), "up-a/x.mp4".into())
                .await
                .expect("activate")
        );
    }
}
