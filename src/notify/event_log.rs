//! The event log: `data_dir/events.jsonl`, one completion body per line, each fsynced before
//! the client hears success. With `notify.url` empty it is the only sink.

use super::NotifyError;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File name of the event log inside `data_dir`.
pub const EVENT_LOG_FILE: &str = "events.jsonl";

/// Append-only JSON-lines file.
#[derive(Clone)]
pub struct EventLog {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl EventLog {
    /// Opens (creating) the log in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<EventLog, NotifyError> {
        let path = data_dir.join(EVENT_LOG_FILE);
        let err = |source| NotifyError::EventLog {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(err)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(EventLog {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends one completion body (its JSON) as a line and waits until it is on disk.
    pub async fn append(&self, body: &[u8]) -> Result<(), NotifyError> {
        let mut line = Vec::with_capacity(body.len() + 1);
        line.extend_from_slice(body);
        line.push(b'\n');
        self.write(line).await
    }

    /// Confirms the file still accepts writes (flushes nothing new).
    pub async fn check(&self) -> Result<(), NotifyError> {
        self.write(Vec::new()).await
    }

    async fn write(&self, bytes: Vec<u8>) -> Result<(), NotifyError> {
        let file = self.file.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut file = file
                .lock()
                .map_err(|_| std::io::Error::other("event log lock poisoned"))?;
            file.write_all(&bytes)?;
            file.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        result.map_err(|source| NotifyError::EventLog {
            path: self.path.display().to_string(),
            source,
        })
    }
}
