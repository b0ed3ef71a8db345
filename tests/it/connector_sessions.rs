//! The shipped connectors whose platforms hand out something that expires: StreamAMG's
//! signed upload URLs (a restart at `POST /entry`, and the multipart flow above the single
//! upload's limit), Streamdiver's OAuth2 tokens and Kaltura's sessions (renewed before they
//! end and when refused). Each example is loaded unchanged from `config/connectors/` with
//! only its variables set, against a stand-in written from the platform's published
//! reference (`tests/it/common/platforms/`).

use crate::common;

use common::platforms::streamamg::TITLE_ATTRIBUTE;
use common::platforms::{Kaltura, StreamAmg, Streamdiver, example, fetch, wait_delivered};
use common::{Harness, data};
use std::time::Duration;

async fn start(notify: String, env: &[(&str, &str)]) -> Harness {
    Harness::builder()
        .notify_section(notify)
        .envs(env)
        .part_size("5MiB")
        .memory_limit("128MiB")
        .start()
        .await
}

fn streamamg_env<'a>(base: &'a str, key: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("STREAMAMG_API_URL", base),
        ("STREAMAMG_API_KEY", key),
        ("STREAMAMG_TITLE_ATTRIBUTE_ID", TITLE_ATTRIBUTE),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamamg_creates_the_entry_then_puts_the_object_to_its_upload_url() {
    let amg = StreamAmg::start().await;
    let (base, key) = (amg.base(), amg.api_key());
    let h = start(example("streamamg.toml"), &streamamg_env(&base, &key)).await;
    let bytes = data(700_000, 6);
    h.upload("alice", "show/ep1.mp4", &bytes).await;
    wait_delivered(&h, 1).await;
    let entries = amg.entries();
    assert_eq!(entries.len(), 1);
    let entry = entries.values().next().expect("entry");
    assert_eq!(entry.filename.as_deref(), Some("ep1.mp4"));
    assert_eq!(entry.attributes[0]["id"], TITLE_ATTRIBUTE);
    assert_eq!(entry.attributes[0]["value"], "ep1.mp4");
    assert_eq!(entry.publication["publish"], false);
    assert!(!entry.multipart);
    assert_eq!(entry.bytes.as_deref(), Some(&bytes[..]), "arrived whole");
    assert_eq!(amg.creates_for("ep1.mp4"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_streamamg_upload_url_restarts_at_the_entry_instead_of_dead_lettering() {
    let amg = StreamAmg::start().await;
    let (base, key) = (amg.base(), amg.api_key());
    let h = start(example("streamamg.toml"), &streamamg_env(&base, &key)).await;
    amg.expire_next_upload();
    let bytes = data(300_000, 7);
    h.upload("alice", "late.mp4", &bytes).await;
    wait_delivered(&h, 1).await;
    // The API has no call that renews an entry's URL: the restart made a second entry,
    // which got the bytes; the first stays empty (and is named in the log).
    assert_eq!(amg.creates_for("late.mp4"), 2);
    let filled: Vec<_> = amg
        .entries()
        .into_values()
        .filter(|e| e.bytes.is_some())
        .collect();
    assert_eq!(filled.len(), 1);
    assert_eq!(filled[0].bytes.as_deref(), Some(&bytes[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamamg_above_the_threshold_pushes_parts_and_completes_with_their_etags() {
    let amg = StreamAmg::start().await;
    let (base, key) = (amg.base(), amg.api_key());
    let mut env = streamamg_env(&base, &key);
    env.push(("STREAMAMG_MULTIPART_ABOVE", "1000000"));
    env.push(("STREAMAMG_PART_SIZE", "5MiB"));
    let h = start(example("streamamg.toml"), &env).await;
    // The second part's first PUT is refused as expired: the retry asks for a fresh URL
    // for that part only; the finished first part is not sent again.
    let bytes = data(12 << 20, 9);
    let watcher = {
        let amg_puts = amg.clone();
        tokio::spawn(async move {
            while amg_puts.s3_puts() < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            amg_puts.expire_next_upload();
        })
    };
    h.upload("alice", "big.mxf", &bytes).await;
    wait_delivered(&h, 1).await;
    watcher.await.expect("watcher");
    let entries = amg.entries();
    assert_eq!(
        entries.len(),
        1,
        "one create (multipart/start) for the file"
    );
    let entry = entries.values().next().expect("entry");
    assert!(entry.multipart);
    assert_eq!(
        entry.bytes.as_deref(),
        Some(&bytes[..]),
        "arrived whole, in order"
    );
    assert_eq!(
        amg.s3_puts(),
        3,
        "three parts of 5, 5 and 2 MiB, each sent whole once"
    );
    let complete = amg
        .api
        .requests()
        .into_iter()
        .find(|r| r.uri.starts_with("/multipart/complete"))
        .expect("complete");
    let parts = complete.body["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 3);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partNumber"], i + 1);
        assert!(p["etag"].as_str().is_some_and(|e| e.starts_with('"')));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamdiver_tokens_are_fetched_shared_and_renewed_before_and_after_they_expire() {
    let sd = Streamdiver::start_with_token_lifetime(Duration::from_secs(2)).await;
    let (base, token_url) = (sd.base(), sd.token_url());
    let h = start(
        example("streamdiver.toml"),
        &[
            ("STREAMDIVER_API_URL", &base),
            ("STREAMDIVER_TOKEN_URL", &token_url),
            ("STREAMDIVER_CLIENT_ID", sd.client_id()),
            ("STREAMDIVER_CLIENT_SECRET", sd.client_secret()),
            (
                "STREAMDIVER_CHANNEL",
                "0b6d3c1e-4f8a-4d2b-9c3e-7a1f2e3d4c5b",
            ),
        ],
    )
    .await;
    let first = data(60_000, 1);
    h.upload("alice", "a.mp4", &first).await;
    h.upload("alice", "b.mp4", &data(1000, 2)).await;
    wait_delivered(&h, 2).await;
    assert_eq!(sd.tokens_issued(), 1, "one token for both imports");
    // Past the 2 s lifetime: renewed before use, no 401 and no dead letter.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.upload("alice", "c.mp4", &data(1000, 3)).await;
    wait_delivered(&h, 3).await;
    assert_eq!(sd.tokens_issued(), 2);
    // Revoked early: the 401 renews the token and the import goes through.
    sd.revoke_tokens();
    h.upload("alice", "d.mp4", &data(1000, 4)).await;
    wait_delivered(&h, 4).await;
    assert_eq!(sd.tokens_issued(), 3);
    let imports = sd.imports();
    assert_eq!(imports.len(), 4);
    let a = imports
        .iter()
        .find(|i| i.files[0].name == "a.mp4")
        .expect("a.mp4 imported");
    assert_eq!(
        a.channel.as_deref(),
        Some("0b6d3c1e-4f8a-4d2b-9c3e-7a1f2e3d4c5b")
    );
    assert_eq!(fetch(&a.files[0].url).await, first);
    assert_eq!(sd.creates_for("a.mp4"), 1);
    // The tokens are secrets at rest too: in no file of data_dir (outbox, WAL, event log).
    let tokens: Vec<String> = sd
        .api
        .requests()
        .iter()
        .filter_map(|r| {
            r.header("authorization")?
                .strip_prefix("Bearer ")
                .map(String::from)
        })
        .collect();
    assert!(!tokens.is_empty());
    for file in std::fs::read_dir(&h.config.server.data_dir).expect("data_dir") {
        let path = file.expect("entry").path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "a token in {}",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamamg_refusal_is_a_dead_letter_with_its_message() {
    let amg = StreamAmg::start_with("amg-key", &["e0000000-0000-4000-8000-000000000000"]).await;
    let base = amg.base();
    let h = start(example("streamamg.toml"), &streamamg_env(&base, "amg-key")).await;
    h.upload("alice", "refused.mp4", b"bytes").await;
    use ingest_bridge::state::OutboxStore as _;
    let outbox = ingest_bridge::notify::Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dead = outbox
            .list(Some(ingest_bridge::notify::State::Dead))
            .await
            .expect("list");
        if let Some(entry) = dead.first() {
            let error = entry.last_error.as_deref().unwrap_or_default();
            assert!(error.contains("Failed to create attributes"), "{error}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(amg.creates(), 0, "refused: nothing created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kaltura_starts_and_renews_its_session_and_classifies_its_errors() {
    let kaltura = Kaltura::start().await;
    let base = kaltura.base();
    let partner = kaltura.partner_id().to_string();
    let h = start(
        example("kaltura.toml"),
        &[
            ("KALTURA_SERVICE_URL", &base),
            ("KALTURA_PARTNER_ID", &partner),
            ("KALTURA_ADMIN_SECRET", kaltura.admin_secret()),
        ],
    )
    .await;
    let video = data(80_000, 1);
    h.upload("alice", "clip.mp4", &video).await;
    wait_delivered(&h, 1).await;
    assert_eq!(kaltura.sessions_started(), 1);
    let entries = kaltura.entries();
    let clip = entries
        .values()
        .find(|e| e.name.as_deref() == Some("clip.mp4"))
        .expect("clip entry");
    assert_eq!(clip.media_type, 1, "video");
    assert_eq!(
        fetch(clip.content_url.as_deref().expect("content")).await,
        video
    );

    // Audio is mediaType 5; a LOCK_TIMED_OUT is retried.
    kaltura.fail_next("LOCK_TIMED_OUT");
    h.upload("alice", "song.mp3", &data(5000, 2)).await;
    wait_delivered(&h, 2).await;
    let song = kaltura
        .entries()
        .into_values()
        .find(|e| e.name.as_deref() == Some("song.mp3"))
        .expect("song entry");
    assert_eq!(song.media_type, 5, "audio");

    // An expired session answers INVALID_KS: a new session, and the call goes through.
    kaltura.expire_sessions();
    h.upload("alice", "later.mp4", &data(5000, 3)).await;
    wait_delivered(&h, 3).await;
    assert_eq!(kaltura.sessions_started(), 2);

    // addContent's answer is lost after it worked: the retry hears
    // ENTRY_ALREADY_WITH_CONTENT, which is a duplicate, not a dead letter.
    kaltura.lose_next_answer_of("addcontent");
    h.upload("alice", "lost.mp4", &data(5000, 4)).await;
    wait_delivered(&h, 4).await;
    assert_eq!(
        kaltura.media_adds_for("lost.mp4"),
        1,
        "no entry added twice"
    );
    for name in ["clip.mp4", "song.mp3", "later.mp4"] {
        assert_eq!(kaltura.media_adds_for(name), 1, "{name}");
    }
}
