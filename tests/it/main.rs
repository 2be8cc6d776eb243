//! The integration tests: one binary, one module per area, each test running the real server.

mod auth;
mod cli;
mod client;
mod config;
mod errors;
mod image;
mod jobs;
mod klayout_image;
mod layouts;
mod librelane;
mod observability;
mod openapi;
mod projects;
mod realwork;
mod restart;
mod run_ends;
mod runs;
mod simulation;
mod smoke;
mod submit;
mod support;
mod uploads;
mod webhooks;
mod workflow;
