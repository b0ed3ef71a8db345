//! Renames and deletes, the file operations with consequences beyond the namespace: a
//! rename from a temporary name to a final one is when the upload becomes final (WinSCP
//! `.filepart`, `.part`, `.tmp`…), and deleting a cut upload's file gives up its kept parts.
//! Both also settle the user's quota.

use super::Files;
use crate::auth::{User, VirtualPath};
use crate::config::Permission;
use crate::namespace::{FsError, Renamed};
use crate::notify::{CompletedUpload, UPLOAD_COMPLETED, new_event_id};
use crate::protocol::Protocol;
use crate::upload::content_type_of;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

/// A rename asked for by a client.
#[derive(Debug, Clone)]
pub struct RenameRequest {
    /// The logged-in user.
    pub user: Arc<User>,
    /// The front-end.
    pub protocol: Protocol,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The old path.
    pub from: VirtualPath,
    /// The new path.
    pub to: VirtualPath,
}

impl Files {
    /// Renames a file server-side and reports what became final: a temporary upload renamed
    /// to a final name produces its completion (with the size and SHA-256 measured while it
    /// was uploaded); a final file renamed produces one for its new key when
    /// `upload.notify_on_rename` is set. The client hears success once that is queued.
    pub async fn rename(&self, req: RenameRequest) -> Result<(), FsError> {
        let cfg = self.pipeline.upload_config();
        self.pipeline
            .check_name(&req.user, req.to.file_name())
            .map_err(|e| FsError::Refused(e.to_string()))?;
        // A rename onto an existing file frees that file's share of the quota.
        let replaced = if req.user.has_quota() && cfg.overwrite && req.from != req.to {
            self.pipeline
                .storage()
                .head(&req.user.key_of(&req.to))
                .await?
                .map(|old| old.size)
        } else {
            None
        };
        let renamed = self
            .namespace
            .rename(&req.user, &req.from, &req.to, cfg.overwrite)
            .await?;
        if let Some(size) = replaced {
            self.pipeline.quotas().removed(&req.user, size).await;
        }
        if renamed.from_key == renamed.to_key {
            return Ok(());
        }
        let store = self.pipeline.temp_names();
        let temp = store.temp(renamed.from_key.clone()).await?;
        let from_temp = temp.is_some() || cfg.is_temp(req.from.file_name());
        if cfg.is_temp(req.to.file_name()) {
            // Still not final: the record follows the file.
            if let Some(mut record) = temp {
                record.key = renamed.to_key.clone();
                let _ = store.remove_temp(renamed.from_key.clone()).await;
                let _ = store.put_temp(record).await;
            }
            return Ok(());
        }
        if !from_temp && !cfg.notify_on_rename {
            return Ok(());
        }
        let (id, fields, sha256, content_type, started_at) = match temp {
            Some(r) => (
                r.id,
                r.fields,
                r.sha256,
                r.content_type,
                UNIX_EPOCH + Duration::from_millis(r.started_at_ms.max(0) as u64),
            ),
            None => (
                new_event_id(),
                serde_json::Map::new(),
                self.hash_object(&renamed).await?,
                content_type_of(req.to.file_name(), &[]),
                SystemTime::now(),
            ),
        };
        let completion = CompletedUpload {
            event: UPLOAD_COMPLETED,
            id,
            protocol: req.protocol,
            username: req.user.name.clone(),
            remote_addr: req.remote_addr.to_string(),
            path: req.to.to_string(),
            bucket: self.pipeline.storage().bucket().to_string(),
            key: renamed.to_key.clone(),
            size: renamed.size,
            etag: renamed.etag.clone(),
            sha256,
            content_type,
            started_at,
            completed_at: SystemTime::now(),
            metadata: req.user.metadata.clone(),
        };
        self.pipeline
            .notifier()
            .enqueue(completion.clone(), fields)
            .await
            .map_err(FsError::Unrecorded)?;
        let _ = store.remove_temp(renamed.from_key.clone()).await;
        tracing::info!(user = %req.user.name, from = %req.from, to = %req.to, key = %completion.key,
            size = completion.size, id = %completion.id, "renamed to a final name; completion queued");
        Ok(())
    }

    /// SHA-256 of an object read back from S3, for renamed files the bridge has no record of.
    async fn hash_object(&self, renamed: &Renamed) -> Result<String, FsError> {
        let mut reader = self.pipeline.storage().reader(&renamed.to_key, 0).await?;
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut chunk).await.map_err(FsError::ReadBack)?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// DELE / SFTP remove: a file, or the kept parts of a cut upload shown under its name.
    pub async fn delete(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        if let Some(record) = self.namespace.cut_upload(user, path).await {
            if !user.may(Permission::Delete) {
                return Err(FsError::PermissionDenied(Permission::Delete));
            }
            self.pipeline.delete_cut(&record).await;
            // An older complete object under the same name goes too, as the client expects.
            return match self.namespace.remove(user, path).await {
                Ok(size) => {
                    self.pipeline.quotas().removed(user, size).await;
                    Ok(())
                }
                Err(FsError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let size = self.namespace.remove(user, path).await?;
        self.pipeline.quotas().removed(user, size).await;
        Ok(())
    }
}
