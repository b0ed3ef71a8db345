//! The integration tests, built as one binary (one link instead of one per file): each
//! module is one area, `common` is the shared harness (an in-process S3 store, stand-ins of
//! the platforms' APIs, a bridge configured against them, raw FTP and SFTP clients).
//!
//! Run one area with `cargo test --test it pipeline::`, one test by its full name, e.g.
//! `cargo test --test it delivery::backlog`.

mod common;

mod admin;
mod admin_actions;
mod auth_http;
mod cli;
mod connector_sessions;
mod connectors;
mod delivery;
mod ftp_abort;
mod ftp_namespace;
mod ftp_upload;
mod ftps;
mod full_disk;
mod lifecycle;
mod observability;
mod outbox;
mod pipeline;
mod platform_standins;
mod platform_standins_more;
mod postgres_tls;
mod preauth;
mod reload;
mod replicas;
mod replicas_admin;
mod replicas_bans;
mod replicas_fence;
mod replicas_outage;
mod replicas_outbox;
mod replicas_quota;
mod replicas_uploads;
mod resume;
mod security;
mod sftp;
mod sftp_flow;
