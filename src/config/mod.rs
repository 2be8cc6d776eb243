//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Three files, each using only the ones listed before it:
//! - this file: [`Config`], what the rest of the server uses (absolute paths, byte counts,
//!   durations), and the rule of a key's name, which `apikey generate` applies too.
//! - `raw.rs`: the file as serde reads it, with the defaults of what it leaves out; unknown keys
//!   refused; `${VAR}` in any string value replaced by the environment variable (an unset one is
//!   an error that names the key).
//! - `validate.rs`: the raw file into a [`Config`], every check with a message that names the key,
//!   and [`Config::load`] and [`Config::parse`], which read and then validate. Those two are
//!   written there, not here, so that this file needs neither of the others: no import circle.
//!
//! Sizes and durations are read by [`crate::units`].

mod raw;
mod validate;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::layout::InflationLimits;
use crate::model::RunKind;

/// The validated configuration of one server.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Absolute path of the storage folder (database, uploads, runs).
    pub storage_path: PathBuf,
    /// The Docker engines runs go to, in the config's order; never empty.
    pub engines: Vec<EngineConfig>,
    pub upload_expiry: Duration,
    pub max_upload_size: u64,
    /// What an upload's decompressors may produce (`server.max_inflated_size`,
    /// `server.max_inflation_ratio`).
    pub inflation: InflationLimits,
    pub image: String,
    pub container_prefix: String,
    /// Limits of prechecks.
    pub limits: Limits,
    pub simulation_limits: Limits,
    pub build_limits: Limits,
    pub auth: Auth,
    pub projects: ProjectLimits,
    pub images: Images,
    pub builds: Builds,
    pub webhooks: Webhooks,
    pub http: Http,
}

/// One Docker engine runs go to (`[[engines]]`, or the local one when there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub name: String,
    pub host: EngineHost,
    /// `None`: the engine's memory / `limits.memory`, at least 1 (asked of the engine).
    pub max_concurrent: Option<usize>,
    /// How long its runs stay `running` while it does not answer.
    pub grace: Duration,
}

/// Where an engine is.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineHost {
    /// No `[[engines]]`: `DOCKER_HOST`, or the default socket, as the `docker` CLI finds it.
    Default,
    /// `unix:///path`: the socket's absolute path.
    Unix(PathBuf),
    /// `tcp://HOST:PORT`, with TLS or (on a network the operator trusts) without.
    Tcp { address: String, tls: Option<Tls> },
    /// `ssh://[USER@]HOST[:PORT]`: the whole URL (the system's `ssh` runs
    /// `docker system dial-stdio` there).
    Ssh(String),
}

/// An engine's TLS files (absolute paths).
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The name of the engine a config without `[[engines]]` has.
pub const LOCAL_ENGINE: &str = "local";

/// How long an engine's runs wait for it by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// The `[http]` table: how long a connection may hold the server without sending a request, and
/// how many may be open at once.
#[derive(Debug, Clone)]
pub struct Http {
    /// A request's head (request line and headers) must arrive in full this long after its
    /// first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (none being answered, no answer streaming) is
    /// closed after this long.
    pub idle_timeout: Duration,
    /// At most this many connections are open at once; a new one waits in the listen backlog
    /// until another closes.
    pub max_connections: usize,
}

/// The `[webhooks]` table: the POSTs a run's `notify_url` gets when it ends.
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// Signs every body (HMAC-SHA256); without it, no webhook is sent or accepted.
    pub secret: Option<String>,
    /// The `notify_url` of runs created without one.
    pub default_url: Option<reqwest::Url>,
    /// The hosts a `notify_url` may name (none: no webhooks).
    pub allowed_hosts: Vec<String>,
    /// How long after the run ended a failing delivery is retried.
    pub give_up_after: Duration,
    /// The first retry's delay; each next one doubles it, up to 5 minutes.
    pub first_retry_after: Duration,
}

impl Webhooks {
    /// Checks a `notify_url`: http or https, a host on the allowlist, at most 2048 bytes.
    pub fn check_url(&self, url: &str) -> std::result::Result<reqwest::Url, String> {
        if self.secret.is_none() {
            return Err("this server sends no webhooks: its config has no webhooks.secret".into());
        }
        if url.len() > 2048 {
            return Err("longer than 2048 bytes".into());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?} is not an http or https URL"));
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.contains(&host) {
            return Err(format!(
                "the host {host:?} is not in webhooks.allowed_hosts ({})",
                if self.allowed_hosts.is_empty() {
                    "empty".to_string()
                } else {
                    self.allowed_hosts.join(", ")
                }
            ));
        }
        Ok(parsed)
    }
}

impl Config {
    /// The engine of this name.
    pub fn engine(&self, name: &str) -> Option<&EngineConfig> {
        self.engines.iter().find(|e| e.name == name)
    }

    /// The limits of a kind of run, and the config table that sets them.
    pub fn limits_for(&self, kind: RunKind) -> (&Limits, &'static str) {
        match kind {
            RunKind::Precheck => (&self.limits, "limits"),
            RunKind::Simulation => (&self.simulation_limits, "limits.simulation"),
            RunKind::Build => (&self.build_limits, "limits.build"),
        }
    }

    /// The image a new run of a kind uses.
    pub fn image_for(&self, kind: RunKind) -> &str {
        match kind {
            RunKind::Precheck => &self.image,
            RunKind::Simulation => &self.images.simulation,
            RunKind::Build => &self.images.librelane,
        }
    }
}

/// The `[images]` table: the images of project jobs.
#[derive(Debug, Clone)]
pub struct Images {
    pub simulation: String,
    pub librelane: String,
}

/// The `[builds]` table.
#[derive(Debug, Clone)]
pub struct Builds {
    /// Where the PDK is; builds are refused without one.
    pub pdk: Option<PdkSource>,
    /// Passed to LibreLane as `--pdk`.
    pub pdk_variant: String,
}

/// A PDK for builds, mounted read-only at [`PDK_MOUNT`].
#[derive(Debug, Clone, PartialEq)]
pub enum PdkSource {
    /// A folder on the engine's host.
    HostPath(PathBuf),
    /// A Docker volume.
    Volume(String),
}

/// Where a build's container sees the PDK (its `PDK_ROOT`).
pub const PDK_MOUNT: &str = "/pdk";

/// The `[projects]` table: how much source a project may hold.
#[derive(Debug, Clone)]
pub struct ProjectLimits {
    /// Bytes in one file.
    pub max_file_size: u64,
    /// Bytes in all of a project's files.
    pub max_project_size: u64,
    /// Files in a project (and so in one import).
    pub max_files: usize,
}

/// Resource limits applied to every run's container.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory limit in bytes (swap is not allowed on top of it).
    pub memory: u64,
    /// CPUs as a fraction of cores; `None` means all of them.
    pub cpus: Option<f64>,
    pub pids: i64,
    pub timeout: Duration,
}

impl Limits {
    /// The whole CPUs a run may use: `cpus` rounded up, or `None` (no limit). The precheck gets
    /// it as `--threads`, since its default (`max`) is the host's CPU count, not the limit's.
    pub fn whole_cpus(&self) -> Option<u64> {
        self.cpus.map(|cpus| cpus.ceil() as u64)
    }
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub required: bool,
    /// Empty: every address may connect.
    pub allowed_ips: Vec<IpNetwork>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNetwork>,
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Unique among the config's keys, and [`valid_key_name`].
    pub name: String,
    pub key: String,
    /// Sees and touches every upload and run, not only its own.
    pub admin: bool,
}

/// What a key's name may be: it is shown in tables and recorded with uploads and runs. The config's
/// keys and `apikey generate --name` follow the same rule.
pub const KEY_NAME_RULE: &str = "must be 1 to 64 letters, digits, '-', '_' or '.'";

pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The precheck image of a config that names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/wafer-space/gf180mcu-precheck:latest";
/// LibreLane's image; it also holds Icarus Verilog and Verilator, so simulations use it too.
pub const DEFAULT_LIBRELANE_IMAGE: &str = "ghcr.io/librelane/librelane:latest";

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Parses config text as if the file were in `/etc/precheck`, with `SET` the only
    /// environment variable (`value`).
    pub(super) fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("/etc/precheck"), &|name| {
            (name == "SET").then(|| "value".to_string())
        })
    }

    /// The refusal of config text, as `load` would show it after the file's name.
    pub(super) fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn each_kind_has_its_limits_and_image() {
        let c = parse(
            "[docker]\nimage = \"pre:1\"\n[images]\nsimulation = \"sim:1\"\nlibrelane = \"ll:1\"\n\
             [limits]\npids = 1\n[limits.simulation]\npids = 2\n[limits.build]\npids = 3",
        )
        .unwrap();
        for (kind, image, pids, table) in [
            (RunKind::Precheck, "pre:1", 1, "limits"),
            (RunKind::Simulation, "sim:1", 2, "limits.simulation"),
            (RunKind::Build, "ll:1", 3, "limits.build"),
        ] {
            assert_eq!(c.image_for(kind), image);
            let (limits, name) = c.limits_for(kind);
            assert_eq!((limits.pids, name), (pids, table), "{kind:?}");
        }
    }

    #[test]
    fn key_names() {
        for name in ["ci", "a", "ci-runner_2.old", &"k".repeat(64)] {
            assert!(valid_key_name(name), "{name:?}");
        }
        for name in ["", "a b", "ci/x", "ci:1", "é", &"k".repeat(65)] {
            assert!(!valid_key_name(name), "{name:?}");
        }
    }

    #[test]
    fn a_notify_url_is_checked_against_the_allowlist() {
        let webhooks = |secret: Option<&str>, hosts: &[&str]| Webhooks {
            secret: secret.map(str::to_string),
            default_url: None,
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            give_up_after: Duration::from_secs(3600),
            first_retry_after: Duration::from_secs(5),
        };
        let secret = Some("0123456789abcdef");
        let ok = webhooks(secret, &["ci", "hooks.example"]);
        for url in [
            "http://ci/x",
            "https://ci:8443/hook?run=1",
            "HTTP://CI/x",
            "https://hooks.example/",
        ] {
            assert!(ok.check_url(url).is_ok(), "{url}");
        }
        let long = format!("http://ci/{}", "x".repeat(2039));
        assert_eq!(long.len(), 2049);
        for (hooks, url, message) in [
            (
                webhooks(None, &["ci"]),
                "http://ci/x",
                "this server sends no webhooks: its config has no webhooks.secret".to_string(),
            ),
            (
                webhooks(secret, &["ci"]),
                long.as_str(),
                "longer than 2048 bytes".to_string(),
            ),
            (
                webhooks(secret, &["ci"]),
                "ci/x",
                "\"ci/x\" is not a URL: relative URL without a base".to_string(),
            ),
            (
                webhooks(secret, &["ci"]),
                "ftp://ci/x",
                "\"ftp://ci/x\" is not an http or https URL".to_string(),
            ),
            (
                webhooks(secret, &[]),
                "http://ci/x",
                "the host \"ci\" is not in webhooks.allowed_hosts (empty)".to_string(),
            ),
            (
                webhooks(secret, &["ci", "hooks.example"]),
                "http://elsewhere/x",
                "the host \"elsewhere\" is not in webhooks.allowed_hosts (ci, hooks.example)"
                    .to_string(),
            ),
        ] {
            assert_eq!(hooks.check_url(url).unwrap_err(), message, "{url}");
        }
    }
}
