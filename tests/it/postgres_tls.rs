//! A bridge whose shared state is in a PostgreSQL that takes TLS connections only (`hostssl`
//! alone in pg_hba.conf): with `sslmode=require` and the CA in `state.tls_ca_file`, `serve`
//! takes an upload and delivers its completion from the shared outbox, and the `outbox`
//! commands read it.

use crate::common;

use common::postgres::{TestCa, TestServer};
use common::{FakeApi, Harness};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_and_the_outbox_commands_use_a_database_that_takes_only_tls() {
    let ca = TestCa::new("ingest-bridge test CA");
    let files = tempfile::tempdir().expect("tempdir");
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let tls = ca.server_tls(&["localhost"], Some("hostssl all all 127.0.0.1/32 trust"));
    let pg = tokio::task::spawn_blocking(move || TestServer::start_tls(&tls))
        .await
        .expect("start the server");
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        pg.port
    );
    let api = FakeApi::start().await;
    let h = Harness::builder()
        .notify_url(&api.url)
        .state_url(&url)
        .set("state.tls_ca_file", ca_file.display().to_string())
        .start()
        .await;

    h.upload("alice", "over-tls.bin", b"sealed").await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body["key"], "alice/over-tls.bin");
    let id = got[0].body["id"].as_str().expect("id").to_string();
    assert!(h.object("alice/over-tls.bin").await.expect("object") == b"sealed");

    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-bridge"))
        .args(["outbox", "list", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("outbox list");
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&id)),
        "{id} not listed:\n{text}"
    );
}
