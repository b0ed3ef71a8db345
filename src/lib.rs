//! ingest-bridge: an FTP/FTPS and SFTP server whose uploads stream straight into S3
//! multipart uploads, and which calls the platform's upload-complete API once each object is
//! whole.
//!
//! Data flows through the modules in this order:
//! [`config`] → [`auth`] → front-ends [`ftp`] and [`sftp`] → [`files`] (their one door) →
//! [`upload`] (the streaming S3 pipeline) and [`namespace`] (listings, renames) →
//! [`storage`] (the only S3 client) → [`notify`] (event log and API calls), with [`metrics`]
//! beside all of them and [`server`] wiring them. [`protocol`] names the front-ends for all
//! of them. [`admin`] is the operator's door: it reads [`sessions`], the running uploads and
//! the durable [`state`], and acts on them.

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod defender;
pub mod files;
pub mod ftp;
pub mod metrics;
pub mod namespace;
pub mod notify;
pub mod outbound;
pub mod progress;
pub mod protocol;
pub mod server;
pub mod sessions;
pub mod sftp;
pub mod state;
pub mod storage;
pub mod upload;
