//! The PostgreSQL backend: every kind of durable state in one database that all replicas
//! naming the same `[state] url` share — the outbox, cut uploads with their part marks,
//! temporary names, quota usage and reservations, the defender's bans and failure scores,
//! and the directories clients made.
//!
//! A bounded pool of connections (tokio-postgres through deadpool-postgres, TLS by [`tls`]) is
//! shared by the stores; the schema is created and migrated at start under an advisory lock
//! ([`schema`]), so replicas starting together on an empty database are safe.

mod bans;
mod cut_uploads;
mod dirs;
mod fence;
mod health;
#[cfg(test)]
mod lease_tests;
mod listener;
#[cfg(test)]
mod outage_tests;
mod outbox;
mod quota;
mod schema;
mod temp_names;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;
mod tls;
#[cfg(test)]
mod tls_tests;

pub use bans::{PgBans, REFRESH as BAN_REFRESH};
pub use health::{Health, PROBE_INTERVAL};
pub use outbox::PgOutbox;
pub use schema::{SCHEMA_VERSION, SchemaTooNew};
pub use tls::{HandshakeError, TlsSetupError};

use super::{StateError, Stores};
use crate::config::StateTls;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::Duration;

/// Connections each replica keeps at most when none is configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// How long a running upload stays leased to the replica writing it without a renewal;
/// past it the upload counts as left by a dead replica and another one adopts it.
pub const UPLOAD_LEASE: Duration = Duration::from_secs(30);
/// How often a replica renews the leases of the uploads it writes.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The database's clock in ms since the epoch: leases and ban changes are timed by it, so
/// replicas' clocks need not agree.
const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// How long an operation waits for a free connection, or for a new one to be made, before
/// it fails (a database that is down must not hang uploads forever).
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long data sent to the database may stay unacknowledged before its connection
/// counts as broken, unless the URL sets `tcp_user_timeout`: a database that vanishes
/// without closing connections (a network partition) fails operations after this rather
/// than after the kernel's retransmissions (about 15 minutes), so the pool and the health
/// probe see the outage.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens every store in the database at `url` (`postgres://…` or `postgresql://…`), with at
/// most `max_connections` connections over TLS as `url`'s `sslmode` and `tls` say, after
/// creating or migrating its schema: the outbox only when `with_outbox` (a connector is
/// configured). Bans are cached in memory and kept in
/// step with the database by a background task (see [`PgBans`]), so this must run inside a
/// Tokio runtime.
pub async fn open(
    url: &str,
    with_outbox: bool,
    max_connections: usize,
    tls: &StateTls,
) -> Result<Stores, StateError> {
    open_with_bans(url, with_outbox, max_connections, tls)
        .await
        .map(|(stores, _)| stores)
}

/// [`open`], also returning the ban store as itself (to wait for its writes).
async fn open_with_bans(
    url: &str,
    with_outbox: bool,
    max_connections: usize,
    tls: &StateTls,
) -> Result<(Stores, Arc<PgBans>), StateError> {
    let pg = Pg::connect(url, max_connections, tls).await?;
    schema::migrate(&pg).await?;
    pg.health.start_probe(&pg.pool);
    let outbox = if with_outbox {
        let outbox: Arc<dyn super::OutboxStore> = Arc::new(PgOutbox::new(pg.clone()));
        Some(outbox)
    } else {
        None
    };
    let uploads = Arc::new(PgUploads::start(pg.clone(), UPLOAD_LEASE, RENEW_EVERY));
    let pg_health = pg.health.clone();
    let bans = Arc::new(PgBans::start(pg).await?);
    let stores = Stores {
        outbox,
        uploads: uploads.clone(),
        temp_names: uploads.clone(),
        quota: uploads.clone(),
        bans: bans.clone(),
        dirs: uploads,
        health: Some(pg_health),
    };
    Ok((stores, bans))
}

/// Opens (creating or migrating) the outbox alone, as the `outbox` commands do.
pub async fn open_outbox(
    url: &str,
    tls: &StateTls,
) -> Result<Arc<dyn super::OutboxStore>, StateError> {
    let pg = Pg::connect(url, 2, tls).await?;
    schema::migrate(&pg).await?;
    Ok(Arc::new(PgOutbox::new(pg)))
}

/// Opens (creating or migrating) the shared ban list alone, loaded whole, as the `bans`
/// commands do.
pub async fn open_bans(url: &str, tls: &StateTls) -> Result<Arc<PgBans>, StateError> {
    let pg = Pg::connect(url, 2, tls).await?;
    schema::migrate(&pg).await?;
    Ok(Arc::new(PgBans::start(pg).await?))
}

/// The connection pool and where it leads (without credentials, for errors); cheap to clone.
#[derive(Clone)]
pub(crate) struct Pg {
    pool: Pool,
    location: Arc<str>,
    health: Arc<Health>,
    /// Where to connect, for connections outside the pool (the outbox's listener).
    config: Arc<tokio_postgres::Config>,
    /// How connections outside the pool (the listener) speak TLS, as the pool's do.
    tls: tls::MakeRustls,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("location", &self.location)
            .field("max_size", &self.pool.status().max_size)
            .finish()
    }
}

impl Pg {
    /// Parses `url` and makes a pool of at most `max_connections` (at least one), with TLS as
    /// `sslmode` and `tls` say; no connection is made until the first operation.
    async fn connect(url: &str, max_connections: usize, tls: &StateTls) -> Result<Pg, StateError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StateError::backend("state database", "[state] url", InvalidUrl(Box::new(e)))
        })?;
        let location: Arc<str> = location_of(&config).into();
        let tls = tls::connector(config.get_ssl_mode(), tls)
            .map_err(|e| StateError::backend("state database", location.to_string(), e))?;
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // Fast: a connection that broke is found out by its next query, which fails
                // and is retried by the caller's own schedule (the outbox, a resume).
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(DURABLE_COMMITS)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StateError::backend("state database", location.to_string(), e))?;
        Ok(Pg {
            pool,
            location,
            health: Arc::default(),
            config: Arc::new(config),
            tls,
        })
    }

    /// A connection from the pool, or the error of `store`: at once while the health probe
    /// finds the database unreachable, rather than after a connection attempt of its own.
    async fn client(&self, store: &'static str) -> Result<deadpool_postgres::Object, StateError> {
        if let Some(why) = self.health.known_down() {
            // Counted, but no news for the probe: it is what found this out.
            self.health.count(store);
            return Err(StateError::backend(
                store,
                self.location.to_string(),
                Unreachable(why),
            ));
        }
        self.pool
            .get()
            .await
            .map_err(|e| self.error(store, tls::WithCauses(e)))
    }

    /// The error of `store` in this database, caused by `e`.
    fn error(
        &self,
        store: &'static str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StateError {
        self.health.count(store);
        self.health.look_now();
        StateError::backend(store, self.location.to_string(), e)
    }
}

/// Run on every new connection: a database (or role) configured with `synchronous_commit =
/// off` would acknowledge an outbox insert before it is on disk, and a crash would then
/// lose a completion whose client already heard success; the bridge's sessions commit
/// durably. Any other setting (`on`, `remote_apply`, …) is the operator's and is kept.
const DURABLE_COMMITS: &str = "SELECT set_config('synchronous_commit', 'on', false)
     WHERE current_setting('synchronous_commit') = 'off'";

/// An operation refused at once because the health probe finds the database unreachable.
#[derive(Debug, thiserror::Error)]
#[error("unreachable (checked every second; operations resume when it answers): {0}")]
struct Unreachable(String);

/// A `[state] url` that is not a PostgreSQL connection string.
#[derive(Debug, thiserror::Error)]
#[error("not a PostgreSQL URL (postgres://user:password@host:port/database): {0}")]
pub struct InvalidUrl(#[source] Box<dyn std::error::Error + Send + Sync>);

/// `postgres://user@host:port/database`, without the password, for errors and logs.
fn location_of(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// Cut uploads, temporary names and quota usage in the shared database; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgUploads {
    pg: Pg,
    /// This opening's name in `partials.owner` and `leases.owner`: unique per start, so a
    /// restarted replica does not take its dead predecessor's uploads for its own.
    owner: Arc<str>,
    /// How long a lease lasts without a renewal, in ms.
    lease_ms: i64,
    /// The uploads this opening writes, whose leases it renews.
    writing: super::Writing,
    /// When each of those leases was last given or renewed, for
    /// [`may_write`](crate::state::CutUploadStore::may_write).
    fence: fence::Fence,
    /// How long after that this opening still writes: the lease less a margin (see `start`).
    write_window: Duration,
    /// Held by every clone: the renewing task ends when the last one is dropped.
    alive: Arc<()>,
}

impl PgUploads {
    /// The stores on `pg`, with a task renewing the leases of the uploads this opening
    /// writes every `renew_every`, each for `lease`.
    ///
    /// This opening writes an upload only until `lease - 2 × renew_every` after the lease
    /// was last given or renewed (counted from before the statement was sent, so never
    /// later than the database's clock counts it). The margin lets up to one renewal fail
    /// without stopping uploads, covers a part sent just before the fence closes while it
    /// travels to S3, and a step of the database's clock of up to that much: no other
    /// replica may adopt before the database's `lease_until_ms` has passed.
    fn start(pg: Pg, lease: Duration, renew_every: Duration) -> PgUploads {
        let uploads = PgUploads {
            pg,
            owner: uuid::Uuid::now_v7().to_string().into(),
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            writing: super::Writing::default(),
            fence: fence::Fence::default(),
            write_window: lease.saturating_sub(renew_every.saturating_mul(2)),
            alive: Arc::new(()),
        };
        // Not `alive` itself: dropping the stores ends the task.
        let alive = Arc::downgrade(&uploads.alive);
        let (pg, owner, writing, fence, lease_ms) = (
            uploads.pg.clone(),
            uploads.owner.clone(),
            uploads.writing.clone(),
            uploads.fence.clone(),
            uploads.lease_ms,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(renew_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if alive.strong_count() == 0 {
                    return;
                }
                let ids = writing.ids();
                if ids.is_empty() {
                    continue;
                }
                let sent = std::time::Instant::now();
                match renew(&pg, &owner, lease_ms, &ids).await {
                    // Only the leases the database really renewed (still ours) count.
                    Ok(renewed) => fence.renewed(&renewed, sent),
                    Err(e) => tracing::warn!(error = %e, uploads = ids.len(),
                        "cannot renew the leases of running uploads; they stop before their leases run out, and another replica adopts them"),
                }
            }
        });
        uploads
    }
}

/// Renews `owner`'s leases of the running uploads `ids` for `lease_ms`; returns the ids
/// whose leases it renewed (those still running and ours).
async fn renew(
    pg: &Pg,
    owner: &str,
    lease_ms: i64,
    ids: &[String],
) -> Result<Vec<String>, StateError> {
    let client = pg.client(UPLOADS).await?;
    let rows = client
        .query(
            &format!(
                "UPDATE partials SET lease_until_ms = {DB_NOW} + $2
                 WHERE active AND owner = $1 AND upload_id = ANY($3)
                 RETURNING upload_id"
            ),
            &[&owner, &lease_ms, &ids],
        )
        .await
        .map_err(|e| pg.error(UPLOADS, e))?;
    rows.iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e| pg.error(UPLOADS, e))
}

/// The store name of the upload state in errors, as SQLite's.
const UPLOADS: &str = "upload state";

/// A count or size as PostgreSQL's `bigint` (saturating).
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored `bigint` count back (never negative).
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Extracted fields as stored: a JSON object in a `text` column, byte for byte as written.
fn fields_text(fields: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(fields.clone()).to_string()
}

/// Stored fields back; anything but a JSON object (an operator's edit) reads as none.
fn fields_of(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}
