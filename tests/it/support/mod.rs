//! Shared helpers for the integration tests, one file per concern: Docker checks and the labels
//! of the server's containers (`docker.rs`), the stand-in images (`images.rs`), a real server
//! process per test ([`TestServer`], `server.rs`), a second Docker engine of a test's own
//! ([`SecondEngine`], `engines.rs`), polling (`wait.rs`), and a small GDSII writer
//! so tests make their own layouts (`layouts.rs`). What the tests use is re-exported here, as
//! `crate::support::NAME`.
//!
//! Tests that need Docker call [`docker_required`] and fail, never skip, when it is missing.

// Each test module uses a different part of these files.
#![allow(dead_code)]

mod docker;
mod engines;
mod images;
mod layouts;
mod server;
mod wait;

pub use docker::{docker, docker_ok, docker_required};
pub use engines::{SecondEngine, mounts_under, processes_naming};
pub use images::{
    SIMULATION_IMAGE, VERILATOR_IMAGE, hostile_image, librelane_image, precheck_image,
    simulation_image, verilator_image,
};
pub use layouts::{gds_bytes, gds_library, write_big_gds};
pub use server::{ALICE, BOB, TestServer, TestServerBuilder, partial_upload, server_bin};
pub use wait::{files_in, wait_until, wait_until_async};
