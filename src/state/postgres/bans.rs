//! Bans and failed-login scores shared by every replica: the `defender_addresses` table.
//!
//! [`BanStore`] is synchronous — the defender decides on a connection before serving it,
//! from code that cannot wait on the network — so [`PgBans`] answers from a local cache and
//! keeps the cache and the table in step with one background task:
//! - every change (a failure, a ban, an unban) is applied to the cache at once and written
//!   through to the table, in order; the table's own conditions decide when replicas race
//!   (a ban counts once however many replicas ban the address at the same moment), and the
//!   row as it then stands replaces the cache's;
//! - every [`REFRESH`] the task reads the rows changed since its last read (by the
//!   database's clock, so replicas' clocks need not agree), so a ban made on one replica
//!   reaches the others within about that time.
//!
//! A record with a change still on its way to the table is not overwritten by a refresh.
//! While the database is unreachable the cache goes on alone (the single-replica behaviour)
//! and the failed writes are logged.

use super::{DB_NOW, Pg};
use crate::state::memory::BanRecord;
use crate::state::{BanEntry, BanStore, FailureScore, StateError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;

/// The store name in errors.
const STORE: &str = "bans";
/// How often other replicas' changes are read: a ban made on one replica refuses the address
/// on the others within a second (two prepared statements per refresh, one round trip each).
pub const REFRESH: Duration = Duration::from_millis(500);
/// Changes read again at each refresh, before the last read's time: a transaction that
/// took its time stamp before that read but committed after it is still seen.
const REREAD_MS: i64 = 5_000;
/// Changes queued for the table at most; past it (a flood of failed logins while the
/// database is slow) they are counted locally only.
const QUEUE: usize = 10_000;
/// Addresses cached before stale ones are dropped (bounds memory under a scan).
const PRUNE_ABOVE: usize = 10_000;
/// How long an address's history is kept after its last change: as long as the defender's
/// longest ban, so a returning offender still gets a longer ban.
const REMEMBER_MS: i64 = 7 * 24 * 3600 * 1000;
/// Failures kept per address in the table (far above any `max_failures`).
const MAX_FAILURES: i64 = 1_000;

/// Milliseconds since the epoch of `t` (saturating; before the epoch is 0).
fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `ms` after the epoch.
fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// One address as cached: the bookkeeping [`crate::state::memory::MemoryBans`] keeps, and what is still on its
/// way to the table.
#[derive(Debug, Default)]
struct Record {
    /// Failures and bans, counted as in memory.
    ban: BanRecord,
    /// Changes queued for the table and not written yet.
    pending: u32,
    /// Whether the table had a row of it when last read: only then does a missing row mean
    /// someone deleted it (a ban made while the database was unreachable has none).
    in_table: bool,
}

impl BanRecord {
    /// Takes the table's row, keeping the cache's own (finer) times where they agree to
    /// the millisecond.
    fn merge(&mut self, row: &Stored) {
        let same = |a: &[SystemTime], b: &[i64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(t, m)| ms(*t) == *m)
        };
        if !same(self.failures.make_contiguous(), &row.failures) {
            self.failures = row.failures.iter().copied().map(time).collect();
        }
        if self.banned_until.map(ms) != row.banned_until_ms {
            self.banned_until = row.banned_until_ms.map(time);
        }
        self.bans = u32::try_from(row.bans.max(0)).unwrap_or(u32::MAX);
    }
}

/// A row of `defender_addresses`.
struct Stored {
    ip: IpAddr,
    failures: Vec<i64>,
    banned_until_ms: Option<i64>,
    bans: i64,
}

impl Stored {
    /// The row, or `None` for an address that does not parse (an operator's edit).
    fn of(row: &Row) -> Result<Option<Stored>, tokio_postgres::Error> {
        let ip: String = row.try_get(0)?;
        let Ok(ip) = ip.parse() else {
            return Ok(None);
        };
        Ok(Some(Stored {
            ip,
            failures: row.try_get(1)?,
            banned_until_ms: row.try_get(2)?,
            bans: row.try_get(3)?,
        }))
    }
}

/// The columns [`Stored::of`] reads.
const COLUMNS: &str = "ip, failures, banned_until_ms, bans";

/// A change on its way to the table, or a request to be told when all before it are there.
#[derive(Debug)]
enum Change {
    Failure {
        ip: IpAddr,
        at_ms: i64,
        window_ms: i64,
    },
    Ban {
        ip: IpAddr,
        now_ms: i64,
        until_ms: i64,
    },
    Unban {
        ip: IpAddr,
    },
    Sync(oneshot::Sender<Result<(), StateError>>),
}

type Cache = Mutex<HashMap<IpAddr, Record>>;

/// The shared ban list, answered from a cache kept in step with the table.
#[derive(Debug)]
pub struct PgBans {
    cache: Arc<Cache>,
    changes: mpsc::Sender<Change>,
}

impl PgBans {
    /// Loads every remembered address, then starts the task that writes changes and reads
    /// other replicas' (it ends when the store is dropped).
    pub(super) async fn start(pg: Pg) -> Result<PgBans, StateError> {
        let cache: Arc<Cache> = Arc::default();
        let mut task = Task {
            pg,
            cache: Arc::downgrade(&cache),
            read_from: i64::MIN,
            failed: None,
        };
        task.refresh().await?;
        let (changes, queue) = mpsc::channel(QUEUE);
        tokio::spawn(task.run(queue));
        Ok(PgBans { cache, changes })
    }

    /// Waits until every change made so far is in the table and the cache has read the
    /// table since (for tests and an orderly shutdown); the first write or read that failed
    /// since the last call, if any.
    pub async fn sync(&self) -> Result<(), StateError> {
        let (done, wait) = oneshot::channel();
        if self.changes.send(Change::Sync(done)).await.is_err() {
            return Ok(());
        }
        wait.await.unwrap_or(Ok(()))
    }

    /// Queues `change` for `ip`'s record (already changed in the cache).
    fn write(&self, record: &mut Record, change: Change) {
        match self.changes.try_send(change) {
            Ok(()) => record.pending += 1,
            Err(mpsc::error::TrySendError::Full(change)) => {
                tracing::warn!(
                    ?change,
                    "ban store queue full; change kept on this replica only"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl BanStore for PgBans {
    fn banned_until(&self, ip: IpAddr, now: SystemTime) -> Option<SystemTime> {
        self.cache
            .lock()
            .get(&ip)
            .and_then(|r| r.ban.banned_until)
            .filter(|until| *until > now)
    }

    fn add_failure(&self, ip: IpAddr, now: SystemTime, window: Duration) -> Option<FailureScore> {
        let mut cache = self.cache.lock();
        if cache.len() > PRUNE_ABOVE {
            cache.retain(|_, r| r.pending > 0 || r.ban.worth_keeping(now, window));
        }
        let record = cache.entry(ip).or_default();
        let score = record.ban.add_failure(now, window)?;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.write(
            record,
            Change::Failure {
                ip,
                at_ms: ms(now),
                window_ms,
            },
        );
        Some(score)
    }

    fn ban(&self, ip: IpAddr, now: SystemTime, until: SystemTime) -> Option<u32> {
        let mut cache = self.cache.lock();
        let record = cache.entry(ip).or_default();
        let bans = record.ban.ban(now, until)?;
        self.write(
            record,
            Change::Ban {
                ip,
                now_ms: ms(now),
                until_ms: ms(until),
            },
        );
        Some(bans)
    }

    fn unban(&self, ip: IpAddr) {
        let mut cache = self.cache.lock();
        // Written even when this replica never saw the address: another one may have banned it.
        let record = cache.entry(ip).or_default();
        record.ban.banned_until = None;
        self.write(record, Change::Unban { ip });
    }

    fn list(&self, now: SystemTime) -> Vec<BanEntry> {
        let mut entries: Vec<BanEntry> = self
            .cache
            .lock()
            .iter()
            .filter_map(|(ip, r)| r.ban.entry(*ip, now))
            .collect();
        entries.sort_by_key(|e| e.ip);
        entries
    }

    fn banned_count(&self, now: SystemTime) -> usize {
        self.cache
            .lock()
            .values()
            .filter(|r| r.ban.banned_at(now))
            .count()
    }
}

/// The background task: writes changes in order, reads other replicas' changes.
struct Task {
    pg: Pg,
    cache: Weak<Cache>,
    /// The database time from which the next refresh reads changes.
    read_from: i64,
    /// The first failure since the last [`PgBans::sync`].
    failed: Option<StateError>,
}

impl Task {
    async fn run(mut self, mut queue: mpsc::Receiver<Change>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = queue.recv() => match change {
                    None => return, // the store was dropped
                    Some(Change::Sync(done)) => {
                        let refreshed = self.refresh().await;
                        let _ = done.send(match self.failed.take() {
                            Some(e) => Err(e),
                            None => refreshed,
                        });
                    }
                    Some(change) => self.apply(change).await,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "cannot read the shared bans");
                        self.failed.get_or_insert(e);
                    }
                }
            }
            if self.cache.strong_count() == 0 {
                return;
            }
        }
    }

    /// Writes one change, then takes the row as it stands into the cache unless more
    /// changes of the address are queued.
    async fn apply(&mut self, change: Change) {
        let ip = match &change {
            Change::Failure { ip, .. } | Change::Ban { ip, .. } | Change::Unban { ip } => *ip,
            Change::Sync(_) => return,
        };
        let row = match self.write(&change).await {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(error = %e, remote = %ip,
                    "cannot write a ban change to the shared table; kept on this replica");
                self.failed.get_or_insert(e);
                None
            }
        };
        let Some(cache) = self.cache.upgrade() else {
            return;
        };
        let mut cache = cache.lock();
        if let Some(record) = cache.get_mut(&ip) {
            record.pending = record.pending.saturating_sub(1);
            if let (0, Some(row)) = (record.pending, row) {
                record.ban.merge(&row);
                record.in_table = true;
            }
        }
    }

    /// Applies `change` to the table; returns the address's row afterwards.
    async fn write(&self, change: &Change) -> Result<Option<Stored>, StateError> {
        let err = |e| self.pg.error(STORE, e);
        let client = self.pg.client(STORE).await?;
        let ip = match change {
            Change::Failure {
                ip,
                at_ms,
                window_ms,
            } => {
                // Nothing counted while banned; failures older than the window dropped.
                client
                    .execute(
                        &format!(
                            "INSERT INTO defender_addresses AS d (ip, failures, changed_ms)
                             VALUES ($1, ARRAY[$2::bigint], {DB_NOW})
                             ON CONFLICT (ip) DO UPDATE SET
                                failures = array_append(ARRAY(
                                    SELECT f FROM (
                                        SELECT f FROM unnest(d.failures) AS f
                                        WHERE $2 - f <= $3 ORDER BY f DESC LIMIT $4::bigint - 1
                                    ) AS recent ORDER BY f
                                ), $2),
                                changed_ms = {DB_NOW}
                             WHERE d.banned_until_ms IS NULL OR d.banned_until_ms <= $2"
                        ),
                        &[&ip.to_string(), at_ms, window_ms, &MAX_FAILURES],
                    )
                    .await
                    .map_err(err)?;
                ip
            }
            Change::Ban {
                ip,
                now_ms,
                until_ms,
            } => {
                // Unless another replica's ban is already running: then that one counts.
                client
                    .execute(
                        &format!(
                            "INSERT INTO defender_addresses AS d
                                (ip, failures, banned_until_ms, bans, changed_ms)
                             VALUES ($1, '{{}}', $3, 1, {DB_NOW})
                             ON CONFLICT (ip) DO UPDATE SET banned_until_ms = $3,
                                bans = d.bans + 1, failures = '{{}}', changed_ms = {DB_NOW}
                             WHERE d.banned_until_ms IS NULL OR d.banned_until_ms <= $2"
                        ),
                        &[&ip.to_string(), now_ms, until_ms],
                    )
                    .await
                    .map_err(err)?;
                ip
            }
            Change::Unban { ip } => {
                client
                    .execute(
                        &format!(
                            "UPDATE defender_addresses SET banned_until_ms = NULL,
                                changed_ms = {DB_NOW} WHERE ip = $1"
                        ),
                        &[&ip.to_string()],
                    )
                    .await
                    .map_err(err)?;
                ip
            }
            Change::Sync(_) => return Ok(None),
        };
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM defender_addresses WHERE ip = $1"),
                &[&ip.to_string()],
            )
            .await
            .map_err(err)?;
        match row {
            Some(row) => Stored::of(&row).map_err(err),
            None => Ok(None),
        }
    }

    /// Reads the rows changed since the last read into the cache, and forgets addresses
    /// nobody has seen for [`REMEMBER_MS`].
    async fn refresh(&mut self) -> Result<(), StateError> {
        let err = |e| self.pg.error(STORE, e);
        let client = self.pg.client(STORE).await?;
        // The time first: a change stamped after it is read by the next refresh. Both
        // statements are prepared once per connection: this runs every REFRESH on every
        // replica, one round trip each.
        let now_statement = client
            .prepare_cached(&format!("SELECT {DB_NOW}"))
            .await
            .map_err(err)?;
        let changed_statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM defender_addresses WHERE changed_ms >= $1"
            ))
            .await
            .map_err(err)?;
        let db_now: i64 = client
            .query_one(&now_statement, &[])
            .await
            .map_err(err)?
            .try_get(0)
            .map_err(err)?;
        let rows = client
            .query(
                &changed_statement,
                &[&self.read_from.saturating_sub(REREAD_MS)],
            )
            .await
            .map_err(err)?;
        let mut stored = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(s) = Stored::of(row).map_err(err)? {
                stored.push(s);
            }
        }
        // Bans whose rows are gone (an operator deleted them rather than lifting them):
        // an unchanged row is not read again, so its absence is looked for.
        let banned: Vec<String> = match self.cache.upgrade() {
            Some(cache) => cache
                .lock()
                .iter()
                .filter(|(_, r)| r.pending == 0 && r.in_table && r.ban.banned_until.is_some())
                .map(|(ip, _)| ip.to_string())
                .collect(),
            None => Vec::new(),
        };
        let present: std::collections::HashSet<String> = if banned.is_empty() {
            Default::default()
        } else {
            client
                .query(
                    "SELECT ip FROM defender_addresses WHERE ip = ANY($1)",
                    &[&banned],
                )
                .await
                .map_err(err)?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(err)?
        };
        if let Some(cache) = self.cache.upgrade() {
            let mut cache = cache.lock();
            for row in &stored {
                let record = cache.entry(row.ip).or_default();
                if record.pending == 0 {
                    record.ban.merge(row);
                    record.in_table = true;
                }
            }
            for ip in banned.iter().filter(|ip| !present.contains(*ip)) {
                if let Ok(ip) = ip.parse::<IpAddr>()
                    && cache.get(&ip).is_some_and(|r| r.pending == 0 && r.in_table)
                {
                    cache.remove(&ip);
                }
            }
        }
        self.read_from = db_now;
        client
            .execute(
                "DELETE FROM defender_addresses
                 WHERE changed_ms < $1 AND (banned_until_ms IS NULL OR banned_until_ms < $2)",
                &[&db_now.saturating_sub(REMEMBER_MS), &db_now],
            )
            .await
            .map_err(err)?;
        Ok(())
    }
}
