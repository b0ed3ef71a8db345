//! Building a step's request: its templates rendered, its headers (the step's over
//! `notify.headers`, the user's over both), its body, and for a push the object streamed
//! from S3 with its progress counted.

use super::connector::{Call, Connector, StepOutcome, StoredObject};
use crate::config::StepBody;
use crate::progress::{self, Progress};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::Value;
use std::sync::Arc;

impl Connector {
    /// The request of `call`, and the progress of the object it pushes, if it does.
    pub(super) async fn build(
        &self,
        call: Call<'_>,
    ) -> Result<(reqwest::RequestBuilder, Option<Arc<Progress>>), StepOutcome> {
        let Call {
            step,
            prefix,
            ctx,
            idempotency,
            completion_body,
            object,
        } = call;
        let refused = |message: String| StepOutcome::Refused { message };
        let render = |name: String| self.render(&name, ctx).map_err(refused);
        let url = render(format!("{prefix}.url"))?;
        let url = reqwest::Url::parse(url.trim())
            .map_err(|e| refused(format!("step {}: {url:?} is not a URL: {e}", step.name)))?;
        let mut headers = self.headers.clone();
        for name in step.headers.keys() {
            let value = render(format!("{prefix}.headers.{name}"))?;
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => {
                    return Err(refused(format!(
                        "step {}: header {name} renders to an invalid value",
                        step.name
                    )));
                }
            }
        }
        let username = ctx.get("username").and_then(Value::as_str).unwrap_or("");
        headers.extend(self.user_headers(username));
        let client = if step.follow_redirects {
            &self.redirecting
        } else {
            &self.client
        };
        let mut request = client.request(step.method.clone(), url);
        if !idempotency.is_empty() {
            request = request.header("Idempotency-Key", idempotency);
        }
        let mut pushed = None;
        let request = match &step.body {
            StepBody::Completion => self
                .signed(request, idempotency, completion_body)
                .header(CONTENT_TYPE, "application/json")
                .body(completion_body.to_vec()),
            StepBody::Empty => request,
            StepBody::Json(_) => {
                let body = render(format!("{prefix}.body"))?;
                if let Err(e) = serde_json::from_str::<Value>(&body) {
                    return Err(refused(format!(
                        "step {}: the json template did not render JSON ({e}); use the tojson filter for values",
                        step.name
                    )));
                }
                self.signed(request, idempotency, body.as_bytes())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body)
            }
            StepBody::Text { content_type, .. } => {
                let body = render(format!("{prefix}.body"))?;
                self.signed(request, idempotency, body.as_bytes())
                    .header(CONTENT_TYPE, content_type.as_str())
                    .body(body)
            }
            StepBody::Form(fields) => {
                let mut form = Vec::new();
                for name in fields.keys() {
                    form.push((name.clone(), render(format!("{prefix}.fields.{name}"))?));
                }
                request.form(&form)
            }
            StepBody::Multipart {
                fields, file_field, ..
            } => {
                let Some(object) = object else {
                    return Err(refused("no object to send".into()));
                };
                let mut form = reqwest::multipart::Form::new();
                for name in fields.keys() {
                    form = form.text(name.clone(), render(format!("{prefix}.fields.{name}"))?);
                }
                let file_name = render(format!("{prefix}.file_name"))?;
                let progress = Progress::new();
                let body = self.object_body(object, 0, object.size, &progress).await?;
                pushed = Some(progress);
                let part = reqwest::multipart::Part::stream_with_length(body, object.size)
                    .file_name(file_name)
                    .mime_str(object.content_type)
                    .map_err(|e| refused(e.to_string()))?;
                request.multipart(form.part(file_field.clone(), part))
            }
            StepBody::Object => {
                let Some(object) = object else {
                    return Err(refused("no object to send".into()));
                };
                let progress = Progress::new();
                let body = self.object_body(object, 0, object.size, &progress).await?;
                pushed = Some(progress);
                request
                    .header(CONTENT_TYPE, object.content_type)
                    .header(CONTENT_LENGTH, object.size)
                    .body(body)
            }
        };
        // A push is timed by its progress (see `send`); anything else by notify.timeout.
        let request = match pushed {
            Some(_) => request,
            None => request.timeout(self.timeout),
        };
        // Configured headers win over the defaults set with the body.
        Ok((request.headers(headers), pushed))
    }

    /// `length` bytes of the object from `offset`, streamed from S3 with bounded memory;
    /// each chunk the connection takes counts as `progress`.
    pub(super) async fn object_body(
        &self,
        object: &StoredObject<'_>,
        offset: u64,
        length: u64,
        progress: &Arc<Progress>,
    ) -> Result<reqwest::Body, StepOutcome> {
        let stream = if offset == 0 && length == object.size {
            self.storage.get(object.key, 0).await
        } else {
            self.storage.get_range(object.key, offset, length).await
        }
        .map_err(|e| StepOutcome::Retry {
            after: None,
            error: format!("cannot read the object back from S3: {e}"),
        })?;
        let chunks = tokio_util::io::ReaderStream::new(stream.into_async_read());
        Ok(reqwest::Body::wrap_stream(progress::counted(
            chunks,
            progress.clone(),
        )))
    }
}
