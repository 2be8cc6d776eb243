//! The config file as serde reads it: one struct per table, unknown keys refused, the default of
//! every key the file leaves out (but a job kind's limits, which `validate.rs` fills from the kind),
//! and `${VAR}` expanded from the environment before any value is read.

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;

use super::{DEFAULT_IMAGE, DEFAULT_LIBRELANE_IMAGE};

impl RawConfig {
    /// Reads config text; `env` looks up the `${VAR}`s.
    pub(super) fn read(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RawConfig> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.message()))?;
        expand_env(&mut value, "", env)?;
        // Parsed again from text so that a bad value's error shows the line (and key) it is on.
        let expanded = toml::to_string(&value).map_err(|e| anyhow!("{e}"))?;
        toml::from_str(&expanded).map_err(|e| anyhow!("{}", e.to_string().trim_end()))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) docker: RawDocker,
    pub(super) limits: RawLimits,
    pub(super) auth: RawAuth,
    pub(super) projects: RawProjects,
    pub(super) images: RawImages,
    pub(super) builds: RawBuilds,
    pub(super) webhooks: RawWebhooks,
    pub(super) http: RawHttp,
    pub(super) engines: Vec<RawEngine>,
}

/// One `[[engines]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEngine {
    pub(super) name: Option<String>,
    pub(super) host: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) max_concurrent: Option<usize>,
    pub(super) grace: Option<DurationText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub(super) header_read_timeout: DurationText,
    pub(super) idle_timeout: DurationText,
    pub(super) max_connections: usize,
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
pub(super) struct RawWebhooks {
    pub(super) secret: Option<String>,
    pub(super) default_url: Option<String>,
    pub(super) allowed_hosts: Vec<String>,
    pub(super) give_up_after: DurationText,
    pub(super) first_retry_after: DurationText,
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
pub(super) struct RawImages {
    pub(super) simulation: String,
    pub(super) librelane: String,
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
pub(super) struct RawBuilds {
    pub(super) pdk: Option<String>,
    pub(super) pdk_variant: String,
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
pub(super) struct RawProjects {
    pub(super) max_file_size: Size,
    pub(super) max_project_size: Size,
    pub(super) max_files: usize,
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
pub(super) struct RawServer {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) storage_path: String,
    /// `None`: 1, and not given (with `[[engines]]`, each engine has its own).
    pub(super) max_concurrent: Option<usize>,
    pub(super) upload_expiry_minutes: u64,
    pub(super) max_upload_size: Size,
    pub(super) max_inflated_size: Size,
    pub(super) max_inflation_ratio: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            host: "127.0.0.1".into(),
            port: 8000,
            storage_path: "./data".into(),
            max_concurrent: None,
            upload_expiry_minutes: 15,
            max_upload_size: Size::Text("2GiB".into()),
            max_inflated_size: Size::Text("8GiB".into()),
            max_inflation_ratio: 200,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDocker {
    pub(super) image: String,
    pub(super) container_prefix: String,
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
pub(super) struct RawLimits {
    pub(super) memory: Size,
    pub(super) cpus: Option<f64>,
    pub(super) pids: i64,
    pub(super) timeout: DurationText,
    pub(super) simulation: RawJobLimits,
    pub(super) build: RawJobLimits,
}

/// `[limits.simulation]`, `[limits.build]`: what is not given takes the kind's default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawJobLimits {
    pub(super) memory: Option<Size>,
    pub(super) cpus: Option<f64>,
    pub(super) pids: Option<i64>,
    pub(super) timeout: Option<DurationText>,
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
pub(super) struct RawAuth {
    pub(super) required: bool,
    pub(super) allowed_ips: Vec<String>,
    pub(super) trusted_proxies: Vec<String>,
    pub(super) api_keys: Vec<RawApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    pub(super) name: String,
    pub(super) key: String,
    #[serde(default)]
    pub(super) admin: bool,
}

/// A byte count: an integer, or text such as `"512MiB"`, `"24GiB"`, `"2GB"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
}

/// A duration: whole seconds, or text such as `"90s"`, `"30m"`, `"6h"`, `"1d"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum DurationText {
    Seconds(u64),
    Text(String),
}

/// Replaces `${VAR}` in every string under `value`; `key` is its dotted path, for the errors.
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::tests::{error, parse};
    use super::*;

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
        let example = parse(include_str!("../../config.example.toml")).unwrap();
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
    fn env_vars_are_expanded() {
        let c =
            parse("[[auth.api_keys]]\nname = \"ci\"\nkey = \"ws_key_${SET}_0123456789\"").unwrap();
        assert_eq!(c.auth.api_keys[0].key, "ws_key_value_0123456789");
        let c = parse("[docker]\nimage = \"${SET}:${SET}\"\n[auth]\nallowed_ips = [\"10.0.0.1\"]")
            .unwrap();
        assert_eq!(c.image, "value:value");
        // Only strings are expanded, and only `${`: a lone `$` is kept.
        let c = parse("[builds]\npdk = \"/opt/$pdk\"").unwrap();
        assert_eq!(
            c.builds.pdk,
            Some(super::super::PdkSource::HostPath("/opt/$pdk".into()))
        );
    }

    /// Every refusal of the expansion: the whole message, naming the key.
    #[test]
    fn env_refusals_name_the_key() {
        for (text, message) in [
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"${UNSET}\"",
                "auth.api_keys[0].key: environment variable UNSET is not set (the config refers to it as ${UNSET})",
            ),
            (
                "[auth]\nallowed_ips = [\"10.0.0.1\", \"${UNSET}\"]",
                "auth.allowed_ips[1]: environment variable UNSET is not set (the config refers to it as ${UNSET})",
            ),
            (
                "[docker]\nimage = \"x-${SET\"",
                "docker.image: unterminated `${` in \"x-${SET\"",
            ),
            (
                "[docker]\nimage = \"${A-B}\"",
                "docker.image: `${A-B}` is not a valid environment variable name",
            ),
            (
                "[webhooks]\nsecret = \"${}\"",
                "webhooks.secret: `${}` is not a valid environment variable name",
            ),
        ] {
            assert_eq!(error(text), message, "{text:?}");
        }
    }

    /// Every refusal of the file's shape (syntax, unknown keys, types): the parser's message,
    /// after the line it is about, which shows the key (a syntax error comes without its line).
    #[test]
    fn shape_refusals_show_the_key() {
        for (text, line, message) in [
            ("[server\nport = 1", "", "unclosed table, expected `]`"),
            ("port = = 1", "", "extra `=`, expected nothing"),
            (
                "[servr]\nhost = \"x\"",
                "[servr]",
                "unknown field `servr`, expected one of `server`, `docker`, `limits`, `auth`, `projects`, `images`, `builds`, `webhooks`, `http`",
            ),
            (
                "[server]\nhots = \"x\"",
                "hots = \"x\"",
                "unknown field `hots`, expected one of",
            ),
            ("[limits.build]\nmem = 1", "mem = 1", "unknown field `mem`"),
            (
                "[http]\nkeepalive = 1",
                "keepalive = 1",
                "unknown field `keepalive`",
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"\nkey = \"0123456789abcdef\"\nscope = \"all\"",
                "scope = \"all\"",
                "unknown field `scope`, expected one of `name`, `key`, `admin`",
            ),
            (
                "[[auth.api_keys]]\nname = \"ci\"",
                "[[auth.api_keys]]",
                "missing field `key`",
            ),
            (
                "[server]\nport = 70000",
                "port = 70000",
                "invalid value: integer `70000`, expected u16",
            ),
            (
                "[server]\nport = \"80\"",
                "port = \"80\"",
                "invalid type: string \"80\", expected u16",
            ),
            (
                "[server]\nmax_inflation_ratio = -1",
                "max_inflation_ratio = -1",
                "invalid value: integer `-1`, expected u64",
            ),
            (
                "[limits]\nmemory = true",
                "memory = true",
                "data did not match any variant of untagged enum Size",
            ),
            (
                "[limits]\ntimeout = -5",
                "timeout = -5",
                "data did not match any variant of untagged enum DurationText",
            ),
            (
                "[auth]\nrequired = \"yes\"",
                "required = \"yes\"",
                "invalid type: string \"yes\", expected a boolean",
            ),
        ] {
            let e = error(text);
            assert!(e.contains(line), "{text:?}: {e:?} does not show {line:?}");
            assert!(
                e.contains(message),
                "{text:?}: {e:?} does not say {message:?}"
            );
        }
    }
}
