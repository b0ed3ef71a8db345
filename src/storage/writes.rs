//! The write side of the S3 client: whole-object puts, multipart uploads (create, parts,
//! complete, abort, list) and server-side copies.

use super::{Storage, StorageError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

impl Storage {
    /// Server-side copy of a whole object: CopyObject, or UploadPartCopy in parallel ranges
    /// above `multipart_copy_threshold` (S3's single copy stops at 5 GiB). Returns the new
    /// object's ETag.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        content_type: Option<&str>,
    ) -> Result<String, StorageError> {
        let source = format!("{}/{}", self.bucket, encode_key(from));
        if size <= self.multipart_copy_threshold {
            let out = self
                .call(
                    "CopyObject",
                    self.client
                        .copy_object()
                        .bucket(&self.bucket)
                        .key(to)
                        .copy_source(source)
                        .send(),
                )
                .await?;
            return Ok(out
                .copy_object_result()
                .and_then(|r| r.e_tag())
                .unwrap_or_default()
                .to_string());
        }
        let upload_id = self.create_multipart(to, content_type).await?;
        let result = async {
            let step = self.copy_part_size;
            let ranges: Vec<(i32, u64, u64)> = (0..size.div_ceil(step))
                .map(|i| {
                    let start = i * step;
                    let end = (start + step).min(size) - 1;
                    (i as i32 + 1, start, end)
                })
                .collect();
            let copies = ranges.into_iter().map(|(number, start, end)| {
                let request = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send();
                async move {
                    let out = self.call("UploadPartCopy", request).await?;
                    let etag = out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .unwrap_or_default();
                    Ok::<_, StorageError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .e_tag(etag)
                            .build(),
                    )
                }
            });
            use futures::StreamExt;
            let mut parts: Vec<CompletedPart> = futures::stream::iter(copies)
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            parts.sort_by_key(|p| p.part_number());
            self.complete_multipart(to, &upload_id, parts).await
        }
        .await;
        if result.is_err() {
            let _ = self.abort_multipart(to, &upload_id).await;
        }
        result
    }

    /// PutObject of a whole small file; returns the ETag.
    pub async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<String, StorageError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .customize();
        if !self.sign_payload {
            request = request.disable_payload_signing();
        }
        let out = self.call("PutObject", request.send()).await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    /// CreateMultipartUpload; returns the upload id.
    pub async fn create_multipart(
        &self,
        key: &str,
        content_type: Option<&str>,
    ) -> Result<String, StorageError> {
        let out = self
            .call(
                "CreateMultipartUpload",
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .set_content_type(content_type.map(str::to_string))
                    .send(),
            )
            .await?;
        out.upload_id().map(str::to_string).ok_or(StorageError {
            operation: "CreateMultipartUpload",
            not_found: false,
            message: "the store returned no upload id".into(),
        })
    }

    /// UploadPart from an in-memory buffer (the SDK retries from it).
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let mut request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .customize();
        if !self.sign_payload {
            request = request.disable_payload_signing();
        }
        let out = self.call("UploadPart", request.send()).await?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_string))
            .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_string))
            .build())
    }

    /// CompleteMultipartUpload with parts in order; returns the ETag.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<String, StorageError> {
        let out = self
            .call(
                "CompleteMultipartUpload",
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send(),
            )
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    /// AbortMultipartUpload.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.call(
            "AbortMultipartUpload",
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send(),
        )
        .await
        .map(|_| ())
    }

    /// ListParts, every page: the parts S3 holds for an upload, in number order, each
    /// ready for CompleteMultipartUpload together with its size.
    pub async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<(CompletedPart, u64)>, StorageError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .call(
                    "ListParts",
                    self.client
                        .list_parts()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .set_part_number_marker(marker.take())
                        .send(),
                )
                .await?;
            for p in out.parts() {
                let Some(number) = p.part_number() else {
                    continue;
                };
                let part = CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(p.e_tag().map(str::to_string))
                    .set_checksum_crc32(p.checksum_crc32().map(str::to_string))
                    .set_checksum_crc32_c(p.checksum_crc32_c().map(str::to_string))
                    .set_checksum_crc64_nvme(p.checksum_crc64_nvme().map(str::to_string))
                    .build();
                parts.push((part, p.size().unwrap_or(0).max(0) as u64));
            }
            match (out.is_truncated(), out.next_part_number_marker()) {
                (Some(true), Some(next)) if !out.parts().is_empty() => {
                    marker = Some(next.to_string())
                }
                _ => break,
            }
        }
        parts.sort_by_key(|(p, _)| p.part_number());
        Ok(parts)
    }
}

/// URL-encodes a key for `x-amz-copy-source`, keeping "/".
fn encode_key(key: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(key, KEEP).to_string()
}
