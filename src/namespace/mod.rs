//! The file-system view every front-end shows: S3 objects as files, common prefixes as
//! directories, confined to the user's home and checked against the user's permissions.
//!
//! S3 has no empty directories, yet clients (curl `--ftp-create-dirs`, GUI clients) make a
//! directory and enter it at once. Directories made here are remembered in the state store
//! ([`DirStore`]: SQLite files, or the PostgreSQL database every replica shares) until they
//! are removed, so they can be entered, listed and removed from any replica, before and
//! after files land in them, and they survive a restart.
//!
//! An upload that was cut and can be resumed shows to its owner as a file of the length
//! that is safely stored (SIZE, LIST, stat), so resuming clients continue from there.

use crate::auth::{PathError, User, VirtualPath};
use crate::config::Permission;
use crate::notify::NotifyError;
use crate::state::{CutUploadStore, DirStore, PartialRecord, StateError, Stores, TempNameStore};
use crate::storage::{Listing, ObjectInfo, ObjectReader, Storage, StorageError};
use crate::upload::{NOT_RECORDED, SERVER_FAULT, STORAGE_UNAVAILABLE};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

/// A file or directory as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Base name ("" for home).
    pub name: String,
    /// Directory or file.
    pub is_dir: bool,
    /// Bytes (0 for directories).
    pub size: u64,
    /// Last modification (the epoch for directories).
    pub modified: SystemTime,
}

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file or directory.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// The user lacks a permission.
    #[error("permission denied: user may not {0}")]
    PermissionDenied(Permission),
    /// The path is not acceptable.
    #[error(transparent)]
    Path(#[from] PathError),
    /// RMD of a directory with files.
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    /// The target exists and `upload.overwrite` is false.
    #[error("{0} exists and this server does not replace files (upload.overwrite = false)")]
    Exists(String),
    /// MKD of a directory that exists.
    #[error("directory {0} already exists")]
    DirectoryExists(String),
    /// A file operation on a directory, or the reverse.
    #[error("{0} is a directory")]
    IsDirectory(String),
    /// Not supported on S3.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// S3 failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A limit or policy refuses the operation; the message says which.
    #[error("{0}")]
    Refused(String),
    /// The operation happened but its completion could not be recorded (event log or
    /// outbox).
    #[error("the rename happened but its completion could not be queued: {0}")]
    Unrecorded(#[source] NotifyError),
    /// The record of temporary names could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// An object read back (to hash it) broke off.
    #[error("reading the renamed file back failed: {0}")]
    ReadBack(#[source] std::io::Error),
}

impl FsError {
    /// The reason to show the client: server faults (S3, the outbox, internal) become a
    /// short sentence, because their details name hosts, paths and library words.
    pub fn client_message(&self) -> String {
        match self {
            FsError::Storage(e) if !e.not_found => STORAGE_UNAVAILABLE.into(),
            FsError::Unrecorded(_) => NOT_RECORDED.into(),
            FsError::State(_) | FsError::ReadBack(_) => SERVER_FAULT.into(),
            other => other.to_string(),
        }
    }

    /// Whether [`FsError::client_message`] holds details back (they belong in the log).
    pub fn is_server_fault(&self) -> bool {
        self.client_message() != self.to_string()
    }
}

/// Files and directories on S3, for every front-end (through [`crate::files::Files`]).
#[derive(Debug)]
pub struct Namespace {
    storage: Storage,
    /// Cut uploads, shown to their owners.
    partials: Arc<dyn CutUploadStore>,
    /// Finished temporary uploads, forgotten when their file is deleted.
    temp_names: Arc<dyn TempNameStore>,
    /// Directories created by clients ("home/dir/"), which S3 cannot show while empty.
    dirs: Arc<dyn DirStore>,
}

fn require(user: &User, permission: Permission) -> Result<(), FsError> {
    if user.may(permission) {
        Ok(())
    } else {
        Err(FsError::PermissionDenied(permission))
    }
}

impl Namespace {
    /// A namespace over `storage`, showing the cut uploads kept in `stores`.
    pub fn new(storage: Storage, stores: &Stores) -> Namespace {
        Namespace {
            storage,
            partials: stores.uploads.clone(),
            temp_names: stores.temp_names.clone(),
            dirs: stores.dirs.clone(),
        }
    }

    /// Made directories whose parent is `parent_prefix`, as names: one store query. A
    /// store that cannot answer lists none (as with cut uploads): what S3 holds still lists.
    async fn made_children(&self, parent_prefix: &str) -> Vec<String> {
        match self.dirs.dirs_in(parent_prefix.to_string()).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up made directories");
                Vec::new()
            }
        }
    }

    /// Whether `path` is a directory: home, a common prefix, or made by a client.
    pub async fn is_dir(&self, user: &User, path: &VirtualPath) -> Result<bool, FsError> {
        if path.is_root() {
            return Ok(true);
        }
        let prefix = format!("{}{}", user.home, path.dir_prefix());
        // Asked together: a made directory answers from the store, others from S3.
        let (made, objects) = tokio::join!(
            self.dirs.has_dir(prefix.clone()),
            self.storage.has_objects_under(&prefix)
        );
        // Objects under it answer even when the store cannot.
        if objects? {
            return Ok(true);
        }
        Ok(made?)
    }

    /// The cut upload of `path` its owner may resume, if one is kept.
    pub async fn cut_upload(&self, user: &User, path: &VirtualPath) -> Option<PartialRecord> {
        if path.is_root() {
            return None;
        }
        match self.partials.get(user.key_of(path)).await {
            Ok(Some(r)) if !r.active && r.username == user.name => Some(r),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up kept uploads");
                None
            }
        }
    }

    /// STAT: a file or a directory; a cut upload shows its owner the bytes kept.
    pub async fn stat(&self, user: &User, path: &VirtualPath) -> Result<Entry, FsError> {
        if path.is_root() {
            return Ok(dir_entry(""));
        }
        if let Some(cut) = self.cut_upload(user, path).await {
            return Ok(cut_entry(path.file_name(), &cut));
        }
        // Asked together: some stores fail HeadObject on a key that is also a prefix.
        let key = user.key_of(path);
        let (file, dir) = tokio::join!(self.storage.head(&key), self.is_dir(user, path));
        match (file, dir) {
            (Ok(Some(info)), _) => Ok(file_entry(path.file_name(), &info)),
            (_, Ok(true)) => Ok(dir_entry(path.file_name())),
            (Err(e), _) => Err(e.into()),
            (Ok(None), Err(e)) => Err(e),
            (Ok(None), Ok(false)) => Err(FsError::NotFound(path.to_string())),
        }
    }

    /// LIST: the entries of a directory (or the file itself, as `ls file` expects); a
    /// directory that does not exist lists empty.
    pub async fn list(&self, user: &User, path: &VirtualPath) -> Result<Vec<Entry>, FsError> {
        let mut pages = self.open_dir(user, path).await?;
        let mut entries = Vec::new();
        while let Some(page) = pages.next_page().await? {
            entries.extend(page);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// A directory read one ListObjectsV2 page at a time, for clients that read listings
    /// incrementally (SFTP READDIR): a directory of 100,000 objects never sits in memory
    /// whole, and no single request waits for every page.
    pub async fn open_dir(&self, user: &User, path: &VirtualPath) -> Result<DirPages, FsError> {
        require(user, Permission::List)?;
        let prefix = format!("{}{}", user.home, path.dir_prefix());
        let (page, made) = tokio::join!(
            self.storage.list_page(&prefix, None),
            self.made_children(&prefix)
        );
        let (listing, next) = page?;
        if next.is_none()
            && listing.files.is_empty()
            && listing.dirs.is_empty()
            && made.is_empty()
            && !path.is_root()
            && let Some(info) = self.storage.head(&user.key_of(path)).await?
        {
            // `ls file`: show the file alone. A prefix without objects is an empty directory,
            // as S3 sees it (rclone lists a destination before creating it).
            return Ok(DirPages {
                storage: self.storage.clone(),
                prefix,
                next: None,
                first: Some(vec![file_entry(path.file_name(), &info)]),
                made: HashSet::new(),
            });
        }
        let mut first: Vec<Entry> = made.iter().map(|d| dir_entry(d)).collect();
        let made: HashSet<String> = made.into_iter().collect();
        first.extend(page_entries(listing, &made));
        // Cut uploads are listed once, in the first page, with the bytes kept.
        let cut = self
            .partials
            .cut_under(prefix.clone(), user.name.clone())
            .await
            .unwrap_or_default();
        for record in &cut {
            let Some(name) = record.key.strip_prefix(prefix.as_str()) else {
                continue;
            };
            first.retain(|e| e.is_dir || e.name != name);
            first.push(cut_entry(name, record));
        }
        first.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(DirPages {
            storage: self.storage.clone(),
            prefix,
            next,
            first: Some(first),
            made,
        })
    }

    /// CWD: succeeds for directories only.
    pub async fn enter(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        if self.is_dir(user, path).await? {
            Ok(())
        } else {
            Err(FsError::NotFound(path.to_string()))
        }
    }

    /// MKD: remembered in the state store until removed.
    pub async fn mkdir(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        require(user, Permission::Mkdir)?;
        if path.is_root() {
            return Err(FsError::Unsupported("the home directory always exists"));
        }
        if !self.is_dir(user, &path.parent()).await? {
            return Err(FsError::NotFound(path.parent().to_string()));
        }
        // Asked first: some stores answer HEAD of a directory's name with an error.
        if self.is_dir(user, path).await? {
            return Err(FsError::DirectoryExists(path.to_string()));
        }
        if self.storage.head(&user.key_of(path)).await?.is_some() {
            return Err(FsError::Unsupported("a file with that name exists"));
        }
        let prefix = format!("{}{}", user.home, path.dir_prefix());
        self.dirs.add_dir(prefix).await?;
        Ok(())
    }

    /// RMD: only empty directories.
    pub async fn rmdir(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        require(user, Permission::Mkdir)?;
        if path.is_root() {
            return Err(FsError::Unsupported("the home directory cannot be removed"));
        }
        let prefix = format!("{}{}", user.home, path.dir_prefix());
        if self.storage.has_objects_under(&prefix).await? {
            return Err(FsError::NotEmpty(path.to_string()));
        }
        if self.dirs.remove_dirs(prefix).await? {
            Ok(())
        } else {
            Err(FsError::NotFound(path.to_string()))
        }
    }

    /// DELE: a file; returns its size. Deleting a cut upload's file also gives up its kept
    /// parts: [`crate::files::Files::delete`] does both.
    pub async fn remove(&self, user: &User, path: &VirtualPath) -> Result<u64, FsError> {
        require(user, Permission::Delete)?;
        let key = user.key_of(path);
        if let Err(e) = self.temp_names.remove_temp(key.clone()).await {
            tracing::warn!(key, error = %e, "cannot forget a temporary upload");
        }
        let info = match self.storage.head(&key).await? {
            Some(info) if !path.is_root() => info,
            _ => return Err(FsError::NotFound(path.to_string())),
        };
        self.storage.delete(&key).await?;
        Ok(info.size)
    }

    /// RNFR/RNTO: server-side copy, then delete of the source. Files only. With
    /// `overwrite` false an existing target is refused. Returns the new object.
    pub async fn rename(
        &self,
        user: &User,
        from: &VirtualPath,
        to: &VirtualPath,
        overwrite: bool,
    ) -> Result<Renamed, FsError> {
        require(user, Permission::Rename)?;
        let (from_key, to_key) = (user.key_of(from), user.key_of(to));
        let Some(info) = self.storage.head(&from_key).await? else {
            return if self.is_dir(user, from).await? {
                Err(FsError::Unsupported(
                    "renaming directories (S3 has no directories to rename)",
                ))
            } else {
                Err(FsError::NotFound(from.to_string()))
            };
        };
        if to.is_root() || self.is_dir(user, to).await? {
            return Err(FsError::IsDirectory(to.to_string()));
        }
        let renamed = |etag: String| Renamed {
            from_key: from_key.clone(),
            to_key: to_key.clone(),
            size: info.size,
            etag,
        };
        if from_key == to_key {
            return Ok(renamed(String::new()));
        }
        if !overwrite && self.storage.head(&to_key).await?.is_some() {
            return Err(FsError::Exists(to.to_string()));
        }
        let etag = self
            .storage
            .copy(&from_key, &to_key, info.size, None)
            .await?;
        self.storage.delete(&from_key).await?;
        Ok(renamed(etag))
    }

    /// RETR: the object's bytes from `offset`.
    pub async fn read(
        &self,
        user: &User,
        path: &VirtualPath,
        offset: u64,
    ) -> Result<ObjectReader, FsError> {
        require(user, Permission::Download)?;
        if path.is_root() {
            return Err(FsError::IsDirectory(path.to_string()));
        }
        self.storage
            .reader(&user.key_of(path), offset)
            .await
            .map_err(|e| {
                if e.not_found {
                    FsError::NotFound(path.to_string())
                } else {
                    FsError::Storage(e)
                }
            })
    }
}

/// What a rename did.
#[derive(Debug, Clone)]
pub struct Renamed {
    /// The old key.
    pub from_key: String,
    /// The new key.
    pub to_key: String,
    /// Bytes.
    pub size: u64,
    /// The new object's ETag (empty when nothing moved).
    pub etag: String,
}

/// A page's entries in name order, leaving out directories already shown as made ones.
fn page_entries(listing: Listing, made: &HashSet<String>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = listing
        .dirs
        .iter()
        .filter(|d| !made.contains(*d))
        .map(|d| dir_entry(d))
        .collect();
    entries.extend(listing.files.iter().map(|f| file_entry(&f.name, f)));
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// A directory listing fetched page by page; see [`Namespace::open_dir`].
#[derive(Debug)]
pub struct DirPages {
    storage: Storage,
    prefix: String,
    /// Continuation token of the next page; `None` once the last page was fetched.
    next: Option<String>,
    /// The page fetched by `open_dir`, not yet handed out.
    first: Option<Vec<Entry>>,
    /// Directories made by clients, shown in the first page.
    made: HashSet<String>,
}

impl DirPages {
    /// The next page of entries (possibly empty), or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Entry>>, FsError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        let Some(token) = self.next.take() else {
            return Ok(None);
        };
        let (listing, next) = self.storage.list_page(&self.prefix, Some(token)).await?;
        self.next = next;
        Ok(Some(page_entries(listing, &self.made)))
    }
}

fn file_entry(name: &str, info: &ObjectInfo) -> Entry {
    Entry {
        name: name.to_string(),
        is_dir: false,
        size: info.size,
        modified: info.modified,
    }
}

fn cut_entry(name: &str, record: &PartialRecord) -> Entry {
    Entry {
        name: name.to_string(),
        is_dir: false,
        size: record.durable_bytes,
        modified: std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(record.updated_ms.max(0) as u64),
    }
}

fn dir_entry(name: &str) -> Entry {
    Entry {
        name: name.to_string(),
        is_dir: true,
        size: 0,
        modified: SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_are_told_without_details() {
        let e = FsError::Unrecorded(NotifyError::Outbox(StateError::backend(
            "outbox",
            "/data/outbox.sqlite3",
            "disk full",
        )));
        assert_eq!(e.client_message(), NOT_RECORDED);
        assert!(e.is_server_fault());
        let e = FsError::NotFound("/a.bin".into());
        assert_eq!(e.client_message(), e.to_string());
        assert!(!e.is_server_fault());
    }
}
