//! Listing, SIZE, rename, delete, mkdir, download, permissions and login refusals through a
//! real FTP client.

use crate::common;

use common::{Harness, PASSWORD, data};
use suppaftp::tokio::AsyncFtpStream;

async fn put(ftp: &mut AsyncFtpStream, path: &str, bytes: &[u8]) {
    let mut r = std::io::Cursor::new(bytes.to_vec());
    ftp.put_file(path, &mut r).await.expect("upload");
}

async fn download(ftp: &mut AsyncFtpStream, path: &str) -> suppaftp::FtpResult<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut stream = ftp.retr_as_stream(path).await?;
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .await
        .map_err(suppaftp::FtpError::ConnectionError)?;
    stream.finish().await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_directories_behave_as_a_user_expects() {
    let h = Harness::start().await;
    let mut ftp = h.login("alice").await;
    assert_eq!(ftp.pwd().await.expect("pwd"), "/");

    // curl --ftp-create-dirs: CWD fails, MKD, CWD again, STOR.
    assert!(ftp.cwd("/show").await.is_err(), "no such directory yet");
    ftp.mkdir("/show").await.expect("MKD");
    let again = ftp
        .mkdir("/show")
        .await
        .expect_err("MKD of an existing directory");
    assert!(again.to_string().contains("already exists"), "{again}");
    ftp.cwd("/show")
        .await
        .expect("a new directory can be entered");
    let bytes = data(3000, 1);
    put(&mut ftp, "clip.mov", &bytes).await;
    assert_eq!(ftp.pwd().await.expect("pwd"), "/show");
    ftp.cwd("/").await.expect("back home");

    let names = ftp.nlst(Some("/show")).await.expect("NLST");
    assert_eq!(
        names
            .iter()
            .map(|n| n.rsplit('/').next().unwrap_or(n))
            .collect::<Vec<_>>(),
        vec!["clip.mov"]
    );
    let list = ftp.list(None).await.expect("LIST");
    assert!(
        list.iter()
            .any(|l| l.starts_with('d') && l.ends_with(" show")),
        "{list:?}"
    );
    let mlsd = ftp.mlsd(Some("/show")).await.expect("MLSD");
    assert!(
        mlsd.iter()
            .any(|l| l.contains("size=3000") && l.ends_with("clip.mov")),
        "{mlsd:?}"
    );
    assert_eq!(ftp.size("/show/clip.mov").await.expect("SIZE"), 3000);
    assert!(ftp.mdtm("/show/clip.mov").await.is_ok(), "MDTM");

    // Download.
    let got = download(&mut ftp, "/show/clip.mov").await.expect("RETR");
    assert_eq!(got, bytes);

    // Rename (server-side copy), then delete.
    ftp.rename("/show/clip.mov", "/show/final.mov")
        .await
        .expect("RNFR/RNTO");
    assert_eq!(h.object("alice/show/clip.mov").await, None);
    assert_eq!(
        h.object("alice/show/final.mov").await.as_deref(),
        Some(&bytes[..])
    );
    assert!(ftp.rmdir("/show").await.is_err(), "not empty");
    ftp.rm("/show/final.mov").await.expect("DELE");
    assert_eq!(h.object("alice/show/final.mov").await, None);
    assert!(
        ftp.rm("/show/final.mov").await.is_err(),
        "deleting twice fails"
    );

    // Empty made directories can be removed.
    ftp.mkdir("/tmpdir").await.expect("MKD");
    ftp.rmdir("/tmpdir").await.expect("RMD");
    assert!(ftp.cwd("/tmpdir").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permissions_are_enforced_per_verb() {
    let h = Harness::start().await;
    let mut alice = h.login("alice").await;
    put(&mut alice, "/shared.bin", b"hello").await;

    // bob may only upload.
    let mut bob = h.login("bob").await;
    put(&mut bob, "/mine.bin", b"bob").await;
    assert_eq!(h.object("bob/mine.bin").await.as_deref(), Some(&b"bob"[..]));
    assert!(bob.list(None).await.is_err(), "no list permission");
    assert!(
        download(&mut bob, "/mine.bin").await.is_err(),
        "no download permission"
    );
    assert!(bob.rm("/mine.bin").await.is_err(), "no delete permission");
    assert!(
        bob.rename("/mine.bin", "/x.bin").await.is_err(),
        "no rename permission"
    );
    assert!(bob.mkdir("/d").await.is_err(), "no mkdir permission");
    assert_eq!(h.object("bob/mine.bin").await.as_deref(), Some(&b"bob"[..]));

    // reader shares alice's home but may only list and download.
    let mut reader = h.login("reader").await;
    assert!(
        reader
            .nlst(None)
            .await
            .expect("list")
            .iter()
            .any(|n| n.ends_with("shared.bin"))
    );
    assert_eq!(
        download(&mut reader, "/shared.bin")
            .await
            .expect("download"),
        b"hello"
    );
    let mut r = std::io::Cursor::new(b"nope".to_vec());
    assert!(
        reader.put_file("/new.bin", &mut r).await.is_err(),
        "no upload permission"
    );
    assert_eq!(h.object("alice/new.bin").await, None);
    let m = h.scrape().await;
    m.assert("ingest_bridge_uploads_total{outcome=rejected}", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_user_sees_only_its_home_and_cannot_escape_it() {
    let h = Harness::start().await;
    let mut alice = h.login("alice").await;
    put(&mut alice, "/a.bin", b"a").await;
    let mut bob = h.login("bob").await;
    put(&mut bob, "/b.bin", b"b").await;

    let mut r = std::io::Cursor::new(b"x".to_vec());
    assert!(
        bob.put_file("../alice/evil.bin", &mut r).await.is_err(),
        "relative escape refused"
    );
    let mut r = std::io::Cursor::new(b"x".to_vec());
    assert!(
        bob.put_file("/../../alice/evil.bin", &mut r).await.is_err(),
        "absolute escape refused"
    );
    assert_eq!(h.object("alice/evil.bin").await, None);
    assert_eq!(h.object("evil.bin").await, None);
    assert!(alice.cwd("..").await.is_err() || alice.pwd().await.expect("pwd") == "/");
    let names = alice.nlst(None).await.expect("list");
    assert_eq!(
        names
            .iter()
            .map(|n| n.trim_start_matches('/'))
            .collect::<Vec<_>>(),
        vec!["a.bin"],
        "bob's files are invisible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_and_unknown_user_are_refused_and_counted() {
    let h = Harness::start().await;
    let mut ftp = AsyncFtpStream::connect(h.ftp).await.expect("connect");
    assert!(ftp.login("alice", "wrong").await.is_err());
    let mut ftp = AsyncFtpStream::connect(h.ftp).await.expect("connect");
    assert!(ftp.login("mallory", PASSWORD).await.is_err());
    let mut ftp = AsyncFtpStream::connect(h.ftp).await.expect("connect");
    let mut r = std::io::Cursor::new(b"x".to_vec());
    assert!(
        ftp.put_file("x.bin", &mut r).await.is_err(),
        "no upload before login"
    );
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_logins_total{protocol=ftp,result=failure}",
        2.0,
    );
    m.assert(
        "ingest_bridge_logins_total{protocol=ftp,result=success}",
        0.0,
    );
}
