//! The raw config file into a [`Config`]: every check, each with a message that names the key
//! (`limits.build.memory: Docker needs at least 6MiB`), and the entry points that read a file.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::IpNetwork;

use super::raw::{DurationText, RawConfig, Size};
use super::{
    ApiKey, Auth, Builds, Config, Http, Images, KEY_NAME_RULE, Limits, PdkSource, ProjectLimits,
    Webhooks, valid_key_name,
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
        if s.max_concurrent == 0 {
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
}
