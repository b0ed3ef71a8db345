//! The `ingest-bridge` command line.

mod bans_cli;

use clap::{Parser, Subcommand};
use ingest_bridge::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};
use ingest_bridge::server::Bridge;
use ingest_bridge::storage::embedded::EmbeddedStore;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// FTP/SFTP to S3 ingest bridge with upload-complete callbacks.
#[derive(Parser)]
#[command(name = "ingest-bridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run FTP, the notifier and the metrics endpoint until SIGINT/SIGTERM.
    Serve {
        /// Configuration file.
        #[arg(long, env = "INGEST_BRIDGE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration without binding ports; lists every problem.
    CheckConfig {
        /// Configuration file.
        #[arg(long, env = "INGEST_BRIDGE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Read a password on stdin and print its argon2id PHC string for `password_hash`.
    HashPassword,
    /// Inspect and repair the completion outbox (works while `serve` runs).
    Outbox {
        /// Configuration file (the outbox lives in its server.data_dir).
        #[arg(long, global = true, env = "INGEST_BRIDGE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// List the defender's bans and lift one (reaches every replica with a PostgreSQL
    /// [state] url; with SQLite the bans live in the `serve` process only).
    Bans {
        /// Configuration file (its [state] url names where the bans are).
        #[arg(long, global = true, env = "INGEST_BRIDGE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[command(subcommand)]
        action: bans_cli::BansAction,
    },
    /// Run only the embedded S3 store (s3s-fs) as a standalone S3 server, for benchmarks
    /// and for pointing other tools at the same store.
    EmbeddedStore {
        /// Directory holding the buckets.
        #[arg(long, default_value = "data/store")]
        root: PathBuf,
        /// Address to serve the S3 API on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Bucket to create when absent.
        #[arg(long, default_value = "ingest")]
        bucket: String,
        /// Access key clients sign with.
        #[arg(
            long,
            env = "EMBEDDED_STORE_ACCESS_KEY",
            default_value = "ingest-bridge"
        )]
        access_key: String,
        /// Secret key clients sign with.
        #[arg(
            long,
            env = "EMBEDDED_STORE_SECRET_KEY",
            default_value = "ingest-bridge-secret"
        )]
        secret_key: String,
    },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// List entries, oldest first: id, state, attempts, step, created, next attempt, key, last error.
    List {
        /// Only entries in this state.
        #[arg(long, value_parser = ["pending", "dead", "delivered"])]
        state: Option<String>,
    },
    /// Put a dead (or pending) entry back to pending, due now, with a fresh notify.max_age.
    Retry {
        /// The entry's id.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        /// Every dead entry.
        #[arg(long)]
        all_dead: bool,
    },
    /// Delete delivered entries older than DURATION (e.g. "30d").
    Purge {
        /// Age of the newest delivered entry to delete, e.g. "7d" or "12h".
        #[arg(long)]
        delivered_before: String,
    },
}

/// Exit code for every operator-facing error.
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    return_freed_buffers_to_the_os();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::HashPassword => hash_password(),
        Command::Outbox { config, action } => outbox(config, action),
        Command::Bans { config, action } => bans_cli::run(&config, action),
        Command::EmbeddedStore {
            root,
            listen,
            bucket,
            access_key,
            secret_key,
        } => embedded_store(root, listen, bucket, (access_key, secret_key)),
    }
}

/// Upload buffers are large (256 KiB probes, 16 MiB+ parts) and short-lived. glibc raises
/// its mmap threshold after the first such buffer is freed, after which freed buffers stay
/// in the heap and RSS creeps far above the memory budget. A fixed threshold keeps every
/// buffer from 128 KiB up mmapped, so its memory goes back to the OS the moment it is freed.
/// At 1 MiB, the probes of 1,000 SFTP uploads churned through the per-thread arenas: peak
/// RSS 672 MiB for a 552 MiB heap peak (`bench/scale.sh`); at 128 KiB, 625 MiB.
fn return_freed_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Allocations from this size up are mmapped ([`return_freed_buffers_to_the_os`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 * 1024;

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_ERROR)
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return fail(format!("cannot read the password from stdin: {e}"));
    }
    let password = input
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&input);
    if password.is_empty() {
        return fail(
            "the password is empty; pipe it in, e.g. `echo -n 'secret' | ingest-bridge hash-password`",
        );
    }
    match ingest_bridge::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("hashing failed: {e}")),
    }
}

fn outbox(path: PathBuf, action: OutboxAction) -> ExitCode {
    use ingest_bridge::notify::{NotifyError, State, now_ms};
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let data_dir = config.server.data_dir;
    let tls = config.state.tls;
    let shared = match config.state.backend {
        ingest_bridge::config::StateBackend::Sqlite => None,
        ingest_bridge::config::StateBackend::Postgres(url) => Some(url),
    };
    if shared.is_none() && !data_dir.join(ingest_bridge::notify::OUTBOX_FILE).exists() {
        return fail(format!(
            "no outbox in {}: it is created when `serve` runs with notify.url or [[notify.steps]] set",
            data_dir.display()
        ));
    }
    block_on(async move {
        // With a shared database, the outbox every replica delivers from.
        let opened = match &shared {
            Some(url) => ingest_bridge::state::postgres::open_outbox(url, &tls).await,
            None => ingest_bridge::state::sqlite::open_outbox(&data_dir),
        };
        let outbox = match opened {
            Ok(o) => o,
            Err(e) => return fail(NotifyError::Outbox(e)),
        };
        match action {
            OutboxAction::List { state } => {
                let state = state.as_deref().and_then(State::parse);
                let entries = match outbox.list(state).await {
                    Ok(e) => e,
                    Err(e) => return fail(e),
                };
                println!("ID\tSTATE\tATTEMPTS\tSTEP\tCREATED\tNEXT_ATTEMPT\tKEY\tLAST_ERROR");
                for e in &entries {
                    let next = if e.state == "pending" {
                        time(e.next_attempt_ms.max(now_ms()))
                    } else {
                        "-".to_string()
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        e.id,
                        e.state,
                        e.attempts,
                        e.step,
                        time(e.created_ms),
                        next,
                        e.key,
                        e.last_error
                            .as_deref()
                            .unwrap_or("-")
                            .replace(['\t', '\n'], " ")
                    );
                }
                eprintln!("{} entries", entries.len());
                ExitCode::SUCCESS
            }
            OutboxAction::Retry { id, all_dead } => {
                let id = if all_dead { None } else { id };
                match outbox.retry(id.clone()).await {
                    Ok(0) if id.is_some() => fail(format!(
                        "no pending or dead entry with id {:?}; see `ingest-bridge outbox list`",
                        id.unwrap_or_default()
                    )),
                    Ok(n) => {
                        println!(
                            "{n} entries queued again; a running bridge sends them within a second"
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            OutboxAction::Purge { delivered_before } => {
                let age = match ingest_bridge::config::parse_duration(&delivered_before) {
                    Ok(d) => d,
                    Err(e) => return fail(format!("--delivered-before: {e}")),
                };
                let cutoff = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2);
                match outbox.purge_delivered(cutoff).await {
                    Ok(n) => {
                        println!("{n} delivered entries purged");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
        }
    })
}

/// RFC 3339 (seconds) of a time in ms since the epoch.
fn time(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn embedded_store(
    root: PathBuf,
    listen: std::net::SocketAddr,
    bucket: String,
    keys: (String, String),
) -> ExitCode {
    init_logging("info", LogFormat::Text);
    block_on(async move {
        let store = match EmbeddedStore::start_on(&root, &bucket, listen, keys).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        println!(
            "S3 store at {} (bucket {bucket:?}, data in {})",
            store.url,
            store.root.display()
        );
        wait_for_signal().await;
        store.stop();
        ExitCode::SUCCESS
    })
}

/// Runs `work` on a multi-threaded runtime.
fn block_on(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => fail(format!("cannot start the async runtime: {e}")),
    }
}

/// Logs to stderr: `RUST_LOG` if set, else `level` (with noisy libraries quietened); in
/// colour only when stderr is a terminal.
fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},libunftp=warn,s3s=off,aws_config=warn,aws_smithy_runtime=warn"
        ))
    });
    // Colour codes only for a person at a terminal, not in files, pipes or log shippers.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_logging(&config.log.level, config.log.format);
    block_on(async move {
        let bridge = match Bridge::start(config).await {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        if let Some(store) = &bridge.embedded {
            println!(
                "embedded S3 store at {} (data in {})",
                store.url,
                store.root.display()
            );
        }
        if let Some(addr) = bridge.ftp_addr {
            println!("ftp listening on {addr}");
        }
        if let Some(addr) = bridge.sftp_addr {
            println!(
                "sftp listening on {addr} (host key {})",
                bridge.sftp_fingerprints.join(", ")
            );
        }
        println!(
            "metrics listening on http://{}/metrics",
            bridge.metrics_addr
        );
        if let Some(addr) = bridge.admin_addr {
            println!(
                "admin listening on {}/ (status page; API under /api/v1/)",
                bridge.admin_url(addr)
            );
        }
        reload_until_stopped(&bridge).await;
        tracing::info!(
            "draining: /readyz fails, new connections and uploads are refused, running uploads may finish (server.drain_timeout); a second signal stops at once"
        );
        let pipeline = bridge.pipeline.clone();
        let impatient = tokio::spawn(async move {
            wait_for_signal().await;
            tracing::warn!(
                "second signal: cutting running uploads now (kept for a resume when resuming is on)"
            );
            pipeline.stop_now();
        });
        bridge.shutdown().await;
        impatient.abort();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Reloads the config on every SIGHUP until SIGTERM or Ctrl-C. A config that does not load
/// or apply is logged and the running one stays.
async fn reload_until_stopped(bridge: &Bridge) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            wait_for_signal().await;
            return;
        };
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = hangup.recv() => {
                    // Logged either way; the running configuration stays on an error.
                    let _ = bridge.reload_logged();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = bridge;
        wait_for_signal().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
