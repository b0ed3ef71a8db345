//! SIGHUP reloads users (and allowlists, certificates) in a running process without
//! dropping sessions; a broken config file keeps the running configuration.

use crate::common;

use common::{Harness, PASSWORD};
use std::net::SocketAddr;
use std::time::Duration;
use suppaftp::tokio::AsyncFtpStream;

async fn ftp_login(addr: SocketAddr, user: &str) -> Result<AsyncFtpStream, String> {
    let mut ftp = AsyncFtpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    ftp.login(user, PASSWORD).await.map_err(|e| e.to_string())?;
    Ok(ftp)
}

fn hang_up(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child with a valid signal number.
    let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(sent, 0, "SIGHUP sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_adds_a_user_while_a_session_stays_open_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, config) = Harness::builder().write_config(dir.path()).await;
    let (mut child, ftp_addr) = common::spawn_bridge(&config);

    let mut alice = ftp_login(ftp_addr, "alice").await.expect("alice");
    assert!(ftp_login(ftp_addr, "carol").await.is_err(), "no carol yet");

    let original = std::fs::read_to_string(&config).expect("config");
    let with_carol = format!(
        "{original}\n[[users]]\nusername = \"carol\"\npassword_hash = \"{}\"\nhome = \"carol/\"\npermissions = [\"upload\", \"list\"]\n",
        common::password_hash()
    );
    std::fs::write(&config, with_carol).expect("write config");
    hang_up(&child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut carol = loop {
        match ftp_login(ftp_addr, "carol").await {
            Ok(ftp) => break ftp,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "carol can log in after SIGHUP: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    carol
        .put_file("hello.txt", &mut std::io::Cursor::new(b"hi".to_vec()))
        .await
        .expect("carol uploads");
    alice
        .put_file(
            "during.txt",
            &mut std::io::Cursor::new(b"still here".to_vec()),
        )
        .await
        .expect("the session opened before the reload keeps working");

    std::fs::write(&config, "[server\nbroken = ").expect("break config");
    hang_up(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ftp_login(ftp_addr, "carol").await.is_ok(),
        "a broken file keeps the running users"
    );
    assert!(alice.noop().await.is_ok(), "and the running sessions");
    assert!(
        child.try_wait().expect("status").is_none(),
        "SIGHUP never stops the process"
    );
    let _ = child.kill();
    let _ = child.wait();
}
