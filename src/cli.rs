//! The command line: clap structs, and what each command does.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "precheck-server",
    version,
    about = "Runs the gf180mcu precheck on chip layouts in isolated Docker containers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the API server.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Serve { config } => serve(&config),
        }
    }
}

fn serve(config_path: &std::path::Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let addr = (config.host, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        crate::server::serve(config, listener, shutdown_signal()).await
    });
    // Tasks still going (a run being watched) are dropped; their containers go on.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
