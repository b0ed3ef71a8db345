//! The modules the fuzz targets (`fuzz/`) exercise, compiled on their own: client path
//! normalisation and config parsing depend on nothing else in the crate.

#![allow(dead_code)]

#[path = "auth/path.rs"]
pub mod path;

#[path = "config/mod.rs"]
pub mod config;
