//! The SQLite backend: the outbox in `data_dir/outbox.sqlite3`, cut uploads, temporary
//! names and quota usage in `data_dir/uploads.sqlite3`; bans stay in memory (one bridge).
//!
//! SQLite (rusqlite, bundled): one file an operator can inspect with the `sqlite3` tool,
//! WAL journaling, and queries by state and due time. Each call runs on a blocking thread,
//! as commits fsync.

mod cut_uploads;
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
        quota: uploads,
        bans: Arc::new(MemoryBans::new()),
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
