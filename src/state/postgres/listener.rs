//! Wake-ups across replicas: each replica's delivery worker keeps one dedicated connection
//! (outside the pool, so it never holds a pooled connection forever) that `LISTEN`s on
//! [`CHANNEL`]. The outbox statements that make an entry due — an insert, an operator's
//! retry, a reschedule, a released claim — call `pg_notify` in their own transaction, so
//! the notification is delivered at commit, and only then: an idle replica wakes within a
//! round trip of another replica's commit, whatever its polling interval.
//!
//! The connection is checked every [`CHECK_EVERY`]; when it fails or drops, the worker is
//! told wake-ups are not live (it polls every second meanwhile), and the listener connects
//! again after a backoff from [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`], logging each
//! attempt. Once listening again it wakes the worker once, to see what changed meanwhile.

use super::tls::MakeRustls;
use crate::state::{WakeupSender, Wakeups};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// The notification channel of the outbox (per database, so deployments sharing a server
/// in separate databases do not wake each other).
pub(super) const CHANNEL: &str = "ingest_bridge_outbox";

/// How often the listening connection is checked with a query (a connection cut without a
/// word, by a firewall or a failover, is otherwise found out only by TCP keepalives).
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// How long connecting, `LISTEN` or a check may take before the connection is given up.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before connecting again.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts listening with a connection to `config` over `tls` (`location` names it in logs);
/// the listener stops when the last clone of the returned wake-ups is dropped.
pub(super) fn start(
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustls,
    location: Arc<str>,
) -> Wakeups {
    let stop = CancellationToken::new();
    let (wakeups, sender) = Wakeups::new(stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = run(&config, &tls, &location, &sender) => {}
            () = stop.cancelled() => {}
        }
    });
    wakeups
}

/// Listens, reconnecting after each failure, forever.
async fn run(
    config: &tokio_postgres::Config,
    tls: &MakeRustls,
    location: &str,
    sender: &WakeupSender,
) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        let lost = listen(config, tls, sender, || {
            if failures > 0 {
                tracing::info!(database = %location, "listening for outbox changes again; other replicas' completions wake delivery at once");
            }
            failures = 0;
            backoff = MIN_BACKOFF;
        })
        .await;
        sender.set_live(false);
        failures += 1;
        tracing::warn!(database = %location, error = %lost, retry_in = ?backoff,
            "no connection listening for outbox changes; delivery polls the outbox every second until it is back");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One listening connection, until it fails: returns why. `listening` runs once `LISTEN`
/// took effect.
async fn listen(
    config: &tokio_postgres::Config,
    tls: &MakeRustls,
    sender: &WakeupSender,
    listening: impl FnOnce(),
) -> String {
    let (client, mut connection) =
        match tokio::time::timeout(TIMEOUT, config.connect(tls.clone())).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return format!("cannot connect: {e}"),
            Err(_) => return format!("cannot connect within {TIMEOUT:?}"),
        };
    // The connection does the I/O of the client's queries too, so it is driven on its own
    // task; notifications wake the worker straight from there.
    let notified = sender.clone();
    let mut driver = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => notified.wake(),
                Ok(_) => {}
                Err(e) => return format!("the connection failed: {e}"),
            }
        }
        "the server closed the connection".to_string()
    }));
    let command = format!("LISTEN {CHANNEL}");
    tokio::select! {
        done = tokio::time::timeout(TIMEOUT, client.batch_execute(&command)) => match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("LISTEN failed: {e}"),
            Err(_) => return format!("LISTEN took longer than {TIMEOUT:?}"),
        },
        ended = &mut driver => return ended.unwrap_or_else(|e| e.to_string()),
    }
    sender.set_live(true);
    listening();
    loop {
        tokio::select! {
            ended = &mut driver => return ended.unwrap_or_else(|e| e.to_string()),
            () = tokio::time::sleep(CHECK_EVERY) => {
                match tokio::time::timeout(TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("the connection check failed: {e}"),
                    Err(_) => return format!("the connection check took longer than {TIMEOUT:?}"),
                }
            }
        }
    }
}
