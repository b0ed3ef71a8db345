//! The event log: `data_dir/events.jsonl`, one completion body per line, each fsynced before
//! the client hears success. With `notify.url` empty it is the only sink.
//!
//! It holds exactly the completions of uploads whose clients were told success, one whole
//! JSON object per line, even on a full disk:
//! - an append that fails (`ENOSPC` half-way through a line, a failed fsync) is cut back to
//!   where it started, so the next good record never lands glued onto half a line;
//! - [`EventLog::record`] keeps the log locked while the outbox commits the same
//!   completion, and takes the line back if that commit fails (the client then hears an
//!   error, so the log must not say otherwise);
//! - a torn last line left by a crash mid-append (its client never heard success) is cut
//!   off when the log is opened.

use super::NotifyError;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;

/// File name of the event log inside `data_dir`.
pub const EVENT_LOG_FILE: &str = "events.jsonl";

/// Bytes read at a time when looking for the last line ending at start.
const TAIL_CHUNK: u64 = 64 * 1024;

/// What the event log needs of its file; a trait so tests can inject write errors.
pub(crate) trait LogFile: Send + 'static {
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Writes all of `bytes` at the end.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Waits until what was written is on disk.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl LogFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        // Opened with O_APPEND: every write lands at the current end.
        self.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // Shrinking needs no free space, so this works on a full disk too.
        self.set_len(len)
    }
}

/// Append-only JSON-lines file.
#[derive(Clone)]
pub struct EventLog {
    path: PathBuf,
    file: Arc<Mutex<Box<dyn LogFile>>>,
}

impl EventLog {
    /// Opens (creating) the log in `data_dir`, cutting off a torn last line.
    pub fn open(data_dir: &Path) -> Result<EventLog, NotifyError> {
        let path = data_dir.join(EVENT_LOG_FILE);
        let err = |source| NotifyError::EventLog {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(err)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(err)?;
        if let Some(cut) = repair_torn_tail(&mut file).map_err(err)? {
            tracing::warn!(path = %path.display(), bytes = cut,
                "the event log ended in half a line (an append cut short by a crash or a full disk; its client was never told success): removed it");
        }
        Ok(EventLog::with_file(path, Box::new(file)))
    }

    fn with_file(path: PathBuf, file: Box<dyn LogFile>) -> EventLog {
        EventLog {
            path,
            file: Arc::new(Mutex::new(file)),
        }
    }

    /// Appends one completion body as a line, waits until it is on disk, then runs
    /// `commit` (the outbox insert) with the log still locked; if `commit` fails, the line
    /// is taken back and its error returned. Either both hold the completion or neither.
    pub async fn record<F>(&self, body: &[u8], commit: F) -> Result<(), NotifyError>
    where
        F: Future<Output = Result<(), NotifyError>>,
    {
        let mut line = Vec::with_capacity(body.len() + 1);
        line.extend_from_slice(body);
        line.push(b'\n');
        let guard = self.file.clone().lock_owned().await;
        let (guard, appended) = blocking(guard, move |file| append_line(file, &line)).await;
        let start = appended.map_err(|source| self.error(source))?;
        if let Err(e) = commit.await {
            let Some(guard) = guard else {
                return Err(e);
            };
            let (_, undone) = blocking(guard, move |file| {
                file.truncate(start)?;
                file.sync()
            })
            .await;
            if let Err(undo) = undone {
                tracing::error!(path = %self.path.display(), error = %undo,
                    "cannot take back an event log line whose completion failed; the log lists an upload whose client heard an error");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Confirms the file still accepts writes (flushes nothing new).
    pub async fn check(&self) -> Result<(), NotifyError> {
        let guard = self.file.clone().lock_owned().await;
        let (_, result) = blocking(guard, |file| file.sync()).await;
        result.map_err(|source| self.error(source))
    }

    fn error(&self, source: io::Error) -> NotifyError {
        NotifyError::EventLog {
            path: self.path.display().to_string(),
            source,
        }
    }
}

type Guard = tokio::sync::OwnedMutexGuard<Box<dyn LogFile>>;

/// Runs `work` on the locked file on the blocking pool and hands the lock back.
async fn blocking<T: Send + 'static>(
    mut guard: Guard,
    work: impl FnOnce(&mut dyn LogFile) -> io::Result<T> + Send + 'static,
) -> (Option<Guard>, io::Result<T>) {
    match tokio::task::spawn_blocking(move || {
        let result = work(guard.as_mut());
        (guard, result)
    })
    .await
    {
        Ok((guard, result)) => (Some(guard), result),
        Err(e) => (None, Err(io::Error::other(e))),
    }
}

/// Appends `line` and syncs it; on any failure cuts the file back to its old length, so no
/// half line stays. Returns where the line starts.
fn append_line(file: &mut dyn LogFile, line: &[u8]) -> io::Result<u64> {
    let start = file.len()?;
    let written = file.append(line).and_then(|()| file.sync());
    if let Err(e) = written {
        if let Err(undo) = file.truncate(start).and_then(|()| file.sync()) {
            tracing::error!(error = %undo, "cannot cut a failed event log append back; it is repaired at the next start");
        }
        return Err(e);
    }
    Ok(start)
}

/// Cuts `file` back to just after its last line ending; returns the bytes removed, if any.
fn repair_torn_tail(file: &mut File) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(TAIL_CHUNK);
        chunk.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep == len {
                return Ok(None);
            }
            end = keep;
            break;
        }
        end = start;
    }
    file.set_len(end)?;
    file.sync_data()?;
    Ok(Some(len - end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    type Shared<T> = Arc<StdMutex<T>>;

    /// An in-memory file that fails once its contents would pass `room` bytes, after
    /// writing what fits (as `write` does on a full disk).
    struct FullDisk {
        data: Shared<Vec<u8>>,
        room: Shared<usize>,
    }

    impl LogFile for FullDisk {
        fn len(&self) -> io::Result<u64> {
            Ok(self
                .data
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .len() as u64)
        }
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let room = *self.room.lock().map_err(|_| io::Error::other("poisoned"))?;
            let mut data = self.data.lock().map_err(|_| io::Error::other("poisoned"))?;
            let fits = room.saturating_sub(data.len()).min(bytes.len());
            data.extend_from_slice(&bytes[..fits]);
            if fits < bytes.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.data
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .truncate(len as usize);
            Ok(())
        }
    }

    fn full_disk(room: usize) -> (EventLog, Shared<Vec<u8>>, Shared<usize>) {
        let data = Arc::new(StdMutex::new(Vec::new()));
        let room = Arc::new(StdMutex::new(room));
        let file = FullDisk {
            data: data.clone(),
            room: room.clone(),
        };
        (
            EventLog::with_file(PathBuf::from("events.jsonl"), Box::new(file)),
            data,
            room,
        )
    }

    async fn ok() -> Result<(), NotifyError> {
        Ok(())
    }

    #[tokio::test]
    async fn an_append_cut_short_by_a_full_disk_leaves_no_half_line() {
        let (log, data, room) = full_disk(30);
        log.record(br#"{"n":1}"#, ok()).await.expect("fits");
        let err = log
            .record(br#"{"n":2,"padding":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#, ok())
            .await
            .expect_err("the disk is full");
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(data.lock().unwrap().as_slice(), b"{\"n\":1}\n");
        *room.lock().unwrap() = 1000;
        log.record(br#"{"n":3}"#, ok()).await.expect("room again");
        assert_eq!(
            data.lock().unwrap().as_slice(),
            b"{\"n\":1}\n{\"n\":3}\n",
            "the next record starts on a line of its own"
        );
    }

    #[tokio::test]
    async fn a_line_whose_outbox_commit_fails_is_taken_back() {
        let (log, data, _) = full_disk(1000);
        log.record(br#"{"n":1}"#, ok()).await.expect("first");
        let failed = log
            .record(br#"{"n":2}"#, async {
                Err(NotifyError::Client("outbox full".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(data.lock().unwrap().as_slice(), b"{\"n\":1}\n");
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENT_LOG_FILE);
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3,\"ha").unwrap();
        EventLog::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        // A log with no line ending at all is all torn; a whole log is left alone.
        std::fs::write(&path, "{\"n\":").unwrap();
        EventLog::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::write(&path, "{\"n\":1}\n").unwrap();
        EventLog::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
    }

    #[test]
    fn a_torn_tail_longer_than_a_read_chunk_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVENT_LOG_FILE);
        let torn = "x".repeat(3 * TAIL_CHUNK as usize + 17);
        std::fs::write(&path, format!("{{\"n\":1}}\n{torn}")).unwrap();
        EventLog::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
    }
}
