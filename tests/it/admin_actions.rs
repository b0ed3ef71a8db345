//! More of the admin API against a real bridge: closing an FTP session in the middle of an
//! upload, and the listener over HTTPS.

use crate::admin::{Admin, TOKEN, with_admin};
use crate::common::raw_ftp::self_signed_certificate;
use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_an_ftp_session_mid_upload_cuts_the_upload_and_says_why() {
    let h = with_admin(Harness::builder().resume_window("0s"))
        .start()
        .await;
    let admin = Admin::of(&h);
    let mut ftp = h.login("alice").await;
    let mut stream = ftp.put_with_stream("live.mxf").await.expect("STOR");
    stream
        .write_all(&data(6 * 1024 * 1024, 5))
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = admin.get("/api/v1/transfers").await;
        if listed[0]["bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let session = listed[0]["session_id"]
        .as_str()
        .expect("listed")
        .to_string();
    let (status, body) = admin
        .call(Method::DELETE, &format!("/api/v1/sessions/{session}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The client keeps sending: the server stops reading and the connection ends.
    let mut cut = false;
    for _ in 0..100 {
        let sent = stream.write_all(&[0u8; 64 * 1024]).await;
        if sent.is_err() || stream.flush().await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cut, "the data connection is closed under the client");
    drop(stream);
    for _ in 0..100 {
        if admin.get("/api/v1/transfers").await == Value::Array(vec![])
            && h.open_multipart_ids().is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin.get("/api/v1/transfers").await, Value::Array(vec![]));
    assert!(h.open_multipart_ids().is_empty(), "nothing left in S3");
    assert_eq!(h.object("alice/live.mxf").await, None, "no object");
    let audit =
        std::fs::read_to_string(h.config.server.data_dir.join("audit.jsonl")).expect("audit file");
    let transfer = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["record"] == "transfer" && r["path"] == "/live.mxf")
        .expect("the cut upload is in the audit trail");
    assert_eq!(transfer["outcome"], "aborted", "{transfer}");
    assert!(
        transfer["error"]
            .as_str()
            .is_some_and(|e| e.contains("operator closed this session")),
        "{transfer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_listener_serves_https_with_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, der) = self_signed_certificate(dir.path(), "admin");
    let h = with_admin(Harness::builder())
        .set("admin.tls.cert", cert.to_string_lossy().as_ref())
        .set("admin.tls.key", key.to_string_lossy().as_ref())
        .start()
        .await;
    let addr = h.bridge().admin_addr.expect("admin");
    assert!(h.bridge().admin_url(addr).starts_with("https://"));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&der).expect("der"))
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/api/v1/status", addr.port());
    let resp = client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let unauthorized = client.get(&url).send().await.expect("answer");
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_cannot_leave_a_reachable_listener_without_a_token() {
    let h = Harness::builder()
        .set("admin.listen", "0.0.0.0:0")
        .set("admin.token", TOKEN)
        .start()
        .await;
    let port = h.bridge().admin_addr.expect("admin").port();
    let admin = Admin::of_port(port);
    // The file now says loopback without a token: valid as a file, but the running
    // listener stays on every address until a restart.
    let text = std::fs::read_to_string(&h.config_path).expect("config");
    let text = text
        .replace("0.0.0.0:0", "127.0.0.1:0")
        .replace(&format!("\"{TOKEN}\""), "\"\"");
    std::fs::write(&h.config_path, text).expect("write");
    let (status, body) = admin.call(Method::POST, "/api/v1/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin.token is empty")),
        "{body}"
    );
    let (status, _, _) = admin.call_with(Method::GET, "/api/v1/status", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the token still applies");
}
