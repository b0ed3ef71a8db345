//! Self-tests of the platform stand-ins, continued (see `platform_standins.rs`): Kaltura,
//! Mux, JW Player and the media-upload service, each driven directly with reqwest.

use crate::common;

use common::platforms::{JwPlayer, Kaltura, MediaUpload, Mux, body, client, jwplayer, mux};
use serde_json::{Value, json};
use std::time::Duration;

async fn kaltura_call(
    k: &Kaltura,
    service: &str,
    action: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("{}/api_v3/service/{service}/action/{action}", k.base());
    let mut form = form.to_vec();
    form.push(("format", "1"));
    body(client().post(url).form(&form).send().await.unwrap()).await
}

async fn kaltura_ks(k: &Kaltura) -> String {
    let pid = k.partner_id().to_string();
    let (s, ks) = kaltura_call(
        k,
        "session",
        "start",
        &[
            ("secret", k.admin_secret()),
            ("partnerId", &pid),
            ("type", "2"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    ks.as_str().expect("a bare JSON string").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaltura_session_and_media() {
    let k = Kaltura::start().await;
    let pid = k.partner_id().to_string();
    let (s, e) = kaltura_call(
        &k,
        "session",
        "start",
        &[("secret", "wrong"), ("partnerId", &pid), ("type", "2")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        e,
        json!({"code": "START_SESSION_ERROR", "message": format!("Error while starting session for partner [{pid}]"),
               "objectType": "KalturaAPIException", "args": {"PID": pid}})
    );
    let ks = kaltura_ks(&k).await;
    assert!(ks.starts_with("djJ8"), "{ks}");
    assert_eq!(k.sessions_started(), 1);

    // Missing mediaType.
    let (_, e) = kaltura_call(
        &k,
        "media",
        "add",
        &[
            ("ks", &ks),
            ("entry:objectType", "KalturaMediaEntry"),
            ("entry:name", "a.mp4"),
        ],
    )
    .await;
    assert_eq!(e["code"], "PROPERTY_VALIDATION_CANNOT_BE_NULL");
    assert_eq!(
        e["args"],
        json!({"PROP_NAME": "KalturaMediaEntry::mediaType"})
    );
    let (_, e) = kaltura_call(&k, "media", "add", &[("ks", &ks), ("entry:mediaType", "3")]).await;
    assert_eq!(e["code"], "INVALID_ENUM_VALUE");

    let add = [
        ("ks", ks.as_str()),
        ("entry:objectType", "KalturaMediaEntry"),
        ("entry:mediaType", "1"),
        ("entry:name", "a.mp4"),
        ("entry:referenceId", "ref-1"),
    ];
    let (s, entry) = kaltura_call(&k, "media", "add", &add).await;
    assert_eq!(s, 200);
    assert_eq!(entry["objectType"], "KalturaMediaEntry");
    assert_eq!(entry["status"], 7);
    assert_eq!(entry["mediaType"], 1);
    assert_eq!(entry["name"], "a.mp4");
    assert_eq!(entry["referenceId"], "ref-1");
    let id = entry["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("0_"));
    assert_eq!(k.media_adds_for("a.mp4"), 1);

    let content = [
        ("ks", ks.as_str()),
        ("entryId", id.as_str()),
        ("resource:objectType", "KalturaUrlResource"),
        ("resource:url", "https://bucket.example/a.mp4?sig=1"),
    ];
    let (_, e) = kaltura_call(&k, "media", "addContent", &content).await;
    assert_eq!(e["status"], 0, "{e}");
    assert_eq!(
        k.entry(&id).unwrap().content_url.as_deref(),
        Some("https://bucket.example/a.mp4?sig=1")
    );
    let (s, e) = kaltura_call(&k, "media", "addContent", &content).await;
    assert_eq!(s, 200);
    assert_eq!(
        e,
        json!({"code": "ENTRY_ALREADY_WITH_CONTENT", "message": "Entry already associated with content",
               "objectType": "KalturaAPIException", "args": []})
    );
    let mut unknown = content;
    unknown[1] = ("entryId", "0_nothere");
    let (_, e) = kaltura_call(&k, "media", "addContent", &unknown).await;
    assert_eq!(e["code"], "ENTRY_ID_NOT_FOUND");
    assert_eq!(e["args"], json!({"ENTRY_ID": "0_nothere"}));

    // A JSON body with nested objects is api_v3's other request form.
    let url = format!("{}/api_v3/service/media/action/add", k.base());
    let req = json!({"ks": ks, "format": 1, "entry": {"objectType": "KalturaMediaEntry", "mediaType": 5, "name": "b.mp3"}});
    let (_, e) = body(client().post(url).json(&req).send().await.unwrap()).await;
    assert_eq!(e["mediaType"], 5, "{e}");
    assert_eq!(k.entries().len(), 2);

    // No KS; a KS never issued.
    let (_, e) = kaltura_call(&k, "media", "get", &[("entryId", &id)]).await;
    assert_eq!(e["code"], "MISSING_KS");
    let (_, e) = kaltura_call(&k, "media", "get", &[("ks", "djJ8bogus"), ("entryId", &id)]).await;
    assert_eq!(e["code"], "INVALID_KS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaltura_ks_expiry_and_failures() {
    let k = Kaltura::start().await;
    k.set_ks_lifetime(Duration::from_secs(1));
    let ks = kaltura_ks(&k).await;
    let add = [
        ("ks", ks.as_str()),
        ("entry:mediaType", "1"),
        ("entry:name", "c.mp4"),
    ];
    assert_eq!(kaltura_call(&k, "media", "add", &add).await.1["status"], 7);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, e) = kaltura_call(&k, "media", "add", &add).await;
    assert_eq!(s, 200);
    assert_eq!(
        e,
        json!({"code": "INVALID_KS", "message": "Invalid KS \"EXPIRED\", Error \"-1,INVALID_STR\"",
               "objectType": "KalturaAPIException",
               "args": {"KSID": "EXPIRED", "ERR_CODE": "-1", "ERR_DESC": "INVALID_STR"}})
    );

    let k = Kaltura::start().await;
    let ks = kaltura_ks(&k).await;
    let add = [
        ("ks", ks.as_str()),
        ("entry:mediaType", "1"),
        ("entry:name", "d.mp4"),
    ];
    k.fail_next("LOCK_TIMED_OUT");
    let (_, e) = kaltura_call(&k, "media", "add", &add).await;
    assert_eq!(
        e,
        json!({"code": "LOCK_TIMED_OUT", "message": "Timed out while attempting to grab lock",
               "objectType": "KalturaAPIException", "args": []})
    );
    assert_eq!(k.media_adds(), 0);
    let (_, entry) = kaltura_call(&k, "media", "add", &add).await;
    let id = entry["id"].as_str().unwrap().to_string();

    // The answer is lost after the content was attached: the retry meets
    // ENTRY_ALREADY_WITH_CONTENT.
    k.lose_next_answer_after_success();
    let content = [
        ("ks", ks.as_str()),
        ("entryId", id.as_str()),
        ("resource:objectType", "KalturaUrlResource"),
        ("resource:url", "https://bucket.example/d.mp4"),
    ];
    let (s, _) = kaltura_call(&k, "media", "addContent", &content).await;
    assert_eq!(s, 503);
    assert_eq!(k.entry(&id).unwrap().status, 0);
    let (_, e) = kaltura_call(&k, "media", "addContent", &content).await;
    assert_eq!(e["code"], "ENTRY_ALREADY_WITH_CONTENT");
    assert_eq!(k.content_adds(), 1);

    // Without format=1 the answer is not JSON.
    let url = format!("{}/api_v3/service/media/action/get", k.base());
    let resp = client()
        .post(url)
        .form(&[("ks", ks.as_str()), ("entryId", &id)])
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().starts_with("<?xml"));
}

// ---------------------------------------------------------------- Mux

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_assets() {
    let m = Mux::start().await;
    let url = format!("{}/video/v1/assets", m.base());
    let c = client();
    let post = |b: Value| {
        c.post(&url)
            .basic_auth(mux::TOKEN_ID, Some(mux::TOKEN_SECRET))
            .json(&b)
            .send()
    };
    let (s, e) = body(c.post(&url).json(&json!({})).send().await.unwrap()).await;
    assert_eq!(
        (s, e),
        (
            401,
            json!({"error": {"type": "unauthorized", "messages": ["Unauthorized request"]}})
        )
    );
    let good = json!({"inputs": [{"url": "https://bucket.example/e.mp4"}], "playback_policies": ["public"],
                      "passthrough": "e.mp4", "video_quality": "basic"});
    let (s, b) = body(post(good.clone()).await.unwrap()).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["data"]["status"], "preparing");
    assert_eq!(b["data"]["passthrough"], "e.mp4");
    assert_eq!(b["data"]["playback_ids"][0]["policy"], "public");
    assert!(b["data"]["id"].is_string() && b["data"]["created_at"].is_string());

    for bad in [
        json!({"inputs": [{"url": "https://x/y.mp4"}], "colour": "red"}),
        json!({"playback_policies": ["public"]}),
        json!({"inputs": []}),
        json!({"inputs": [{"url": "https://x/y.mp4"}], "playback_policies": ["open"]}),
        json!({"inputs": [{"url": "https://x/y.mp4"}], "passthrough": "p".repeat(256)}),
    ] {
        let (s, e) = body(post(bad.clone()).await.unwrap()).await;
        assert_eq!(
            (s, e["error"]["type"].as_str()),
            (400, Some("invalid_parameters")),
            "{bad}"
        );
        assert!(e["error"]["messages"][0].is_string());
    }

    m.conflict_next();
    let (s, e) = body(post(good.clone()).await.unwrap()).await;
    assert_eq!((s, e["error"]["type"].as_str()), (409, Some("conflict")));
    assert_eq!(m.creates_for("e.mp4"), 1);

    let old = json!({"input": "https://bucket.example/f.mp4", "playback_policy": ["signed"]});
    assert_eq!(body(post(old).await.unwrap()).await.0, 201);
    assert_eq!(m.deprecated_fields_used(), ["input", "playback_policy"]);
    assert_eq!(m.creates_for("https://bucket.example/f.mp4"), 1);
    assert_eq!(m.assets().len(), 2);
}

// ---------------------------------------------------------------- JW Player

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwplayer_fetch_upload() {
    let jw = JwPlayer::start().await;
    let c = client();
    let media = |site: &str, slash: &str| format!("{}/v2/sites/{site}/media{slash}", jw.base());
    let req = json!({"upload": {"method": "fetch", "download_url": "https://bucket.example/g.mp4"},
                     "metadata": {"title": "My Fetch Video", "external_id": "g.mp4"}});
    let (s, e) = body(
        c.post(media(jwplayer::SITE_ID, ""))
            .json(&req)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(e["errors"][0]["code"], "unauthorized");
    assert!(e["errors"][0]["description"].is_string());
    let post =
        |url: String, b: &Value| c.post(url).bearer_auth(jwplayer::API_SECRET).json(b).send();
    let (s, e) = body(post(media("Zz99Yy88", ""), &req).await.unwrap()).await;
    assert_eq!(
        (s, e["errors"][0]["code"].as_str()),
        (404, Some("not_found"))
    );

    for slash in ["", "/"] {
        let (s, b) = body(post(media(jwplayer::SITE_ID, slash), &req).await.unwrap()).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["type"], "media");
        assert_eq!(b["status"], "processing");
        assert_eq!(b["id"].as_str().unwrap().len(), 8);
        assert_eq!(b["metadata"]["title"], "My Fetch Video");
        assert_eq!(b["metadata"]["external_id"], "g.mp4");
    }
    assert_eq!(jw.creates_for("g.mp4"), 2);

    for bad in [
        json!({"upload": {"method": "fetch"}, "metadata": {"title": "t"}}),
        json!({"metadata": {"title": "t"}}),
        json!({"upload": {"method": "fetch", "download_url": "https://x/y.mp4"}, "title": "t"}),
        json!({"upload": {"method": "fetch", "download_url": "https://x/y.mp4"}, "metadata": {"tags": "a,b"}}),
    ] {
        let (s, e) = body(post(media(jwplayer::SITE_ID, ""), &bad).await.unwrap()).await;
        assert_eq!(s, 400, "{bad}");
        assert!(e["errors"][0]["code"].is_string());
    }
    assert_eq!(jw.media().len(), 2);
    assert_eq!(jw.media()[0].download_url, "https://bucket.example/g.mp4");
}

// ---------------------------------------------------------------- Media Upload

fn media_form(bytes: &[u8], size: usize, content_type: &str) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text("media_size", size.to_string())
        .text("content_type", content_type.to_string())
        .text("description", "Grüße".to_string())
        .part(
            "media",
            reqwest::multipart::Part::bytes(bytes.to_vec())
                .file_name("h.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_upload_form() {
    let mu = MediaUpload::start().await;
    let c = client();
    let url = |password: &str| {
        format!(
            "{}?from={}&password={password}&to=%2B420123456789",
            mu.upload_url(),
            mu.username()
        )
    };
    let bytes = common::data(50_000, 9);
    let (s, e) = body(
        c.post(url("wrong"))
            .multipart(media_form(&bytes, bytes.len(), "video/mp4"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(e["message"].is_string());

    let (s, b) = body(
        c.post(url(mu.password()))
            .multipart(media_form(&bytes, bytes.len(), "video/mp4"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let media_url = b["media_url"].as_str().unwrap().to_string();
    let got = c.get(&media_url).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "video/mp4");
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let up = &mu.uploads()[0];
    assert_eq!(
        (up.to.as_str(), up.description.as_deref()),
        ("+420123456789", Some("Grüße"))
    );
    assert_eq!(mu.creates_for("h.mp4"), 1);

    // PUT is allowed too; size and type must match the media part.
    let resp = c
        .put(url(mu.password()))
        .multipart(media_form(&bytes, bytes.len() + 1, "video/mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c
        .put(url(mu.password()))
        .multipart(media_form(&bytes, bytes.len(), "image/jpeg"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c.post(url(mu.password())).body("raw").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    mu.refuse_next("Quota exceeded");
    let (s, e) = body(
        c.put(url(mu.password()))
            .multipart(media_form(&bytes, bytes.len(), "video/mp4"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, e), (403, json!({"message": "Quota exceeded"})));
    let resp = c
        .put(url(mu.password()))
        .multipart(media_form(&bytes, bytes.len(), "video/mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(mu.uploads().len(), 2);
    assert_eq!(mu.uploads()[1].method, "PUT");
}
