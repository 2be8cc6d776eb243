//! The test server: a real `precheck-server serve` process per test ([`TestServer`]), its config
//! builder, spawning, stop/kill/restart, and the checks on the containers it leaves.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::docker::{PROBE_LABEL, STORAGE_LABEL, describe_containers};
use super::images::precheck_image;
use super::layouts::gds_bytes;
use super::wait::POLL_INTERVAL;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The server binary under test.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_precheck-server")
}

/// A `precheck-server serve` process on a free port with its own config and storage in a fresh
/// temporary folder. Dropping it stops the server (SIGTERM, then SIGKILL after 10 s), removes
/// any container it left behind and fails the test if there was one.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    /// The server's storage folder (absolute, canonical): the value of its containers' storage label.
    pub storage: PathBuf,
    pub child: Child,
    /// The config file the server was started with.
    pub config_path: PathBuf,
    container_prefix: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    /// Extra arguments of `serve`, kept for restarts.
    serve_args: Vec<String>,
    stopped: bool,
    /// Whether the server was ever killed (SIGKILL) rather than stopped.
    killed: bool,
    tempdir: tempfile::TempDir,
}

/// The config of a [`TestServer`], rendered to TOML when it starts. Keys are dotted paths into
/// the TOML (`"server.max_concurrent"`); later settings override earlier ones.
pub struct TestServerBuilder {
    config: toml::Table,
    unset: Vec<String>,
    serve_args: Vec<String>,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::new()
    }

    /// Starts a server with the default test config merged with `extra_toml` (may be empty).
    pub fn start(extra_toml: &str) -> TestServer {
        TestServer::builder().toml(extra_toml).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}"))
    }

    /// The `docker ps --filter` argument matching every container this server created:
    /// `label=precheck-server.storage=<storage>`.
    pub fn storage_label_filter(&self) -> String {
        format!("label={STORAGE_LABEL}={}", self.storage.display())
    }

    /// The container name prefix in this server's config; unique to this server.
    pub fn container_prefix(&self) -> &str {
        &self.container_prefix
    }

    /// `url` + `path`, e.g. `server.api("/api/v1/queue")`.
    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The full ids of the containers, running or not, that carry this server's storage label
    /// or its container name prefix.
    pub fn containers(&self) -> Vec<String> {
        self.list_containers().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Panics, describing them, if any container of this server exists but the image's
    /// self-test, which a running server may be doing at any time. A run's container is removed
    /// just after its end is recorded (which a `/wait` answers), and the engine may take a moment
    /// to remove it (`removing`): containers get 30 s to go.
    pub fn assert_no_containers(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ids = loop {
            let listed = self.list().unwrap_or_else(|e| panic!("{e}"));
            let ids: Vec<String> = listed
                .into_iter()
                .filter(|(_, probe)| !probe)
                .map(|(id, _)| id)
                .collect();
            if ids.is_empty() || Instant::now() > deadline {
                break ids;
            }
            thread::sleep(POLL_INTERVAL);
        };
        if !ids.is_empty() {
            panic!(
                "the server left containers behind:\n{}",
                describe_containers(&ids)
            );
        }
    }

    /// What the server has printed on stdout so far, one entry a line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// What the server has printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stops the server like an operator would (SIGTERM, SIGKILL after 10 s) and returns how it
    /// exited. Containers are left alone, so a test can look at what a stop leaves.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("poll the server process") {
            self.stopped = true;
            return status;
        }
        // Without unsafe code there is no kill(2); the kill command does the same.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                self.stopped = true;
                return status;
            }
            thread::sleep(POLL_INTERVAL);
        }
        eprintln!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        self.kill()
    }

    /// Kills the server with SIGKILL, as a crash would, and returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.stopped = true;
        self.killed = true;
        self.child.wait().expect("wait for the server process")
    }

    /// Stops the server if it runs and starts it again with the same config and storage. The
    /// port is chosen afresh, so `url` changes.
    pub fn restart(&mut self) {
        if !self.stopped {
            self.stop();
        }
        let (child, url) = spawn_server(
            &self.config_path,
            &self.stderr_path,
            &self.stdout,
            &self.serve_args,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.child = child;
        self.url = url;
        self.stopped = false;
    }

    /// Like [`TestServer::restart`], on the same port, so that clients holding its URL reach it
    /// again.
    pub fn restart_on_the_same_port(&mut self) {
        if !self.stopped {
            self.stop();
        }
        let port = self
            .url
            .rsplit(':')
            .next()
            .expect("a port in the URL")
            .to_string();
        let text = fs::read_to_string(&self.config_path).expect("read the test config");
        let mut config: toml::Table = toml::from_str(&text).expect("parse the test config");
        let (table, key) = table_for_key(&mut config, "server.port");
        table.insert(key.to_string(), port.parse::<i64>().expect("a port").into());
        fs::write(
            &self.config_path,
            toml::to_string(&config).expect("render the config"),
        )
        .expect("write the test config");
        self.restart();
    }

    fn list_containers(&self) -> Result<Vec<String>, String> {
        Ok(self.list()?.into_iter().map(|(id, _)| id).collect())
    }

    /// This server's image self-test containers.
    fn probe_containers(&self) -> Vec<String> {
        let listed = self.list().unwrap_or_else(|e| panic!("{e}"));
        listed
            .into_iter()
            .filter(|(_, probe)| *probe)
            .map(|(id, _)| id)
            .collect()
    }

    /// The full ids of this server's containers (by storage label or name prefix), each with
    /// whether it is an image self-test's, from one listing per filter.
    fn list(&self) -> Result<Vec<(String, bool)>, String> {
        let mut found = BTreeMap::new();
        let name_filter = format!("name={}", self.container_prefix);
        let format = format!("{{{{.ID}}}} {{{{.Label \"{PROBE_LABEL}\"}}}}");
        for filter in [self.storage_label_filter(), name_filter] {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-a",
                    "--no-trunc",
                    "--filter",
                    &filter,
                    "--format",
                    &format,
                ])
                .output()
                .map_err(|e| format!("cannot run `docker ps`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`docker ps --filter {filter}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let (id, probe) = line.split_once(' ').unwrap_or((line, ""));
                found.insert(id.to_string(), probe == "true");
            }
        }
        Ok(found.into_iter().collect())
    }

    fn print_output(&self) {
        eprintln!(
            "--- server stdout ({})\n{}",
            self.config_path.display(),
            self.stdout_lines().join("\n")
        );
        eprintln!("--- server stderr\n{}", self.stderr_text());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
        // A killed server may leave its image self-test's container, which its next start
        // removes; a stopped one removes it itself.
        let probes = if self.killed {
            self.probe_containers()
        } else {
            Vec::new()
        };
        for id in &probes {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let leaked = match self.list_containers() {
            Ok(ids) => ids.into_iter().filter(|id| !probes.contains(id)).collect(),
            Err(e) => {
                eprintln!("cannot check for leftover containers: {e}");
                Vec::new()
            }
        };
        let description = describe_containers(&leaked);
        for id in &leaked {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        if thread::panicking() {
            self.print_output();
        } else if !leaked.is_empty() {
            self.print_output();
            panic!(
                "the server leaked containers (now removed); every run's container must be gone \
                 once the server has stopped:\n{description}"
            );
        }
    }
}

/// The keys of [`TestServerBuilder::alice_and_bob`].
pub const ALICE: &str = "ws_key_alice_0123456789abcdefghijklmnop";
pub const BOB: &str = "ws_key_bob_0123456789abcdefghijklmnopqr";

impl TestServerBuilder {
    fn new() -> TestServerBuilder {
        let prefix = format!(
            "precheck-test-{}-",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        TestServerBuilder {
            config: toml::Table::new(),
            unset: Vec::new(),
            serve_args: Vec::new(),
        }
        .set("server.host", "127.0.0.1")
        .set("server.port", 0)
        // Relative on purpose: the server resolves it against the config file's folder.
        .set("server.storage_path", "data")
        .set("server.max_concurrent", 2)
        .set("server.upload_expiry_minutes", 15)
        .set("docker.container_prefix", prefix)
        .set("limits.memory", "1GiB")
        .set("limits.timeout", "10m")
    }

    /// Requires a key, and knows two that are not admins: [`ALICE`] and [`BOB`].
    pub fn alice_and_bob(self) -> Self {
        self.toml(&format!(
            "[auth]\nrequired = true\n\
             [[auth.api_keys]]\nname = \"alice\"\nkey = \"{ALICE}\"\n\
             [[auth.api_keys]]\nname = \"bob\"\nkey = \"{BOB}\"\n"
        ))
    }

    /// Adds arguments to `precheck-server serve --config FILE`.
    pub fn serve_args(mut self, args: &[&str]) -> Self {
        self.serve_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn max_concurrent(self, n: i64) -> Self {
        self.set("server.max_concurrent", n)
    }

    pub fn upload_expiry_minutes(self, minutes: i64) -> Self {
        self.set("server.upload_expiry_minutes", minutes)
    }

    /// The precheck image; without this the stand-in from [`precheck_image`] is used.
    pub fn image(self, image: &str) -> Self {
        self.set("docker.image", image)
    }

    /// `limits.memory`, e.g. `"64MiB"`.
    pub fn memory(self, memory: &str) -> Self {
        self.set("limits.memory", memory)
    }

    /// `limits.timeout`, e.g. `"3s"`.
    pub fn timeout(self, timeout: &str) -> Self {
        self.set("limits.timeout", timeout)
    }

    /// `server.max_upload_size`, e.g. `"1MiB"`.
    pub fn max_upload_size(self, size: &str) -> Self {
        self.set("server.max_upload_size", size)
    }

    /// Sets any key by its dotted path, e.g. `.set("auth.required", true)`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        let (table, last) = table_for_key(&mut self.config, key);
        table.insert(last.to_string(), value.into());
        self.unset.retain(|k| k != key);
        self
    }

    /// Removes a key, to test the server's default for it (`"docker.image"` included).
    pub fn unset(mut self, key: &str) -> Self {
        let (table, last) = table_for_key(&mut self.config, key);
        table.remove(last);
        self.unset.push(key.to_string());
        self
    }

    /// Merges a TOML document into the config: its tables are merged key by key, other values
    /// (arrays of tables included) replace what was there.
    pub fn toml(mut self, extra: &str) -> Self {
        if extra.trim().is_empty() {
            return self;
        }
        let extra: toml::Table = extra
            .parse()
            .unwrap_or_else(|e| panic!("the extra TOML given to the test server is invalid: {e}"));
        merge(&mut self.config, extra);
        self
    }

    /// The config as it would be written (without the default image filled in).
    pub fn config_text(&self) -> String {
        toml::to_string(&self.config).expect("render the test config")
    }

    pub fn start(self) -> TestServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server; the error says why it did not come up and holds what it printed.
    pub fn try_start(mut self) -> Result<TestServer, String> {
        let has_image = self
            .config
            .get("docker")
            .and_then(|d| d.get("image"))
            .is_some();
        if !has_image && !self.unset.iter().any(|k| k == "docker.image") {
            self = self.image(precheck_image());
        }
        let tempdir = tempfile::tempdir().expect("create a temp folder for the test server");
        let root = fs::canonicalize(tempdir.path()).expect("canonicalize the temp folder");
        let config_path = root.join("config.toml");
        fs::write(&config_path, self.config_text()).expect("write the test config");
        let storage = match self
            .config
            .get("server")
            .and_then(|s| s.get("storage_path"))
            .and_then(|p| p.as_str())
        {
            Some(p) => root.join(p),
            None => root.join("data"),
        };
        let container_prefix = self
            .config
            .get("docker")
            .and_then(|d| d.get("container_prefix"))
            .and_then(|p| p.as_str())
            .unwrap_or("precheck-")
            .to_string();
        let stderr_path = root.join("server-stderr.log");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (child, url) = spawn_server(&config_path, &stderr_path, &stdout, &self.serve_args)?;
        let storage = fs::canonicalize(&storage).unwrap_or(storage);
        Ok(TestServer {
            url,
            storage,
            child,
            config_path,
            container_prefix,
            stdout,
            stderr_path,
            serve_args: self.serve_args,
            stopped: false,
            killed: false,
            tempdir,
        })
    }
}

/// Spawns `precheck-server serve --config FILE` and waits for its `listening on http://...` line.
fn spawn_server(
    config_path: &Path,
    stderr_path: &Path,
    stdout_lines: &Arc<Mutex<Vec<String>>>,
    serve_args: &[String],
) -> Result<(Child, String), String> {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_path)
        .map_err(|e| format!("open {}: {e}", stderr_path.display()))?;
    let mut child = Command::new(server_bin())
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .args(serve_args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server_bin()))?;

    let (tx, rx) = mpsc::channel();
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let lines = Arc::clone(stdout_lines);
    // Keeps draining stdout after start-up so the server never blocks on a full pipe.
    thread::spawn(move || {
        let mut buf = Vec::new();
        let mut announced = false;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if !announced {
                if let Some(url) = parse_listening_url(&line) {
                    announced = true;
                    let _ = tx.send(url);
                }
            }
            lines.lock().unwrap().push(line);
        }
    });

    let deadline = Instant::now() + START_TIMEOUT;
    let failure = loop {
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(url) => {
                settle(&url, deadline);
                return Ok((child, url));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break "closed its stdout without printing `listening on http://...`".to_string();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break format!("exited ({status}) without printing `listening on http://...`");
        }
        if Instant::now() >= deadline {
            break format!("did not print `listening on http://...` within {START_TIMEOUT:?}");
        }
    };
    let _ = child.kill();
    let status = match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    // Give the drain thread a moment to record the last lines.
    thread::sleep(POLL_INTERVAL);
    Err(format!(
        "the test server ({} serve --config {}) {failure}; {status}\n--- stdout\n{}\n--- stderr\n{}",
        server_bin(),
        config_path.display(),
        stdout_lines.lock().unwrap().join("\n"),
        fs::read_to_string(stderr_path).unwrap_or_default()
    ))
}

/// Waits (until `deadline` at most) while the server's `/health` says the image's self-test is
/// running, as a client that waits for a ready server would: until then the queue claims no run,
/// and tests that count on a run starting at once would see it queued.
fn settle(url: &str, deadline: Instant) {
    let Some(addr) = url.strip_prefix("http://") else {
        return;
    };
    while Instant::now() < deadline {
        let mut body = String::new();
        let answered = std::net::TcpStream::connect(addr).and_then(|mut stream| {
            io::Write::write_all(
                &mut stream,
                format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
            )?;
            io::Read::read_to_string(&mut stream, &mut body)
        });
        if answered.is_err() || !body.contains(r#""status":"probing""#) {
            return;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The `http://HOST:PORT` from a line containing `listening on http://HOST:PORT`.
fn parse_listening_url(line: &str) -> Option<String> {
    const MARK: &str = "listening on ";
    let start = line.find("listening on http://")? + MARK.len();
    let url: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\''))
        .collect();
    let url = url.trim_end_matches(['/', '.', ',', ')']);
    let (_, port) = url.strip_prefix("http://")?.rsplit_once(':')?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Some(url.to_string()),
        _ => None,
    }
}

fn table_for_key<'a>(root: &'a mut toml::Table, key: &'a str) -> (&'a mut toml::Table, &'a str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a non-empty key");
    let mut table = root;
    for part in parts {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .unwrap_or_else(|| panic!("`{part}` in the test config key `{key}` is not a table"));
    }
    (table, last)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge(existing, table)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Starts an upload that declares 50 MiB, sends 4 MiB of it and stops: the server is left
/// receiving it. Returns the connection, to drop (or not) as the test needs.
pub async fn partial_upload(server: &TestServer) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let boundary = "XBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chip.gds\"\r\n\r\n"
    );
    let declared = 50 << 20;
    let request = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n{head}"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut body = gds_bytes("chip_top");
    body.resize(4 << 20, 0);
    conn.write_all(&body).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_url_is_parsed_from_a_log_line() {
        for (line, url) in [
            (
                "listening on http://127.0.0.1:4321",
                Some("http://127.0.0.1:4321"),
            ),
            (
                "2025-01-01T00:00:00Z  INFO precheck_server: listening on http://127.0.0.1:80",
                Some("http://127.0.0.1:80"),
            ),
            (
                "\x1b[32mINFO\x1b[0m listening on http://127.0.0.1:8000\x1b[0m",
                Some("http://127.0.0.1:8000"),
            ),
            ("listening on http://127.0.0.1:0", None),
            ("starting", None),
        ] {
            assert_eq!(parse_listening_url(line).as_deref(), url, "{line:?}");
        }
    }
}
