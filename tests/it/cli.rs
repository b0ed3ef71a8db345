//! The command line: exit codes and messages an operator sees.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ingest-bridge"))
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[ftp]\nlisten = \"localhost\"\n[storage]\npart_size = \"1KiB\"\nbucket = \"Bad_Bucket\"\n[notify]\ntimeout = \"forever\"\n[[users]]\nusername = \"x\"\npassword_hash = \"nope\"\n",
    )
    .expect("write");
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "ftp.listen (line 2)",
        "storage.part_size",
        "storage.bucket",
        "notify.timeout",
        "users[0].password_hash",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
    assert!(!err.contains("panicked"));
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    for file in [
        "config/ingest-bridge.toml",
        "config/production.example.toml",
        "config/docker-compose.toml",
        "config/docker-compose-postgres.toml",
    ] {
        let out = bin()
            .args(["check-config", "--config", file])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn missing_config_is_a_clear_error() {
    let out = bin()
        .args(["check-config", "--config", "/nonexistent/x.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).expect("utf8");
    assert!(hash.starts_with("$argon2id$"));
    assert!(ingest_bridge::auth::verify_password(hash.trim(), "s3cret"));
}

#[test]
fn version_is_printed() {
    let out = bin().arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

fn serve_with(config: &str) -> std::process::Output {
    serve_with_env(config, &[])
}

fn serve_with_env(config: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let config = config.replace("DATA", &dir.path().join("data").display().to_string());
    std::fs::write(&path, config).expect("write");
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn environment_variables_override_keys_and_are_named_in_problems() {
    let check = |env: &[(&str, &str)]| {
        let out = bin()
            .args(["check-config", "--config", "config/ingest-bridge.toml"])
            .envs(env.iter().copied())
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(&[
        ("INGEST_BRIDGE__STORAGE__MEMORY_LIMIT", "2GiB"),
        ("INGEST_BRIDGE__SFTP__ENABLED", "false"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(&[("INGEST_BRIDGE__STORAGE__PART_SIZE", "1KiB")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("storage.part_size") && err.contains("INGEST_BRIDGE__STORAGE__PART_SIZE"),
        "{err}"
    );
    let (code, err) = check(&[("INGEST_BRIDGE__STORAGE__NO_SUCH_KEY", "1")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no_such_key") && err.contains("INGEST_BRIDGE__STORAGE__NO_SUCH_KEY"),
        "{err}"
    );
    let (code, err) = check(&[("INGEST_BRIDGE__STORAGE", "x")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("does not name a key"), "{err}");
    assert!(!err.contains("panicked"));

    // `serve` reads them too: the file's free port is replaced by a taken one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = serve_with_env(
        "[server]\ndata_dir = \"DATA\"\n[ftp]\nlisten = \"127.0.0.1:0\"\n[sftp]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        &[("INGEST_BRIDGE__FTP__LISTEN", &listen)],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ftp.listen") && err.contains(&port), "{err}");
}

#[test]
fn port_in_use_names_the_key_and_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = serve_with(&format!(
        "[server]\ndata_dir = \"DATA\"\n[ftp]\nlisten = \"127.0.0.1:{port}\"\n[sftp]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
    ));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ftp.listen") && err.contains(&port.to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn unreachable_bucket_names_the_endpoint_and_exits_2() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let out = serve_with(&format!(
        "[server]\ndata_dir = \"DATA\"\n[sftp]\nenabled = false\n[ftp]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\nendpoint = \"http://127.0.0.1:{port}\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\n"
    ));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage.endpoint") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn unusable_ftps_certificate_names_the_key_and_exits_2() {
    let out = serve_with(
        "[server]\ndata_dir = \"DATA\"\n[sftp]\nenabled = false\n[ftp]\nlisten = \"127.0.0.1:0\"\n[ftp.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ftp.tls.cert"), "{err}");
    assert!(!err.contains("panicked"));
}
