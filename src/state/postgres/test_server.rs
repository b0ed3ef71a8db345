//! A throwaway PostgreSQL 15 server for the tests: `initdb` in a temporary directory, then
//! `postgres` on a free loopback port (its socket in the same directory), stopped when the
//! last test using it drops it. Run as the `postgres` OS user when the tests run as root
//! (PostgreSQL refuses to run as root). Missing binaries fail the test, naming the package.
//! The integration tests compile this same file (`tests/it/common/mod.rs`, through `#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql-15` puts the server programs; `INGEST_TEST_PG_BIN` overrides.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server; stopped (and its directory removed) on drop.
#[derive(Debug)]
pub struct TestServer {
    /// Loopback port it listens on.
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
    /// The OS user and group to run programs as (`None`: as ourselves).
    user: Option<(u32, u32)>,
    /// Settings beyond the defaults, kept for a restart (TLS).
    extra_args: Vec<String>,
    databases: AtomicUsize,
}

/// The server the tests share while any of them runs.
static SHARED: Mutex<Weak<TestServer>> = Mutex::new(Weak::new());

/// The shared server, started when no test holds it.
pub fn server() -> Arc<TestServer> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(TestServer::start());
    *shared = Arc::downgrade(&server);
    server
}

impl TestServer {
    /// Starts the server from `INGEST_TEST_PG_BIN` or Debian's directory.
    fn start() -> TestServer {
        let bin = std::env::var_os("INGEST_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(PG_BIN));
        TestServer::start_from(bin)
    }

    /// A server of its own with `ssl = on` and `tls`'s certificate (the shared one keeps TLS
    /// off), stopped when dropped.
    pub fn start_tls(tls: &ServerTls) -> TestServer {
        let bin = std::env::var_os("INGEST_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(PG_BIN));
        TestServer::start_with(bin, Some(tls))
    }

    /// Starts the server programs in `bin`; fails, naming the package, when they are not there.
    fn start_from(bin: PathBuf) -> TestServer {
        TestServer::start_with(bin, None)
    }

    /// [`TestServer::start_from`], with TLS on when `tls` is given.
    fn start_with(bin: PathBuf, tls: Option<&ServerTls>) -> TestServer {
        for program in ["initdb", "postgres", "pg_ctl", "pg_isready"] {
            assert!(
                bin.join(program).is_file(),
                "PostgreSQL 15 server programs not found ({} is missing): install the Debian \
                 package postgresql-15 (apt-get install postgresql-15), or set \
                 INGEST_TEST_PG_BIN to the directory holding initdb and postgres",
                bin.join(program).display()
            );
        }
        let user = if id(&["-u"]) == 0 {
            Some((id(&["-u", "postgres"]), id(&["-g", "postgres"])))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("ingest-pg-")
            .tempdir()
            .expect("temporary directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown to postgres");
        }
        let data = dir.path().join("data");
        let status = command(&bin.join("initdb"), user)
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let tls_args = tls.map(|tls| tls.install(&data, user)).unwrap_or_default();
        let port = free_port();
        let child = launch(&bin, dir.path(), port, user, &tls_args);
        let mut server = TestServer {
            port,
            bin,
            dir,
            child,
            user,
            extra_args: tls_args,
            databases: AtomicUsize::new(0),
        };
        server.wait_ready();
        server
    }

    /// A server of the caller's own, not shared with other tests: one it may stop and start.
    pub fn private() -> TestServer {
        TestServer::start()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: like a crash, no shutdown
    /// checkpoint; what was committed is recovered from the WAL at the next start).
    pub fn stop(&mut self) {
        let status = command(&self.bin.join("pg_ctl"), self.user)
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl stop");
        assert!(status.success(), "pg_ctl stop failed: {}", self.log());
        let _ = self.child.wait();
    }

    /// Starts the stopped server again on the same port and data directory, and waits
    /// until it accepts connections.
    pub fn restart(&mut self) {
        self.child = launch(
            &self.bin,
            self.dir.path(),
            self.port,
            self.user,
            &self.extra_args,
        );
        self.wait_ready();
    }

    /// Waits until the server accepts connections; fails with its log if it ends or takes
    /// too long.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited ({status}): {}", self.log());
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "postgres did not accept connections within {START_TIMEOUT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// A new empty database's URL (each test gets its own).
    pub async fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{n}");
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test server");
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = connection.await;
        self.url(&name)
    }
}

/// TLS for [`TestServer::start_tls`]: the server's certificate and key (PEM).
#[derive(Debug)]
pub struct ServerTls {
    /// The certificate chain, the server's first.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// pg_hba.conf lines for TCP in place of initdb's (e.g. only `hostssl`, so plain
    /// connections are refused); `None` keeps initdb's, which allow both.
    pub hba: Option<String>,
}

impl ServerTls {
    /// Writes the files into the data directory `data` (owned by `user`, mode 0600, as
    /// PostgreSQL insists for the key) and returns the server's arguments that use them.
    fn install(&self, data: &Path, user: Option<(u32, u32)>) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![
            ("server.crt", &self.cert_pem),
            ("server.key", &self.key_pem),
        ];
        let hba = self
            .hba
            .as_ref()
            .map(|lines| format!("local all all trust\n{lines}\n"));
        if let Some(hba) = &hba {
            files.push(("pg_hba.conf", hba));
        }
        for (name, text) in files {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write a TLS file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 0600");
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        [
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
        ]
        .iter()
        .flat_map(|setting| ["-c".to_string(), setting.to_string()])
        .collect()
    }
}

/// A certificate authority for test servers' certificates (rcgen, ECDSA P-256).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        TestCa { issuer }
    }

    /// The CA's certificate (PEM), to trust.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// TLS for a server whose certificate names `names` (DNS names or IP addresses), signed
    /// by this CA, with `hba` as in [`ServerTls::hba`].
    pub fn server_tls(&self, names: &[&str], hba: Option<&str>) -> ServerTls {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("server params");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            hba: hba.map(str::to_string),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // `immediate`: nothing to keep; the data directory goes with the temporary one.
        let _ = command(&self.bin.join("pg_ctl"), self.user)
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `postgres` on `port` with its data directory, socket and log in `dir`.
fn launch(
    bin: &Path,
    dir: &Path,
    port: u16,
    user: Option<(u32, u32)>,
    extra_args: &[String],
) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .expect("log file");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))
            .expect("chown log");
    }
    command(&bin.join("postgres"), user)
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            &port.to_string(),
            "-k",
        ])
        .arg(dir)
        // A test server: speed over durability; enough connections for parallel tests.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start postgres")
}

/// `program`, run as `user` when given.
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
        // The environment names root's home; initdb and postgres read none of it but locale.
        command.env("HOME", "/tmp").env("LC_ALL", "C");
    }
    command
}

/// `id ARGS` as a number.
fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {args:?} printed no number (is there a postgres user?)"))
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

mod tests {
    /// Without the server programs the tests fail and say what to install, never pass.
    #[test]
    #[should_panic(expected = "install the Debian package postgresql-15")]
    fn missing_programs_fail_naming_the_package() {
        let empty = tempfile::tempdir().expect("tempdir");
        super::TestServer::start_from(empty.path().to_path_buf());
    }
}

/// The rows `sql` returns in the database at `url`, on a connection of its own: for tests
/// that look at what the replicas wrote.
pub async fn rows(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the state database");
    let connection = tokio::spawn(connection);
    let rows = client
        .query(sql, &[])
        .await
        .expect("query the state database");
    drop(client);
    let _ = connection.await;
    rows
}
