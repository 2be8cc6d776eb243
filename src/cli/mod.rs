//! The command line: `serve`, and the admin commands that work on the same storage folder as
//! the server (safe while it runs: SQLite in WAL mode with a busy timeout, and containers found
//! by this server's labels).

/// `println!` that returns the error instead of panicking ("failed printing to stdout") when
/// stdout is closed, as by `precheck-server runs list | head`: see [`is_broken_pipe`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

mod engines;
mod inspect;
mod keys;
mod runs;
mod submit;
mod system;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, EngineConfig};
use crate::db::Db;
use crate::docker::Engine;
use crate::model::{RunStatus, Slot};
use crate::storage::Storage;

#[derive(Parser)]
#[command(
    name = "precheck-server",
    version,
    about = "Runs the gf180mcu precheck on chip layouts in isolated Docker containers"
)]
pub struct Cli {
    /// The configuration file (TOML) [default: ./config.toml]. `serve` and the admin commands
    /// find it the same way: this flag, else PRECHECK_CONFIG, else config.toml here.
    #[arg(long, short, global = true, env = "PRECHECK_CONFIG")]
    pub config: Option<PathBuf>,
    /// How the server logs to stderr: `human` lines, or `json` objects for log shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "PRECHECK_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

impl Cli {
    /// Starts the log on stderr: `RUST_LOG` filters (default `info`), in the chosen format. JSON
    /// lines carry the fields of the spans they happen in, such as a request's `request_id`.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Human => builder.init(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .init(),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the API server.
    Serve,
    /// Read a local layout file and say what the server would: format, unit, cells, top cells,
    /// the die's size, origin and layers, and whether the precheck would take it (exit 0) or
    /// refuse it (exit 1, each reason told).
    Inspect {
        /// A GDSII, gzip'd GDSII or OASIS file.
        file: PathBuf,
        /// The slot the die is for: 1x1, 0p5x1, 1x0p5 or 0p5x0p5.
        #[arg(long, default_value = "1x1", value_parser = parse_slot)]
        slot: Slot,
        /// A chip-on-board die: its size is not checked (the precheck checks its pad mask).
        #[arg(long)]
        cob: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Check a layout on a server, for CI: upload, precheck, follow the log, download the result;
    /// exits with the run's StatusCode. The key comes from PRECHECK_API_KEY.
    Submit(submit::SubmitArgs),
    #[command(flatten)]
    Admin(AdminCommand),
}

/// The commands that work on a server's storage folder, whether it runs or not.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// Is the server up? The engine's version, queued and running runs, disk used.
    Status(Output),
    /// Remove containers of this server that no queued or running run owns, and files no row references.
    Cleanup {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: Output,
    },
    /// List, inspect, delete and prune runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Generate, list and revoke the API keys kept in the database.
    #[command(subcommand)]
    Apikey(KeyCommand),
    /// List the Docker engines, and drain or resume one.
    #[command(subcommand)]
    Engines(EnginesCommand),
}

#[derive(Subcommand)]
pub enum EnginesCommand {
    /// The config's engines: whether each answers, is drained, its runs, slots and image.
    List(Output),
    /// Take no new runs on an engine; the runs on it go on to their end. Kept across restarts.
    Drain {
        /// The engine's name in the config's [[engines]].
        name: String,
    },
    /// Take runs on a drained engine again.
    Resume {
        /// The engine's name in the config's [[engines]].
        name: String,
    },
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs with this status (queued, running, completed, failed, cancelled); repeatable.
        #[arg(long = "status", value_name = "STATUS")]
        statuses: Vec<RunStatus>,
        /// Show whole ids.
        #[arg(long)]
        no_trunc: bool,
        /// Only the newest N runs (all by default).
        #[arg(long, short = 'n', value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        output: Output,
    },
    /// Show a run as `GET /api/v1/prechecks/{id}` does (always JSON, like `docker inspect`).
    Inspect {
        /// The run's id, or a unique start of it.
        id: String,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a run with its log, output and flow directory.
    Delete {
        /// The run's id, or a unique start of it.
        id: String,
        /// Delete a running run too: its container is stopped first.
        #[arg(long, short)]
        force: bool,
        #[command(flatten)]
        output: Output,
    },
    /// Delete finished runs and their files.
    Prune {
        /// Only runs with this status (completed, failed, cancelled); repeatable.
        #[arg(long = "status", value_name = "STATUS")]
        statuses: Vec<RunStatus>,
        /// Only runs that finished longer ago than this (e.g. 90m, 12h, 7d).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<Duration>,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it once; only its sha256 is stored.
    Generate {
        /// Its name: who or what uses it (letters, digits, '-', '_', '.'). Default: key-XXXXXXXX.
        #[arg(long)]
        name: Option<String>,
        /// It sees every upload and run, not only its own.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        output: Output,
    },
    /// List the keys (names, creation, last use; never the keys).
    List(Output),
    /// Make a key fail from its next request on, without a restart.
    Revoke {
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

/// How a command prints its answer.
#[derive(Args, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A `--slot`, with the API's message for a bad one.
fn parse_slot(text: &str) -> Result<Slot, String> {
    text.parse()
}

fn parse_age(text: &str) -> Result<Duration, String> {
    crate::units::duration_from_text(text)
        .ok_or_else(|| format!("{text:?} is not an age: use e.g. 90s, 30m, 12h or 7d"))
}

impl Cli {
    /// Runs the command; its exit code, or the error `main` prints (and exits 1 with).
    pub fn run(self) -> Result<ExitCode> {
        let command = match self.command {
            Command::Serve => {
                return serve(load_config(self.config.as_deref())?).map(|()| ExitCode::SUCCESS);
            }
            Command::Inspect {
                file,
                slot,
                cob,
                output,
            } => {
                return inspect::run(&file, slot, cob, output);
            }
            Command::Submit(args) => {
                return tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?
                    .block_on(submit::run(args));
            }
            Command::Admin(command) => command,
        };
        let config_path = self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG));
        let admin = Admin::open(load_config(self.config.as_deref())?, config_path)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime
            .block_on(async move {
                match command {
                    AdminCommand::Status(output) => system::status(&admin, output).await,
                    AdminCommand::Cleanup { dry_run, output } => {
                        system::cleanup(&admin, dry_run, output).await
                    }
                    AdminCommand::Runs(command) => runs::run(&admin, command).await,
                    AdminCommand::Apikey(command) => keys::run(&admin, command).await,
                    AdminCommand::Engines(command) => engines::run(&admin, command).await,
                }
            })
            .map(|()| ExitCode::SUCCESS)
    }
}

/// What the admin commands work on: the server's config, storage folder and database.
pub(crate) struct Admin {
    pub config: Config,
    pub config_path: PathBuf,
    pub storage: Storage,
    pub db: Db,
}

impl Admin {
    fn open(config: Config, config_path: &Path) -> Result<Admin> {
        let storage = Storage::at(&config.storage_path);
        let db_path = storage.db_path();
        if !db_path.is_file() {
            bail!(
                "no database at {}: the server creates it when it first starts (is server.storage_path in {} right?)",
                db_path.display(),
                config_path.display()
            );
        }
        let db = Db::open_existing(&db_path)?;
        Ok(Admin {
            config,
            config_path: config_path.to_path_buf(),
            storage,
            db,
        })
    }

    /// A Docker engine of the config, or an error within a few seconds.
    async fn engine(&self, engine: &EngineConfig) -> Result<Engine> {
        match tokio::time::timeout(ENGINE_WAIT, Engine::connect_to(&engine.host)).await {
            Ok(connected) => connected.with_context(|| format!("engine {}", engine.name)),
            Err(_) => bail!(
                "the Docker engine {} ({}) did not answer within {} s",
                engine.name,
                crate::docker::host_name(&engine.host),
                ENGINE_WAIT.as_secs()
            ),
        }
    }

    /// The engine a run went to (the first for a run from before engines were recorded).
    fn engine_of(&self, run: &crate::model::Run) -> Result<&EngineConfig> {
        match &run.engine {
            None => Ok(&self.config.engines[0]),
            Some(name) => self.config.engine(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "the run is on the engine {name:?}, which {} no longer has",
                    self.config_path.display()
                )
            }),
        }
    }
}

/// How long an admin command waits for the Docker engine.
const ENGINE_WAIT: Duration = Duration::from_secs(10);

/// Writes one line to stdout (see `outln!`).
pub(crate) fn write_line(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .context("cannot write to stdout")
}

/// Whether `e` is stdout (or another pipe) closed by its reader: `runs list | head` has read
/// what it wanted. The command then exits quietly with 141, as if killed by SIGPIPE (Rust
/// ignores the signal and reports EPIPE instead).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The exit code of a command whose output was cut off by its reader (128 + SIGPIPE).
pub const BROKEN_PIPE_EXIT: u8 = 141;

/// Prints `value` as indented JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot write JSON")?;
    outln!("{text}")?;
    Ok(())
}

/// The config file used when neither `--config` nor PRECHECK_CONFIG names one.
const DEFAULT_CONFIG: &str = "config.toml";

/// Loads the config `serve` and the admin commands share: the one `--config` or PRECHECK_CONFIG
/// names, else `config.toml` in the current folder; a missing file says where it was looked for.
fn load_config(given: Option<&Path>) -> Result<Config> {
    let path = given.unwrap_or(Path::new(DEFAULT_CONFIG));
    if given.is_none() && !path.exists() {
        return Err(no_config_file(&std::env::current_dir().unwrap_or_default()));
    }
    Config::load(path)
}

/// The refusal of a command that names no config file, where (`here`) there is no
/// `config.toml`.
fn no_config_file(here: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "no config file: looked for {DEFAULT_CONFIG} in {} because neither --config nor PRECHECK_CONFIG names one; \
         give the server's config with --config FILE (config.example.toml shows every key)",
        here.display()
    )
}

fn serve(config: Config) -> Result<()> {
    // Everything the server creates (the storage folder, the database, uploads, logs, what
    // containers hand back) is its own: 0700 folders, 0600 files. Set before any thread starts.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let addr = (config.host, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        crate::server::serve(config, listener, shutdown_signal()).await
    });
    // Tasks still going (a run being watched) are dropped; their containers go on.
    runtime.shutdown_timeout(Duration::from_secs(1));
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

/// The admin commands' refusals, on a storage folder of a temporary folder's own.
#[cfg(test)]
impl Admin {
    /// The admin of a new storage folder in `dir` (with an empty database), with the config
    /// `toml` as if read from `dir/config.toml`.
    pub(crate) fn in_temp(dir: &Path, toml: &str) -> Admin {
        let config = Config::parse(toml, dir, &|_| None).unwrap();
        std::fs::create_dir_all(&config.storage_path).unwrap();
        let storage = Storage::at(&config.storage_path);
        let db = Db::open(&storage.db_path()).unwrap();
        Admin {
            config,
            config_path: dir.join("config.toml"),
            storage,
            db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_durations_with_a_unit() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in ["soon", "", "-1h", "7 days"] {
            assert_eq!(
                parse_age(bad),
                Err(format!(
                    "{bad:?} is not an age: use e.g. 90s, 30m, 12h or 7d"
                ))
            );
        }
    }

    /// The values the command line refuses with a message of ours: (arguments, the message).
    #[test]
    fn bad_values_on_the_command_line_are_refused_with_a_message() {
        let unknown_status =
            "unknown status \"done\": use one of queued, running, completed, failed, cancelled";
        let cases: [(&[&str], &str); 5] = [
            (
                &["runs", "prune", "--older-than", "soon"],
                "\"soon\" is not an age: use e.g. 90s, 30m, 12h or 7d",
            ),
            (
                &[
                    "submit",
                    "chip.gds",
                    "--server",
                    "http://s",
                    "--timeout",
                    "1 hour",
                ],
                "\"1 hour\" is not an age: use e.g. 90s, 30m, 12h or 7d",
            ),
            (&["runs", "list", "--status", "done"], unknown_status),
            (&["runs", "prune", "--status", "done"], unknown_status),
            (
                &["runs", "list", "--status", "Queued"],
                "unknown status \"Queued\"",
            ),
        ];
        for (args, message) in cases {
            let args = std::iter::once("precheck-server").chain(args.iter().copied());
            let e = match Cli::try_parse_from(args) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{message}: taken"),
            };
            assert!(e.contains(message), "{e}");
        }
    }

    #[test]
    fn a_command_without_its_config_or_database_says_where_it_looked() {
        let e = no_config_file(Path::new("/home/ci")).to_string();
        assert_eq!(
            e,
            "no config file: looked for config.toml in /home/ci because neither --config nor PRECHECK_CONFIG names one; give the server's config with --config FILE (config.example.toml shows every key)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse("", dir.path(), &|_| None).unwrap();
        let e = match Admin::open(config, Path::new("/etc/precheck/config.toml")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("an admin without a database"),
        };
        assert_eq!(
            e,
            format!(
                "no database at {}/data/precheck.sqlite: the server creates it when it first starts (is server.storage_path in /etc/precheck/config.toml right?)",
                dir.path().display()
            )
        );
    }
}
