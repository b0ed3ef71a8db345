//! The PostgreSQL backend: every kind of durable state in one database that all replicas
//! naming the same `[state] url` share — the outbox, cut uploads with their part marks,
//! temporary names, quota usage and reservations, the defender's bans and failure scores,
//! and the directories clients made.
//!
//! A bounded pool of connections (tokio-postgres through deadpool-postgres, no TLS yet) is
//! shared by the stores; the schema is created and migrated at start under an advisory lock
//! ([`schema`]), so replicas starting together on an empty database are safe.

mod bans;
mod cut_uploads;
mod dirs;
mod outbox;
mod quota;
mod schema;
mod temp_names;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use bans::PgBans;
pub use outbox::PgOutbox;
pub use schema::{SCHEMA_VERSION, SchemaTooNew};

use super::{StateError, Stores};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

/// Connections each replica keeps at most when none is configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// How long an operation waits for a free connection, or for a new one to be made, before
/// it fails (a database that is down must not hang uploads forever).
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens every store in the database at `url` (`postgres://…` or `postgresql://…`), with at
/// most `max_connections` connections, after creating or migrating its schema: the outbox
/// only when `with_outbox` (a connector is configured). Bans are cached in memory and kept in
/// step with the database by a background task (see [`PgBans`]), so this must run inside a
/// Tokio runtime.
pub async fn open(
    url: &str,
    with_outbox: bool,
    max_connections: usize,
) -> Result<Stores, StateError> {
    open_with_bans(url, with_outbox, max_connections)
        .await
        .map(|(stores, _)| stores)
}

/// [`open`], also returning the ban store as itself (to wait for its writes).
async fn open_with_bans(
    url: &str,
    with_outbox: bool,
    max_connections: usize,
) -> Result<(Stores, Arc<PgBans>), StateError> {
    let pg = Pg::connect(url, max_connections).await?;
    schema::migrate(&pg).await?;
    let outbox = if with_outbox {
        let outbox: Arc<dyn super::OutboxStore> = Arc::new(PgOutbox::new(pg.clone()));
        Some(outbox)
    } else {
        None
    };
    let uploads = Arc::new(PgUploads { pg: pg.clone() });
    let bans = Arc::new(PgBans::start(pg).await?);
    let stores = Stores {
        outbox,
        uploads: uploads.clone(),
        temp_names: uploads.clone(),
        quota: uploads.clone(),
        bans: bans.clone(),
        dirs: uploads,
    };
    Ok((stores, bans))
}

/// Opens (creating or migrating) the outbox alone, as the `outbox` commands do.
pub async fn open_outbox(url: &str) -> Result<Arc<dyn super::OutboxStore>, StateError> {
    let pg = Pg::connect(url, 2).await?;
    schema::migrate(&pg).await?;
    Ok(Arc::new(PgOutbox::new(pg)))
}

/// The connection pool and where it leads (without credentials, for errors); cheap to clone.
#[derive(Clone)]
pub(crate) struct Pg {
    pool: Pool,
    location: Arc<str>,
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
    /// Parses `url` and makes a pool of at most `max_connections` (at least one); no
    /// connection is made until the first operation.
    async fn connect(url: &str, max_connections: usize) -> Result<Pg, StateError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            StateError::backend("state database", "[state] url", InvalidUrl(Box::new(e)))
        })?;
        let location: Arc<str> = location_of(&config).into();
        if !matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable | tokio_postgres::config::SslMode::Prefer
        ) {
            return Err(StateError::backend(
                "state database",
                location.to_string(),
                TlsUnsupported,
            ));
        }
        let manager = Manager::from_config(
            config,
            NoTls,
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
            .build()
            .map_err(|e| StateError::backend("state database", location.to_string(), e))?;
        Ok(Pg { pool, location })
    }

    /// A connection from the pool, or the error of `store`.
    async fn client(&self, store: &'static str) -> Result<deadpool_postgres::Object, StateError> {
        self.pool.get().await.map_err(|e| self.error(store, e))
    }

    /// The error of `store` in this database, caused by `e`.
    fn error(
        &self,
        store: &'static str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StateError {
        StateError::backend(store, self.location.to_string(), e)
    }
}

/// A `[state] url` that is not a PostgreSQL connection string.
#[derive(Debug, thiserror::Error)]
#[error("not a PostgreSQL URL (postgres://user:password@host:port/database): {0}")]
pub struct InvalidUrl(#[source] Box<dyn std::error::Error + Send + Sync>);

/// A URL asking for TLS (`sslmode=require`), which this release does not speak yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "sslmode=require: this release connects to PostgreSQL without TLS; keep the database on \
     a private network and drop sslmode from state.url (or set sslmode=disable)"
)]
pub struct TlsUnsupported;

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
