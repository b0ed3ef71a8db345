//! `[auth.http]`: the platform decides logins of the users it owns — home, permissions and
//! metadata come from its answer; its failure refuses logins, never opens them.

use crate::common;

use common::{FakeApi, Harness, Login, PASSWORD, Reply, sftp_login};
use std::time::Duration;
use suppaftp::tokio::AsyncFtpStream;

/// The fingerprint of the key the platform knows for `tenant7`.
fn tenant_key_fingerprint() -> String {
    common::client_key(7)
        .public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string()
}

/// The platform's login endpoint: `tenant7` with `right` (or its key) lives in `tenants/7`
/// and may upload and list; `flaky` makes the platform fail; anyone else is refused.
async fn platform() -> FakeApi {
    let api = FakeApi::start().await;
    let known_key = tenant_key_fingerprint();
    api.route(move |r| {
        if r.uri != "/auth" {
            return None;
        }
        let proven = r.body["password"] == "right"
            || r.body["public_key_fingerprint"].as_str() == Some(known_key.as_str());
        Some(match r.body["username"].as_str() {
            Some("tenant7") if proven => Reply::new(
                200,
                r#"{"home": "tenants/7", "permissions": ["upload", "list"], "metadata": {"tenant": "7"}}"#,
            ),
            Some("flaky") => Reply::new(503, "maintenance"),
            Some("garbled") => Reply::new(200, "<html>oops</html>"),
            _ => Reply::new(401, "no"),
        })
    });
    api
}

async fn bridge(api: &FakeApi) -> Harness {
    let section = format!(
        "[auth.http]\nurl = \"{}/auth\"\ntimeout = \"2s\"\ncache_ttl = \"60s\"\nheaders = {{ \"X-Api-Key\" = \"auth-key\" }}\n",
        api.base
    );
    Harness::builder().toml(section).start().await
}

fn auth_requests(api: &FakeApi) -> Vec<common::Received> {
    api.requests()
        .into_iter()
        .filter(|r| r.uri == "/auth")
        .collect()
}

async fn ftp_login(h: &Harness, user: &str, password: &str) -> Result<AsyncFtpStream, String> {
    let mut ftp = AsyncFtpStream::connect(h.ftp)
        .await
        .map_err(|e| e.to_string())?;
    ftp.login(user, password).await.map_err(|e| e.to_string())?;
    Ok(ftp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_decides_home_permissions_and_metadata() {
    let api = platform().await;
    let h = bridge(&api).await;

    let mut ftp = ftp_login(&h, "tenant7", "right").await.expect("allowed");
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .await
        .expect("TYPE I");
    ftp.put_file(
        "clip.mov",
        &mut std::io::Cursor::new(b"tenant bytes".to_vec()),
    )
    .await
    .expect("upload into the home the platform gave");
    assert!(
        ftp.rm("clip.mov").await.is_err(),
        "no delete permission was given"
    );
    let _ = ftp.quit().await;
    assert_eq!(
        h.object("tenants/7/clip.mov").await,
        Some(b"tenant bytes".to_vec())
    );
    let event = h
        .events()
        .into_iter()
        .find(|e| e["key"] == "tenants/7/clip.mov")
        .expect("completion");
    assert_eq!(event["username"], "tenant7");
    assert_eq!(event["metadata"]["tenant"], "7");

    let asked = auth_requests(&api);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].header("x-api-key"), Some("auth-key"));
    assert_eq!(asked[0].body["protocol"], "ftp");
    assert_eq!(asked[0].body["remote_ip"], "127.0.0.1");

    // Cached: the same login again costs no request.
    let mut again = ftp_login(&h, "tenant7", "right").await.expect("cached");
    let _ = again.quit().await;
    assert_eq!(auth_requests(&api).len(), 1);
    // SFTP asks again (another protocol), and is let in the same way.
    assert!(
        sftp_login(h.sftp, "tenant7", Login::Password("right"))
            .await
            .is_ok()
    );
    let asked = auth_requests(&api);
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1].body["protocol"], "sftp");

    // A key login: the platform gets the key and its fingerprint, not a password.
    assert!(
        sftp_login(
            h.sftp,
            "tenant7",
            Login::Key(Box::new(common::client_key(7)))
        )
        .await
        .is_ok()
    );
    assert!(
        sftp_login(
            h.sftp,
            "tenant7",
            Login::Key(Box::new(common::client_key(8)))
        )
        .await
        .is_err(),
        "a key the platform does not know"
    );
    let by_key: Vec<_> = auth_requests(&api)
        .into_iter()
        .filter(|r| r.body["password"].is_null())
        .collect();
    assert!(!by_key.is_empty());
    assert!(
        by_key[0].body["public_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("ssh-ed25519 "))
    );

    // Users in [[users]] never reach the platform.
    let mut alice = ftp_login(&h, "alice", PASSWORD).await.expect("local user");
    let _ = alice.quit().await;
    assert!(
        auth_requests(&api)
            .iter()
            .all(|r| r.body["username"] != "alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_and_failures_of_the_platform_both_keep_the_door_shut() {
    let api = platform().await;
    let h = bridge(&api).await;
    assert!(ftp_login(&h, "tenant7", "wrong").await.is_err(), "401");
    assert!(ftp_login(&h, "flaky", "any").await.is_err(), "503: refused");
    assert!(
        ftp_login(&h, "garbled", "any").await.is_err(),
        "not JSON: refused"
    );
    assert!(
        sftp_login(h.sftp, "flaky", Login::Password("any"))
            .await
            .is_err()
    );
    // A platform that does not answer at all.
    *api.delay.lock().expect("delay") = Duration::from_secs(5);
    let started = std::time::Instant::now();
    assert!(
        ftp_login(&h, "tenant7", "right").await.is_err(),
        "timeout: refused"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "auth.http.timeout applies"
    );
    let m = h.scrape().await;
    let result = |r: &str| {
        m.get(&format!(
            "ingest_bridge_auth_http_requests_total{{result={r}}}"
        ))
    };
    assert_eq!(result("refused"), 1.0);
    assert_eq!(result("error"), 4.0);
    assert_eq!(result("allowed"), 0.0);
}
