//! The calls of `/api/v1/`: each reads or acts on the bridge and answers JSON; errors are
//! `{"error": "…"}` with a status that says which kind (400, 401, 404, 409, 422, 503).

use super::routes::{Route, Unmatched, route};
use super::{AdminContext, auth, page, respond};
use crate::audit::AdminRecord;
use crate::state::{EntrySummary, State};
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The OpenAPI 3 description of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// Rows a list answers when the caller names no `limit`.
const DEFAULT_LIMIT: usize = 1000;
/// The most rows one answer holds.
const MAX_LIMIT: usize = 10_000;

/// A call's answer before it is rendered.
struct Answer {
    status: StatusCode,
    body: Value,
    /// `X-Total-Count`: rows before the limit.
    total: Option<usize>,
    /// What the call acted on, for the audit trail.
    target: Option<String>,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            body,
            total: None,
            target: None,
        }
    }

    fn list(body: Value, total: usize) -> Answer {
        Answer {
            total: Some(total),
            ..Answer::ok(body)
        }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Answer {
        Answer::ok(json!({ "error": message.into() })).with_status(status)
    }

    fn with_status(mut self, status: StatusCode) -> Answer {
        self.status = status;
        self
    }

    fn on(mut self, target: &str) -> Answer {
        self.target = Some(target.to_string());
        self
    }
}

/// Answers one request from `caller`.
pub(super) async fn handle(
    context: &AdminContext,
    caller: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (matched, action) = match route(req.method(), req.uri().path()) {
        Ok(found) => found,
        Err(Unmatched::NotFound) => {
            return render(Answer::error(
                StatusCode::NOT_FOUND,
                "no such path; the API is described at /api/v1/openapi.json",
            ));
        }
        Err(Unmatched::Method(allowed)) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut resp = render(Answer::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("this path takes {allow}"),
            ));
            if let Ok(value) = hyper::header::HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(hyper::header::ALLOW, value);
            }
            return resp;
        }
    };
    if matched == Route::Page {
        count(context, action, "ok");
        return page::serve();
    }
    // An address guessing tokens is refused for a while, before its next guess is read.
    if let Some(left) = context.guesses.refused_for(caller.ip()) {
        let message = format!(
            "too many wrong tokens from your address; try again in {} s",
            left.as_secs().max(1)
        );
        // Counted, not audited: a flood of refused calls must not fill the disk. The audit
        // trail has the wrong tokens that led here, and the log the moment it began.
        count(context, action, "refused");
        let mut resp = render(Answer::error(StatusCode::TOO_MANY_REQUESTS, message));
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, left.as_secs().max(1).into());
        return resp;
    }
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !auth::authorized(&context.token.load(), authorization) {
        // A call without a token is a page that has none yet, not a guess: counted only.
        // Wrong tokens are audited, at most MAX_GUESSES per address before it is refused.
        let message = if authorization.is_some() {
            context.guesses.wrong(caller.ip());
            audit(
                context,
                caller,
                action,
                None,
                StatusCode::UNAUTHORIZED,
                Some("wrong token"),
            );
            "wrong token"
        } else {
            "this call needs Authorization: Bearer <admin.token>"
        };
        count(context, action, "unauthorized");
        let mut resp = render(Answer::error(StatusCode::UNAUTHORIZED, message));
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"ingest-bridge admin\""),
        );
        return resp;
    }
    let query = Query::parse(req.uri().query());
    let acts = matches!(*req.method(), Method::POST | Method::DELETE);
    let answer = match matched {
        Route::OpenApi => {
            count(context, action, "ok");
            return respond(StatusCode::OK, "application/json", OPENAPI);
        }
        Route::Status => status(context).await,
        Route::Transfers => transfers(context, &query),
        Route::Sessions => sessions(context, &query),
        Route::CloseSession(id) => close_session(context, &id),
        Route::Outbox => outbox(context, &query).await,
        Route::Retry(id) => retry(context, &id).await,
        Route::Bans => bans(context),
        Route::LiftBan(address) => lift_ban(context, &address),
        Route::Reload => reload(context).await,
        Route::Page => unreachable_page(),
    };
    let result = result_of(answer.status);
    count(context, action, result);
    if acts {
        let error = answer.body.get("error").and_then(Value::as_str);
        audit(
            context,
            caller,
            action,
            answer.target.as_deref(),
            answer.status,
            error,
        );
    }
    render(answer)
}

/// `Route::Page` is answered before the token check.
fn unreachable_page() -> Answer {
    Answer::error(StatusCode::NOT_FOUND, "no such path")
}

fn render(answer: Answer) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&answer.body).unwrap_or_default();
    let mut resp = respond(answer.status, "application/json", body);
    if let Some(total) = answer.total {
        resp.headers_mut().insert("x-total-count", total.into());
    }
    resp
}

fn result_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        401 => "unauthorized",
        429 => "refused",
        404 => "not_found",
        409 => "conflict",
        400..=499 => "invalid",
        _ => "error",
    }
}

fn count(context: &AdminContext, action: &str, result: &str) {
    context
        .metrics
        .admin_requests_total
        .with_label_values(&[action, result])
        .inc();
}

fn audit(
    context: &AdminContext,
    caller: SocketAddr,
    action: &str,
    target: Option<&str>,
    status: StatusCode,
    error: Option<&str>,
) {
    context.metrics.audit.admin(&AdminRecord {
        caller,
        action,
        target,
        status: status.as_u16(),
        result: result_of(status),
        error,
    });
}

/// The query string's `state` and `limit`.
struct Query {
    state: Option<String>,
    limit: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query {
            state: None,
            limit: None,
        };
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "state" => parsed.state = Some(value.into_owned()),
                "limit" => parsed.limit = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }

    /// `limit`, 1 to [`MAX_LIMIT`], or [`DEFAULT_LIMIT`].
    fn limit(&self) -> Result<usize, Answer> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(Answer::error(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }
}

/// RFC 3339 with milliseconds, in UTC.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn rfc3339_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// The readiness checks, run at most once per [`super::READINESS_TTL`] whoever asks.
async fn readiness(context: &AdminContext) -> Vec<crate::metrics::CheckResult> {
    let mut cache = context.readiness_cache.lock().await;
    if let Some((at, checks)) = cache.as_ref()
        && at.elapsed() < super::READINESS_TTL
    {
        return checks.clone();
    }
    let checks = (context.readiness)().await;
    *cache = Some((std::time::Instant::now(), checks.clone()));
    checks
}

async fn status(context: &AdminContext) -> Answer {
    let checks = readiness(context).await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let checks: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, result)| {
            let check = match result {
                Ok(()) => json!({ "ok": true }),
                Err(e) => json!({ "ok": false, "error": e }),
            };
            (name.to_string(), check)
        })
        .collect();
    let outbox = match context.notifier.outbox() {
        None => json!({ "enabled": false }),
        Some(outbox) => match (outbox.counts().await, outbox.pending_summary().await) {
            (Ok(counts), Ok((_, oldest))) => json!({
                "enabled": true,
                "pending": counts.pending,
                "dead": counts.dead,
                "delivered": counts.delivered,
                "oldest_pending_at": oldest.map(rfc3339_ms),
            }),
            (Err(e), _) | (_, Err(e)) => json!({ "enabled": true, "error": e.to_string() }),
        },
    };
    let (count, bytes, rate) = context.pipeline.transfer_totals();
    Answer::ok(json!({
        "replica": context.replica,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(context.started_at),
        "ready": ready,
        "checks": checks,
        "state_backend": context.state_backend,
        "shared": context.state_backend == "postgres",
        "outbox": outbox,
        "transfers": {
            "count": count,
            "bytes": bytes,
            "rate_bytes_per_second": rate,
        },
        "sessions": { "count": context.files.sessions().count() },
    }))
}

fn transfers(context: &AdminContext, query: &Query) -> Answer {
    let limit = match query.limit() {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    let mut all = context.pipeline.transfers();
    let total = all.len();
    all.truncate(limit);
    Answer::list(json!(all), total)
}

fn sessions(context: &AdminContext, query: &Query) -> Answer {
    let limit = match query.limit() {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    let uploads = context.pipeline.uploads_per_session();
    let all = context.files.sessions().list();
    let total = all.len();
    let rows: Vec<Value> = all
        .into_iter()
        .take(limit)
        .map(|s| {
            let running = uploads.get(&s.id).copied().unwrap_or(0);
            let mut row = json!(s);
            row["uploads"] = json!(running);
            row["replica"] = json!(context.replica);
            row
        })
        .collect();
    Answer::list(json!(rows), total)
}

fn close_session(context: &AdminContext, id: &str) -> Answer {
    if context.files.close_session(id) {
        Answer::ok(json!({ "id": id, "closed": true })).on(id)
    } else {
        Answer::error(
            StatusCode::NOT_FOUND,
            format!(
                "no open session {id:?} on this replica ({}); sessions are listed per replica",
                context.replica
            ),
        )
        .on(id)
    }
}

fn entry_json(entry: &EntrySummary) -> Value {
    let pending = entry.state == State::Pending.as_str();
    json!({
        "id": entry.id,
        "state": entry.state,
        "key": entry.key,
        "attempts": entry.attempts,
        "step": entry.step,
        "last_error": entry.last_error,
        "created_at": rfc3339_ms(entry.created_ms),
        "updated_at": rfc3339_ms(entry.updated_ms),
        "next_attempt_at": pending.then(|| rfc3339_ms(entry.next_attempt_ms)),
    })
}

fn no_outbox() -> Answer {
    Answer::error(
        StatusCode::NOT_FOUND,
        "no outbox: no completion API is configured (notify.url or a connector), so completions go only to the event log",
    )
}

async fn outbox(context: &AdminContext, query: &Query) -> Answer {
    let Some(outbox) = context.notifier.outbox() else {
        return no_outbox();
    };
    let limit = match query.limit() {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(name) => match State::parse(name) {
            Some(state) => Some(state),
            None => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    format!("state {name:?} is not one of pending, dead, delivered"),
                );
            }
        },
    };
    // The last deliveries are what an operator wants of that state; the rest oldest first.
    let newest = state == Some(State::Delivered);
    let (page, counts) = tokio::join!(outbox.page(state, limit, newest), outbox.counts());
    match (page, counts) {
        (Ok(entries), Ok(counts)) => {
            let total = match state {
                Some(State::Pending) => counts.pending,
                Some(State::Dead) => counts.dead,
                Some(State::Delivered) => counts.delivered,
                None => counts.pending + counts.dead + counts.delivered,
            };
            Answer::list(
                Value::Array(entries.iter().map(entry_json).collect()),
                total,
            )
        }
        (Err(e), _) | (_, Err(e)) => store_unavailable(e),
    }
}

fn store_unavailable(e: crate::state::StateError) -> Answer {
    tracing::warn!(error = %e, "admin API: the state store did not answer");
    Answer::error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the outbox cannot be read now: {e}"),
    )
}

async fn retry(context: &AdminContext, id: &str) -> Answer {
    let Some(outbox) = context.notifier.outbox() else {
        return no_outbox().on(id);
    };
    match outbox.state_of(id).await {
        Err(e) => store_unavailable(e).on(id),
        Ok(None) => Answer::error(StatusCode::NOT_FOUND, format!("no outbox entry {id:?}")).on(id),
        Ok(Some(state)) if state == State::Delivered.as_str() => Answer::error(
            StatusCode::CONFLICT,
            format!("entry {id:?} was delivered already; there is nothing to retry"),
        )
        .on(id),
        Ok(Some(_)) => match context.notifier.retry(id).await {
            Ok(true) => Answer::ok(json!({ "id": id, "state": "pending" })).on(id),
            // Delivered between the two reads.
            Ok(false) => Answer::error(
                StatusCode::CONFLICT,
                format!("entry {id:?} was delivered already; there is nothing to retry"),
            )
            .on(id),
            Err(e) => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the retry was not stored: {e}"),
            )
            .on(id),
        },
    }
}

fn bans(context: &AdminContext) -> Answer {
    let now = SystemTime::now();
    let rows: Vec<Value> = context
        .defender
        .bans()
        .into_iter()
        .filter_map(|ban| {
            let until = ban.banned_until?;
            Some(json!({
                "address": ban.ip.to_string(),
                "until": rfc3339(until),
                "seconds_left": until.duration_since(now).unwrap_or_default().as_secs(),
                "bans": ban.bans,
                "failures": ban.failures,
            }))
        })
        .collect();
    let total = rows.len();
    Answer::list(Value::Array(rows), total)
}

fn lift_ban(context: &AdminContext, address: &str) -> Answer {
    let Ok(ip) = address.trim().parse::<IpAddr>() else {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            format!("{address:?} is not an IP address"),
        )
        .on(address);
    };
    match context.defender.lift(ip) {
        Some(until) => Answer::ok(json!({
            "address": ip.to_canonical().to_string(),
            "lifted": true,
            "was_banned_until": rfc3339(until),
        }))
        .on(address),
        None => Answer::error(StatusCode::NOT_FOUND, format!("{ip} is not banned")).on(address),
    }
}

async fn reload(context: &AdminContext) -> Answer {
    let reload = context.reload.clone();
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(Ok(())) => Answer::ok(json!({ "reloaded": true })),
        Ok(Err(message)) => Answer::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused, the running configuration stays: {message}"),
        ),
        Err(_) => Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "the reload failed"),
    }
}
