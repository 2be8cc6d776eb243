//! The integration tests: one binary, one module per area, each test running the real server.

mod smoke;
mod support;
