//! The benchmark's baseline: a direct multipart upload of a file into an S3 server with
//! aws-sdk-s3 (same part size and concurrency as the bridge's defaults), timed.
//!
//! Usage: direct-upload ENDPOINT BUCKET KEY FILE [PART_MIB] [CONCURRENCY]
//! Credentials: EMBEDDED_STORE_ACCESS_KEY / EMBEDDED_STORE_SECRET_KEY (or the bench defaults).

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::time::Instant;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err(
            "usage: direct-upload ENDPOINT BUCKET KEY FILE [PART_MIB] [CONCURRENCY]".into(),
        );
    }
    let (endpoint, bucket, key, file) = (&args[1], &args[2], &args[3], &args[4]);
    let part: usize = args.get(5).map_or(Ok(16), |s| s.parse())? << 20;
    let concurrency: usize = args.get(6).map_or(Ok(4), |s| s.parse())?;
    let ak = std::env::var("EMBEDDED_STORE_ACCESS_KEY").unwrap_or_else(|_| "ingest-bridge".into());
    let sk = std::env::var("EMBEDDED_STORE_SECRET_KEY")
        .unwrap_or_else(|_| "ingest-bridge-secret".into());
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            ak, sk, None, None, "bench",
        ))
        .build();
    let client = aws_sdk_s3::Client::from_conf(conf);

    let started = Instant::now();
    let mut input = tokio::fs::File::open(file).await?;
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await?;
    let upload_id = upload.upload_id().ok_or("no upload id")?.to_string();
    let mut number = 0;
    let mut total = 0u64;
    let mut parts = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let mut buf = Vec::with_capacity(part);
        (&mut input).take(part as u64).read_to_end(&mut buf).await?;
        if buf.is_empty() {
            break;
        }
        number += 1;
        total += buf.len() as u64;
        let request = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(buf))
            .customize()
            .disable_payload_signing() // as the bridge does by default (storage.sign_payload)
            .send();
        let n = number;
        in_flight.spawn(async move {
            request
                .await
                .map(|out| (n, out.e_tag().unwrap_or_default().to_string()))
        });
        if in_flight.len() >= concurrency
            && let Some(done) = in_flight.join_next().await
        {
            let (n, etag) = done??;
            parts.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
        }
    }
    while let Some(done) = in_flight.join_next().await {
        let (n, etag) = done??;
        parts.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
    }
    parts.sort_by_key(|p| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bytes={total} seconds={secs:.3} mib_per_s={:.1}",
        total as f64 / secs / 1048576.0
    );
    Ok(())
}
