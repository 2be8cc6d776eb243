//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! The raw serde structs mirror the file and reject unknown keys; [`Config`] is what the rest of the
//! server uses (absolute paths, byte counts, durations). `${VAR}` in any string value is replaced by
//! the environment variable; an unset variable is an error that names the key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::model::RunKind;

/// The validated configuration of one server.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Absolute path of the storage folder (database, uploads, runs).
    pub storage_path: PathBuf,
    pub max_concurrent: usize,
    pub upload_expiry: Duration,
    pub max_upload_size: u64,
    /// What an upload's decompressors may produce (`server.max_inflated_size`,
    /// `server.max_inflation_ratio`).
    pub inflation: crate::layout::InflationLimits,
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
    pub name: String,
    pub key: String,
    /// Sees and touches every upload and run, not only its own.
    pub admin: bool,
}

pub const DEFAULT_IMAGE: &str = "ghcr.io/wafer-space/gf180mcu-precheck:latest";
/// LibreLane's image; it also holds Icarus Verilog and Verilator, so simulations use it too.
pub const DEFAULT_LIBRELANE_IMAGE: &str = "ghcr.io/librelane/librelane:latest";

impl Config {
    /// Reads and validates a config file. Relative paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let base = path
            .canonicalize()
            .with_context(|| format!("cannot resolve config file {}", path.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Config::parse(&text, &base, &|name| std::env::var(name).ok())
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses config text; `base` resolves relative paths and `env` looks up `${VAR}`s.
    pub fn parse(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.message()))?;
        expand_env(&mut value, "", env)?;
        // Parsed again from text so that a bad value's error shows the line (and key) it is on.
        let expanded = toml::to_string(&value).map_err(|e| anyhow!("{e}"))?;
        let raw: RawConfig =
            toml::from_str(&expanded).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        raw.validate(base)
    }
}

fn expand_env(
    value: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match value {
        toml::Value::String(s) if s.contains("${") => *s = expand_str(s, key, env)?,
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{key}[{i}]"), env)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let path = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                expand_env(v, &path, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, key: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow!("{key}: unterminated `${{` in {s:?}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("{key}: `${{{name}}}` is not a valid environment variable name");
        }
        let found = env(name).ok_or_else(|| {
            anyhow!("{key}: environment variable {name} is not set (the config refers to it as ${{{name}}})")
        })?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    docker: RawDocker,
    limits: RawLimits,
    auth: RawAuth,
    projects: RawProjects,
    images: RawImages,
    builds: RawBuilds,
    webhooks: RawWebhooks,
    http: RawHttp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    header_read_timeout: DurationText,
    idle_timeout: DurationText,
    max_connections: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            header_read_timeout: DurationText::Text("30s".into()),
            idle_timeout: DurationText::Text("2m".into()),
            max_connections: 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebhooks {
    secret: Option<String>,
    default_url: Option<String>,
    allowed_hosts: Vec<String>,
    give_up_after: DurationText,
    first_retry_after: DurationText,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            secret: None,
            default_url: None,
            allowed_hosts: vec![],
            give_up_after: DurationText::Text("1h".into()),
            first_retry_after: DurationText::Text("5s".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawImages {
    simulation: String,
    librelane: String,
}

impl Default for RawImages {
    fn default() -> Self {
        RawImages {
            simulation: DEFAULT_LIBRELANE_IMAGE.into(),
            librelane: DEFAULT_LIBRELANE_IMAGE.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBuilds {
    pdk: Option<String>,
    pdk_variant: String,
}

impl Default for RawBuilds {
    fn default() -> Self {
        RawBuilds {
            pdk: None,
            pdk_variant: "gf180mcuD".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProjects {
    max_file_size: Size,
    max_project_size: Size,
    max_files: usize,
}

impl Default for RawProjects {
    fn default() -> Self {
        RawProjects {
            max_file_size: Size::Text("64MiB".into()),
            max_project_size: Size::Text("1GiB".into()),
            max_files: 10_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    host: String,
    port: u16,
    storage_path: String,
    max_concurrent: usize,
    upload_expiry_minutes: u64,
    max_upload_size: Size,
    max_inflated_size: Size,
    max_inflation_ratio: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            host: "127.0.0.1".into(),
            port: 8000,
            storage_path: "./data".into(),
            max_concurrent: 1,
            upload_expiry_minutes: 15,
            max_upload_size: Size::Text("2GiB".into()),
            max_inflated_size: Size::Text("8GiB".into()),
            max_inflation_ratio: 200,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDocker {
    image: String,
    container_prefix: String,
}

impl Default for RawDocker {
    fn default() -> Self {
        RawDocker {
            image: DEFAULT_IMAGE.into(),
            container_prefix: "precheck-".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    memory: Size,
    cpus: Option<f64>,
    pids: i64,
    timeout: DurationText,
    simulation: RawJobLimits,
    build: RawJobLimits,
}

/// `[limits.simulation]`, `[limits.build]`: what is not given takes the kind's default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawJobLimits {
    memory: Option<Size>,
    cpus: Option<f64>,
    pids: Option<i64>,
    timeout: Option<DurationText>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            memory: Size::Text("24GiB".into()),
            cpus: None,
            pids: 4096,
            timeout: DurationText::Text("6h".into()),
            simulation: RawJobLimits::default(),
            build: RawJobLimits::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    required: bool,
    allowed_ips: Vec<String>,
    trusted_proxies: Vec<String>,
    api_keys: Vec<RawApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    name: String,
    key: String,
    #[serde(default)]
    admin: bool,
}

/// A byte count: an integer, or text such as `"512MiB"`, `"24GiB"`, `"2GB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// A duration: whole seconds, or text such as `"90s"`, `"30m"`, `"6h"`, `"1d"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationText {
    Seconds(u64),
    Text(String),
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config> {
        let s = self.server;
        let host: IpAddr = s.host.parse().map_err(|_| {
            anyhow!(
                "server.host: {:?} is not an IP address (e.g. \"127.0.0.1\")",
                s.host
            )
        })?;
        if s.storage_path.is_empty() {
            bail!("server.storage_path: must not be empty");
        }
        let storage = PathBuf::from(&s.storage_path);
        let storage_path = normalize(&if storage.is_absolute() {
            storage
        } else {
            base.join(storage)
        });
        if s.max_concurrent == 0 {
            bail!("server.max_concurrent: must be at least 1");
        }
        if s.upload_expiry_minutes == 0 {
            bail!("server.upload_expiry_minutes: must be at least 1");
        }
        let max_upload_size = parse_size(&s.max_upload_size, "server.max_upload_size")?;
        if max_upload_size == 0 {
            bail!("server.max_upload_size: must be more than 0");
        }
        let max_inflated = parse_size(&s.max_inflated_size, "server.max_inflated_size")?;
        if max_inflated == 0 {
            bail!("server.max_inflated_size: must be more than 0");
        }
        if s.max_inflation_ratio == 0 {
            bail!("server.max_inflation_ratio: must be at least 1");
        }
        let inflation = crate::layout::InflationLimits {
            max_inflated,
            max_ratio: s.max_inflation_ratio,
            ratio_floor: crate::layout::RATIO_FLOOR,
        };
        let d = self.docker;
        let image = check_image(d.image, "docker.image")?;
        let prefix_ok = d
            .container_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !prefix_ok || d.container_prefix.starts_with(['.', '-']) {
            bail!(
                "docker.container_prefix: {:?} may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit",
                d.container_prefix
            );
        }
        let l = self.limits;
        let limits = limit_set(l.memory, l.cpus, l.pids, l.timeout, "limits")?;
        let simulation_limits = limit_set(
            l.simulation.memory.unwrap_or(Size::Text("4GiB".into())),
            l.simulation.cpus,
            l.simulation.pids.unwrap_or(4096),
            l.simulation
                .timeout
                .unwrap_or(DurationText::Text("1h".into())),
            "limits.simulation",
        )?;
        let build_limits = limit_set(
            l.build.memory.unwrap_or(Size::Text("24GiB".into())),
            l.build.cpus,
            l.build.pids.unwrap_or(8192),
            l.build.timeout.unwrap_or(DurationText::Text("12h".into())),
            "limits.build",
        )?;
        let images = Images {
            simulation: check_image(self.images.simulation, "images.simulation")?,
            librelane: check_image(self.images.librelane, "images.librelane")?,
        };
        let b = self.builds;
        let pdk = b.pdk.map(|p| parse_pdk(&p)).transpose()?;
        let variant_ok = !b.pdk_variant.is_empty()
            && b.pdk_variant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !b.pdk_variant.starts_with(['-', '.']);
        if !variant_ok {
            bail!(
                "builds.pdk_variant: {:?} must be a PDK name such as \"gf180mcuD\"",
                b.pdk_variant
            );
        }
        let p = self.projects;
        let max_file_size = parse_size(&p.max_file_size, "projects.max_file_size")?;
        let max_project_size = parse_size(&p.max_project_size, "projects.max_project_size")?;
        if max_file_size == 0 || max_project_size < max_file_size {
            bail!("projects: max_file_size must be more than 0 and at most max_project_size");
        }
        if p.max_files == 0 {
            bail!("projects.max_files: must be at least 1");
        }
        let w = self.webhooks;
        if w.secret.as_ref().is_some_and(|s| s.trim().len() < 16) {
            bail!("webhooks.secret: too short to be a secret (at least 16 characters)");
        }
        let mut webhooks = Webhooks {
            secret: w.secret,
            default_url: None,
            allowed_hosts: w
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            give_up_after: parse_duration(&w.give_up_after, "webhooks.give_up_after")?,
            first_retry_after: parse_duration(&w.first_retry_after, "webhooks.first_retry_after")?,
        };
        if webhooks.first_retry_after.is_zero() || webhooks.give_up_after.is_zero() {
            bail!("webhooks: give_up_after and first_retry_after must be more than 0");
        }
        if let Some(url) = w.default_url {
            webhooks.default_url = Some(
                webhooks
                    .check_url(&url)
                    .map_err(|e| anyhow!("webhooks.default_url: {e}"))?,
            );
        }
        let h = self.http;
        let http = Http {
            header_read_timeout: parse_duration(
                &h.header_read_timeout,
                "http.header_read_timeout",
            )?,
            idle_timeout: parse_duration(&h.idle_timeout, "http.idle_timeout")?,
            max_connections: h.max_connections,
        };
        if http.header_read_timeout.is_zero() {
            bail!("http.header_read_timeout: must be more than 0 (e.g. \"30s\")");
        }
        if http.idle_timeout.is_zero() {
            bail!("http.idle_timeout: must be more than 0 (e.g. \"2m\")");
        }
        if http.max_connections == 0 {
            bail!("http.max_connections: must be more than 0 (e.g. 1024)");
        }
        let a = self.auth;
        let allowed_ips = parse_networks(&a.allowed_ips, "auth.allowed_ips")?;
        let trusted_proxies = parse_networks(&a.trusted_proxies, "auth.trusted_proxies")?;
        let mut names = std::collections::HashSet::new();
        for (i, k) in a.api_keys.iter().enumerate() {
            if !valid_key_name(&k.name) {
                bail!("auth.api_keys[{i}].name: {:?} {KEY_NAME_RULE}", k.name);
            }
            if !names.insert(k.name.as_str()) {
                bail!(
                    "auth.api_keys[{i}].name: {:?} is used by another key",
                    k.name
                );
            }
            if k.key.trim().len() < 16 {
                bail!(
                    "auth.api_keys[{i}].key: too short to be a secret (use `precheck-server apikey generate`)"
                );
            }
        }
        if a.required && a.api_keys.is_empty() {
            tracing::warn!(
                "auth.required is set and the config has no keys: only keys made with `apikey generate` work"
            );
        }
        Ok(Config {
            host,
            port: s.port,
            storage_path,
            max_concurrent: s.max_concurrent,
            upload_expiry: Duration::from_secs(s.upload_expiry_minutes * 60),
            max_upload_size,
            inflation,
            image,
            container_prefix: d.container_prefix,
            limits,
            simulation_limits,
            build_limits,
            images,
            builds: Builds {
                pdk,
                pdk_variant: b.pdk_variant,
            },
            webhooks,
            http,
            auth: Auth {
                required: a.required,
                allowed_ips,
                trusted_proxies,
                api_keys: a
                    .api_keys
                    .into_iter()
                    .map(|k| ApiKey {
                        name: k.name,
                        key: k.key,
                        admin: k.admin,
                    })
                    .collect(),
            },
            projects: ProjectLimits {
                max_file_size,
                max_project_size,
                max_files: p.max_files,
            },
        })
    }
}

fn limit_set(
    memory: Size,
    cpus: Option<f64>,
    pids: i64,
    timeout: DurationText,
    table: &str,
) -> Result<Limits> {
    let memory = parse_size(&memory, &format!("{table}.memory"))?;
    if memory < 6 * 1024 * 1024 {
        bail!("{table}.memory: Docker needs at least 6MiB");
    }
    if let Some(cpus) = cpus
        && !(cpus > 0.0 && cpus.is_finite())
    {
        bail!("{table}.cpus: must be more than 0 (leave it out to allow all CPUs)");
    }
    if pids < 1 {
        bail!("{table}.pids: must be at least 1");
    }
    let timeout = parse_duration(&timeout, &format!("{table}.timeout"))?;
    if timeout.is_zero() {
        bail!("{table}.timeout: must be more than 0");
    }
    Ok(Limits {
        memory,
        cpus,
        pids,
        timeout,
    })
}

fn check_image(image: String, key: &str) -> Result<String> {
    if image.trim().is_empty() || image.starts_with('-') || image.contains(char::is_whitespace) {
        bail!("{key}: {image:?} is not an image reference");
    }
    Ok(image)
}

/// `builds.pdk`: an absolute path is a folder on the engine's host, anything else a volume name.
fn parse_pdk(pdk: &str) -> Result<PdkSource> {
    if pdk.starts_with('/') {
        let path = normalize(Path::new(pdk));
        if path == Path::new("/") {
            bail!("builds.pdk: mounting the host's whole file system is not a PDK");
        }
        return Ok(PdkSource::HostPath(path));
    }
    let volume_ok = pdk.len() >= 2
        && pdk.starts_with(|c: char| c.is_ascii_alphanumeric())
        && pdk
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !volume_ok {
        bail!(
            "builds.pdk: {pdk:?} is neither an absolute host path (e.g. \"/opt/pdk\") nor a Docker volume name (e.g. \"gf180mcu-pdk\")"
        );
    }
    Ok(PdkSource::Volume(pdk.to_string()))
}

/// What a key's name may be: it is shown in tables and recorded with uploads and runs.
pub const KEY_NAME_RULE: &str = "must be 1 to 64 letters, digits, '-', '_' or '.'";

pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_networks(entries: &[String], key: &str) -> Result<Vec<IpNetwork>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.trim().parse::<IpNetwork>().map_err(|_| {
                anyhow!("{key}[{i}]: {e:?} is not an IP address or CIDR (e.g. \"10.0.0.5\", \"192.168.1.0/24\")")
            })
        })
        .collect()
}

/// Removes `.` and `..` components without touching the file system (the folder may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn parse_size(size: &Size, key: &str) -> Result<u64> {
    let text = match size {
        Size::Bytes(n) => return Ok(*n),
        Size::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        _ => bail!("{key}: {text:?} is not a size (use bytes, or e.g. \"512MiB\", \"24GiB\")"),
    };
    let number: f64 = number.parse().map_err(|_| {
        anyhow!("{key}: {text:?} is not a size (use bytes, or e.g. \"512MiB\", \"24GiB\")")
    })?;
    Ok((number * factor as f64) as u64)
}

fn parse_duration(d: &DurationText, key: &str) -> Result<Duration> {
    match d {
        DurationText::Seconds(n) => Ok(Duration::from_secs(*n)),
        DurationText::Text(t) => duration_from_text(t).ok_or_else(|| {
            anyhow!(
                "{key}: {t:?} is not a duration (use seconds, or e.g. \"90s\", \"30m\", \"6h\")"
            )
        }),
    }
}

/// Reads a duration written as seconds or with a unit: `90`, `90s`, `30m`, `6h`, `7d`.
pub fn duration_from_text(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(unit)?))
}

/// Formats a byte count for people: `16 GiB`, `64 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if value.fract() == 0.0 {
                format!("{value:.0} {name}")
            } else {
                format!("{value:.1} {name}")
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/precheck"), &|name| {
            (name == "SET").then(|| "value".to_string())
        })
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn defaults_suit_a_real_precheck() {
        let c = parse("").unwrap();
        assert_eq!(c.port, 8000);
        assert_eq!(c.storage_path, PathBuf::from("/etc/precheck/data"));
        assert_eq!(c.limits.memory, 24 << 30);
        assert_eq!(c.limits.cpus, None);
        assert_eq!(c.limits.pids, 4096);
        assert_eq!(c.limits.timeout, Duration::from_secs(6 * 3600));
        assert_eq!(c.max_upload_size, 2 << 30);
        assert_eq!(c.upload_expiry, Duration::from_secs(15 * 60));
        assert_eq!(c.image, DEFAULT_IMAGE);
        assert_eq!(c.images.librelane, DEFAULT_LIBRELANE_IMAGE);
        assert_eq!(c.builds.pdk, None);
        assert_eq!(c.builds.pdk_variant, "gf180mcuD");
        // A build needs more memory and time than a simulation.
        let (sim, build) = (&c.simulation_limits, &c.build_limits);
        assert!(sim.memory < build.memory && sim.timeout < build.timeout);
    }

    #[test]
    fn the_example_config_is_valid_and_shows_the_defaults() {
        let example = parse(include_str!("../config.example.toml")).unwrap();
        let defaults = parse("").unwrap();
        assert_eq!(example.build_limits.memory, defaults.build_limits.memory);
        assert_eq!(
            example.simulation_limits.timeout,
            defaults.simulation_limits.timeout
        );
        assert_eq!(example.images.simulation, defaults.images.simulation);
        assert_eq!(example.inflation, defaults.inflation);
        assert_eq!(example.projects.max_files, defaults.projects.max_files);
        assert_eq!(example.http.idle_timeout, defaults.http.idle_timeout);
        assert_eq!(
            example.http.header_read_timeout,
            defaults.http.header_read_timeout
        );
        assert_eq!(example.http.max_connections, defaults.http.max_connections);
    }

    #[test]
    fn bounds_on_inflation_and_file_counts() {
        let c = parse("").unwrap();
        assert_eq!(c.inflation, crate::layout::InflationLimits::default());
        assert_eq!(c.inflation.max_inflated, 8 << 30);
        assert_eq!(c.inflation.max_ratio, 200);
        assert_eq!(c.projects.max_files, 10_000);
        let c = parse(
            "[server]\nmax_inflated_size = \"1GiB\"\nmax_inflation_ratio = 50\n[projects]\nmax_files = 7",
        )
        .unwrap();
        assert_eq!(c.inflation.max_inflated, 1 << 30);
        assert_eq!(c.inflation.max_ratio, 50);
        assert_eq!(c.projects.max_files, 7);
        for (text, needle) in [
            (
                "[server]\nmax_inflated_size = 0",
                "server.max_inflated_size",
            ),
            (
                "[server]\nmax_inflated_size = \"lots\"",
                "server.max_inflated_size",
            ),
            (
                "[server]\nmax_inflation_ratio = 0",
                "server.max_inflation_ratio",
            ),
            ("[server]\nmax_inflation_ratio = -1", "max_inflation_ratio"),
            ("[projects]\nmax_files = 0", "projects.max_files"),
        ] {
            let e = error(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn job_limits_images_and_the_pdk() {
        let c = parse(
            "[limits.build]\nmemory = \"32GiB\"\n[limits.simulation]\ntimeout = \"5m\"\ncpus = 2\n\
             [images]\nsimulation = \"sim:1\"\n[builds]\npdk = \"/opt/pdk/../pdk\"",
        )
        .unwrap();
        assert_eq!(c.build_limits.memory, 32 << 30);
        assert_eq!(c.build_limits.timeout, Duration::from_secs(12 * 3600));
        assert_eq!(c.simulation_limits.timeout, Duration::from_secs(300));
        assert_eq!(c.simulation_limits.memory, 4 << 30);
        assert_eq!(c.simulation_limits.cpus, Some(2.0));
        assert_eq!(c.limits_for(RunKind::Build).1, "limits.build");
        assert_eq!(c.image_for(RunKind::Simulation), "sim:1");
        assert_eq!(c.builds.pdk, Some(PdkSource::HostPath("/opt/pdk".into())));
        let c = parse("[builds]\npdk = \"gf180mcu-pdk\"").unwrap();
        assert_eq!(c.builds.pdk, Some(PdkSource::Volume("gf180mcu-pdk".into())));
    }

    #[test]
    fn relative_storage_path_is_made_absolute_against_the_config_folder() {
        let c = parse("[server]\nstorage_path = \"../var/./store\"").unwrap();
        assert_eq!(c.storage_path, PathBuf::from("/etc/var/store"));
        let c = parse("[server]\nstorage_path = \"/srv/precheck\"").unwrap();
        assert_eq!(c.storage_path, PathBuf::from("/srv/precheck"));
    }

    #[test]
    fn sizes_and_durations() {
        let c = parse("[limits]\nmemory = \"64MiB\"\ntimeout = \"90s\"\ncpus = 1.5\n[server]\nmax_upload_size = 1000")
            .unwrap();
        assert_eq!(c.limits.memory, 64 << 20);
        assert_eq!(c.limits.timeout, Duration::from_secs(90));
        assert_eq!(c.limits.cpus, Some(1.5));
        assert_eq!(c.limits.whole_cpus(), Some(2));
        assert_eq!(c.max_upload_size, 1000);
        assert_eq!(parse("").unwrap().limits.whole_cpus(), None);
        let quarter = parse("[limits]\ncpus = 0.25").unwrap();
        assert_eq!(quarter.limits.whole_cpus(), Some(1));
        assert_eq!(
            parse("[limits]\ncpus = 3").unwrap().limits.whole_cpus(),
            Some(3)
        );
        assert_eq!(
            parse("[limits]\ntimeout = 30").unwrap().limits.timeout,
            Duration::from_secs(30)
        );
        let http = parse("").unwrap().http;
        assert_eq!(http.header_read_timeout, Duration::from_secs(30));
        assert_eq!(http.idle_timeout, Duration::from_secs(120));
        assert_eq!(http.max_connections, 1024);
        let http =
            parse("[http]\nheader_read_timeout = \"2s\"\nidle_timeout = 5\nmax_connections = 3")
                .unwrap()
                .http;
        assert_eq!(http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(http.idle_timeout, Duration::from_secs(5));
        assert_eq!(http.max_connections, 3);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[server]\nhots = \"x\"", "hots"),
            ("[servr]\nhost = \"x\"", "servr"),
            ("[server]\nhost = \"localhost:80\"", "server.host"),
            ("[server]\nport = 70000", "port"),
            ("[server]\nmax_concurrent = 0", "server.max_concurrent"),
            ("[limits]\nmemory = \"lots\"", "limits.memory"),
            ("[limits]\ntimeout = \"6 hours\"", "limits.timeout"),
            ("[limits]\ncpus = 0", "limits.cpus"),
            ("[limits.build]\nmemory = \"1KiB\"", "limits.build.memory"),
            (
                "[limits.simulation]\ntimeout = 0",
                "limits.simulation.timeout",
            ),
            ("[limits.build]\nmem = 1", "mem"),
            ("[images]\nlibrelane = \"-x\"", "images.librelane"),
            ("[builds]\npdk = \"../pdk\"", "builds.pdk"),
            ("[builds]\npdk = \"/\"", "builds.pdk"),
            ("[builds]\npdk_variant = \"--rm\"", "builds.pdk_variant"),
            ("[webhooks]\nsecret = \"short\"", "webhooks.secret"),
            (
                "[http]\nheader_read_timeout = 0",
                "http.header_read_timeout",
            ),
            ("[http]\nidle_timeout = \"0s\"", "http.idle_timeout"),
            ("[http]\nidle_timeout = \"soon\"", "http.idle_timeout"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            ("[http]\nkeepalive = 1", "keepalive"),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\ndefault_url = \"ftp://ci/x\"\nallowed_hosts = [\"ci\"]",
                "webhooks.default_url",
            ),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\ndefault_url = \"http://elsewhere/x\"\nallowed_hosts = [\"ci\"]",
                "webhooks.default_url",
            ),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\ndefault_url = \"http://ci/x\"",
                "webhooks.default_url",
            ),
            (
                "[docker]\ncontainer_prefix = \"a b\"",
                "docker.container_prefix",
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"${UNSET}\"",
                "auth.api_keys[0].key",
            ),
            (
                "[auth]\nallowed_ips = [\"10.0.0.0/8\", \"10.0.0.300\"]",
                "auth.allowed_ips[1]",
            ),
            (
                "[auth]\ntrusted_proxies = [\"proxy\"]",
                "auth.trusted_proxies[0]",
            ),
            (
                "[[auth.api_keys]]\nname = \"a b\"\nkey = \"ws_key_0123456789abcdef\"",
                "auth.api_keys[0].name",
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"short\"",
                "auth.api_keys[0].key",
            ),
        ] {
            let e = error(text);
            assert!(e.contains(key), "{text:?}: {e:?} does not name {key}");
        }
        assert!(error("[[auth.api_keys]]\nname = \"ci\"\nkey = \"${UNSET}\"").contains("UNSET"));
    }

    #[test]
    fn env_vars_are_expanded() {
        let c =
            parse("[[auth.api_keys]]\nname = \"ci\"\nkey = \"ws_key_${SET}_0123456789\"").unwrap();
        assert_eq!(c.auth.api_keys[0].key, "ws_key_value_0123456789");
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(16 << 30), "16 GiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
