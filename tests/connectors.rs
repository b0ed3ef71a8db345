//! Each example connector in `config/connectors/` against a stand-in of its platform that
//! records the exact requests; sync-mode refusals reaching FTP and SFTP clients; a `create`
//! step choosing the key; step resumption after a failure.

mod common;

use common::{FakeApi, Harness, Login, Options, PASSWORD, Reply, data, sftp_login};
use ingest_bridge::notify::{Outbox, State};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The example's text, pointed at the stand-in: `bases` maps the platform's URL prefix to
/// the stand-in, `secrets` fills `${VARS}`.
fn example(name: &str, bases: &[(&str, &str)], secrets: &[(&str, &str)]) -> String {
    let path = format!("{}/config/connectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).expect("example exists");
    for (from, to) in bases.iter().chain(secrets) {
        assert!(text.contains(from), "{name} mentions {from}");
        text = text.replace(from, to);
    }
    text
}

async fn start(api: &FakeApi, notify: String, alice_extra: &str) -> Harness {
    let _ = api;
    Harness::start(Options {
        notify_section: Some(notify),
        alice_extra: alice_extra.to_string(),
        ..Options::default()
    })
    .await
}

/// Form fields of an `application/x-www-form-urlencoded` body.
fn form(raw: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(raw).expect("utf-8 form");
    text.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .expect("utf-8")
                    .to_string()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
}

/// GETs a presigned URL: the platform must be able to fetch the object with it.
async fn fetch(url: &str) -> Vec<u8> {
    let response = reqwest::get(url).await.expect("presigned GET");
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.expect("body").to_vec()
}

async fn wait_delivered(h: &Harness, id: &str) {
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let state = outbox.state_of(id).await.expect("query");
        if state.as_deref() == Some("delivered") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still {state:?}: {:?}",
            outbox.list(None).await.expect("list")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generic_webhook_posts_the_signed_default_body() {
    let api = FakeApi::start().await;
    let text = example(
        "generic-webhook.toml",
        &[("https://hooks.example.com/ingest/upload-complete", &api.url)],
        &[
            (
                "${WEBHOOK_SIGNING_SECRET}",
                "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=",
            ),
            ("${WEBHOOK_TOKEN}", "tok-1"),
        ],
    );
    let h = start(&api, text, "").await;
    let bytes = data(70_000, 5);
    h.upload("alice", "in/clip.mp4", &bytes).await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/upload-complete")
    );
    assert_eq!(r.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r.body["id"].as_str().expect("id");
    assert_eq!(r.header("idempotency-key"), Some(id));
    assert_eq!(r.header("webhook-id"), Some(id));
    assert!(
        r.header("webhook-signature")
            .is_some_and(|s| s.starts_with("v1,"))
    );
    assert_eq!(r.body["event"], "upload.completed");
    assert_eq!(r.body["key"], "alice/in/clip.mp4");
    assert_eq!(r.body["path"], "/in/clip.mp4");
    assert_eq!(r.body["size"], 70_000);
    assert_eq!(r.body["sha256"], common::sha256_hex(&bytes));
    assert_eq!(r.body["metadata"]["channel_id"], "ch-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_upload_form_streams_the_file_and_refusals_reach_ftp_and_sftp_clients() {
    let api = FakeApi::start().await;
    let text = example(
        "media-upload-form.toml",
        &[("https://media.example.com", &api.base)],
        &[("${MEDIA_SERVICE_TOKEN}", "svc-token")],
    );
    let h = start(
        &api,
        text,
        "[users.notify]\nvars = { from = \"Alice Agency\", to = \"newsdesk\" }\n",
    )
    .await;

    // Accepted (JSON answer): the client hears success only after the service has the file.
    api.replies.lock().unwrap().push_back(Reply::new(
        200,
        r#"{"media_url": "https://media.example.com/m/1"}"#,
    ));
    let bytes = data(300_000, 8);
    h.upload("alice", "clip.mp4", &bytes).await;
    let got = api.requests();
    assert_eq!(got.len(), 1, "sync: the call happened before 226");
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.uri.as_str()), ("POST", "/api/upload"));
    assert_eq!(r.header("x-auth-token"), Some("svc-token"));
    let content_type = r.header("content-type").expect("content-type");
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let raw = &r.raw;
    let contains = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"name=\"from\"\r\n\r\nAlice Agency\r\n"));
    assert!(contains(b"name=\"to\"\r\n\r\nnewsdesk\r\n"));
    assert!(contains(b"name=\"description\"\r\n\r\nclip.mp4\r\n"));
    let lower = String::from_utf8_lossy(raw).to_lowercase();
    assert!(
        lower.contains("name=\"file\"; filename=\"clip.mp4\"\r\ncontent-type: video/mp4\r\n\r\n")
    );
    assert!(contains(&bytes), "the whole file in the file part");
    assert!(h.object("alice/clip.mp4").await.is_some());

    // Refused over FTP (JSON message): 550 with the service's words; no object left.
    api.replies.lock().unwrap().push_back(Reply::new(
        402,
        r#"{"status": "error", "message": "Not enough credit"}"#,
    ));
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

    // Refused over SFTP (XML message): a failure status with the service's words.
    api.replies.lock().unwrap().push_back(Reply::new(
        402,
        "<?xml version=\"1.0\"?><response><status>error</status><message>Quota exceeded for newsdesk</message></response>",
    ));
    let client = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("sftp login");
    let mut file = client.sftp.create("/xml-refused.mp4").await.expect("open");
    file.write_all(&data(2000, 2)).await.expect("write");
    let err = file
        .shutdown()
        .await
        .expect_err("close reports the refusal");
    assert!(
        err.to_string().contains("Quota exceeded for newsdesk"),
        "{err}"
    );
    assert!(h.object("alice/xml-refused.mp4").await.is_none(), "removed");

    // Accepted with an XML answer.
    api.replies.lock().unwrap().push_back(Reply::new(
        201,
        "<response><media_url>https://media.example.com/m/2</media_url></response>",
    ));
    let mut file = client.sftp.create("/xml-ok.mp4").await.expect("open");
    file.write_all(b"ok").await.expect("write");
    file.shutdown().await.expect("accepted");
    assert!(h.object("alice/xml-ok.mp4").await.is_some());
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    let dead = outbox.list(Some(State::Dead)).await.expect("list");
    assert_eq!(dead.len(), 2, "both refusals kept for an operator");
    let m = h.metrics_text().await;
    assert_eq!(
        common::metric(
            &m,
            "ingest_bridge_uploads_total",
            &[("protocol", "ftp"), ("outcome", "rejected")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamamg_creates_the_entry_at_start_then_puts_the_object_to_its_upload_url() {
    let api = FakeApi::start().await;
    let text = example(
        "streamamg.toml",
        &[("https://api.cloudmatrix.streamamg.com", &api.base)],
        &[("${STREAMAMG_API_KEY}", "amg-key")],
    );
    let upload_url = format!("{}/bucket/upload/e-77?sig=abc", api.base);
    let answer = format!(r#"{{"id": "e-77", "uploadUrl": "{upload_url}"}}"#);
    api.route(move |r| (r.uri == "/v1/entry").then(|| Reply::new(201, answer.clone())));
    let h = start(&api, text, "").await;
    let bytes = data(6 * 1024 * 1024 + 3, 4);
    h.upload("alice", "match.mp4", &bytes).await;
    let got = api.wait_for(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2);
    let create = &got[0];
    assert_eq!(
        (create.method.as_str(), create.uri.as_str()),
        ("POST", "/v1/entry")
    );
    assert_eq!(create.header("x-api-key"), Some("amg-key"));
    assert_eq!(create.body["name"], "match.mp4");
    assert_eq!(create.body["mediaType"], "video");
    assert_eq!(create.body["metadata"]["channel_id"], "ch-42");
    let id = create.body["referenceId"].as_str().expect("id");
    let put = &got[1];
    assert_eq!(
        (put.method.as_str(), put.uri.as_str()),
        ("PUT", "/bucket/upload/e-77?sig=abc")
    );
    assert_eq!(
        put.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(put.header("content-type"), Some("video/mp4"));
    assert!(put.raw == bytes, "the object's bytes, streamed from S3");
    assert_eq!(
        put.header("idempotency-key"),
        Some(id),
        "last step: the completion id"
    );
    wait_delivered(&h, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamdiver_imports_from_a_working_presigned_url() {
    let api = FakeApi::start().await;
    let text = example(
        "streamdiver.toml",
        &[("https://api.streamdiver.com", &api.base)],
        &[("${STREAMDIVER_TOKEN}", "sd-token")],
    );
    api.route(|_| Some(Reply::new(202, r#"{"id": "asset-1"}"#)));
    let h = start(&api, text, "").await;
    let bytes = data(12_345, 6);
    h.upload("alice", "news/report.mov", &bytes).await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/api/v1/assets/import")
    );
    assert_eq!(r.header("authorization"), Some("Bearer sd-token"));
    assert_eq!(r.body["name"], "report.mov");
    assert_eq!(r.body["channelId"], "ch-42");
    assert_eq!(r.body["input"]["type"], "url");
    assert_eq!(
        r.body["externalId"],
        r.header("idempotency-key").expect("key")
    );
    let url = r.body["input"]["url"].as_str().expect("url");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=43200"),
        "{url}"
    );
    assert_eq!(fetch(url).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kaltura_adds_media_then_content_and_classifies_errors_from_the_body() {
    let api = FakeApi::start().await;
    let text = example(
        "kaltura.toml",
        &[("https://www.kaltura.com", &api.base)],
        &[("${KALTURA_KS}", "default-ks")],
    );
    let adds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let contents = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (a, c) = (adds.clone(), contents.clone());
    api.route(move |r| {
        use std::sync::atomic::Ordering::SeqCst;
        if r.uri.ends_with("/media/action/add") {
            a.fetch_add(1, SeqCst);
            return Some(Reply::new(200, r#"{"objectType": "KalturaMediaEntry", "id": "0_abc123"}"#));
        }
        // addContent: first a retryable Kaltura error, then a permanent one for "bad.mp4",
        // success otherwise — all with HTTP 200, as Kaltura does.
        let n = c.fetch_add(1, SeqCst);
        if n == 0 {
            return Some(Reply::new(200, r#"{"code": "SERVICE_UNAVAILABLE", "message": "try later", "objectType": "KalturaAPIException"}"#));
        }
        if r.raw.windows(7).any(|w| w == b"bad.mp4") || n == 2 {
            return Some(Reply::new(200, r#"{"code": "ENTRY_ID_NOT_FOUND", "message": "Entry id \"0_abc123\" not found", "objectType": "KalturaAPIException"}"#));
        }
        Some(Reply::new(200, r#"{"objectType": "KalturaMediaEntry", "id": "0_abc123", "status": 0}"#))
    });
    let h = start(&api, text, "[users.notify]\nvars = { ks = \"alice-ks\" }\n").await;
    let bytes = data(4096, 9);
    h.upload("alice", "interview.mp4", &bytes).await;
    let got = api.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(
        got.len(),
        3,
        "add, addContent (retryable error), addContent again"
    );
    let add = form(&got[0].raw);
    assert_eq!(got[0].uri, "/api_v3/service/media/action/add");
    assert_eq!(
        got[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(field(&add, "ks"), "alice-ks", "the tenant's own KS");
    assert_eq!(field(&add, "format"), "1");
    assert_eq!(field(&add, "entry:objectType"), "KalturaMediaEntry");
    assert_eq!(field(&add, "entry:mediaType"), "1");
    assert_eq!(field(&add, "entry:name"), "interview.mp4");
    let id = field(&add, "entry:referenceId").to_string();
    for content in &got[1..3] {
        assert_eq!(content.uri, "/api_v3/service/media/action/addContent");
        let f = form(&content.raw);
        assert_eq!(
            field(&f, "entryId"),
            "0_abc123",
            "extracted from media.add, kept across the retry"
        );
        assert_eq!(field(&f, "resource:objectType"), "KalturaUrlResource");
        assert_eq!(fetch(field(&f, "resource:url")).await, bytes);
    }
    assert_eq!(
        adds.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "media.add never repeated"
    );
    wait_delivered(&h, &id).await;

    // A permanent Kaltura error (HTTP 200 + KalturaAPIException) is a dead letter with its message.
    h.upload("alice", "bad.mp4", b"bad").await;
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let dead = outbox.list(Some(State::Dead)).await.expect("list");
        if let Some(d) = dead.first() {
            assert_eq!(d.key, "alice/bad.mp4");
            assert_eq!(d.step, 1, "failed at media.addContent");
            assert!(
                d.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("not found")),
                "{d:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jw_player_creates_media_with_a_fetch_upload() {
    let api = FakeApi::start().await;
    let text = example(
        "jwplayer.toml",
        &[("https://api.jwplayer.com", &api.base)],
        &[
            ("${JWPLAYER_SITE_ID}", "Site1234"),
            ("${JWPLAYER_API_SECRET}", "jw-secret"),
        ],
    );
    api.route(|_| {
        Some(Reply::new(
            200,
            r#"{"id": "MediaAb1", "status": "processing"}"#,
        ))
    });
    let h = start(
        &api,
        text,
        "[users.notify]\nheaders = { \"X-Tenant\" = \"alice-co\" }\n",
    )
    .await;
    let bytes = data(2048, 10);
    h.upload("alice", "promo.mp4", &bytes).await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/v2/sites/Site1234/media/")
    );
    assert_eq!(r.header("authorization"), Some("Bearer jw-secret"));
    assert_eq!(r.header("x-tenant"), Some("alice-co"), "per-user header");
    assert_eq!(r.body["upload"]["method"], "fetch");
    assert_eq!(r.body["metadata"]["title"], "promo.mp4");
    assert_eq!(
        fetch(r.body["upload"]["download_url"].as_str().expect("url")).await,
        bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mux_creates_an_asset_from_the_input_url() {
    let api = FakeApi::start().await;
    let text = example(
        "mux.toml",
        &[("https://api.mux.com", &api.base)],
        &[
            ("${MUX_TOKEN_ID}", "tid"),
            ("${MUX_TOKEN_SECRET}", "tsecret"),
        ],
    );
    api.route(|_| {
        Some(Reply::new(
            201,
            r#"{"data": {"id": "asset-9", "status": "preparing"}}"#,
        ))
    });
    let h = start(&api, text, "").await;
    let bytes = data(3000, 11);
    h.upload("alice", "clip.mov", &bytes).await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/video/v1/assets")
    );
    // base64("tid:tsecret")
    assert_eq!(r.header("authorization"), Some("Basic dGlkOnRzZWNyZXQ="));
    assert_eq!(r.body["playback_policy"][0], "public");
    assert_eq!(
        r.body["passthrough"],
        r.header("idempotency-key").expect("key")
    );
    assert_eq!(
        fetch(r.body["inputs"][0]["url"].as_str().expect("url")).await,
        bytes
    );
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
url = "BASE/done/{{ asset }}"
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
    let h = start(&api, notify, "").await;
    h.upload("alice", "any/name.mp4", b"payload").await;
    assert_eq!(
        h.object("alice/incoming/A-1.bin").await.as_deref(),
        Some(&b"payload"[..])
    );
    assert!(h.object("alice/any/name.mp4").await.is_none());
    let got = api.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].uri, "/done/A-1");
    assert_eq!(got[1].body["key"], "alice/incoming/A-1.bin");

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
