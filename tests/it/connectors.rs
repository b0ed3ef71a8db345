//! The shipped connectors in `config/connectors/`, each loaded unchanged with only its
//! CONTRACT §7 variables set, against a stand-in of its platform written from the
//! platform's published reference (`tests/it/common/platforms/`): the generic webhook, the
//! media-upload form service (sync mode: refusals reach FTP and SFTP clients), Mux and JW
//! Player; a `create` step choosing the key; redirects and `webhook-id`.
//! StreamAMG, Streamdiver and Kaltura (tokens, restarts, multipart) are in
//! `connector_sessions`.

use crate::common;

use common::platforms::{JwPlayer, MediaUpload, Mux, example, fetch, wait_delivered};
use common::{FakeApi, Harness, Login, PASSWORD, Reply, data, sftp_login};
use ingest_bridge::notify::{Outbox, State};
use ingest_bridge::state::OutboxStore as _;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A bridge whose `[notify]` is `notify`, seeing exactly the variables `env`.
async fn start(notify: String, env: &[(&str, &str)]) -> Harness {
    Harness::builder()
        .notify_section(notify)
        .envs(env)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generic_webhook_posts_the_signed_default_body() {
    let api = FakeApi::start().await;
    let h = start(
        example("generic-webhook.toml"),
        &[
            ("NOTIFY_URL", &api.url),
            (
                "NOTIFY_SIGNING_SECRET",
                "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=",
            ),
        ],
    )
    .await;
    let bytes = data(70_000, 5);
    h.upload("alice", "in/clip.mp4", &bytes).await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/upload-complete")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r.body["id"].as_str().expect("id");
    assert_eq!(r.header("idempotency-key"), Some(id));
    assert_eq!(r.header("webhook-id"), Some(id));
    assert!(!id.contains('.'), "Standard Webhooks: no '.' in webhook-id");
    assert!(
        r.header("webhook-signature")
            .is_some_and(|s| s.starts_with("v1,"))
    );
    assert_eq!(r.body["event"], "upload.completed");
    assert_eq!(r.body["key"], "alice/in/clip.mp4");
    assert_eq!(r.body["size"], 70_000);
    assert_eq!(r.body["sha256"], common::sha256_hex(&bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_secret_the_webhook_is_unsigned_and_a_redirect_is_a_failure() {
    let api = FakeApi::start().await;
    let elsewhere = FakeApi::start().await;
    let moved = format!("{}/moved", elsewhere.base);
    api.route(move |r| {
        (r.uri == "/upload-complete").then(|| Reply::new(302, "").header("location", moved.clone()))
    });
    let h = start(example("generic-webhook.toml"), &[("NOTIFY_URL", &api.url)]).await;
    h.upload("alice", "a.mp4", b"abc").await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].header("webhook-signature").is_none(), "unsigned");
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = outbox.list(Some(State::Dead)).await.expect("list");
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "a 3xx is refused, not followed");
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("302")),
        "{dead:?}"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unset_variable_is_a_config_error_naming_it() {
    let text = format!(
        "{}\n[[users]]\nusername = \"u\"\npassword_hash = \"x\"\n",
        example("mux.toml")
    );
    let err = ingest_bridge::config::Config::parse_with_env(
        &text,
        std::path::Path::new("mux.toml"),
        |name| (name == "MUX_TOKEN_ID").then(|| "id".to_string()),
    )
    .expect_err("MUX_TOKEN_SECRET is unset");
    let text = err.to_string();
    assert!(
        text.contains("MUX_TOKEN_SECRET") && text.contains("notify.steps"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_upload_form_streams_the_file_and_refusals_reach_ftp_and_sftp_clients() {
    let service = MediaUpload::start().await;
    let url = service.upload_url();
    let h = start(
        example("media-upload-form.toml"),
        &[
            ("MEDIA_UPLOAD_URL", &url),
            ("MEDIA_UPLOAD_USERNAME", service.username()),
            ("MEDIA_UPLOAD_PASSWORD", service.password()),
            ("MEDIA_UPLOAD_TO", "newsdesk"),
        ],
    )
    .await;

    // Accepted: the client hears success only after the service has the whole file.
    let bytes = data(300_000, 8);
    h.upload("alice", "clip.mp4", &bytes).await;
    let uploads = service.uploads();
    assert_eq!(uploads.len(), 1, "sync: the call happened before 226");
    let u = &uploads[0];
    assert_eq!(u.bytes, bytes, "the whole file in the file part");
    assert_eq!(u.media_size, 300_000);
    assert_eq!(u.content_type, "video/mp4");
    assert_eq!(u.to, "newsdesk");
    assert_eq!(u.from, service.username());
    assert_eq!(u.description.as_deref(), Some("clip.mp4"));
    assert!(h.object("alice/clip.mp4").await.is_some());

    // Refused over FTP: 550 with the service's words; no object left.
    service.refuse_next("Not enough credit");
    let mut ftp = h.login("alice").await;
    let mut reader = std::io::Cursor::new(data(1000, 1));
    let err = ftp
        .put_file("refused.mp4", &mut reader)
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("550") && text.contains("Not enough credit"),
        "{text}"
    );
    assert!(h.object("alice/refused.mp4").await.is_none(), "removed");

    // Refused over SFTP: a failure status with the service's words.
    service.refuse_next("Quota exceeded for newsdesk");
    let client = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("sftp login");
    let mut file = client.sftp.create("/sftp-refused.mp4").await.expect("open");
    file.write_all(&data(2000, 2)).await.expect("write");
    let err = file
        .shutdown()
        .await
        .expect_err("close reports the refusal");
    assert!(
        err.to_string().contains("Quota exceeded for newsdesk"),
        "{err}"
    );
    assert!(h.object("alice/sftp-refused.mp4").await.is_none());
    assert_eq!(service.creates_for("clip.mp4"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mux_creates_one_asset_from_the_input_url_and_retries_a_409() {
    let mux = Mux::start().await;
    let base = mux.base();
    let h = start(
        example("mux.toml"),
        &[
            ("MUX_API_URL", &base),
            ("MUX_TOKEN_ID", mux.token_id()),
            ("MUX_TOKEN_SECRET", mux.token_secret()),
        ],
    )
    .await;
    mux.conflict_next();
    let bytes = data(50_000, 3);
    h.upload("alice", "m.mp4", &bytes).await;
    wait_delivered(&h, 1).await;
    let assets = mux.assets();
    assert_eq!(assets.len(), 1, "the 409 created nothing; the retry did");
    let asset = &assets[0];
    assert_eq!(asset.playback_policies, ["public"]);
    assert!(
        mux.deprecated_fields_used().is_empty(),
        "{:?}",
        asset.request
    );
    let passthrough = asset.passthrough.clone().expect("passthrough");
    assert_eq!(mux.creates_for(&passthrough), 1);
    assert_eq!(fetch(&asset.input_urls[0]).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jw_player_creates_media_with_a_fetch_upload() {
    let jw = JwPlayer::start().await;
    let base = jw.base();
    let h = start(
        example("jwplayer.toml"),
        &[
            ("JWPLAYER_API_URL", &base),
            ("JWPLAYER_SITE_ID", jw.site_id()),
            ("JWPLAYER_API_SECRET", jw.api_secret()),
        ],
    )
    .await;
    let bytes = data(40_000, 4);
    h.upload("alice", "show/ep1.mp4", &bytes).await;
    wait_delivered(&h, 1).await;
    let media = jw.media();
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].metadata["title"], "ep1.mp4");
    let external_id = media[0].metadata["external_id"].as_str().expect("id");
    assert_eq!(jw.creates_for(external_id), 1);
    assert_eq!(fetch(&media[0].download_url).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_step_may_choose_the_key_and_its_refusal_refuses_the_transfer() {
    let api = FakeApi::start().await;
    let notify = r#"[notify]
[notify.create]
url = "BASE/reserve"
json = '{"path": {{ path | tojson }}}'
extract = { asset = "asset.id" }
key = "incoming/{{ asset }}.bin"
[[notify.steps]]
name = "mark.done"
url = "BASE/done/{{ asset }}"
[[notify.steps]]
url = "BASE/complete"
"#
    .replace("BASE", &api.base);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    api.route(move |r| {
        if r.uri == "/reserve" {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Some(if n == 0 {
                Reply::new(200, r#"{"asset": {"id": "A-1"}}"#)
            } else {
                Reply::new(403, r#"{"message": "Folder closed for uploads"}"#)
            });
        }
        None
    });
    let h = start(notify, &[]).await;
    h.upload("alice", "any/name.mp4", b"payload").await;
    assert_eq!(
        h.object("alice/incoming/A-1.bin").await.as_deref(),
        Some(&b"payload"[..])
    );
    assert!(h.object("alice/any/name.mp4").await.is_none());
    let got = api.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[1].uri, "/done/A-1");
    assert_eq!(got[1].body["key"], "alice/incoming/A-1.bin");
    let id = got[2].body["id"].as_str().expect("id");
    assert_eq!(
        got[1].header("idempotency-key"),
        Some(format!("{id}_mark_done").as_str()),
        "no '.' in the ids of steps before the last"
    );

    let mut ftp = h.login("alice").await;
    let mut reader = std::io::Cursor::new(b"nope".to_vec());
    let err = ftp
        .put_file("x.mp4", &mut reader)
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("Folder closed for uploads"),
        "{err}"
    );
    let client = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("sftp login");
    let Err(err) = client.sftp.create("/y.mp4").await else {
        panic!("refused at open");
    };
    assert!(
        err.to_string().contains("Folder closed for uploads"),
        "{err}"
    );
}

/// A receiver that reads a request at `bytes_per_tick` every 50 ms (0: never reads past the
/// head) and answers 200 once it has `Content-Length` bytes.
async fn slow_receiver(bytes_per_tick: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/sink", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if bytes_per_tick == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let mut got = 0;
                let mut buf = vec![0u8; bytes_per_tick];
                while got < length {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let want = bytes_per_tick.min(length - got);
                    match socket.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    url
}

fn push_to(url: &str) -> String {
    format!(
        "[notify]\ntimeout = \"1s\"\nprogress_timeout = \"5s\"\n[[notify.steps]]\nmethod = \"PUT\"\nurl = \"{url}\"\nobject = true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_is_timed_by_its_progress_not_its_length() {
    // 3 MiB read at 1.25 MiB/s: about 2.4 s, more than notify.timeout, never 5 s idle.
    let url = slow_receiver(64 << 10).await;
    let h = start(push_to(&url), &[]).await;
    h.upload("alice", "slow.mp4", &data(3 << 20, 1)).await;
    wait_delivered(&h, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_that_stops_moving_is_cut_and_retried() {
    let url = slow_receiver(0).await;
    let h = start(push_to(&url), &[]).await;
    h.upload("alice", "stuck.mp4", &data(24 << 20, 2)).await;
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = outbox.list(None).await.expect("list");
        if let Some(error) = all.iter().find_map(|e| e.last_error.clone()) {
            assert!(error.contains("made no progress for 5s"), "{error}");
            assert_eq!(all[0].state, "pending", "retried, not dead");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
