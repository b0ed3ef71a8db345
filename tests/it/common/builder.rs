//! [`HarnessBuilder`]: a test bridge's config, built with typed methods over a base config
//! (alice, bob and reader; an embedded store; FTP and SFTP on loopback) instead of TOML
//! strings spliced into a template. Rare keys go through [`HarnessBuilder::set`] or, for
//! whole tables, [`HarnessBuilder::toml`].

use super::{Harness, client_key, passive_range, password_hash};
use ingest_bridge::storage::embedded::EmbeddedStore;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// One change to the base config, applied in the order the test asked for it.
type Edit = Box<dyn FnOnce(&mut DocumentMut) + Send>;

/// A TOML value a builder method takes: strings, numbers, booleans, lists of strings.
pub trait TomlValue {
    /// This as a `toml_edit` value.
    fn into_toml(self) -> Value;
}

impl TomlValue for &str {
    fn into_toml(self) -> Value {
        self.into()
    }
}

impl TomlValue for String {
    fn into_toml(self) -> Value {
        self.into()
    }
}

impl TomlValue for &String {
    fn into_toml(self) -> Value {
        self.as_str().into()
    }
}

impl TomlValue for bool {
    fn into_toml(self) -> Value {
        self.into()
    }
}

impl TomlValue for i64 {
    fn into_toml(self) -> Value {
        self.into()
    }
}

impl TomlValue for i32 {
    fn into_toml(self) -> Value {
        i64::from(self).into()
    }
}

impl TomlValue for u32 {
    fn into_toml(self) -> Value {
        i64::from(self).into()
    }
}

impl TomlValue for &[&str] {
    fn into_toml(self) -> Value {
        Value::Array(self.iter().copied().collect::<Array>())
    }
}

impl<const N: usize> TomlValue for [&str; N] {
    fn into_toml(self) -> Value {
        Value::Array(self.iter().copied().collect::<Array>())
    }
}

/// Builds a test bridge's config; [`HarnessBuilder::start`] starts it.
#[derive(Default)]
pub struct HarnessBuilder {
    edits: Vec<Edit>,
    env: Vec<(String, String)>,
}

impl Harness {
    /// A builder over the base config; `Harness::builder().start().await` is the base bridge.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }
}

impl HarnessBuilder {
    /// Applies `edit` to the config document (after the edits asked for before).
    fn edit(mut self, edit: impl FnOnce(&mut DocumentMut) + Send + 'static) -> Self {
        self.edits.push(Box::new(edit));
        self
    }

    /// Sets the dotted `key` (e.g. `"storage.multipart_copy_threshold"`) to `value`.
    pub fn set(self, key: &str, value: impl TomlValue) -> Self {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        let value = value.into_toml();
        self.edit(move |doc| {
            let (last, tables) = path.split_last().expect("a key");
            let mut table = doc.as_table_mut();
            for name in tables {
                table = table
                    .entry(name)
                    .or_insert_with(|| Item::Table(Table::new()))
                    .as_table_mut()
                    .unwrap_or_else(|| panic!("{name} is a table"));
            }
            table[last.as_str()] = Item::Value(value);
        })
    }

    /// Merges a TOML fragment (whole tables, e.g. `[auth.http]`) into the config: its keys
    /// replace the base's, its `[[users]]` are added.
    pub fn toml(self, fragment: impl Into<String>) -> Self {
        let text: String = fragment.into();
        let fragment: DocumentMut = text.parse().expect("the fragment is TOML");
        self.edit(move |doc| merge(doc.as_table_mut(), fragment.as_table()))
    }

    /// `storage.part_size` (base: 5MiB).
    pub fn part_size(self, size: &str) -> Self {
        self.set("storage.part_size", size)
    }

    /// `storage.memory_limit` (base: 64MiB).
    pub fn memory_limit(self, size: &str) -> Self {
        self.set("storage.memory_limit", size)
    }

    /// `storage.upload_concurrency` (base: 4).
    pub fn upload_concurrency(self, n: u32) -> Self {
        self.set("storage.upload_concurrency", n)
    }

    /// `storage.resume_window`: `"0s"` aborts cut uploads at once instead of keeping them.
    pub fn resume_window(self, window: &str) -> Self {
        self.set("storage.resume_window", window)
    }

    /// `[upload] overwrite`: whether an upload may replace an existing object.
    pub fn upload_overwrite(self, overwrite: bool) -> Self {
        self.set("upload.overwrite", overwrite)
    }

    /// `server.drain_timeout` (base: 10s).
    pub fn drain_timeout(self, timeout: &str) -> Self {
        self.set("server.drain_timeout", timeout)
    }

    /// `server.login_timeout`.
    pub fn login_timeout(self, timeout: &str) -> Self {
        self.set("server.login_timeout", timeout)
    }

    /// `server.trusted_proxies`: addresses whose connections start with a PROXY header.
    pub fn trusted_proxies(self, nets: &[&str]) -> Self {
        self.set("server.trusted_proxies", nets)
    }

    /// `server.allowed_ips`: the networks clients may connect from.
    pub fn allowed_ips(self, nets: &[&str]) -> Self {
        self.set("server.allowed_ips", nets)
    }

    /// `ftp.data_timeout` (base: 10s).
    pub fn data_timeout(self, timeout: &str) -> Self {
        self.set("ftp.data_timeout", timeout)
    }

    /// `ftp.idle_timeout` and `sftp.idle_timeout`.
    pub fn idle_timeout(self, timeout: &str) -> Self {
        self.set("ftp.idle_timeout", timeout)
            .set("sftp.idle_timeout", timeout)
    }

    /// `[ftp.tls]` with the certificate and key files; `required` refuses plain logins.
    pub fn ftp_tls(self, cert: &Path, key: &Path, required: bool) -> Self {
        self.set("ftp.tls.cert", cert.display().to_string())
            .set("ftp.tls.key", key.display().to_string())
            .set("ftp.tls.required", required)
    }

    /// `[defender]`: `max_failures` failed logins ban an address for `ban_time`.
    pub fn defender(self, max_failures: u32, ban_time: &str) -> Self {
        self.set("defender.max_failures", max_failures)
            .set("defender.ban_time", ban_time)
    }

    /// `state.url`: e.g. a PostgreSQL database several bridges share.
    pub fn state_url(self, url: &str) -> Self {
        self.set("state.url", url)
    }

    /// `notify.url` in the base `[notify]` (5 s timeout, 2 s backoff, an `X-Api-Key`).
    pub fn notify_url(self, url: &str) -> Self {
        self.set("notify.url", url)
    }

    /// A key of `[notify]`, e.g. `.notify("max_age", "2s")`.
    pub fn notify(self, key: &str, value: impl TomlValue) -> Self {
        self.set(&format!("notify.{key}"), value)
    }

    /// Replaces the whole `[notify]` section with `section` (TOML, e.g. a shipped
    /// connector's example).
    pub fn notify_section(self, section: impl Into<String>) -> Self {
        self.edit(|doc| {
            doc.as_table_mut().remove("notify");
        })
        .toml(section)
    }

    /// `[notify]` with only `url` and a 5 s timeout (no backoff cap, no headers).
    pub fn plain_notify(self, url: &str) -> Self {
        self.notify_section(format!("[notify]\nurl = \"{url}\"\ntimeout = \"5s\"\n"))
    }

    /// A key of alice's `[[users]]` entry, e.g. `.alice("max_file_size", "6MiB")`.
    pub fn alice(self, key: &str, value: impl TomlValue) -> Self {
        let key = key.to_string();
        let value = value.into_toml();
        self.edit(move |doc| {
            let users = doc["users"]
                .as_array_of_tables_mut()
                .expect("[[users]] in the base");
            let alice = users
                .iter_mut()
                .find(|u| u["username"].as_str() == Some("alice"))
                .expect("alice in the base");
            alice[key.as_str()] = Item::Value(value);
        })
    }

    /// A variable `${name}` in the config resolves to (before the process's own).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// [`HarnessBuilder::env`] for each pair.
    pub fn envs(self, vars: &[(&str, &str)]) -> Self {
        vars.iter()
            .fold(self, |builder, (name, value)| builder.env(name, value))
    }

    /// The config text for a bridge with its data under `dir`, against `store`.
    pub fn config_text(self, dir: &Path, store: &EmbeddedStore) -> String {
        let mut doc: DocumentMut = base_config(dir, store)
            .parse()
            .expect("the base config is TOML");
        for edit in self.edits {
            edit(&mut doc);
        }
        doc.to_string()
    }

    /// Starts a store in a new temporary directory and the bridge against it.
    pub async fn start(self) -> Harness {
        self.start_in(tempfile::tempdir().expect("tempdir")).await
    }

    /// Starts a stand-in API, then the bridge with `notify.url` pointing to it.
    pub async fn start_with_api(self) -> (Harness, super::FakeApi) {
        let api = super::FakeApi::start().await;
        let h = self.notify_url(&api.url).start().await;
        (h, api)
    }

    /// [`HarnessBuilder::start`] in a directory the test prepared (e.g. `data` on a small
    /// tmpfs).
    pub async fn start_in(self, dir: TempDir) -> Harness {
        let store = start_store(dir.path()).await;
        let env = self.env.clone();
        let text = self.config_text(dir.path(), &store);
        Harness::start_with(dir, store, text, env).await
    }

    /// Starts the bridge in a new temporary directory against `store`, which another
    /// harness already runs (two replicas writing to one bucket).
    pub async fn start_sharing(self, store: &EmbeddedStore) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = self.env.clone();
        let text = self.config_text(dir.path(), store);
        Harness::start_with(dir, store.clone(), text, env).await
    }

    /// Starts a store under `dir` and writes the config to `dir/bridge.toml`, for a bridge
    /// run as its own process ([`super::spawn_bridge`]).
    pub async fn write_config(self, dir: &Path) -> (EmbeddedStore, PathBuf) {
        let store = start_store(dir).await;
        let config = dir.join("bridge.toml");
        std::fs::write(&config, self.config_text(dir, &store)).expect("config");
        (store, config)
    }
}

/// An embedded S3 store under `dir/store`, bucket `ingest`.
pub async fn start_store(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::start(&dir.join("store"), "ingest", 0)
        .await
        .expect("store")
}

/// Merges `over` into `base`: tables recursively, `[[…]]` arrays appended, the rest replaced.
fn merge(base: &mut Table, over: &Table) {
    for (key, item) in over.iter() {
        match (base.get_mut(key), item) {
            (Some(Item::Table(b)), Item::Table(o)) => merge(b, o),
            (Some(Item::ArrayOfTables(b)), Item::ArrayOfTables(o)) => {
                for table in o.iter() {
                    b.push(table.clone());
                }
            }
            _ => {
                base.insert(key, item.clone());
            }
        }
    }
}

/// The base config: bridges in parallel each get their own passive ports.
fn base_config(dir: &Path, store: &EmbeddedStore) -> String {
    let (first, last) = passive_range();
    let hash = password_hash();
    format!(
        r#"
[server]
data_dir = "{data}"
drain_timeout = "10s"

[ftp]
listen = "127.0.0.1:0"
passive_ports = "{first}-{last}"
passive_host = "127.0.0.1"
data_timeout = "10s"

[sftp]
enabled = true
listen = "127.0.0.1:0"
host_keys = ["{hostkey}"]

[storage]
endpoint = "{endpoint}"
bucket = "ingest"
access_key_id = "{ak}"
secret_access_key = "{sk}"
part_size = "5MiB"
memory_limit = "64MiB"
upload_concurrency = 4

[notify]
url = ""
timeout = "5s"
max_backoff = "2s"
headers = {{ "X-Api-Key" = "k-123" }}

[metrics]
listen = "127.0.0.1:0"

[[users]]
username = "alice"
password_hash = "{hash}"
home = "alice/"
public_keys = ["{alice_key}"]
permissions = ["upload", "list", "download", "delete", "rename", "mkdir"]
metadata = {{ channel_id = "ch-42" }}

[[users]]
username = "bob"
password_hash = "{hash}"
home = "bob/"
permissions = ["upload"]

[[users]]
username = "reader"
password_hash = "{hash}"
home = "alice/"
permissions = ["list", "download"]
"#,
        data = dir.join("data").display(),
        hostkey = dir.join("ssh_host_ed25519_key").display(),
        alice_key = client_key(1)
            .public_key()
            .to_openssh()
            .expect("openssh public key"),
        endpoint = store.url,
        ak = store.access_key,
        sk = store.secret_key,
    )
}
