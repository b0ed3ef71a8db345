//! The `ingest-bridge bans` commands: list the defender's bans and lift one. They reach the
//! bans only where every replica keeps them, a PostgreSQL `[state] url`; with SQLite the
//! bans live in the memory of the `serve` process, out of this command's reach.

use ingest_bridge::config::{Config, StateBackend};
use ingest_bridge::state::BanStore;
use ingest_bridge::state::postgres::{BAN_REFRESH, PgBans, open_bans};
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

/// What `bans` does.
#[derive(clap::Subcommand)]
pub enum BansAction {
    /// List banned addresses: address, banned until, bans so far, failed logins counted.
    List {
        /// Also addresses with failed logins that are not banned.
        #[arg(long)]
        all: bool,
    },
    /// Lift the ban of ADDRESS on every replica (its ban count stays, so a next ban is
    /// still longer).
    Lift {
        /// The banned client address, e.g. 203.0.113.9 or 2001:db8::1.
        address: String,
    },
}

/// Runs `action` against the bans of the config at `path`.
pub fn run(path: &Path, action: BansAction) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return super::fail(e),
    };
    let url = match &config.state.backend {
        StateBackend::Postgres(url) => url.clone(),
        StateBackend::Sqlite => {
            return super::fail(
                "with [state] url = \"sqlite\" the bans live in the memory of the running \
                 `serve` process, which this command cannot reach. A restart of `serve` \
                 forgets every ban (the admin API, DELETE /api/v1/bans/ADDRESS, lifts one \
                 without a restart once it is available); with a postgres:// [state] url \
                 this command lifts a ban on every replica",
            );
        }
    };
    if let BansAction::Lift { address } = &action
        && parse(address).is_none()
    {
        return super::fail(format!(
            "{address:?} is not an IP address; give one as `ingest-bridge bans list` shows it"
        ));
    }
    super::block_on(async move {
        let bans = match open_bans(&url, &config.state.tls).await {
            Ok(b) => b,
            Err(e) => return super::fail(e),
        };
        match action {
            BansAction::List { all } => list(&bans, all),
            BansAction::Lift { address } => match parse(&address) {
                Some(ip) => lift(&bans, ip).await,
                None => super::fail(format!("{address:?} is not an IP address")),
            },
        }
    })
}

/// An address as the defender keys it (IPv4-mapped IPv6 as IPv4).
fn parse(address: &str) -> Option<IpAddr> {
    address
        .trim()
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

fn list(bans: &PgBans, all: bool) -> ExitCode {
    let entries: Vec<_> = bans
        .list(SystemTime::now())
        .into_iter()
        .filter(|e| all || e.banned_until.is_some())
        .collect();
    println!("ADDRESS\tBANNED_UNTIL\tBANS\tFAILURES");
    for e in &entries {
        let until = e.banned_until.map_or("-".to_string(), |t| {
            humantime::format_rfc3339_seconds(t).to_string()
        });
        println!("{}\t{until}\t{}\t{}", e.ip, e.bans, e.failures);
    }
    let banned = entries.iter().filter(|e| e.banned_until.is_some()).count();
    eprintln!("{banned} addresses banned");
    ExitCode::SUCCESS
}

async fn lift(bans: &Arc<PgBans>, ip: IpAddr) -> ExitCode {
    let Some(until) = bans.banned_until(ip, SystemTime::now()) else {
        return super::fail(format!(
            "{ip} is not banned; `ingest-bridge bans list` shows the banned addresses"
        ));
    };
    bans.unban(ip);
    if let Err(e) = bans.sync().await {
        return super::fail(format!(
            "the ban of {ip} was not lifted: {e}; check that the database is reachable and run the command again"
        ));
    }
    println!(
        "ban of {ip} (until {}) lifted; every replica admits it within {}",
        humantime::format_rfc3339_seconds(until),
        humantime::format_duration(BAN_REFRESH)
    );
    ExitCode::SUCCESS
}
