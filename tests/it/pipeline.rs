//! The upload pipeline on its own, through the `write` API every non-FTP front-end uses:
//! many concurrent uploads under a budget of a few parts, and dropped uploads.

use crate::common;

use common::{data, s3_client, sha256_hex};
use ingest_bridge::auth::{UserDirectory, VirtualPath};
use ingest_bridge::config::Config;
use ingest_bridge::metrics::{Metrics, Protocol};
use ingest_bridge::notify::Notifier;
use ingest_bridge::storage::embedded::EmbeddedStore;
use ingest_bridge::storage::{Connection, Storage};
use ingest_bridge::upload::{Pipeline, UploadError, UploadRequest};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
    pipeline: Pipeline,
    users: UserDirectory,
}

async fn setup(memory_limit: &str) -> Setup {
    setup_with(memory_limit, "").await
}

async fn setup_with(memory_limit: &str, storage_extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::start(&dir.path().join("store"), "ingest", 0)
        .await
        .expect("store");
    let text = format!(
        "[server]\ndata_dir = \"{}\"\n[storage]\npart_size = \"5MiB\"\nmemory_limit = \"{memory_limit}\"\nupload_concurrency = 2\n{storage_extra}\n\
         [[users]]\nusername = \"u\"\npassword_hash = \"{}\"\nhome = \"u/\"\n",
        dir.path().join("data").display(),
        common::password_hash()
    );
    let config = Config::parse(&text, Path::new("t.toml")).expect("config");
    let metrics = Metrics::new();
    let conn = Connection {
        endpoint_url: Some(store.url.clone()),
        credentials: Some((store.access_key.clone(), store.secret_key.clone())),
    };
    let storage = Storage::connect(&config.storage, &conn, metrics.clone()).await;
    let notifier = Notifier::start(
        &config.notify,
        &config.users,
        &config.server.data_dir,
        None,
        storage.clone(),
        metrics.clone(),
    )
    .await
    .expect("notifier");
    std::fs::create_dir_all(&config.server.data_dir).expect("data dir");
    let stores =
        ingest_bridge::state::sqlite::open(&config.server.data_dir, false).expect("stores");
    let pipeline = Pipeline::new(
        &config.storage,
        &config.upload,
        &stores,
        storage,
        notifier,
        metrics,
    );
    Setup {
        _dir: dir,
        store,
        pipeline,
        users: UserDirectory::new(&config.users),
    }
}

fn request(s: &Setup, path: &str) -> UploadRequest {
    UploadRequest {
        user: s.users.get("u").expect("user"),
        protocol: Protocol::Sftp,
        path: VirtualPath::parse(path).expect("path"),
        remote_addr: "127.0.0.1:1".parse().expect("addr"),
        session_id: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_uploads_finish_under_a_budget_of_a_few_parts() {
    // 12 MiB: two 5 MiB parts and a 1.5 MiB probe pool for 100 uploads at once.
    let s = Arc::new(setup("12MiB").await);
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let len = if i % 10 == 0 {
                5 * 1024 * 1024 + 4096 + i as usize
            } else {
                1000 + 3000 * i as usize
            };
            let bytes = data(len, i);
            let mut up = s
                .pipeline
                .begin(request(&s, &format!("/hundred/{i}.bin")))
                .await
                .expect("begin");
            for chunk in bytes.chunks(32 * 1024) {
                up.write(chunk).await.expect("write");
            }
            let done = up.finish().await.expect("finish");
            assert_eq!(done.size, len as u64);
            assert_eq!(done.sha256, sha256_hex(&bytes));
            (i, bytes)
        }));
    }
    let finished = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(tasks))
        .await
        .expect("no deadlock: every upload finishes");
    let s3 = s3_client(&s.store).await;
    for t in finished {
        let (i, bytes) = t.expect("task");
        let body = s3
            .get(&format!("u/hundred/{i}.bin"), 0)
            .await
            .expect("object")
            .collect()
            .await
            .expect("body");
        assert!(body.into_bytes().as_ref() == bytes.as_slice(), "{i} intact");
    }
    let budget = s.pipeline.budget();
    assert!(
        budget.peak() <= budget.limit(),
        "peak {} > limit {}",
        budget.peak(),
        budget.limit()
    );
    assert_eq!(budget.in_use(), 0);
    assert_eq!(s.pipeline.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_upload_is_aborted_and_releases_its_budget_when_resuming_is_off() {
    let s = setup_with("64MiB", "resume_window = \"0s\"").await;
    let mut up = s
        .pipeline
        .begin(request(&s, "/dropped.bin"))
        .await
        .expect("begin");
    up.write(&data(11 * 1024 * 1024, 1)).await.expect("write");
    let upload_id = up.multipart_id().expect("multipart started").to_string();
    drop(up);
    let s3 = s3_client(&s.store).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let parts = s3.list_parts("u/dropped.bin", &upload_id).await;
        let aborted =
            matches!(&parts, Ok(p) if p.is_empty()) || matches!(&parts, Err(e) if e.not_found);
        // The abort runs in the background: parts in flight are stopped first, which
        // returns their budget, then the multipart upload is aborted.
        if aborted && s.pipeline.budget().in_use() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s3.head("u/dropped.bin").await.expect("head").is_none());
    assert_eq!(s.pipeline.budget().in_use(), 0);
    assert_eq!(s.pipeline.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_after_the_grace_period_aborts_running_uploads() {
    let s = setup("64MiB").await;
    let mut up = s
        .pipeline
        .begin(request(&s, "/slow.bin"))
        .await
        .expect("begin");
    up.write(&data(6 * 1024 * 1024, 2)).await.expect("write");
    let pipeline = s.pipeline.clone();
    let stopping = tokio::spawn(async move { pipeline.shutdown(Duration::from_millis(200)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = up
        .write(b"more")
        .await
        .expect_err("writes fail after the grace period");
    assert!(matches!(err, UploadError::ShuttingDown), "{err}");
    up.abort(&err).await;
    stopping.await.expect("shutdown returns");
    assert!(
        s.pipeline.begin(request(&s, "/late.bin")).await.is_err(),
        "new uploads refused"
    );
    let s3 = s3_client(&s.store).await;
    assert!(s3.head("u/slow.bin").await.expect("head").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_upload_keeps_its_whole_parts_and_resumes_to_the_whole_hash() {
    let s = setup("64MiB").await;
    let source = data(13 * 1024 * 1024, 3);
    let mut up = s
        .pipeline
        .begin(request(&s, "/kept.bin"))
        .await
        .expect("begin");
    up.write(&source[..12 * 1024 * 1024]).await.expect("write");
    drop(up);
    // Two whole 5 MiB parts are kept; the 2 MiB after them are dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let record = s
            .pipeline
            .partials()
            .get("u/kept.bin".into())
            .await
            .expect("store");
        if let Some(r) = record.filter(|r| !r.active) {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never suspended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kept.durable_bytes, 10 * 1024 * 1024);
    assert_eq!(s.pipeline.budget().in_use(), 0);
    // A wrong offset is refused with the right one in the message.
    let err = s
        .pipeline
        .resume(request(&s, "/kept.bin"), 12 * 1024 * 1024)
        .await
        .err()
        .expect("wrong offset refused");
    assert!(
        err.to_string().contains("10485760 bytes are stored"),
        "{err}"
    );
    let mut up = s
        .pipeline
        .resume(request(&s, "/kept.bin"), 10 * 1024 * 1024)
        .await
        .expect("resume");
    up.write(&source[10 * 1024 * 1024..]).await.expect("write");
    let done = up.finish().await.expect("finish");
    assert_eq!(done.size, source.len() as u64);
    assert_eq!(done.sha256, sha256_hex(&source));
    let s3 = s3_client(&s.store).await;
    let body = common::object_bytes(&s3, "u/kept.bin").await;
    assert!(body.expect("object") == source);
    assert!(
        s.pipeline
            .partials()
            .get("u/kept.bin".into())
            .await
            .expect("store")
            .is_none(),
        "record forgotten once complete"
    );
}
