//! The schema and its versions. `migrate` runs at every start, in one transaction holding a
//! transaction-scoped advisory lock, so replicas starting together on an empty database
//! queue behind each other: the first creates the tables, the others find them made. DDL is
//! transactional in PostgreSQL, so a migration that fails leaves the previous version whole.
//!
//! A database migrated by a newer release (a version past [`SCHEMA_VERSION`]) is refused:
//! this release cannot know what the newer columns mean.

use super::Pg;
use crate::state::StateError;

/// The store name of schema errors.
const STORE: &str = "state database";

/// Key of the advisory lock that serialises migrations ("ingestbr" in ASCII); only the
/// bridge's own sessions take it.
const LOCK_KEY: i64 = 0x696e_6765_7374_6272;

/// Every migration in order; the schema version is how many have run. Append only: a
/// released migration is never edited, as replicas may already have run it.
const MIGRATIONS: &[&str] = &[
    // 1: every table of the first release. Ids, keys and user names collate as bytes
    // ("C"), as in SQLite, so listings sort the same and prefix searches use the indexes.
    // `outbox.claimed_by` / `claimed_until_ms` are the delivery lease: the replica
    // delivering an entry and until when the others leave it alone.
    r#"
    CREATE TABLE outbox (
        id text COLLATE "C" PRIMARY KEY,
        key text NOT NULL,
        body bytea NOT NULL,
        state text NOT NULL,
        attempts bigint NOT NULL DEFAULT 0,
        step bigint NOT NULL DEFAULT 0,
        fields text NOT NULL DEFAULT '{}',
        created_ms bigint NOT NULL,
        updated_ms bigint NOT NULL,
        next_attempt_ms bigint NOT NULL DEFAULT 0,
        since_ms bigint NOT NULL,
        last_error text,
        claimed_by text,
        claimed_until_ms bigint
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt_ms);
    CREATE INDEX outbox_created ON outbox (created_ms, id);

    CREATE TABLE partials (
        key text COLLATE "C" PRIMARY KEY,
        username text COLLATE "C" NOT NULL,
        path text NOT NULL,
        upload_id text NOT NULL,
        content_type text NOT NULL,
        id text NOT NULL,
        fields text NOT NULL,
        started_at_ms bigint NOT NULL,
        updated_ms bigint NOT NULL,
        durable_bytes bigint NOT NULL DEFAULT 0,
        durable_parts bigint NOT NULL DEFAULT 0,
        hash_state bytea,
        active boolean NOT NULL
    );
    CREATE INDEX partials_cut ON partials (username, key) WHERE NOT active;
    CREATE INDEX partials_expiry ON partials (updated_ms) WHERE NOT active;

    CREATE TABLE part_marks (
        upload_id text NOT NULL,
        number bigint NOT NULL,
        end_offset bigint NOT NULL,
        hash_state bytea NOT NULL,
        PRIMARY KEY (upload_id, number)
    );

    CREATE TABLE temp_objects (
        key text COLLATE "C" PRIMARY KEY,
        username text NOT NULL,
        size bigint NOT NULL,
        sha256 text NOT NULL,
        content_type text NOT NULL,
        id text NOT NULL,
        fields text NOT NULL,
        started_at_ms bigint NOT NULL,
        completed_ms bigint NOT NULL
    );
    CREATE INDEX temp_objects_completed ON temp_objects (completed_ms);

    CREATE TABLE quota_usage (
        username text COLLATE "C" PRIMARY KEY,
        bytes bigint NOT NULL,
        files bigint NOT NULL,
        counted_ms bigint NOT NULL
    );

    CREATE TABLE defender_addresses (
        ip text PRIMARY KEY,
        failures bigint[] NOT NULL DEFAULT '{}',
        banned_until_ms bigint,
        bans bigint NOT NULL DEFAULT 0,
        changed_ms bigint NOT NULL
    );
    CREATE INDEX defender_addresses_changed ON defender_addresses (changed_ms);
    "#,
    // 2: one writer per running upload. A running record is leased to the replica writing
    // it (`owner`, renewed until `lease_until_ms`, by the database's clock); one whose lease
    // ran out was left by a replica that died and is adopted by another. Records running
    // before this version get one lease to finish. `leases` holds named leases such as the
    // right to sweep expired cut uploads, one replica at a time.
    r#"
    ALTER TABLE partials ADD COLUMN owner text, ADD COLUMN lease_until_ms bigint;
    UPDATE partials SET lease_until_ms =
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 30000 WHERE active;
    CREATE INDEX partials_leases ON partials (owner) WHERE active;

    CREATE TABLE leases (
        name text PRIMARY KEY,
        owner text NOT NULL,
        until_ms bigint NOT NULL
    );
    "#,
    // 3: quota reservations of uploads in flight, one row per upload with its lease (owner,
    // expiry), so replicas share them; and directories clients made, with their parent so
    // a listing reads them with one indexed query.
    r#"
    CREATE TABLE quota_claims (
        id text COLLATE "C" PRIMARY KEY,
        username text COLLATE "C" NOT NULL,
        owner text NOT NULL,
        bytes bigint NOT NULL,
        files bigint NOT NULL,
        expires_ms bigint NOT NULL
    );
    CREATE INDEX quota_claims_user ON quota_claims (username, expires_ms);
    CREATE INDEX quota_claims_expiry ON quota_claims (expires_ms);

    CREATE TABLE made_dirs (
        prefix text COLLATE "C" PRIMARY KEY,
        parent text COLLATE "C" NOT NULL
    );
    CREATE INDEX made_dirs_parent ON made_dirs (parent, prefix);
    "#,
    // 4: the admin API's last deliveries (newest first within a state) without a sort of
    // every delivered entry.
    r#"
    CREATE INDEX outbox_changed ON outbox (state, updated_ms);
    "#,
];

/// The schema version this release creates and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The database was migrated by a newer release than this one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database schema is at version {found}, newer than version {known} that this \
     ingest-bridge knows: a newer release migrated it. Run that release (or a newer one) on \
     every replica sharing this database, or point [state] url at another database; this \
     release does not downgrade a schema"
)]
pub struct SchemaTooNew {
    /// The version found in the database.
    pub found: i32,
    /// The newest version this release knows.
    pub known: i32,
}

/// Creates the tables, or brings them to [`SCHEMA_VERSION`], under the advisory lock.
pub(super) async fn migrate(pg: &Pg) -> Result<(), StateError> {
    let err = |e: tokio_postgres::Error| pg.error(STORE, e);
    let mut client = pg.client(STORE).await?;
    let tx = client.transaction().await.map_err(err)?;
    // Before anything else, even the version table's creation: two replicas creating it at
    // once would collide on the catalog's unique indexes.
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({LOCK_KEY})"))
        .await
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ingest_bridge_schema (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            version integer NOT NULL
        )",
    )
    .await
    .map_err(err)?;
    let found: i32 = tx
        .query_opt("SELECT version FROM ingest_bridge_schema", &[])
        .await
        .map_err(err)?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(pg.error(
            STORE,
            SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            },
        ));
    }
    let first = usize::try_from(found).unwrap_or(0);
    for (done, migration) in MIGRATIONS.iter().enumerate().skip(first) {
        tx.batch_execute(migration).await.map_err(err)?;
        let version = i32::try_from(done + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO ingest_bridge_schema (version) VALUES ($1)
             ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
            &[&version],
        )
        .await
        .map_err(err)?;
        tracing::info!(database = %pg.location, version, "state database schema migrated");
    }
    tx.commit().await.map_err(err)
}
