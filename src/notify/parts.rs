//! A parts step pushes the object part by part to URLs the platform hands out (StreamAMG's
//! multipart upload: `PUT /multipart/upload` answers each part's presigned S3 URL). One
//! call does one part: it asks for the part's URL with the step's own request, streams the
//! part's byte range from S3 there, and keeps the header S3 answers (`ETag`). The worker
//! records the finished parts before the next starts, so a retry never sends a finished part
//! again; the step after reads them as `parts`, a list of `{part_number, etag, size}`.

use super::connector::{Call, Connector, StepOutcome, StoredObject};
use super::http::classify;
use crate::config::{PartsConfig, RuleOutcome};
use crate::progress::Progress;
use reqwest::header::CONTENT_LENGTH;
use serde_json::{Map, Value, json};

/// The field finished parts are recorded in, and later templates read.
pub const PARTS_FIELD: &str = "parts";

/// Where the part's URL is put among the URL request's extracted fields.
const PART_URL: &str = "part_url";

/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// S3's words for a presigned URL used after it expired: a fresh URL is asked for next time.
const EXPIRED: &str = "Request has expired";

impl Connector {
    /// Pushes the next unfinished part of `object`: `Progress` with the parts so far, or
    /// `Done` with all of them after the last.
    pub(super) async fn push_part(
        &self,
        call: Call<'_>,
        parts: &PartsConfig,
        object: &StoredObject<'_>,
    ) -> StepOutcome {
        let step = call.step;
        let mut done: Vec<Value> = call
            .ctx
            .get("fields")
            .and_then(|f| f.get(PARTS_FIELD))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (part_size, count) = layout(object.size, parts.size);
        let number = done.len() as u64 + 1;
        if number > count {
            return finished(done);
        }
        let offset = (number - 1) * part_size;
        let length = part_size.min(object.size - offset);
        let mut ctx = call.ctx.clone();
        ctx.insert("part_number".into(), json!(number));
        ctx.insert("part_offset".into(), json!(offset));
        ctx.insert("part_size".into(), json!(length));
        let mut url_step = step.clone();
        url_step.parts = None;
        url_step.extract = [(PART_URL.to_string(), parts.url.clone())].into();
        let idempotency = format!("{}_{number}", call.idempotency);
        let answer = self
            .run(Call {
                step: &url_step,
                ctx: &ctx,
                idempotency: &idempotency,
                object: None,
                ..call
            })
            .await;
        let url = match answer {
            StepOutcome::Done { fields, .. } => fields
                .get(PART_URL)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            other => return other,
        };
        let Ok(url) = reqwest::Url::parse(url.trim()) else {
            return StepOutcome::Refused {
                message: format!(
                    "step {}: part {number}'s URL {url:?} is not a URL",
                    step.name
                ),
            };
        };
        let progress = Progress::new();
        let body = match self.object_body(object, offset, length, &progress).await {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let request = self
            .client
            .request(parts.method.clone(), url)
            .header(CONTENT_LENGTH, length)
            .body(body);
        let answer = match self.exchange(request, step, Some(&progress)).await {
            Ok(answer) => answer,
            Err(error) => return StepOutcome::Retry { after: None, error },
        };
        let text = String::from_utf8_lossy(&answer.body);
        let outcome = if text.contains(EXPIRED) {
            RuleOutcome::Retry
        } else {
            classify(answer.status)
        };
        let error = || format!("{}: part {number}: {}", step.name, answer.message(step));
        match outcome {
            RuleOutcome::Delivered | RuleOutcome::Duplicate => {}
            RuleOutcome::Permanent => return StepOutcome::Refused { message: error() },
            _ => {
                return StepOutcome::Retry {
                    after: None,
                    error: error(),
                };
            }
        }
        let Some(kept) = answer
            .headers
            .get(parts.keep_header.as_str())
            .and_then(|v| v.to_str().ok())
        else {
            return StepOutcome::Refused {
                message: format!(
                    "step {}: part {number}'s answer has no {} header",
                    step.name, parts.keep_header
                ),
            };
        };
        done.push(json!({"part_number": number, "etag": kept, "size": length}));
        if number == count {
            finished(done)
        } else {
            let mut fields = Map::new();
            fields.insert(PARTS_FIELD.into(), Value::Array(done));
            StepOutcome::Progress { fields }
        }
    }
}

/// The part size and number of parts for an object of `size` bytes: `configured` bytes a
/// part, larger (whole MiB) when S3's 10,000 parts would not hold the object; one part for
/// an empty object.
fn layout(size: u64, configured: u64) -> (u64, u64) {
    let part_size = configured.max(size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
    (part_size, size.div_ceil(part_size).max(1))
}

fn finished(done: Vec<Value>) -> StepOutcome {
    let mut fields = Map::new();
    fields.insert(PARTS_FIELD.into(), Value::Array(done));
    StepOutcome::Done {
        duplicate: false,
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_s3s_ten_thousand() {
        const MIB: u64 = 1 << 20;
        assert_eq!(layout(12 * MIB, 5 * MIB), (5 * MIB, 3));
        assert_eq!(layout(0, 5 * MIB), (5 * MIB, 1));
        assert_eq!(layout(10_000 * 5 * MIB, 5 * MIB), (5 * MIB, 10_000));
        // 2 TiB in 100 MiB parts would be 20,972 parts: 210 MiB parts, 9,987 of them.
        let (size, count) = layout(2 << 40, 100 * MIB);
        assert_eq!(size, 210 * MIB);
        assert!(count <= MAX_PARTS && count * size >= 2 << 40);
    }
}
