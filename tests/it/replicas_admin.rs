//! The admin API with two replicas on one PostgreSQL database: the outbox and bans are
//! cluster-wide (either replica lists and acts on them), sessions and running uploads are
//! each replica's own.

use crate::admin::{Admin, with_admin};
use crate::common::FakeApi;
use crate::replicas::{ftp_greeting, two_replicas};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Polls `admin`'s `path` until `done` holds of the answer (up to `within`).
async fn wait_for(
    admin: &Admin,
    path: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = tokio::time::Instant::now();
    loop {
        let answer = admin.get(path).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            start.elapsed() < within,
            "{path} still {answer} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn len(answer: &Value) -> usize {
    answer.as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_and_bans_are_cluster_wide_sessions_per_replica() {
    let api = FakeApi::scripted([400]).await;
    let (_pg, a, b) = two_replicas(&api, |builder| with_admin(builder.defender(3, "10m"))).await;
    let (admin_a, admin_b) = (Admin::of(&a), Admin::of(&b));
    let status = admin_b.get("/api/v1/status").await;
    assert_eq!(status["state_backend"], "postgres", "{status}");
    assert_eq!(status["shared"], true);

    // A completion refused on replica A is dead for both; B retries it and it is delivered.
    a.upload("alice", "refused.bin", b"r").await;
    let dead = wait_for(
        &admin_b,
        "/api/v1/outbox?state=dead",
        Duration::from_secs(10),
        |d| len(d) == 1,
    )
    .await;
    let id = dead[0]["id"].as_str().expect("id").to_string();
    let (status, body) = admin_b
        .call(Method::POST, &format!("/api/v1/outbox/{id}/retry"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = api.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(received[1].body["id"], id.as_str());
    wait_for(
        &admin_a,
        "/api/v1/outbox?state=delivered",
        Duration::from_secs(5),
        |d| len(d) == 1 && d[0]["id"] == id.as_str(),
    )
    .await;

    // An address banned on A is listed by B, and lifted through B for both.
    for _ in 0..3 {
        let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(a.ftp)
            .await
            .expect("connect");
        assert!(ftp.login("alice", "wrong").await.is_err());
    }
    wait_for(&admin_b, "/api/v1/bans", Duration::from_secs(5), |d| {
        len(d) == 1 && d[0]["address"] == "127.0.0.1"
    })
    .await;
    let (status, body) = admin_b.call(Method::DELETE, "/api/v1/bans/127.0.0.1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let start = tokio::time::Instant::now();
    while !ftp_greeting(a.ftp).await.starts_with("220") {
        assert!(start.elapsed() < Duration::from_secs(5), "A still refuses");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "ban lifted through B admitted on A after {:?}",
        start.elapsed()
    );

    // A session on A is A's: B does not list it and cannot close it.
    let mut ftp = a.login("bob").await;
    let on_a = wait_for(&admin_a, "/api/v1/sessions", Duration::from_secs(5), |d| {
        d.as_array()
            .is_some_and(|l| l.iter().any(|s| s["username"] == "bob"))
    })
    .await;
    let session = on_a
        .as_array()
        .and_then(|l| l.iter().find(|s| s["username"] == "bob"))
        .expect("bob on A")
        .clone();
    assert!(
        !admin_b
            .get("/api/v1/sessions")
            .await
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["id"] == session["id"])),
        "sessions are per replica"
    );
    let path = format!("/api/v1/sessions/{}", session["id"].as_str().expect("id"));
    let (status, body) = admin_b.call(Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("per replica"))
    );
    assert!(ftp.noop().await.is_ok(), "still open");
    let _ = ftp.quit().await;
}
