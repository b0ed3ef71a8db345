//! The only code that talks to S3: one client, every request measured. The upload pipeline
//! uses its write calls (`writes`: puts, multipart, copies); front-ends reach the read calls
//! (list, stat, get as an [`ObjectReader`], delete) through [`crate::files::Files`], which
//! goes through [`crate::upload::Pipeline`] and [`crate::namespace::Namespace`].

pub mod embedded;
mod reader;
mod writes;

pub use reader::ObjectReader;

use crate::config::{Endpoint, StorageConfig};
use crate::metrics::Metrics;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

/// What went wrong with an S3 request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("S3 {operation} failed: {message}")]
pub struct StorageError {
    /// The S3 operation, e.g. "UploadPart".
    pub operation: &'static str,
    /// Whether the object or upload did not exist.
    pub not_found: bool,
    /// The store's or the transport's message.
    pub message: String,
}

/// An object's listing entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the listed prefix (a file name).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// One directory level: the objects and the common prefixes under a prefix.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Objects directly under the prefix.
    pub files: Vec<ObjectInfo>,
    /// Sub-prefixes, as names without the trailing "/".
    pub dirs: Vec<String>,
}

/// The S3 bucket, with metrics on every request.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    bucket: String,
    /// See `StorageConfig::sign_payload`.
    sign_payload: bool,
    /// See `StorageConfig::copy_part_size`.
    copy_part_size: u64,
    /// See `StorageConfig::multipart_copy_threshold`.
    multipart_copy_threshold: u64,
    metrics: MetricsHandle,
}

/// `Metrics` without a Debug bound.
#[derive(Clone)]
struct MetricsHandle(Metrics);

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Credentials and address for a store, resolved from config (and the embedded store).
#[derive(Debug, Clone)]
pub struct Connection {
    /// `None` for AWS's default endpoint.
    pub endpoint_url: Option<String>,
    /// Static key pair, or `None` for the default credential chain.
    pub credentials: Option<(String, String)>,
}

impl Connection {
    /// The connection config describes (not for `Endpoint::Embedded`, whose address is only
    /// known once it runs).
    pub fn from_config(cfg: &StorageConfig) -> Connection {
        Connection {
            endpoint_url: match &cfg.endpoint {
                Endpoint::Url(u) => Some(u.clone()),
                Endpoint::Aws | Endpoint::Embedded => None,
            },
            credentials: (!cfg.access_key_id.is_empty())
                .then(|| (cfg.access_key_id.clone(), cfg.secret_access_key.clone())),
        }
    }
}

/// Counts the SDK's retries per operation (`s3_retries_total`): every attempt after the first.
#[derive(Debug)]
struct RetryCounter(prometheus::IntCounterVec);

impl aws_sdk_s3::config::Intercept for RetryCounter {
    fn name(&self) -> &'static str {
        "ingest-bridge retry counter"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        use aws_smithy_runtime_api::client::orchestrator::Metadata;
        use aws_smithy_runtime_api::client::retries::RequestAttempts;
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|a| a.attempts() > 1)
        {
            let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
            self.0.with_label_values(&[operation]).inc();
        }
        Ok(())
    }
}

impl Storage {
    /// Builds the client; does not contact the store (see [`Storage::check_bucket`]).
    pub async fn connect(cfg: &StorageConfig, conn: &Connection, metrics: Metrics) -> Storage {
        use aws_config::{BehaviorVersion, Region, timeout::TimeoutConfig};
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some((ak, sk)) = &conn.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                ak.clone(),
                sk.clone(),
                None,
                None,
                "ingest-bridge-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(url) = &conn.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        builder = builder.interceptor(RetryCounter(metrics.s3_retries_total.clone()));
        Storage {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            sign_payload: cfg.sign_payload,
            copy_part_size: cfg.copy_part_size.max(1),
            multipart_copy_threshold: cfg.multipart_copy_threshold,
            metrics: MetricsHandle(metrics),
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Runs one SDK call, recording its result and latency.
    async fn call<T, E>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, StorageError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let result = request.await;
        self.metrics
            .0
            .observe_s3(operation, result.is_ok(), started);
        result.map_err(|err| {
            let not_found = match &err {
                SdkError::ServiceError(e) => {
                    matches!(
                        e.err().code(),
                        Some("NoSuchKey" | "NotFound" | "NoSuchUpload" | "NoSuchBucket")
                    ) || e.raw().status().as_u16() == 404
                }
                _ => false,
            };
            let message = match err.code() {
                Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
                None => DisplayErrorContext(&err).to_string(),
            };
            StorageError {
                operation,
                not_found,
                message,
            }
        })
    }

    /// HeadBucket: is the bucket there and are we allowed in?
    pub async fn check_bucket(&self) -> Result<(), StorageError> {
        self.call(
            "HeadBucket",
            self.client.head_bucket().bucket(&self.bucket).send(),
        )
        .await
        .map(|_| ())
    }

    /// HeadObject: size and time of one object, `None` when absent.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let result = self
            .call(
                "HeadObject",
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send(),
            )
            .await;
        match result {
            Ok(out) => Ok(Some(ObjectInfo {
                name: key.rsplit('/').next().unwrap_or(key).to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                modified: out
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Err(e) if e.not_found => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether any object's key starts with `prefix`.
    pub async fn has_objects_under(&self, prefix: &str) -> Result<bool, StorageError> {
        let out = self
            .call(
                "ListObjectsV2",
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .max_keys(1)
                    .send(),
            )
            .await?;
        Ok(out.key_count().unwrap_or(0) > 0
            || !out.contents().is_empty()
            || !out.common_prefixes().is_empty())
    }

    /// One ListObjectsV2 page (up to 1,000 names) of the directory level under `prefix`
    /// (which ends in "/" or is empty), and the token of the next page if there is one.
    pub async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> Result<(Listing, Option<String>), StorageError> {
        let out = self
            .call(
                "ListObjectsV2",
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .delimiter("/")
                    .set_continuation_token(token)
                    .send(),
            )
            .await?;
        let mut page = Listing::default();
        for obj in out.contents() {
            let Some(name) = obj.key().and_then(|k| k.strip_prefix(prefix)) else {
                continue;
            };
            // "dir/" marker objects written by other tools are directories, not files.
            if name.is_empty() || name.ends_with('/') {
                continue;
            }
            page.files.push(ObjectInfo {
                name: name.to_string(),
                size: obj.size().unwrap_or(0).max(0) as u64,
                modified: obj
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        for cp in out.common_prefixes() {
            if let Some(name) = cp.prefix().and_then(|p| p.strip_prefix(prefix)) {
                let name = name.trim_end_matches('/');
                if !name.is_empty() {
                    page.dirs.push(name.to_string());
                }
            }
        }
        let next = match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => Some(t.to_string()),
            _ => None,
        };
        Ok((page, next))
    }

    /// Bytes and files stored under `prefix` at every depth (directory markers excluded):
    /// what a user's quota starts from.
    pub async fn usage_under(&self, prefix: &str) -> Result<(u64, u64), StorageError> {
        let (mut bytes, mut files) = (0u64, 0u64);
        let mut token = None;
        loop {
            let out = self
                .call(
                    "ListObjectsV2",
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(prefix)
                        .set_continuation_token(token)
                        .send(),
                )
                .await?;
            for obj in out.contents() {
                if obj.key().is_some_and(|k| !k.ends_with('/')) {
                    bytes += obj.size().unwrap_or(0).max(0) as u64;
                    files += 1;
                }
            }
            token = match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => Some(t.to_string()),
                _ => return Ok((bytes, files)),
            };
        }
    }

    /// GetObject from `offset` to the end.
    pub async fn get(&self, key: &str, offset: u64) -> Result<ByteStream, StorageError> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if offset > 0 {
            request = request.range(format!("bytes={offset}-"));
        }
        Ok(self.call("GetObject", request.send()).await?.body)
    }

    /// GetObject from `offset` to the end, as a reader of our own type (front-ends and
    /// the namespace never name the SDK's stream).
    pub async fn reader(&self, key: &str, offset: u64) -> Result<ObjectReader, StorageError> {
        self.get(key, offset).await.map(ObjectReader::new)
    }

    /// GetObject of `length` bytes from `offset` (a ranged GET; `length` > 0).
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        let last = offset + length.max(1) - 1;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={offset}-{last}"));
        Ok(self.call("GetObject", request.send()).await?.body)
    }

    /// A presigned GET URL for `key`, valid for `ttl` (signed locally; no request is made).
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StorageError> {
        let fail = |message: String| StorageError {
            operation: "PresignGetObject",
            not_found: false,
            message,
        };
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| fail(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| fail(DisplayErrorContext(&e).to_string()))?;
        Ok(request.uri().to_string())
    }

    /// DeleteObject.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.call(
            "DeleteObject",
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send(),
        )
        .await
        .map(|_| ())
    }
}
