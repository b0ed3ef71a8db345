//! `[storage]`: the S3 bucket and the upload pipeline's limits.

use super::{S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, Text, Validator, format_size};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::time::Duration;

/// `storage.endpoint` when unset.
pub const DEFAULT_ENDPOINT: &str = "embedded";
/// `storage.bucket` when unset.
pub const DEFAULT_BUCKET: &str = "ingest";
/// `storage.region` when unset.
pub const DEFAULT_REGION: &str = "us-east-1";
/// `storage.path_style` when unset.
pub const DEFAULT_PATH_STYLE: bool = true;
/// `storage.sign_payload` when unset.
pub const DEFAULT_SIGN_PAYLOAD: bool = false;
/// `storage.part_size` when unset.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// `storage.max_part_size` when unset.
pub const DEFAULT_MAX_PART_SIZE: u64 = 512 << 20;
/// `storage.upload_concurrency` when unset.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// `storage.memory_limit` when unset.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;
/// `storage.resume_window` when unset.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// `storage.copy_part_size` when unset.
pub const DEFAULT_COPY_PART_SIZE: u64 = 512 << 20;
/// `storage.multipart_copy_threshold` when unset: S3's `CopyObject` limit.
pub const DEFAULT_MULTIPART_COPY_THRESHOLD: u64 = S3_MAX_PART_SIZE;

/// `[storage]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawStorage {
    endpoint: Option<Text>,
    bucket: Option<Text>,
    region: Option<Text>,
    path_style: Option<bool>,
    sign_payload: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    part_size: Option<Text>,
    max_part_size: Option<Text>,
    upload_concurrency: Option<Spanned<i64>>,
    memory_limit: Option<Text>,
    resume_window: Option<Text>,
    copy_part_size: Option<Text>,
    multipart_copy_threshold: Option<Text>,
}

/// Where the S3 API lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An in-process s3s-fs store under `data_dir`.
    Embedded,
    /// The default AWS endpoint for the region.
    Aws,
    /// Any S3-compatible URL.
    Url(String),
}

/// `[storage]`: the S3 bucket and the upload pipeline's limits.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// S3 endpoint.
    pub endpoint: Endpoint,
    /// Bucket every object goes to.
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Path-style addressing (MinIO, s3s) instead of virtual hosts.
    pub path_style: bool,
    /// Sign each part's SHA-256 into SigV4 (`x-amz-content-sha256`) instead of sending
    /// `UNSIGNED-PAYLOAD`; the CRC32 checksum guards the bytes either way.
    pub sign_payload: bool,
    /// Static access key; empty means the AWS default credential chain.
    pub access_key_id: String,
    /// Static secret key.
    pub secret_access_key: String,
    /// First part size.
    pub part_size: u64,
    /// Part sizes grow up to this.
    pub max_part_size: u64,
    /// Parts in flight (and buffered) per upload.
    pub upload_concurrency: usize,
    /// All upload buffers together.
    pub memory_limit: u64,
    /// How long a cut upload's stored parts wait for the client to resume; zero aborts
    /// cut uploads at once.
    pub resume_window: Duration,
    /// Range size of each UploadPartCopy when a rename copies a large object.
    pub copy_part_size: u64,
    /// Objects above this are copied in parallel UploadPartCopy ranges instead of one
    /// CopyObject (S3 allows CopyObject up to 5 GiB).
    pub multipart_copy_threshold: u64,
}

impl Validator<'_> {
    /// `[storage]`.
    pub(super) fn storage(&mut self, raw: RawStorage) -> StorageConfig {
        let (endpoint_text, endpoint_at) = Self::text(raw.endpoint, DEFAULT_ENDPOINT);
        let endpoint = match endpoint_text.as_str() {
            "embedded" => Endpoint::Embedded,
            "" | "aws" => Endpoint::Aws,
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Endpoint::Url(url.trim_end_matches('/').to_string())
            }
            other => {
                self.problem(
                    "storage.endpoint",
                    endpoint_at.as_ref(),
                    format!("{other:?} is neither \"embedded\", \"aws\" nor an http(s):// URL"),
                );
                Endpoint::Embedded
            }
        };
        let (bucket, bucket_at) = Self::text(raw.bucket, DEFAULT_BUCKET);
        if !valid_bucket_name(&bucket) {
            self.problem(
                "storage.bucket",
                bucket_at.as_ref(),
                format!(
                    "{bucket:?} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')"
                ),
            );
        }
        let part_at = raw.part_size.clone();
        let part_size = self.size("storage.part_size", raw.part_size, DEFAULT_PART_SIZE);
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&part_size) {
            self.problem(
                "storage.part_size",
                part_at.as_ref(),
                "S3 parts must be between 5MiB and 5GiB",
            );
        }
        let max_at = raw.max_part_size.clone();
        let max_part_size = self.size(
            "storage.max_part_size",
            raw.max_part_size,
            DEFAULT_MAX_PART_SIZE,
        );
        if max_part_size > S3_MAX_PART_SIZE || max_part_size < part_size {
            self.problem(
                "storage.max_part_size",
                max_at.as_ref(),
                format!(
                    "must be between part_size ({}) and 5GiB",
                    format_size(part_size)
                ),
            );
        }
        let upload_concurrency = self.count(
            "storage.upload_concurrency",
            raw.upload_concurrency,
            1..=64,
            DEFAULT_UPLOAD_CONCURRENCY as i64,
        ) as usize;
        let memory_at = raw.memory_limit.clone();
        let memory_limit = self.size(
            "storage.memory_limit",
            raw.memory_limit,
            DEFAULT_MEMORY_LIMIT,
        );
        if memory_limit < 2 * part_size {
            self.problem(
                "storage.memory_limit",
                memory_at.as_ref(),
                format!(
                    "must hold at least two parts (2 × part_size = {}) so that every upload can progress",
                    format_size(2 * part_size)
                ),
            );
        }
        let access_key_id = raw.access_key_id.unwrap_or_default();
        let secret_access_key = raw.secret_access_key.unwrap_or_default();
        if access_key_id.is_empty() != secret_access_key.is_empty() {
            self.problem(
                "storage.secret_access_key",
                None,
                "set both access_key_id and secret_access_key, or neither (to use the AWS default credential chain)",
            );
        }
        let resume_window = self.duration(
            "storage.resume_window",
            raw.resume_window,
            DEFAULT_RESUME_WINDOW,
        );
        let copy_at = raw.copy_part_size.clone();
        let copy_part_size = self.size(
            "storage.copy_part_size",
            raw.copy_part_size,
            DEFAULT_COPY_PART_SIZE,
        );
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&copy_part_size) {
            self.problem(
                "storage.copy_part_size",
                copy_at.as_ref(),
                "copy ranges are parts: between 5MiB and 5GiB",
            );
        }
        let threshold_at = raw.multipart_copy_threshold.clone();
        let multipart_copy_threshold = self.size(
            "storage.multipart_copy_threshold",
            raw.multipart_copy_threshold,
            DEFAULT_MULTIPART_COPY_THRESHOLD,
        );
        if multipart_copy_threshold > S3_MAX_PART_SIZE {
            self.problem(
                "storage.multipart_copy_threshold",
                threshold_at.as_ref(),
                "S3's CopyObject stops at 5GiB: write at most \"5GiB\"",
            );
        }
        StorageConfig {
            resume_window,
            copy_part_size,
            multipart_copy_threshold,
            endpoint,
            bucket,
            region: Self::text(raw.region, DEFAULT_REGION).0,
            path_style: raw.path_style.unwrap_or(DEFAULT_PATH_STYLE),
            sign_payload: raw.sign_payload.unwrap_or(DEFAULT_SIGN_PAYLOAD),
            access_key_id,
            secret_access_key,
            part_size,
            max_part_size,
            upload_concurrency,
            memory_limit,
        }
    }
}

/// S3's bucket naming rules (the subset every S3-compatible store accepts).
fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn defaults_are_the_named_constants() {
        let c = parse("").expect("valid").storage;
        assert_eq!(c.endpoint, Endpoint::Embedded);
        assert_eq!(c.bucket, DEFAULT_BUCKET);
        assert_eq!(c.region, DEFAULT_REGION);
        assert_eq!(c.path_style, DEFAULT_PATH_STYLE);
        assert_eq!(c.part_size, DEFAULT_PART_SIZE);
        assert_eq!(c.max_part_size, DEFAULT_MAX_PART_SIZE);
        assert_eq!(c.upload_concurrency, DEFAULT_UPLOAD_CONCURRENCY);
        assert_eq!(c.memory_limit, DEFAULT_MEMORY_LIMIT);
        assert_eq!(c.resume_window, DEFAULT_RESUME_WINDOW);
        assert_eq!(c.copy_part_size, DEFAULT_COPY_PART_SIZE);
        assert_eq!(c.multipart_copy_threshold, DEFAULT_MULTIPART_COPY_THRESHOLD);
        assert!(c.access_key_id.is_empty() && c.secret_access_key.is_empty());
    }

    #[test]
    fn endpoints_and_bucket_names_are_checked() {
        let c = parse("[storage]\nendpoint = \"https://s3.example.com/\"\n").expect("valid");
        assert_eq!(
            c.storage.endpoint,
            Endpoint::Url("https://s3.example.com".into())
        );
        assert_eq!(
            parse("[storage]\nendpoint = \"aws\"\n")
                .expect("valid")
                .storage
                .endpoint,
            Endpoint::Aws
        );
        let err = parse("[storage]\nendpoint = \"s3\"\nbucket = \"Media\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("storage.endpoint (line 2)") && err.contains("storage.bucket (line 3)"),
            "{err}"
        );
    }

    #[test]
    fn budget_must_hold_two_parts() {
        let err = parse("[storage]\npart_size = \"8MiB\"\nmemory_limit = \"10MiB\"\n").unwrap_err();
        assert!(err.to_string().contains("storage.memory_limit"), "{err}");
    }

    #[test]
    fn payload_signing_is_off_unless_asked() {
        assert!(!parse("").expect("valid").storage.sign_payload);
        let c = parse("[storage]\nsign_payload = true\n").expect("valid");
        assert!(c.storage.sign_payload);
    }

    #[test]
    fn keys_come_in_pairs() {
        let err = parse("[storage]\naccess_key_id = \"AKIA\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.secret_access_key: set both"), "{err}");
    }
}
