//! TLS to PostgreSQL against real PostgreSQL 15 servers with `ssl = on` and certificates from
//! a test CA: what each `sslmode` and `state.tls_verify` accept, refuse, and say.

use super::test_server::{TestCa, TestServer, server};
use super::{Pg, open};
use crate::config::{StateTls, TlsVerify};
use crate::state::StateError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// A server with `ssl = on` whose certificate names `localhost` only, signed by `ca_file`'s
/// CA; over TCP it takes TLS only (`postgres` trusted, `ingest` by SCRAM password).
struct Fixture {
    server: TestServer,
    ca_file: PathBuf,
    /// A CA that signed nothing of the server's.
    other_ca_file: PathBuf,
    _files: tempfile::TempDir,
}

/// The fixture the tests share while any of them runs.
static FIXTURE: Mutex<Weak<Fixture>> = Mutex::new(Weak::new());

fn fixture() -> Arc<Fixture> {
    let mut shared = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fixture) = shared.upgrade() {
        return fixture;
    }
    let ca = TestCa::new("ingest-bridge test CA");
    let files = tempfile::tempdir().expect("tempdir");
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let other_ca_file = files.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, TestCa::new("another CA").pem()).expect("write CA");
    let hba = "hostssl all postgres 127.0.0.1/32 trust\n\
               hostssl all ingest 127.0.0.1/32 scram-sha-256";
    let server = TestServer::start_tls(&ca.server_tls(&["localhost"], Some(hba)));
    let fixture = Arc::new(Fixture {
        server,
        ca_file,
        other_ca_file,
        _files: files,
    });
    *shared = Arc::downgrade(&fixture);
    fixture
}

impl Fixture {
    /// The URL of database `postgres` as `user`, at `host`, with `query` appended.
    fn url(&self, user: &str, host: &str, query: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/postgres{query}",
            self.server.port
        )
    }
}

/// `[state]`'s TLS keys.
fn keys(verify: TlsVerify, ca_file: Option<&Path>) -> StateTls {
    StateTls {
        verify,
        ca_file: ca_file.map(Path::to_path_buf),
    }
}

/// Whether the connection a pool on `url` makes is encrypted, as the server sees it.
async fn ssl_in_use(url: &str, tls: &StateTls) -> Result<bool, StateError> {
    let pg = Pg::connect(url, 1, tls).await?;
    let client = pg.client("test").await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| pg.error("test", e))?;
    Ok(row.get(0))
}

#[tokio::test]
async fn require_with_the_ca_connects_over_tls_and_the_stores_work() {
    let f = fixture();
    let url = f.url("postgres", "localhost", "?sslmode=require");
    let tls = keys(TlsVerify::Full, Some(&f.ca_file));
    assert!(ssl_in_use(&url, &tls).await.expect("connects"));
    let stores = open(&url, true, 2, &tls).await.expect("open over TLS");
    let outbox = stores.outbox.expect("outbox");
    assert!(outbox.list(None).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_verification() {
    let f = fixture();
    let url = f.url("postgres", "localhost", "?sslmode=require");
    let error = ssl_in_use(&url, &keys(TlsVerify::Full, Some(&f.other_ca_file)))
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains("certificate verification failed")
            && message.contains("UnknownIssuer")
            && message.contains("state.tls_ca_file")
            && message.contains(&f.other_ca_file.display().to_string()),
        "{message}"
    );
    // `none` is libpq's `require`: encrypted, not checked.
    let tls = keys(TlsVerify::None, None);
    assert!(ssl_in_use(&url, &tls).await.expect("none connects"));
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_hold_is_refused_by_full_verification() {
    let f = fixture();
    let url = f.url("postgres", "127.0.0.1", "?sslmode=require");
    let error = ssl_in_use(&url, &keys(TlsVerify::Full, Some(&f.ca_file)))
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains("certificate verification failed")
            && message.contains("does not name the host"),
        "{message}"
    );
    // `ca` checks the chain only.
    let tls = keys(TlsVerify::Ca, Some(&f.ca_file));
    assert!(ssl_in_use(&url, &tls).await.expect("ca connects"));
    // ... and still refuses another CA's certificate.
    let tls = keys(TlsVerify::Ca, Some(&f.other_ca_file));
    let error = ssl_in_use(&url, &tls).await.expect_err("refused");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_a_clear_error() {
    let plain = server();
    let url = format!("{}?sslmode=require", plain.url("postgres"));
    let error = ssl_in_use(&url, &keys(TlsVerify::None, None))
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("server does not support TLS"),
        "{error}"
    );
    // `prefer` (no sslmode) talks plain text to it, as before.
    let tls = StateTls::default();
    assert!(
        !ssl_in_use(&plain.url("postgres"), &tls)
            .await
            .expect("plain")
    );
}

#[tokio::test]
async fn prefer_uses_tls_where_plain_connections_are_refused() {
    let f = fixture();
    // No CA: `prefer` checks no certificate (a server could decline TLS anyway).
    let url = f.url("postgres", "127.0.0.1", "");
    assert!(ssl_in_use(&url, &StateTls::default()).await.expect("TLS"));
    let url = f.url("postgres", "127.0.0.1", "?sslmode=disable");
    let error = ssl_in_use(&url, &StateTls::default())
        .await
        .expect_err("plain text is refused by pg_hba.conf");
    assert!(error.to_string().contains("pg_hba.conf"), "{error}");
}

#[tokio::test]
async fn scram_passwords_are_bound_to_the_tls_session() {
    let f = fixture();
    let tls = keys(TlsVerify::Full, Some(&f.ca_file));
    let admin = f.url("postgres", "localhost", "?sslmode=require");
    let pg = Pg::connect(&admin, 1, &tls).await.expect("pool");
    pg.client("test")
        .await
        .expect("connect")
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE ingest LOGIN PASSWORD 'pw'; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        )
        .await
        .expect("role");
    // `require`: SCRAM-SHA-256-PLUS or nothing; it needs the TLS session's end point hash.
    let url = f.url(
        "ingest:pw",
        "localhost",
        "?sslmode=require&channel_binding=require",
    );
    assert!(ssl_in_use(&url, &tls).await.expect("bound SCRAM"));
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_used_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not PEM\n").expect("write");
    let url = "postgres://u@db.internal/ingest?sslmode=require";
    for (file, says) in [(&missing, "cannot read"), (&empty, "no certificate in")] {
        let error = open(url, true, 2, &keys(TlsVerify::Full, Some(file)))
            .await
            .expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains(says)
                && message.contains("state.tls_ca_file")
                && message.contains(&file.display().to_string()),
            "{message}"
        );
    }
}
