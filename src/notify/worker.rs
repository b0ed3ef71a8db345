//! The delivery worker: picks due entries from the outbox (never more than
//! `notify.concurrency` at once), runs their remaining steps, and writes the outcome back —
//! the next step, a retry time, delivered, or dead. The schedule lives in the database, so
//! a restart resumes it. Changes made elsewhere are seen by polling every second — or, on
//! an outbox shared by replicas whose [`Wakeups`] are live, at once: each replica hears of
//! the others' inserts, retries and released claims, and then only polls every
//! [`LISTENING_POLL`] as a safety net. Each delivery keeps its claim renewed while it runs
//! ([`leased`]).

use super::Inner;
use super::connector::{StepOutcome, StoredObject};
use super::http::backoff;
use crate::state::{PendingEntry, State, Wakeups, leased, now_ms};
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Longest sleep between two looks at the outbox (other processes may change it).
const POLL: Duration = Duration::from_secs(1);

/// Longest sleep of an idle worker while other processes' changes wake it: only a safety
/// net (the next due time, a lapsing lease elsewhere, are timers of their own).
const LISTENING_POLL: Duration = Duration::from_secs(15);

/// Due entries read from the outbox at once; each is re-checked when its delivery starts.
const PREFETCH: usize = 256;

/// Restarts one delivery run may make at once; more wait like a retry (a platform that
/// keeps asking for a restart must not be called in a tight loop).
const RESTARTS_AT_ONCE: u32 = 2;

/// Runs until the notifier stops.
pub(super) async fn run(inner: Arc<Inner>) {
    let Some(delivery) = inner.delivery.as_ref() else {
        return;
    };
    let wakeups = delivery.outbox.wakeups();
    let slots = Arc::new(Semaphore::new(delivery.concurrency));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut queued_at = Instant::now();
    let mut gauges_at = Instant::now() - POLL;
    let mut last_full = false;
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        if gauges_at.elapsed() >= POLL {
            inner.refresh_gauges().await;
            gauges_at = Instant::now();
        }
        // Refill when empty, or when stale so that new and retried entries are not starved.
        // A replica handing over (stopping) starts nothing new: the others deliver it.
        let handing_over = inner.handing_over.load(Ordering::Acquire);
        // An empty queue is refilled only when there may be more to list: something new
        // arrived, or the last listing was full.
        let more = inner.fresh.load(Ordering::Acquire) || last_full;
        if !handing_over
            && slots.available_permits() > 0
            && ((queue.is_empty() && more) || queued_at.elapsed() >= POLL)
        {
            // Cleared before the listing, so an entry made during it sets it again.
            inner.fresh.store(false, Ordering::Release);
            match delivery.outbox.due(now_ms(), PREFETCH).await {
                Ok(due) => {
                    last_full = due.len() >= PREFETCH;
                    queue = due.into();
                    queued_at = Instant::now();
                }
                Err(e) => {
                    inner.fresh.store(true, Ordering::Release);
                    tracing::error!(error = %e, "cannot read due completions from the outbox");
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => continue,
                        () = inner.stop.cancelled() => return,
                    }
                }
            }
        }
        let mut started = 0;
        while !handing_over && slots.available_permits() > 0 {
            let Some(id) = queue.pop_front() else {
                break;
            };
            let mut running = in_flight.lock();
            if running.contains(&id) {
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                queue.push_front(id);
                break;
            };
            running.insert(id.clone());
            drop(running);
            started += 1;
            let (inner, in_flight) = (inner.clone(), in_flight.clone());
            inner.running.fetch_add(1, Ordering::AcqRel);
            inner.tasks.clone().spawn(async move {
                tokio::select! {
                    () = deliver(&inner, &id) => {}
                    // Still pending in the outbox: the next run (or another replica, once
                    // the stop released the claim) resumes it.
                    () = inner.stop.cancelled() => {}
                }
                in_flight.lock().remove(&id);
                drop(slot);
                inner.running.fetch_sub(1, Ordering::AcqRel);
                inner.idle.notify_waiters();
                inner.wake.notify_one();
            });
        }
        if started > 0 && queue.is_empty() {
            continue; // slots left: look for more at once
        }
        // Wait for a free slot, a new entry, or the next due time. Entries in flight are
        // due too, so with deliveries running only a wake or the poll interval helps.
        let busy = !in_flight.lock().is_empty();
        let idle_poll = if wakeups.as_ref().is_some_and(Wakeups::live) {
            LISTENING_POLL
        } else {
            POLL
        };
        let wait = if busy || slots.available_permits() == 0 || handing_over {
            POLL
        } else {
            match delivery.outbox.next_due().await {
                Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                Ok(None) => idle_poll,
                Err(_) => POLL,
            }
            .clamp(Duration::from_millis(5), idle_poll)
        };
        // A new entry here sets `fresh` itself; a free slot does not.
        tokio::select! {
            () = inner.wake.notified() => {}
            () = changed_elsewhere(wakeups.as_ref()) => inner.fresh.store(true, Ordering::Release),
            () = tokio::time::sleep(wait) => inner.fresh.store(true, Ordering::Release),
            () = inner.stop.cancelled() => return,
        }
    }
}

/// Returns when another process changed the outbox (never without wake-ups).
async fn changed_elsewhere(wakeups: Option<&Wakeups>) {
    match wakeups {
        Some(wakeups) => wakeups.changed().await,
        None => std::future::pending().await,
    }
}

/// Claims an entry and runs its remaining steps, keeping the claim renewed meanwhile.
async fn deliver(inner: &Inner, id: &str) {
    let Some(delivery) = inner.delivery.as_ref() else {
        return;
    };
    let entry: PendingEntry = match delivery.outbox.claim(id, now_ms()).await {
        Ok(Some(current)) => current,
        Ok(None) => return, // delivered, rescheduled or retried meanwhile
        Err(e) => {
            tracing::error!(id, error = %e, "cannot read the outbox");
            return;
        }
    };
    leased(delivery.outbox.as_ref(), id, run_steps(inner, entry)).await;
}

/// Runs a claimed entry's remaining steps; records where it got to.
async fn run_steps(inner: &Inner, mut entry: PendingEntry) {
    let Some(delivery) = inner.delivery.as_ref() else {
        return;
    };
    let connector = &delivery.connector;
    let completion: serde_json::Map<String, serde_json::Value> =
        match serde_json::from_slice(&entry.body) {
            Ok(c) => c,
            Err(e) => {
                let message = format!("the stored completion is not JSON: {e}");
                inner.finished(&entry, State::Dead, Some(message)).await;
                return;
            }
        };
    let size = completion.get("size").and_then(|v| v.as_u64()).unwrap_or(0);
    let content_type = completion
        .get("content_type")
        .and_then(|v| v.as_str())
        .unwrap_or("application/octet-stream")
        .to_string();
    let object = StoredObject {
        key: &entry.key,
        size,
        content_type: &content_type,
    };
    let mut duplicate = false;
    let mut restarts = 0;
    while entry.step < connector.step_count() {
        let step_name = connector.step_name(entry.step).to_string();
        let started = Instant::now();
        let outcome = match connector.context(&completion, &entry.fields).await {
            Ok(ctx) => {
                connector
                    .run_step(entry.step, &ctx, &entry.id, &entry.body, &object)
                    .await
            }
            Err(e) => StepOutcome::Retry {
                after: None,
                error: format!("cannot presign the object URL: {e}"),
            },
        };
        inner
            .metrics
            .notification_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            StepOutcome::Done {
                duplicate: dup,
                fields,
            } => {
                duplicate = dup;
                entry.fields.extend(fields);
                entry.step += 1;
                entry.attempts = 0;
                if entry.step < connector.step_count() {
                    tracing::info!(id = %entry.id, step = %step_name, "connector step done");
                    if let Err(e) = delivery
                        .outbox
                        .advance(&entry.id, entry.step, &entry.fields)
                        .await
                    {
                        tracing::error!(id = %entry.id, error = %e, "cannot record a finished step; it may run again");
                    }
                }
            }
            StepOutcome::Progress { fields } => {
                // A part pushed: record it before the next, so it is never sent again.
                entry.fields.extend(fields);
                entry.attempts = 0;
                if let Err(e) = delivery
                    .outbox
                    .advance(&entry.id, entry.step, &entry.fields)
                    .await
                {
                    tracing::error!(id = %entry.id, error = %e, "cannot record a finished part; it may be sent again");
                }
            }
            StepOutcome::Restart { step, error } => {
                restarts += 1;
                let to = connector.step_name(step).to_string();
                let dropped: serde_json::Map<String, serde_json::Value> = connector
                    .fields_from(step)
                    .into_iter()
                    .filter_map(|field| entry.fields.remove_entry(&field))
                    .collect();
                // What the platform made before (an entry id) is named, so it can be found.
                tracing::warn!(id = %entry.id, step = %step_name, to = %to, error = %error,
                    dropped = %serde_json::Value::Object(dropped), "connector step restarts an earlier step");
                entry.step = step;
                if let Err(e) = delivery
                    .outbox
                    .advance(&entry.id, entry.step, &entry.fields)
                    .await
                {
                    tracing::error!(id = %entry.id, error = %e, "cannot record a restart");
                }
                if restarts > RESTARTS_AT_ONCE {
                    retry(inner, &mut entry, &step_name, None, error).await;
                    return;
                }
            }
            StepOutcome::Retry { after, error } => {
                retry(inner, &mut entry, &step_name, after, error).await;
                return;
            }
            StepOutcome::Reauth { error } => {
                retry(inner, &mut entry, &step_name, None, error).await;
                return;
            }
            StepOutcome::Refused { message } => {
                inner
                    .metrics
                    .notifications_total
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(id = %entry.id, key = %entry.key, step = %step_name, error = %message,
                    "the ingest API refused the completion; dead letter kept in the outbox");
                inner.finished(&entry, State::Dead, Some(message)).await;
                return;
            }
        }
    }
    let outcome = if duplicate { "duplicate" } else { "delivered" };
    inner
        .metrics
        .notifications_total
        .with_label_values(&[outcome])
        .inc();
    tracing::info!(id = %entry.id, key = %entry.key, outcome, "completion delivered");
    inner.finished(&entry, State::Delivered, None).await;
}

/// Schedules the next attempt of `entry` (or gives up after `notify.max_age`).
async fn retry(
    inner: &Inner,
    entry: &mut PendingEntry,
    step_name: &str,
    after: Option<Duration>,
    error: String,
) {
    let Some(delivery) = inner.delivery.as_ref() else {
        return;
    };
    inner
        .metrics
        .notifications_total
        .with_label_values(&["retried"])
        .inc();
    entry.attempts = entry.attempts.saturating_add(1);
    let age = Duration::from_millis(u64::try_from(now_ms() - entry.since_ms).unwrap_or(0));
    if age >= delivery.max_age {
        let message = format!(
            "gave up after {} (notify.max_age): {error}",
            humantime::format_duration(Duration::from_secs(age.as_secs()))
        );
        tracing::error!(id = %entry.id, key = %entry.key, step = %step_name, "{message}");
        inner
            .metrics
            .notifications_total
            .with_label_values(&["failed"])
            .inc();
        inner.finished(entry, State::Dead, Some(message)).await;
        return;
    }
    let wait = backoff(entry.attempts - 1, after, delivery.max_backoff);
    tracing::warn!(id = %entry.id, step = %step_name, error = %error, retry_in = ?wait, "completion call failed; retrying");
    let at = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
    if let Err(e) = delivery
        .outbox
        .reschedule(&entry.id, entry.attempts, at, error)
        .await
    {
        tracing::error!(id = %entry.id, error = %e, "cannot schedule the retry");
    }
}
