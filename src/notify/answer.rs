//! What an API's answer means for a step: sending a request and reading (a bounded part
//! of) its answer, the step's rules over the contract's classification, and the outcome
//! with the fields it extracts.

use super::connector::{Connector, MAX_ANSWER, SNIPPET, StepOutcome, error_chain};
use super::extract::Document;
use super::http::{classify, parse_retry_after};
use crate::config::{RuleConfig, RuleOutcome, StepConfig};
use crate::progress::{self, Progress};
use reqwest::header::HeaderMap;
use serde_json::Map;
use std::sync::Arc;
use std::time::Duration;

impl Connector {
    /// Sends a request and reads its answer (at most [`MAX_ANSWER`] bytes are kept). A push
    /// (`pushed`) fails once it has not moved for `notify.progress_timeout`.
    pub(super) async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        step: &StepConfig,
        pushed: Option<&Arc<Progress>>,
    ) -> Result<Answer, String> {
        let work = async {
            let mut response = request
                .send()
                .await
                .map_err(|e| format!("{}: {}", step.name, error_chain(&e)))?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if let Some(progress) = pushed {
                            progress.touch();
                        }
                        let room = MAX_ANSWER.saturating_sub(body.len());
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(format!(
                            "{}: reading the answer: {}",
                            step.name,
                            error_chain(&e)
                        ));
                    }
                }
            }
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        match pushed {
            None => work.await,
            Some(progress) => progress::watched(work, progress, self.progress_timeout)
                .await
                .unwrap_or_else(|idle| {
                    Err(format!(
                        "{}: the push made no progress for {}s (notify.progress_timeout)",
                        step.name,
                        idle.as_secs()
                    ))
                }),
        }
    }

    /// The step's rules, then the contract's defaults (with `[notify.auth]`, HTTP 401 asks
    /// for new credentials).
    pub(super) fn classify(&self, step: &StepConfig, answer: &Answer) -> RuleOutcome {
        matching_rule(step, answer)
            .map(|r| r.outcome)
            .unwrap_or_else(|| {
                if answer.status == reqwest::StatusCode::UNAUTHORIZED && self.tokens.is_some() {
                    RuleOutcome::Reauth
                } else {
                    classify(answer.status)
                }
            })
    }

    pub(super) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        step: &StepConfig,
        pushed: Option<Arc<Progress>>,
    ) -> StepOutcome {
        match self.exchange(request, step, pushed.as_ref()).await {
            Ok(answer) => self.conclude(step, &answer),
            Err(error) => StepOutcome::Retry { after: None, error },
        }
    }

    /// What an answer means for a step: its outcome and the fields it extracts.
    pub(super) fn conclude(&self, step: &StepConfig, answer: &Answer) -> StepOutcome {
        let outcome = self.classify(step, answer);
        let status = answer.status;
        let doc = Document::parse(&answer.body);
        match outcome {
            RuleOutcome::Delivered | RuleOutcome::Duplicate => {
                let duplicate = outcome == RuleOutcome::Duplicate;
                let mut fields = Map::new();
                for (name, path) in &step.extract {
                    match doc.get(path) {
                        Some(v) => {
                            fields.insert(name.clone(), v);
                        }
                        None if duplicate => {}
                        None => {
                            return StepOutcome::Refused {
                                message: format!(
                                    "step {}: the answer (HTTP {}) has no {path:?} for {name}",
                                    step.name,
                                    status.as_u16()
                                ),
                            };
                        }
                    }
                }
                StepOutcome::Done { duplicate, fields }
            }
            RuleOutcome::Retry => StepOutcome::Retry {
                after: answer.retry_after(),
                error: format!("{}: {}", step.name, answer.message(step)),
            },
            RuleOutcome::Permanent => StepOutcome::Refused {
                message: answer.message(step),
            },
            RuleOutcome::Reauth => StepOutcome::Reauth {
                error: format!("{}: {}", step.name, answer.message(step)),
            },
            RuleOutcome::Restart => {
                // Only a rule says restart, so the matching rule names the step.
                let target = matching_rule(step, answer)
                    .and_then(|r| r.restart.as_deref())
                    .and_then(|name| self.steps.iter().position(|s| s.name == name));
                match target {
                    Some(index) => StepOutcome::Restart {
                        step: index,
                        error: format!("{}: {}", step.name, answer.message(step)),
                    },
                    None => StepOutcome::Refused {
                        message: format!(
                            "step {} cannot restart here: {}",
                            step.name,
                            answer.message(step)
                        ),
                    },
                }
            }
        }
    }
}

/// The first of the step's rules that matches the answer's status and body.
fn matching_rule<'a>(step: &'a StepConfig, answer: &Answer) -> Option<&'a RuleConfig> {
    let text = String::from_utf8_lossy(&answer.body);
    step.rules.iter().find(|r| {
        r.status.is_none_or(|s| s.matches(answer.status.as_u16()))
            && r.body.as_ref().is_none_or(|b| b.is_match(&text))
    })
}

/// One answer of an API, as far as it is kept.
pub(super) struct Answer {
    /// HTTP status.
    pub status: reqwest::StatusCode,
    /// Headers (a part's `ETag`).
    pub headers: HeaderMap,
    /// The first [`MAX_ANSWER`] bytes of the body.
    pub body: Vec<u8>,
}

impl Answer {
    fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    }

    /// The API's words at the step's `message` path, or the status and a snippet.
    pub fn message(&self, step: &StepConfig) -> String {
        Document::parse(&self.body)
            .text(&step.message)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&self.body);
                let snippet: String = text.chars().take(SNIPPET).collect();
                if snippet.trim().is_empty() {
                    format!("HTTP {}", self.status.as_u16())
                } else {
                    format!("HTTP {}: {}", self.status.as_u16(), snippet.trim())
                }
            })
    }
}
