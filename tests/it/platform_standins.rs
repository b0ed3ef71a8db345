//! Self-tests of the platform stand-ins (`tests/it/common/platforms`): each is driven directly
//! with reqwest and must show the behaviours its published reference documents. StreamAMG
//! and Streamdiver here; Kaltura, Mux, JW Player and the media-upload service in
//! `platform_standins_more.rs`.

use crate::common;

use common::platforms::{StreamAmg, Streamdiver, body, client, md5_hex, streamamg};
use serde_json::{Value, json};
use std::time::Duration;

#[test]
fn md5_matches_rfc_1321_vectors() {
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex(
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
        ),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
}

// ---------------------------------------------------------------- StreamAMG

fn amg_body(filename: Option<&str>) -> Value {
    let mut b = json!({
        "attributes": [{"id": streamamg::TITLE_ATTRIBUTE, "value": "Some Title"}],
        "publication": {"publish": true, "from": "2022-03-06T22:51:25Z"},
    });
    if let Some(f) = filename {
        b["filename"] = json!(f);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamamg_entry_then_presigned_put() {
    let amg = StreamAmg::start().await;
    let c = client();
    let url = format!("{}/entry", amg.base());

    let (s, b) = body(
        c.post(&url)
            .json(&amg_body(Some("a.mp4")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b), (403, json!({"message": "Forbidden"})));
    let wrong = c
        .post(&url)
        .header("x-api-key", "nope")
        .json(&amg_body(None));
    assert_eq!(body(wrong.send().await.unwrap()).await.0, 403);

    let send = |b: Value| {
        c.post(&url)
            .header("x-api-key", streamamg::DEFAULT_KEY)
            .json(&b)
            .send()
    };
    let (s, b) = body(send(amg_body(Some("a clip.mp4"))).await.unwrap()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], 200);
    assert_eq!(b["message"], "Successfully uploaded");
    let entry_id = b["entryId"].as_str().unwrap().to_string();
    assert!(
        entry_id.starts_with("0_") && entry_id.len() == 10,
        "{entry_id}"
    );
    let upload_url = b["uploadUrl"].as_str().unwrap().to_string();
    assert!(upload_url.starts_with(&format!("{}/s3/{entry_id}/a%20clip.mp4?", amg.base())));
    assert!(upload_url.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"));
    assert!(upload_url.contains("X-Amz-Expires=1800"));
    assert!(upload_url.contains("X-Amz-Signature="));

    let bytes = common::data(100_000, 7);
    let resp = c
        .put(&upload_url)
        .header("content-type", "video/mp4")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", md5_hex(&bytes)));
    let entry = amg.entry(&entry_id).unwrap();
    assert_eq!(entry.bytes.as_deref(), Some(bytes.as_slice()));
    assert_eq!(entry.filename.as_deref(), Some("a clip.mp4"));
    assert_eq!(entry.content_type.as_deref(), Some("video/mp4"));
    assert!(!entry.multipart);

    // A tampered signature is S3's SignatureDoesNotMatch.
    let tampered = upload_url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let resp = c.put(&tampered).body("x").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("<Code>SignatureDoesNotMatch</Code>")
    );

    // Expired once, then fine again.
    amg.expire_next_upload();
    let resp = c.put(&upload_url).body(bytes.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(resp.headers()["content-type"], "application/xml");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message><X-Amz-Expires>1800</X-Amz-Expires>"), "{text}");
    let resp = c.put(&upload_url).body(bytes.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Without a filename (optional) the entry is still created.
    assert_eq!(body(send(amg_body(None)).await.unwrap()).await.0, 200);
    assert_eq!(amg.creates(), 2);
    assert_eq!(amg.creates_for("a clip.mp4"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamamg_refuses_bad_entries() {
    let amg = StreamAmg::start().await;
    let c = client();
    let url = format!("{}/entry", amg.base());
    let send = |b: String| {
        c.post(&url)
            .header("x-api-key", streamamg::DEFAULT_KEY)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    let bad = json!({"status": 400, "message": "Bad Request Exception"});
    assert_eq!(
        body(send("{not json".into()).await.unwrap()).await,
        (400, bad.clone())
    );
    let mut no_publication = amg_body(Some("a.mp4"));
    no_publication
        .as_object_mut()
        .unwrap()
        .remove("publication");
    assert_eq!(
        body(send(no_publication.to_string()).await.unwrap()).await,
        (400, bad.clone())
    );
    let mut no_from = amg_body(None);
    no_from["publication"] = json!({"publish": false});
    assert_eq!(
        body(send(no_from.to_string()).await.unwrap()).await,
        (400, bad.clone())
    );
    let mut publish_string = amg_body(None);
    publish_string["publication"]["publish"] = json!("true");
    assert_eq!(
        body(send(publish_string.to_string()).await.unwrap()).await,
        (400, bad.clone())
    );
    let mut empty_attributes = amg_body(None);
    empty_attributes["attributes"] = json!([]);
    assert_eq!(
        body(send(empty_attributes.to_string()).await.unwrap()).await,
        (400, bad.clone())
    );

    let mut unknown = amg_body(None);
    unknown["attributes"] = json!([{"id": "c490887c-c21b-4bda-b59a-8ca1ee88d8a8", "value": "x"}]);
    assert_eq!(
        body(send(unknown.to_string()).await.unwrap()).await,
        (
            400,
            json!({"status": 400, "message": "Failed to create attributes",
                   "failed": [{"id": "c490887c-c21b-4bda-b59a-8ca1ee88d8a8", "reason": "Attribute identifier is invalid"}]})
        )
    );
    assert_eq!(amg.creates(), 0);

    // The schema has no top-level additionalProperties: extra keys pass.
    let mut extra = amg_body(None);
    extra["somethingElse"] = json!(1);
    assert_eq!(body(send(extra.to_string()).await.unwrap()).await.0, 200);
    // Unknown routes are API Gateway's 403.
    let resp = c.get(format!("{}/entry", amg.base())).send().await.unwrap();
    assert_eq!(body(resp).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamamg_multipart() {
    let amg = StreamAmg::start().await;
    let c = client();
    let put = |p: &str, b: Value| {
        c.put(format!("{}{p}", amg.base()))
            .header("x-api-key", streamamg::DEFAULT_KEY)
            .json(&b)
            .send()
    };
    let (s, b) = body(put("/multipart/start", amg_body(None)).await.unwrap()).await;
    assert_eq!(s, 200, "{b}");
    let entry_id = b["entryId"].as_str().unwrap().to_string();
    let upload_id = b["uploadId"].as_str().unwrap().to_string();
    assert_eq!(b.as_object().unwrap().len(), 2);

    let data = common::data(300_000, 3);
    let chunks = [&data[..200_000], &data[200_000..]];
    let mut etags = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let n = i + 1;
        let (s, b) = body(
            put(
                "/multipart/upload",
                json!({"filename": "big.mp4", "partNumber": n, "uploadId": upload_id}),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["partNumber"], n);
        assert_eq!(b["uploadId"], upload_id.as_str());
        let url = b["uploadUrl"].as_str().unwrap();
        assert!(url.starts_with(&format!("{}/s3/{upload_id}/part/{n}?", amg.base())));
        assert!(url.contains("X-Amz-Expires=1800"));
        if n == 2 {
            amg.expire_next_upload();
            let resp = c.put(url).body(chunk.to_vec()).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 403);
        }
        let resp = c.put(url).body(chunk.to_vec()).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let etag = resp.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", md5_hex(chunk)));
        etags.push(etag);
    }
    let bad = (
        400,
        json!({"status": 400, "message": "Bad Request Exception"}),
    );
    // Unknown upload id; missing partNumber.
    assert_eq!(
        body(
            put(
                "/multipart/upload",
                json!({"partNumber": 1, "uploadId": "nope"})
            )
            .await
            .unwrap()
        )
        .await,
        bad
    );
    assert_eq!(
        body(
            put("/multipart/upload", json!({"uploadId": upload_id}))
                .await
                .unwrap()
        )
        .await,
        bad
    );
    // Wrong etag, unquoted etag, descending order: refused.
    for parts in [
        json!([{"partNumber": 1, "etag": "\"0000\""}, {"partNumber": 2, "etag": etags[1]}]),
        json!([{"partNumber": 1, "etag": etags[0].trim_matches('"')}, {"partNumber": 2, "etag": etags[1]}]),
        json!([{"partNumber": 2, "etag": etags[1]}, {"partNumber": 1, "etag": etags[0]}]),
        json!([]),
    ] {
        let resp = put(
            "/multipart/complete",
            json!({"uploadId": upload_id, "parts": parts}),
        );
        assert_eq!(body(resp.await.unwrap()).await, bad);
    }
    let parts = json!([{"partNumber": 1, "etag": etags[0]}, {"partNumber": 2, "etag": etags[1]}]);
    let resp = put(
        "/multipart/complete",
        json!({"uploadId": upload_id, "parts": parts}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
    let entry = amg.entry(&entry_id).unwrap();
    assert!(entry.multipart);
    assert_eq!(entry.bytes.as_deref(), Some(data.as_slice()));
    assert_eq!(amg.creates_for("big.mp4"), 1);
    // A second complete of a finished upload is refused.
    let again = put(
        "/multipart/complete",
        json!({"uploadId": upload_id, "parts": parts}),
    );
    assert_eq!(body(again.await.unwrap()).await, bad);
}

// ---------------------------------------------------------------- Streamdiver

async fn streamdiver_token(sd: &Streamdiver, secret: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", sd.client_id()),
        ("client_secret", secret),
    ];
    body(
        client()
            .post(sd.token_url())
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamdiver_token_and_import() {
    let sd = Streamdiver::start().await;
    assert!(
        sd.token_url()
            .ends_with("/realms/ingest-test/protocol/openid-connect/token")
    );
    assert_eq!(
        streamdiver_token(&sd, "wrong").await,
        (
            401,
            json!({"error": "invalid_client", "error_description": "Invalid client credentials"})
        )
    );
    let (s, t) = streamdiver_token(&sd, sd.client_secret()).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 57600);
    let token = t["access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("eyJ"));
    assert_eq!(sd.tokens_issued(), 1);

    let url = format!("{}/v2/uploads/imports", sd.base());
    let import = json!({
        "files": [
            {"url": "https://example.com/file.mp4", "name": "My asset name", "filename": "file.mp4",
             "transcriptionLanguageCode": "translate-en-v2"},
            {"url": "https://youtube.com/samplevideo", "name": "My youtube video name"}
        ],
        "channel": "0190a3c4-2b1e-7cc1-8000-000000000001"
    });
    let unauthorized = (
        401,
        json!({"status": "fail", "data": null, "message": "Unauthorized"}),
    );
    let c = client();
    assert_eq!(
        body(c.post(&url).json(&import).send().await.unwrap()).await,
        unauthorized
    );
    let resp = c
        .post(&url)
        .bearer_auth("made-up")
        .json(&import)
        .send()
        .await
        .unwrap();
    assert_eq!(body(resp).await, unauthorized);

    let (s, b) = body(
        c.post(&url)
            .bearer_auth(&token)
            .json(&import)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "success");
    assert_eq!(b["message"], Value::Null);
    assert!(uuid::Uuid::parse_str(b["data"]["id"].as_str().unwrap()).is_ok());
    let files = b["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["url"], "https://example.com/file.mp4");
    assert_eq!(files[0]["filename"], "file.mp4");
    assert!(files[1]["uploadId"].is_string());
    assert_eq!(
        sd.imported_urls(),
        [
            "https://example.com/file.mp4",
            "https://youtube.com/samplevideo"
        ]
    );
    assert_eq!(
        sd.imports()[0].channel.as_deref(),
        Some("0190a3c4-2b1e-7cc1-8000-000000000001")
    );
    assert_eq!(sd.creates_for("file.mp4"), 1);

    for bad in [
        json!({"files": [{"url": "https://e/x.mp4", "name": "x"}], "title": "unknown field"}),
        json!({"files": [{"url": "https://e/x.mp4"}]}),
        json!({"files": [{"name": "x"}]}),
        json!({"files": []}),
        json!({"files": [{"url": "https://e/x.mp4", "name": "x"}], "channel": "not-a-uuid"}),
    ] {
        let (s, b) = body(
            c.post(&url)
                .bearer_auth(&token)
                .json(&bad)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((s, b["status"].as_str()), (400, Some("fail")), "{bad}");
    }
    assert_eq!(sd.imports().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamdiver_tokens_expire() {
    let sd = Streamdiver::start_with_token_lifetime(Duration::from_secs(1)).await;
    let (_, t) = streamdiver_token(&sd, sd.client_secret()).await;
    assert_eq!(t["expires_in"], 1);
    let token = t["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/v2/uploads/imports", sd.base());
    let import = json!({"files": [{"url": "https://e/x.mp4", "name": "x"}]});
    let c = client();
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .json(&import)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = c
        .post(&url)
        .bearer_auth(&token)
        .json(&import)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(sd.imports().len(), 1);
}

// ---------------------------------------------------------------- Kaltura
