//! A connector step's `rules`: which answers mean delivered, duplicate, retry, permanent,
//! reauth or restart, checked at load time.

use super::Validator;
use super::connector::StepConfig;
use serde::Deserialize;

/// One classification rule of a step as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRule {
    status: Option<String>,
    body: Option<String>,
    outcome: Option<String>,
    step: Option<String>,
}

/// Which responses a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// One status code.
    Exact(u16),
    /// A class: `2xx` is `Class(2)`.
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` matches.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// What a matching response means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    /// Accepted.
    Delivered,
    /// Already there.
    Duplicate,
    /// Try again later.
    Retry,
    /// Refused for good.
    Permanent,
    /// The credentials were refused: renew the `[notify.auth]` token and try again.
    Reauth,
    /// Go back to the rule's `step`, forgetting what it and later steps extracted.
    Restart,
}

/// One classification rule: status and/or a regex on the body.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Statuses it applies to (all when `None`).
    pub status: Option<StatusMatch>,
    /// A regex the body must match (any body when `None`).
    pub body: Option<regex::Regex>,
    /// The classification.
    pub outcome: RuleOutcome,
    /// `restart` only: the step to go back to.
    pub restart: Option<String>,
}

impl Validator<'_> {
    /// Every restart rule goes back to a step at or before its own.
    pub(super) fn restarts(&mut self, steps: &[StepConfig]) {
        for (i, step) in steps.iter().enumerate() {
            for rule in &step.rules {
                let Some(target) = &rule.restart else {
                    continue;
                };
                if !steps[..=i].iter().any(|s| &s.name == target) {
                    self.problem(
                        &format!("notify.steps[{i}].rules"),
                        None,
                        format!("restart goes back to {target:?}, which is not this step or one before it"),
                    );
                }
            }
        }
    }

    /// One rule; `None` when it has a problem (each is reported).
    pub(super) fn rule(&mut self, key: &str, raw: RawRule) -> Option<RuleConfig> {
        let status = match raw.status.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => match parse_status(s) {
                Some(m) => Some(m),
                None => {
                    self.problem(
                        &format!("{key}.status"),
                        None,
                        format!("{s:?} is neither a status code (\"200\") nor a class (\"4xx\")"),
                    );
                    return None;
                }
            },
        };
        let body = match raw.body {
            None => None,
            Some(b) => match regex::Regex::new(&b) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(
                        &format!("{key}.body"),
                        None,
                        format!("not a valid regex: {e}"),
                    );
                    return None;
                }
            },
        };
        let outcome = match raw.outcome.as_deref() {
            Some("delivered") => RuleOutcome::Delivered,
            Some("duplicate") => RuleOutcome::Duplicate,
            Some("retry") => RuleOutcome::Retry,
            Some("permanent") => RuleOutcome::Permanent,
            Some("reauth") => RuleOutcome::Reauth,
            Some("restart") => RuleOutcome::Restart,
            other => {
                self.problem(
                    &format!("{key}.outcome"),
                    None,
                    format!(
                        "{other:?}: write delivered, duplicate, retry, permanent, reauth or restart"
                    ),
                );
                return None;
            }
        };
        if (outcome == RuleOutcome::Restart) != raw.step.is_some() {
            self.problem(
                &format!("{key}.step"),
                None,
                "a restart rule names the step to go back to (step = \"entry\"), and only a restart rule does",
            );
            return None;
        }
        Some(RuleConfig {
            status,
            body,
            outcome,
            restart: raw.step,
        })
    }
}

/// `"200"` → one status, `"4xx"` → a class.
fn parse_status(s: &str) -> Option<StatusMatch> {
    if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        return match class.parse::<u16>() {
            Ok(c @ 1..=5) => Some(StatusMatch::Class(c)),
            _ => None,
        };
    }
    match s.parse::<u16>() {
        Ok(code @ 100..=599) => Some(StatusMatch::Exact(code)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_codes_or_classes() {
        assert_eq!(parse_status("404"), Some(StatusMatch::Exact(404)));
        assert_eq!(parse_status("4xx"), Some(StatusMatch::Class(4)));
        assert_eq!(parse_status("5XX"), Some(StatusMatch::Class(5)));
        for bad in ["6xx", "99", "600", "2x9", ""] {
            assert_eq!(parse_status(bad), None, "{bad}");
        }
        assert!(StatusMatch::Class(2).matches(204) && !StatusMatch::Exact(200).matches(201));
    }
}
