//! The SQLite backend: the outbox in `data_dir/outbox.sqlite3`, cut uploads, temporary
//! names, quota usage and made directories in `data_dir/uploads.sqlite3`; bans stay in
//! memory (one bridge).
//!
//! SQLite (rusqlite, bundled): one file an operator can inspect with the `sqlite3` tool,
//! WAL journaling, and queries by state and due time. Each call runs on a blocking thread,
//! as commits fsync.

mod cut_uploads;
mod dirs;
mod outbox;
mod quota;
mod temp_names;
mod uploads;

pub use outbox::{OUTBOX_FILE, SqliteOutbox};
pub use uploads::{SqliteUploads, UPLOADS_FILE};

use super::{StateError, Stores, memory::MemoryBans};
use parking_lot::Mutex;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Opens every store for `data_dir`: the outbox only when `with_outbox` (a connector is
/// configured; otherwise no outbox file is created), the upload state always, and empty
/// in-memory bans.
pub fn open(data_dir: &Path, with_outbox: bool) -> Result<Stores, StateError> {
    let outbox = if with_outbox {
        Some(open_outbox(data_dir)?)
    } else {
        None
    };
    let uploads = Arc::new(SqliteUploads::open(data_dir)?);
    Ok(Stores {
        outbox,
        uploads: uploads.clone(),
        temp_names: uploads.clone(),
        quota: uploads.clone(),
        bans: Arc::new(MemoryBans::new()),
        dirs: uploads,
        health: None,
    })
}

/// Opens (creating or upgrading) the outbox alone, as the `outbox` commands do.
pub fn open_outbox(data_dir: &Path) -> Result<Arc<dyn super::OutboxStore>, StateError> {
    Ok(Arc::new(SqliteOutbox::open(data_dir)?))
}

/// One connection to a database file, shared by clones; the lock serialises its users.
#[derive(Clone)]
struct Db {
    /// Which store, for errors.
    store: &'static str,
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("store", &self.store)
            .field("path", &self.path)
            .finish()
    }
}

impl Db {
    /// Opens `path` in WAL mode with `synchronous` (`FULL` or `NORMAL`).
    fn open(store: &'static str, path: &Path, synchronous: &str) -> Result<Db, StateError> {
        let err = |e| StateError::backend(store, path.display().to_string(), e);
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        Ok(Db {
            store,
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The error of this database, caused by `e`.
    fn error(&self, e: rusqlite::Error) -> StateError {
        StateError::backend(self.store, self.path.display().to_string(), e)
    }

    /// Runs `f` on the connection now (for set-up, before the store is shared).
    fn now<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StateError> {
        f(&self.conn.lock()).map_err(|e| self.error(e))
    }

    /// Runs `f` on the connection in a blocking thread (SQLite commits fsync).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StateError> {
        let conn = self.conn.clone();
        match tokio::task::spawn_blocking(move || f(&conn.lock())).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(source) => Err(StateError::Task {
                store: self.store,
                location: self.path.display().to_string(),
                source,
            }),
        }
    }
}

/// A count or size as SQLite's signed integer (saturating).
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Extracted fields as stored: a JSON object.
fn fields_text(fields: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(fields.clone()).to_string()
}

/// Stored fields back; anything but a JSON object (an operator's edit) reads as none.
fn fields_of(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{PartialRecord, PendingEntry, TempRecord};

    /// What the conformance suite cannot see: everything is still there after reopening the
    /// files, as after a restart of the bridge.
    #[tokio::test]
    async fn every_store_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = super::open(dir.path(), true).expect("open");
        let outbox = stores.outbox.clone().expect("outbox");
        outbox
            .insert(PendingEntry {
                id: "e1".into(),
                key: "u/a.bin".into(),
                body: b"{}".to_vec(),
                step: 0,
                fields: serde_json::Map::new(),
                attempts: 0,
                since_ms: 0,
            })
            .await
            .expect("insert");
        stores
            .uploads
            .begin(PartialRecord {
                path: "/a.bin".into(),
                id: "e1".into(),
                ..PartialRecord::running("u/a.bin", "up")
            })
            .await
            .expect("begin");
        stores
            .uploads
            .suspend("u/a.bin".into(), "up".into(), 10, 1, vec![1, 2])
            .await
            .expect("suspend");
        stores
            .temp_names
            .put_temp(TempRecord {
                key: "u/b.tmp".into(),
                username: "u".into(),
                size: 3,
                sha256: String::new(),
                content_type: "text/plain".into(),
                id: "e2".into(),
                fields: serde_json::Map::new(),
                started_at_ms: 1,
            })
            .await
            .expect("temp");
        stores
            .quota
            .set_quota_usage("u".into(), 9, 1)
            .await
            .expect("quota");
        stores.dirs.add_dir("u/made/".into()).await.expect("dir");
        drop((stores, outbox));

        let stores = super::open(dir.path(), true).expect("reopen");
        let outbox = stores.outbox.expect("outbox");
        assert_eq!(
            outbox.state_of("e1").await.expect("state").as_deref(),
            Some("pending")
        );
        let cut = stores
            .uploads
            .get("u/a.bin".into())
            .await
            .expect("get")
            .expect("kept");
        assert_eq!((cut.durable_bytes, cut.active), (10, false));
        assert_eq!(cut.hash_state, Some(vec![1, 2]));
        assert!(
            stores
                .temp_names
                .temp("u/b.tmp".into())
                .await
                .expect("temp")
                .is_some()
        );
        assert_eq!(
            stores.quota.quota_usage("u".into()).await.expect("quota"),
            Some((9, 1))
        );
        assert!(stores.dirs.has_dir("u/made/".into()).await.expect("dir"));
        assert!(
            dir.path().join(super::OUTBOX_FILE).exists()
                && dir.path().join(super::UPLOADS_FILE).exists()
        );
    }

    /// A record left running by an earlier process is an orphan of the next one, adopted
    /// once; what the new process begins is its own.
    #[tokio::test]
    async fn uploads_left_running_are_orphans_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = |key: &str, upload_id: &str| PartialRecord {
            path: format!("/{key}"),
            id: "e1".into(),
            ..PartialRecord::running(key, upload_id)
        };
        let first = super::open(dir.path(), false).expect("open");
        first
            .uploads
            .begin(record("u/a.bin", "up"))
            .await
            .expect("begin");
        drop(first);

        let second = super::open(dir.path(), false).expect("reopen");
        let uploads = second.uploads;
        uploads
            .begin(record("u/b.bin", "up-b"))
            .await
            .expect("begin");
        let orphans = uploads.orphaned().await.expect("orphaned");
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].upload_id, "up");
        assert!(
            !uploads
                .adopt("u/b.bin".into(), "up-b".into())
                .await
                .expect("adopt")
        );
        assert!(
            uploads
                .adopt("u/a.bin".into(), "up".into())
                .await
                .expect("adopt")
        );
        assert!(
            !uploads
                .adopt("u/a.bin".into(), "up".into())
                .await
                .expect("once")
        );
        assert!(uploads.orphaned().await.expect("orphaned").is_empty());
        assert!(
            uploads
                .lead_sweep(std::time::Duration::from_secs(1))
                .await
                .expect("lead")
        );
    }

    /// Without a connector no outbox file appears, as before the stores were bundled.
    #[test]
    fn no_outbox_file_without_a_connector() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = super::open(dir.path(), false).expect("open");
        assert!(stores.outbox.is_none());
        assert!(!dir.path().join(super::OUTBOX_FILE).exists());
    }
}
