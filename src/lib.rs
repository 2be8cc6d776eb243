//! precheck-server: runs the gf180mcu precheck on uploaded chip layouts in isolated Docker
//! containers, behind a Docker-style HTTP API.
//!
//! # Layout
//! - [`config`]: the TOML file, validated into a [`config::Config`].
//! - [`model`]: uploads, runs, their statuses and outcomes, and the request fields' rules; no
//!   SQL, no HTTP.
//! - [`db`]: the only SQL; SQLite on its own thread behind a cloneable handle.
//! - [`storage`]: the storage folder, streaming upload writes with sha256, tarballs.
//! - [`layout`]: what a layout file holds (format, unit, cells, top cells), in one streaming pass.
//! - [`logs`]: a run's timestamped log file and how it is read (tail, since).
//! - [`docker`]: the only bollard import; containers, images, archives.
//! - [`engines`]: the Docker engines runs go to: slots, reachability, drained, images.
//! - [`image`]: the precheck image on an engine: pulled when missing, self-tested once per id.
//! - [`runner`]: one run's container from create to remove, and how it ended.
//! - [`recovery`]: after a restart, runs matched with their containers; what nothing owns.
//! - [`queue`]: one FIFO queue placing runs on the engines, cancel, waiting for a run to end.
//! - [`server`]: `serve(config, listener, shutdown)`, start-up and background tasks.
//! - [`webhooks`]: the signed POSTs of finished runs, retried with backoff.
//! - [`auth`]: API keys (generate, hash, compare) and the client's address.
//! - [`api`]: everything HTTP: routes, DTOs, errors, authentication.
//! - [`cli`]: the command line.
//! - [`units`]: sizes and durations as people write and read them.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod docker;
pub mod engines;
pub mod gf180;
pub mod image;
pub mod layout;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod queue;
pub mod recovery;
pub mod runner;
pub mod server;
pub mod storage;
pub mod units;
pub mod webhooks;
