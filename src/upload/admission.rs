//! Admission: whether an upload may start (permissions, names, shutdown, overwrite, quota,
//! the API's `create` step), refusals counted and audited, and a started upload set up.

use super::live::{LiveTransfer, TransferInfo};
use super::pipeline::{Pipeline, UploadRequest};
use super::transfer::Upload;
use super::{QuotaTicket, UploadError, resume};
use crate::audit::TransferRecord;
use crate::auth::{User, VirtualPath};
use crate::config::Permission;
use crate::metrics::GaugeGuard;
use crate::notify::{CreateError, NotifyError, new_event_id};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

impl Pipeline {
    /// Counts, logs and audits a refused upload.
    pub(super) fn refuse<T>(&self, req: &UploadRequest, e: UploadError) -> Result<T, UploadError> {
        let protocol = req.protocol;
        self.inner
            .metrics
            .uploads_total
            .with_label_values(&[protocol.as_str(), e.outcome().as_str()])
            .inc();
        tracing::warn!(user = %req.user.name, path = %req.path, error = %e, "upload refused");
        self.inner.metrics.audit.transfer(&TransferRecord {
            session: &req.session_id,
            protocol,
            user: &req.user.name,
            remote_addr: req.remote_addr,
            path: &req.path.to_string(),
            key: &req.user.key_of(&req.path),
            size: 0,
            sha256: None,
            duration: Duration::ZERO,
            outcome: e.outcome().as_str(),
            error: Some(e.to_string()),
        });
        Err(e)
    }

    /// Checks that `req` may upload at all.
    pub(super) fn admit(&self, req: &UploadRequest) -> Result<(), UploadError> {
        if !req.user.may(Permission::Upload) {
            return Err(UploadError::PermissionDenied);
        }
        if req.path.is_root() {
            return Err(UploadError::IsDirectory);
        }
        if self.inner.stop.is_cancelled() {
            return Err(UploadError::ShuttingDown);
        }
        if self.inner.draining.is_cancelled() {
            return Err(UploadError::Draining);
        }
        self.check_name(&req.user, req.path.file_name())
    }

    /// `allowed_extensions`, for an upload or a rename target. Temporary names pass: they
    /// are checked when renamed to their final name.
    pub(crate) fn check_name(&self, user: &User, name: &str) -> Result<(), UploadError> {
        if self.inner.upload.is_temp(name) || user.accepts_name(name) {
            return Ok(());
        }
        self.inner
            .metrics
            .limits_exceeded_total
            .with_label_values(&["allowed_extensions"])
            .inc();
        Err(UploadError::NameNotAccepted {
            name: name.to_string(),
            allowed: user.allowed_extensions.join(", "),
        })
    }

    /// Starts an upload after checking the user's permission and, with a connector that
    /// has a `create` step, asking the API (which may choose the object's key). A cut
    /// upload of the same key is discarded: the new one starts from byte 0.
    pub async fn begin(&self, req: UploadRequest) -> Result<Upload, UploadError> {
        if let Err(e) = self.admit(&req) {
            return self.refuse(&req, e);
        }
        let id = new_event_id();
        let mut key = req.user.key_of(&req.path);
        if !self.inner.upload.overwrite {
            match self.inner.storage.head(&key).await {
                Ok(Some(_)) => {
                    let path = req.path.to_string();
                    return self.refuse(&req, UploadError::Exists(path));
                }
                Ok(None) => {}
                Err(e) => return self.refuse(&req, e.into()),
            }
        }
        let quota = match self.reserve_quota(&req, &key, 0).await {
            Ok(quota) => quota,
            Err(e) => return self.refuse(&req, e),
        };
        let mut fields = serde_json::Map::new();
        if self.inner.notifier.has_create() {
            let ctx = self.create_context(&req, &id, &key);
            match self.inner.notifier.create(ctx).await {
                Ok(created) => {
                    fields = created.fields;
                    if let Some(path) = created.path {
                        match VirtualPath::parse(&path) {
                            Ok(p) if !p.is_root() => key = req.user.key_of(&p),
                            _ => {
                                return self.refuse(
                                    &req,
                                    UploadError::Refused(format!(
                                        "the ingest API chose an unusable path {path:?}"
                                    )),
                                );
                            }
                        }
                    }
                }
                Err(CreateError::Refused(message)) => {
                    return self.refuse(&req, UploadError::Refused(message));
                }
                Err(e @ CreateError::Unavailable(_)) => {
                    return self.refuse(
                        &req,
                        UploadError::Notify(NotifyError::Client(e.to_string())),
                    );
                }
            }
        }
        self.discard_cut(&key).await;
        Ok(self.start(req, key, id, fields, None, quota))
    }

    /// The user's quota hold for an upload of `key` continuing at `offset`.
    pub(super) async fn reserve_quota(
        &self,
        req: &UploadRequest,
        key: &str,
        offset: u64,
    ) -> Result<Option<QuotaTicket>, UploadError> {
        let reserved = self.inner.quotas.reserve(&req.user, key, offset).await;
        if let Err(UploadError::OverQuota(e)) = &reserved {
            self.inner
                .metrics
                .limits_exceeded_total
                .with_label_values(&[e.key()])
                .inc();
        }
        reserved
    }

    /// Registers and returns a new upload, fresh or continuing `resumed`.
    pub(super) fn start(
        &self,
        req: UploadRequest,
        key: String,
        id: String,
        fields: serde_json::Map<String, serde_json::Value>,
        resumed: Option<resume::Resumed>,
        quota: Option<QuotaTicket>,
    ) -> Upload {
        let protocol = req.protocol;
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        let started_at = resumed
            .as_ref()
            .map_or_else(SystemTime::now, |r| r.started_at);
        let registration = self.inner.running.register(LiveTransfer::new(
            TransferInfo {
                id: id.clone(),
                session_id: req.session_id.clone(),
                username: req.user.name.clone(),
                protocol,
                path: req.path.to_string(),
                key: key.clone(),
                remote_addr: req.remote_addr,
            },
            started_at,
            resumed.as_ref().map_or(0, |r| r.offset),
        ));
        let temp = self.inner.upload.is_temp(req.path.file_name());
        tracing::debug!(user = %req.user.name, path = %req.path, key = %key,
            resumed_from = resumed.as_ref().map_or(0, |r| r.offset), "upload started");
        let mut upload = Upload {
            _active_gauge: GaugeGuard::new(
                self.inner
                    .metrics
                    .uploads_active
                    .with_label_values(&[protocol.as_str()]),
            ),
            pipeline: self.inner.clone(),
            id,
            fields,
            key,
            req,
            started_at: SystemTime::now(),
            started: Instant::now(),
            hasher: Sha256::new(),
            size: 0,
            buffer: None,
            multipart: None,
            content_type: None,
            open: true,
            temp,
            commit_check: None,
            registration: Some(registration),
            quota,
        };
        if let Some(r) = resumed {
            upload.started_at = r.started_at;
            upload.hasher = r.hasher;
            upload.size = r.offset;
            upload.content_type = Some(r.content_type);
            upload.multipart = Some(r.multipart);
        }
        upload
    }

    /// What `create` templates see: everything known before the first byte.
    fn create_context(
        &self,
        req: &UploadRequest,
        id: &str,
        key: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut ctx = serde_json::Map::new();
        ctx.insert("event".into(), Value::from("upload.started"));
        ctx.insert("id".into(), Value::from(id));
        ctx.insert("protocol".into(), Value::from(req.protocol.as_str()));
        ctx.insert("username".into(), Value::from(req.user.name.as_str()));
        ctx.insert(
            "remote_addr".into(),
            Value::from(req.remote_addr.to_string()),
        );
        ctx.insert("path".into(), Value::from(req.path.to_string()));
        ctx.insert("bucket".into(), Value::from(self.inner.storage.bucket()));
        ctx.insert("key".into(), Value::from(key));
        ctx.insert("metadata".into(), Value::Object(req.user.metadata.clone()));
        ctx
    }
}
