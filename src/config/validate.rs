//! The raw config file into a [`Config`]: every check, each with a message that names the key
//! (`limits.build.memory: Docker needs at least 6MiB`), and the entry points that read a file.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::IpNetwork;

use super::raw::{DurationText, RawConfig, RawEngine, Size};
use super::{
    ApiKey, Auth, Builds, Config, DEFAULT_GRACE, EngineConfig, EngineHost, Http, Images,
    KEY_NAME_RULE, LOCAL_ENGINE, Limits, PdkSource, ProjectLimits, Tls, Webhooks, valid_key_name,
};
use crate::layout::{InflationLimits, RATIO_FLOOR};
use crate::units;

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
        RawConfig::read(text, env)?.validate(base)
    }
}

impl RawConfig {
    /// Every check of the file, table by table; `base` resolves a relative `storage_path`.
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
        if s.max_concurrent == Some(0) {
            bail!("server.max_concurrent: must be at least 1");
        }
        if s.upload_expiry_minutes == 0 {
            bail!("server.upload_expiry_minutes: must be at least 1");
        }
        let max_upload_size = bytes_of(&s.max_upload_size, "server.max_upload_size")?;
        if max_upload_size == 0 {
            bail!("server.max_upload_size: must be more than 0");
        }
        let max_inflated = bytes_of(&s.max_inflated_size, "server.max_inflated_size")?;
        if max_inflated == 0 {
            bail!("server.max_inflated_size: must be more than 0");
        }
        if s.max_inflation_ratio == 0 {
            bail!("server.max_inflation_ratio: must be at least 1");
        }
        let inflation = InflationLimits {
            max_inflated,
            max_ratio: s.max_inflation_ratio,
            ratio_floor: RATIO_FLOOR,
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
        let max_file_size = bytes_of(&p.max_file_size, "projects.max_file_size")?;
        let max_project_size = bytes_of(&p.max_project_size, "projects.max_project_size")?;
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
            give_up_after: duration_of(&w.give_up_after, "webhooks.give_up_after")?,
            first_retry_after: duration_of(&w.first_retry_after, "webhooks.first_retry_after")?,
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
            header_read_timeout: duration_of(&h.header_read_timeout, "http.header_read_timeout")?,
            idle_timeout: duration_of(&h.idle_timeout, "http.idle_timeout")?,
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
        let engines = engines(self.engines, s.max_concurrent, base)?;
        let a = self.auth;
        let allowed_ips = parse_networks(&a.allowed_ips, "auth.allowed_ips")?;
        let trusted_proxies = parse_networks(&a.trusted_proxies, "auth.trusted_proxies")?;
        let mut names = HashSet::new();
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
            engines,
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
    let memory = bytes_of(&memory, &format!("{table}.memory"))?;
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
    let timeout = duration_of(&timeout, &format!("{table}.timeout"))?;
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

/// A size in the file, as bytes.
/// The `[[engines]]`, or the one local engine with `server.max_concurrent` slots.
fn engines(
    raw: Vec<RawEngine>,
    server_max: Option<usize>,
    base: &Path,
) -> Result<Vec<EngineConfig>> {
    if raw.is_empty() {
        return Ok(vec![EngineConfig {
            name: LOCAL_ENGINE.into(),
            host: EngineHost::Default,
            max_concurrent: Some(server_max.unwrap_or(1)),
            grace: DEFAULT_GRACE,
        }]);
    }
    if server_max.is_some() {
        bail!(
            "server.max_concurrent: not used with [[engines]]: give each engine its own max_concurrent"
        );
    }
    let mut engines: Vec<EngineConfig> = vec![];
    for (i, e) in raw.into_iter().enumerate() {
        let name = e
            .name
            .ok_or_else(|| anyhow!("engines[{i}].name: missing: every engine needs a name"))?;
        let name_ok = (1..=63).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            bail!(
                "engines[{i}].name: {name:?} must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
            );
        }
        if let Some(j) = engines.iter().position(|other| other.name == name) {
            bail!("engines[{i}].name: {name:?} is used by engines[{j}] too");
        }
        let at = format!("engines[{i}] ({name:?})");
        let host = e
            .host
            .ok_or_else(|| anyhow!("{at}.host: missing (e.g. \"unix:///var/run/docker.sock\")"))?;
        let mut host = engine_host(&host).map_err(|why| {
            anyhow!(
                "{at}.host: {host:?} {why}: use unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST"
            )
        })?;
        if let Some(tls) = e.tls {
            let EngineHost::Tcp { tls: slot, .. } = &mut host else {
                bail!("{at}.tls: only a tcp:// host uses TLS");
            };
            let file = |path: Option<String>, key: &str| -> Result<PathBuf> {
                let path = path.ok_or_else(|| {
                    anyhow!("{at}.tls.{key}: missing: TLS needs ca, cert and key")
                })?;
                let path = base.join(path);
                // Opened, not only looked at: a file this user may not read is refused here.
                match std::fs::File::open(&path).and_then(|f| f.metadata()) {
                    Ok(m) if m.is_file() => Ok(path),
                    Ok(_) => bail!("{at}.tls.{key}: {} is not a file", path.display()),
                    Err(e) => bail!("{at}.tls.{key}: cannot read {}: {e}", path.display()),
                }
            };
            *slot = Some(Tls {
                ca: file(tls.ca, "ca")?,
                cert: file(tls.cert, "cert")?,
                key: file(tls.key, "key")?,
            });
        }
        if e.max_concurrent == Some(0) {
            bail!("{at}.max_concurrent: must be at least 1");
        }
        let grace = match &e.grace {
            Some(g) => duration_of(g, &format!("{at}.grace"))?,
            None => DEFAULT_GRACE,
        };
        if grace.is_zero() {
            bail!("{at}.grace: must be more than 0 (e.g. \"10m\")");
        }
        engines.push(EngineConfig {
            name,
            host,
            max_concurrent: e.max_concurrent,
            grace,
        });
    }
    Ok(engines)
}

/// An engine's `host`, or why it is not one.
fn engine_host(host: &str) -> std::result::Result<EngineHost, &'static str> {
    if let Some(path) = host.strip_prefix("unix://") {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err("is not a socket's absolute path");
        }
        return Ok(EngineHost::Unix(normalize(path)));
    }
    if let Some(address) = host.strip_prefix("tcp://") {
        let (name, port) = address.rsplit_once(':').ok_or("has no port")?;
        if name.is_empty() || name.contains(['/', '@', ' ']) {
            return Err("has no host name");
        }
        port.parse::<u16>().map_err(|_| "has no port number")?;
        return Ok(EngineHost::Tcp {
            address: address.to_string(),
            tls: None,
        });
    }
    if let Some(rest) = host.strip_prefix("ssh://") {
        let at_host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let name = at_host.split(':').next().unwrap_or_default();
        if name.is_empty() || rest.contains(['/', ' ']) || rest.starts_with('-') {
            return Err("has no host name");
        }
        return Ok(EngineHost::Ssh(host.to_string()));
    }
    Err("is not a Docker host")
}

fn bytes_of(size: &Size, key: &str) -> Result<u64> {
    match size {
        Size::Bytes(n) => Ok(*n),
        Size::Text(t) => units::parse_size(t).ok_or_else(|| {
            anyhow!(
                "{key}: {:?} is not a size (use bytes, or e.g. \"512MiB\", \"24GiB\")",
                t.trim()
            )
        }),
    }
}

/// A duration in the file.
fn duration_of(d: &DurationText, key: &str) -> Result<Duration> {
    match d {
        DurationText::Seconds(n) => Ok(Duration::from_secs(*n)),
        DurationText::Text(t) => units::duration_from_text(t).ok_or_else(|| {
            anyhow!(
                "{key}: {t:?} is not a duration (use seconds, or e.g. \"90s\", \"30m\", \"6h\")"
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::{error, parse};
    use super::*;
    use crate::model::RunKind;

    #[test]
    fn bounds_on_inflation_and_file_counts() {
        let c = parse("").unwrap();
        assert_eq!(c.inflation, InflationLimits::default());
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

    /// Every check of `validate`, and the whole message of its refusal: the key, what is wrong with
    /// the value, and an example where one helps.
    #[test]
    fn every_refusal_and_its_message() {
        for (text, message) in [
            // [server]
            (
                "[server]\nhost = \"localhost:80\"",
                r#"server.host: "localhost:80" is not an IP address (e.g. "127.0.0.1")"#,
            ),
            (
                "[server]\nhost = \"example\"",
                r#"server.host: "example" is not an IP address (e.g. "127.0.0.1")"#,
            ),
            (
                "[server]\nstorage_path = \"\"",
                "server.storage_path: must not be empty",
            ),
            (
                "[server]\nmax_concurrent = 0",
                "server.max_concurrent: must be at least 1",
            ),
            (
                "[server]\nupload_expiry_minutes = 0",
                "server.upload_expiry_minutes: must be at least 1",
            ),
            (
                "[server]\nmax_upload_size = \"lots\"",
                r#"server.max_upload_size: "lots" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[server]\nmax_upload_size = \" 2 PB \"",
                r#"server.max_upload_size: "2 PB" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[server]\nmax_upload_size = 0",
                "server.max_upload_size: must be more than 0",
            ),
            (
                "[server]\nmax_inflated_size = \"lots\"",
                r#"server.max_inflated_size: "lots" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[server]\nmax_inflated_size = \"0GiB\"",
                "server.max_inflated_size: must be more than 0",
            ),
            (
                "[server]\nmax_inflation_ratio = 0",
                "server.max_inflation_ratio: must be at least 1",
            ),
            // [docker]
            (
                "[docker]\nimage = \"\"",
                r#"docker.image: "" is not an image reference"#,
            ),
            (
                "[docker]\nimage = \" \"",
                r#"docker.image: " " is not an image reference"#,
            ),
            (
                "[docker]\nimage = \"--rm\"",
                r#"docker.image: "--rm" is not an image reference"#,
            ),
            (
                "[docker]\nimage = \"a b\"",
                r#"docker.image: "a b" is not an image reference"#,
            ),
            (
                "[docker]\ncontainer_prefix = \"a b\"",
                r#"docker.container_prefix: "a b" may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit"#,
            ),
            (
                "[docker]\ncontainer_prefix = \"a/b\"",
                r#"docker.container_prefix: "a/b" may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit"#,
            ),
            (
                "[docker]\ncontainer_prefix = \".x\"",
                r#"docker.container_prefix: ".x" may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit"#,
            ),
            (
                "[docker]\ncontainer_prefix = \"-x\"",
                r#"docker.container_prefix: "-x" may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit"#,
            ),
            // [limits], [limits.simulation], [limits.build]: the same rules, each naming its table
            (
                "[limits]\nmemory = \"lots\"",
                r#"limits.memory: "lots" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[limits]\nmemory = \"plenty\"",
                r#"limits.memory: "plenty" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[limits]\nmemory = \"5MiB\"",
                "limits.memory: Docker needs at least 6MiB",
            ),
            (
                "[limits]\ncpus = 0",
                "limits.cpus: must be more than 0 (leave it out to allow all CPUs)",
            ),
            (
                "[limits]\ncpus = -1.5",
                "limits.cpus: must be more than 0 (leave it out to allow all CPUs)",
            ),
            (
                "[limits]\ncpus = nan",
                "limits.cpus: must be more than 0 (leave it out to allow all CPUs)",
            ),
            (
                "[limits]\ncpus = inf",
                "limits.cpus: must be more than 0 (leave it out to allow all CPUs)",
            ),
            ("[limits]\npids = 0", "limits.pids: must be at least 1"),
            ("[limits]\npids = -1", "limits.pids: must be at least 1"),
            (
                "[limits]\ntimeout = \"6 hours\"",
                r#"limits.timeout: "6 hours" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            (
                "[limits]\ntimeout = \"soon\"",
                r#"limits.timeout: "soon" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            (
                "[limits]\ntimeout = 0",
                "limits.timeout: must be more than 0",
            ),
            (
                "[limits.simulation]\nmemory = \"1KiB\"",
                "limits.simulation.memory: Docker needs at least 6MiB",
            ),
            (
                "[limits.simulation]\ncpus = 0",
                "limits.simulation.cpus: must be more than 0 (leave it out to allow all CPUs)",
            ),
            (
                "[limits.simulation]\npids = 0",
                "limits.simulation.pids: must be at least 1",
            ),
            (
                "[limits.simulation]\ntimeout = 0",
                "limits.simulation.timeout: must be more than 0",
            ),
            (
                "[limits.build]\nmemory = \"lots\"",
                r#"limits.build.memory: "lots" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[limits.build]\ncpus = -1",
                "limits.build.cpus: must be more than 0 (leave it out to allow all CPUs)",
            ),
            (
                "[limits.build]\npids = 0",
                "limits.build.pids: must be at least 1",
            ),
            (
                "[limits.build]\ntimeout = \"soon\"",
                r#"limits.build.timeout: "soon" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            // [images]
            (
                "[images]\nsimulation = \"a b\"",
                r#"images.simulation: "a b" is not an image reference"#,
            ),
            (
                "[images]\nlibrelane = \"-x\"",
                r#"images.librelane: "-x" is not an image reference"#,
            ),
            // [builds]
            (
                "[builds]\npdk = \"/\"",
                "builds.pdk: mounting the host's whole file system is not a PDK",
            ),
            (
                "[builds]\npdk = \"/opt/..\"",
                "builds.pdk: mounting the host's whole file system is not a PDK",
            ),
            (
                "[builds]\npdk = \"../pdk\"",
                r#"builds.pdk: "../pdk" is neither an absolute host path (e.g. "/opt/pdk") nor a Docker volume name (e.g. "gf180mcu-pdk")"#,
            ),
            (
                "[builds]\npdk = \"p\"",
                r#"builds.pdk: "p" is neither an absolute host path (e.g. "/opt/pdk") nor a Docker volume name (e.g. "gf180mcu-pdk")"#,
            ),
            (
                "[builds]\npdk = \"-pdk\"",
                r#"builds.pdk: "-pdk" is neither an absolute host path (e.g. "/opt/pdk") nor a Docker volume name (e.g. "gf180mcu-pdk")"#,
            ),
            (
                "[builds]\npdk = \"my pdk\"",
                r#"builds.pdk: "my pdk" is neither an absolute host path (e.g. "/opt/pdk") nor a Docker volume name (e.g. "gf180mcu-pdk")"#,
            ),
            (
                "[builds]\npdk_variant = \"\"",
                r#"builds.pdk_variant: "" must be a PDK name such as "gf180mcuD""#,
            ),
            (
                "[builds]\npdk_variant = \"--rm\"",
                r#"builds.pdk_variant: "--rm" must be a PDK name such as "gf180mcuD""#,
            ),
            (
                "[builds]\npdk_variant = \".x\"",
                r#"builds.pdk_variant: ".x" must be a PDK name such as "gf180mcuD""#,
            ),
            (
                "[builds]\npdk_variant = \"gf 180\"",
                r#"builds.pdk_variant: "gf 180" must be a PDK name such as "gf180mcuD""#,
            ),
            // [projects]
            (
                "[projects]\nmax_file_size = \"lots\"",
                r#"projects.max_file_size: "lots" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[projects]\nmax_project_size = \"lots\"",
                r#"projects.max_project_size: "lots" is not a size (use bytes, or e.g. "512MiB", "24GiB")"#,
            ),
            (
                "[projects]\nmax_file_size = 0",
                "projects: max_file_size must be more than 0 and at most max_project_size",
            ),
            (
                "[projects]\nmax_file_size = \"2GiB\"",
                "projects: max_file_size must be more than 0 and at most max_project_size",
            ),
            (
                "[projects]\nmax_files = 0",
                "projects.max_files: must be at least 1",
            ),
            // [webhooks]
            (
                "[webhooks]\nsecret = \"short\"",
                "webhooks.secret: too short to be a secret (at least 16 characters)",
            ),
            (
                "[webhooks]\nsecret = \"  0123456789abc  \"",
                "webhooks.secret: too short to be a secret (at least 16 characters)",
            ),
            (
                "[webhooks]\ngive_up_after = \"soon\"",
                r#"webhooks.give_up_after: "soon" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            (
                "[webhooks]\nfirst_retry_after = \"1.5s\"",
                r#"webhooks.first_retry_after: "1.5s" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            (
                "[webhooks]\ngive_up_after = 0",
                "webhooks: give_up_after and first_retry_after must be more than 0",
            ),
            (
                "[webhooks]\nfirst_retry_after = \"0s\"",
                "webhooks: give_up_after and first_retry_after must be more than 0",
            ),
            (
                "[webhooks]\ndefault_url = \"http://ci/x\"\nallowed_hosts = [\"ci\"]",
                "webhooks.default_url: this server sends no webhooks: its config has no webhooks.secret",
            ),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\nallowed_hosts = [\"ci\"]\ndefault_url = \"ci/x\"",
                r#"webhooks.default_url: "ci/x" is not a URL: relative URL without a base"#,
            ),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\nallowed_hosts = [\"ci\"]\ndefault_url = \"ftp://ci/x\"",
                r#"webhooks.default_url: "ftp://ci/x" is not an http or https URL"#,
            ),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\nallowed_hosts = [\"ci\"]\ndefault_url = \"http://elsewhere/x\"",
                r#"webhooks.default_url: the host "elsewhere" is not in webhooks.allowed_hosts (ci)"#,
            ),
            (
                "[webhooks]\nsecret = \"0123456789abcdef\"\ndefault_url = \"http://ci/x\"",
                r#"webhooks.default_url: the host "ci" is not in webhooks.allowed_hosts (empty)"#,
            ),
            // [http]
            (
                "[http]\nheader_read_timeout = \"soon\"",
                r#"http.header_read_timeout: "soon" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            (
                "[http]\nheader_read_timeout = 0",
                r#"http.header_read_timeout: must be more than 0 (e.g. "30s")"#,
            ),
            (
                "[http]\nidle_timeout = \"soon\"",
                r#"http.idle_timeout: "soon" is not a duration (use seconds, or e.g. "90s", "30m", "6h")"#,
            ),
            (
                "[http]\nidle_timeout = \"0s\"",
                r#"http.idle_timeout: must be more than 0 (e.g. "2m")"#,
            ),
            (
                "[http]\nmax_connections = 0",
                "http.max_connections: must be more than 0 (e.g. 1024)",
            ),
            // [auth]
            (
                "[auth]\nallowed_ips = [\"10.0.0.0/8\", \"10.0.0.300\"]",
                r#"auth.allowed_ips[1]: "10.0.0.300" is not an IP address or CIDR (e.g. "10.0.0.5", "192.168.1.0/24")"#,
            ),
            (
                "[auth]\nallowed_ips = [\"10.0.0.0/33\"]",
                r#"auth.allowed_ips[0]: "10.0.0.0/33" is not an IP address or CIDR (e.g. "10.0.0.5", "192.168.1.0/24")"#,
            ),
            (
                "[auth]\ntrusted_proxies = [\"proxy\"]",
                r#"auth.trusted_proxies[0]: "proxy" is not an IP address or CIDR (e.g. "10.0.0.5", "192.168.1.0/24")"#,
            ),
            (
                "[[auth.api_keys]]\nname = \"a b\"\nkey = \"0123456789abcdef\"",
                r#"auth.api_keys[0].name: "a b" must be 1 to 64 letters, digits, '-', '_' or '.'"#,
            ),
            (
                "[[auth.api_keys]]\nname = \"\"\nkey = \"0123456789abcdef\"",
                r#"auth.api_keys[0].name: "" must be 1 to 64 letters, digits, '-', '_' or '.'"#,
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"0123456789abcdef\"\n[[auth.api_keys]]\nname = \"ci\"\nkey = \"0123456789abcdef\"",
                r#"auth.api_keys[1].name: "ci" is used by another key"#,
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"short\"",
                "auth.api_keys[0].key: too short to be a secret (use `precheck-server apikey generate`)",
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"   0123456789abc   \"",
                "auth.api_keys[0].key: too short to be a secret (use `precheck-server apikey generate`)",
            ),
        ] {
            assert_eq!(error(text), message, "{text:?}");
        }
        // Too long to write out: a 65-byte key name, a 2049-byte webhook URL.
        let name = "k".repeat(65);
        assert_eq!(
            error(&format!(
                "[[auth.api_keys]]\nname = \"{name}\"\nkey = \"0123456789abcdef\""
            )),
            format!("auth.api_keys[0].name: \"{name}\" {KEY_NAME_RULE}")
        );
        let url = format!("http://ci/{}", "x".repeat(2039));
        assert_eq!(url.len(), 2049);
        assert_eq!(
            error(&format!(
                "[webhooks]\nsecret = \"0123456789abcdef\"\nallowed_hosts = [\"ci\"]\ndefault_url = \"{url}\""
            )),
            "webhooks.default_url: longer than 2048 bytes"
        );
    }

    #[test]
    fn engines_default_to_the_local_one_and_read_every_key() {
        let one = parse("[server]\nmax_concurrent = 3").unwrap().engines;
        assert_eq!(
            one,
            vec![EngineConfig {
                name: "local".into(),
                host: EngineHost::Default,
                max_concurrent: Some(3),
                grace: DEFAULT_GRACE,
            }]
        );
        assert_eq!(parse("").unwrap().engines[0].max_concurrent, Some(1));
        assert_eq!(parse("engines = []").unwrap().engines[0].name, "local");

        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let text = "[[engines]]\nname = \"local\"\nhost = \"unix:///var/run/docker.sock\"\nmax_concurrent = 2\n\
                    [[engines]]\nname = \"big-1\"\nhost = \"tcp://10.0.0.7:2376\"\n\
                    tls = { ca = \"ca.pem\", cert = \"cert.pem\", key = \"key.pem\" }\ngrace = \"3m\"\n\
                    [[engines]]\nname = \"b2\"\nhost = \"ssh://ci@big-2:2222\"\n";
        let c = Config::parse(text, dir.path(), &|_| None).unwrap();
        let e = &c.engines;
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].host, EngineHost::Unix("/var/run/docker.sock".into()));
        assert_eq!(e[0].max_concurrent, Some(2));
        assert_eq!(
            e[1].host,
            EngineHost::Tcp {
                address: "10.0.0.7:2376".into(),
                tls: Some(Tls {
                    ca: dir.path().join("ca.pem"),
                    cert: dir.path().join("cert.pem"),
                    key: dir.path().join("key.pem"),
                }),
            }
        );
        assert_eq!(e[1].max_concurrent, None, "from the engine's memory");
        assert_eq!(e[1].grace, Duration::from_secs(180));
        assert_eq!(e[2].host, EngineHost::Ssh("ssh://ci@big-2:2222".into()));
        assert_eq!(e[2].grace, DEFAULT_GRACE);
        assert_eq!(c.engine("b2").map(|e| e.grace), Some(DEFAULT_GRACE));
        assert!(c.engine("nope").is_none());
    }

    #[test]
    fn every_refusal_of_an_engine_names_it() {
        let unix = "host = \"unix:///run/d.sock\"";
        for (text, message) in [
            (
                format!("[server]\nmax_concurrent = 2\n[[engines]]\nname = \"a\"\n{unix}"),
                "server.max_concurrent: not used with [[engines]]: give each engine its own max_concurrent".to_string(),
            ),
            (
                format!("[[engines]]\n{unix}"),
                "engines[0].name: missing: every engine needs a name".into(),
            ),
            (
                format!("[[engines]]\nname = \"-x\"\n{unix}"),
                "engines[0].name: \"-x\" must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit".into(),
            ),
            (
                format!("[[engines]]\nname = \"{}\"\n{unix}", "a".repeat(64)),
                format!("engines[0].name: \"{}\" must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", "a".repeat(64)),
            ),
            (
                format!("[[engines]]\nname = \"a\"\n{unix}\n[[engines]]\nname = \"b\"\n{unix}\n[[engines]]\nname = \"a\"\n{unix}"),
                "engines[2].name: \"a\" is used by engines[0] too".into(),
            ),
            (
                "[[engines]]\nname = \"a\"".into(),
                "engines[0] (\"a\").host: missing (e.g. \"unix:///var/run/docker.sock\")".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"http://x:1\"".into(),
                "engines[0] (\"a\").host: \"http://x:1\" is not a Docker host: use unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"unix://run/d.sock\"".into(),
                "engines[0] (\"a\").host: \"unix://run/d.sock\" is not a socket's absolute path: use unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"tcp://10.0.0.7\"".into(),
                "engines[0] (\"a\").host: \"tcp://10.0.0.7\" has no port: use unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"tcp://10.0.0.7:x\"".into(),
                "engines[0] (\"a\").host: \"tcp://10.0.0.7:x\" has no port number: use unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"ssh://-oProxyCommand=x\"".into(),
                "engines[0] (\"a\").host: \"ssh://-oProxyCommand=x\" has no host name: use unix:///PATH, tcp://HOST:PORT or ssh://[USER@]HOST".into(),
            ),
            (
                format!("[[engines]]\nname = \"a\"\n{unix}\ntls = {{ ca = \"a\", cert = \"b\", key = \"c\" }}"),
                "engines[0] (\"a\").tls: only a tcp:// host uses TLS".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"tcp://h:2376\"\ntls = { ca = \"a\" }".into(),
                "engines[0] (\"a\").tls.ca: cannot read /nonexistent/a: No such file or directory (os error 2)".into(),
            ),
            (
                "[[engines]]\nname = \"a\"\nhost = \"tcp://h:2376\"\ntls = { ca = \"/\" }".into(),
                "engines[0] (\"a\").tls.ca: / is not a file".into(),
            ),
            (
                format!("[[engines]]\nname = \"a\"\n{unix}\nmax_concurrent = 0"),
                "engines[0] (\"a\").max_concurrent: must be at least 1".into(),
            ),
            (
                format!("[[engines]]\nname = \"a\"\n{unix}\ngrace = 0"),
                "engines[0] (\"a\").grace: must be more than 0 (e.g. \"10m\")".into(),
            ),
            (
                format!("[[engines]]\nname = \"a\"\n{unix}\ngrace = \"soon\""),
                "engines[0] (\"a\").grace: \"soon\" is not a duration (use seconds, or e.g. \"90s\", \"30m\", \"6h\")".into(),
            ),
        ] {
            let e = Config::parse(&text, Path::new("/nonexistent"), &|_| None)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(format!("{e:#}"), message, "{text}");
        }
        // TLS needs all three files.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let text = "[[engines]]\nname = \"a\"\nhost = \"tcp://h:2376\"\ntls = { ca = \"ca.pem\" }";
        let e = Config::parse(text, dir.path(), &|_| None)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "engines[0] (\"a\").tls.cert: missing: TLS needs ca, cert and key"
        );
        // An unknown key in an engine's table is refused by name.
        let e = Config::parse(
            "[[engines]]\nname = \"a\"\nhots = \"x\"",
            dir.path(),
            &|_| None,
        )
        .map(|_| ())
        .unwrap_err();
        assert!(format!("{e:#}").contains("hots"), "{e:#}");
    }
}
