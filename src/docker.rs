//! The only module that talks to the Docker engine (through bollard).
//!
//! It knows containers, images and archives, not runs: [`crate::runner`] drives a run through
//! these calls. Files move in and out through the archive API (never bind mounts), so the server
//! works against a remote engine and a container that finished while the server was down still
//! holds its results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::config::{EngineHost, Limits, Tls};
use crate::storage::{ChunkSender, Unpacked, unpack_tree};

/// Calls that should answer at once are cut off after this long.
const QUICK: Duration = Duration::from_secs(60);

/// How long a look at whether an engine answers may take.
pub const PING: Duration = Duration::from_secs(5);

/// A connection to an engine. Cheap to clone; clones share the client.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Client>,
}

struct Client {
    config: EngineHost,
    /// Its address, for messages.
    host: String,
    /// Made once its socket is there: a local engine that is down at the server's start (its
    /// socket missing) gets its client when it is back.
    docker: std::sync::Mutex<Option<Docker>>,
}

/// A bollard client of `host`.
fn build(host: &EngineHost) -> Result<Docker, DockerError> {
    // bollard's per-request timeout also covers uploads of large layouts and `/wait` on long
    // runs; quick calls get their own timeout.
    let timeout = 7 * 24 * 3600;
    let version = bollard::API_DEFAULT_VERSION;
    match host {
        EngineHost::Default => {
            Docker::connect_with_defaults().map(|d| d.with_timeout(Duration::from_secs(timeout)))
        }
        EngineHost::Unix(path) => {
            Docker::connect_with_unix(&format!("unix://{}", path.display()), timeout, version)
        }
        EngineHost::Tcp { address, tls: None } => {
            Docker::connect_with_http(&format!("tcp://{address}"), timeout, version)
        }
        EngineHost::Tcp {
            address,
            tls: Some(tls),
        } => Docker::connect_with_ssl(
            &format!("tcp://{address}"),
            &tls.key,
            &tls.cert,
            &tls.ca,
            timeout,
            version,
        ),
        EngineHost::Ssh(url) => Docker::connect_with_ssh(url, timeout, version, None),
    }
}

/// An engine's host as the config writes it (`DOCKER_HOST`, or the default socket, for the
/// local engine).
pub fn host_name(host: &EngineHost) -> String {
    match host {
        EngineHost::Default => std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string()),
        EngineHost::Unix(path) => format!("unix://{}", path.display()),
        EngineHost::Tcp { address, .. } => format!("tcp://{address}"),
        EngineHost::Ssh(url) => url.clone(),
    }
}

/// The engine's version, for `/health`.
#[derive(Debug, Clone)]
pub struct EngineVersion {
    pub version: String,
    pub api_version: String,
}

/// Everything needed to create one run's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub limits: Limits,
    pub mounts: Vec<ReadOnlyMount>,
}

/// A host folder or a volume the container sees read-only (a build's PDK).
#[derive(Debug, Clone)]
pub struct ReadOnlyMount {
    /// An absolute host path, or a volume's name.
    pub source: String,
    pub volume: bool,
    pub target: String,
}

/// How a container ended, as the engine saw it.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: i64,
    pub oom_killed: bool,
}

/// A file to put into a container before it starts.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
}

impl Engine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and agrees on an API
    /// version both sides speak.
    pub async fn connect() -> Result<Engine> {
        Engine::connect_to(&EngineHost::Default).await
    }

    /// Connects to an engine and agrees on an API version both sides speak.
    pub async fn connect_to(host: &EngineHost) -> Result<Engine> {
        let engine = Engine::client_for(host)?;
        engine.negotiate().await?;
        Ok(engine)
    }

    /// A client of the engine at `host`, without asking it anything yet. Fails only if the
    /// client cannot be made (a TLS file that is not a certificate or key); a local socket that
    /// is not there yet is looked for again at each call.
    pub fn client_for(host: &EngineHost) -> Result<Engine> {
        if let EngineHost::Tcp { tls: Some(tls), .. } = host {
            check_tls(tls).with_context(|| {
                format!(
                    "cannot make a client of the Docker engine at {}",
                    host_name(host)
                )
            })?;
        }
        let docker = match build(host) {
            Ok(docker) => Some(docker),
            Err(DockerError::SocketNotFoundError(_)) => None,
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "cannot make a client of the Docker engine at {}",
                    host_name(host)
                )));
            }
        };
        Ok(Engine {
            inner: Arc::new(Client {
                config: host.clone(),
                host: host_name(host),
                docker: std::sync::Mutex::new(docker),
            }),
        })
    }

    /// The client, made now if its socket was missing until now.
    fn docker(&self) -> Result<Docker> {
        let mut docker = self.inner.docker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(docker) = &*docker {
            return Ok(docker.clone());
        }
        let made = build(&self.inner.config)
            .with_context(|| format!("cannot reach the Docker engine at {}", self.inner.host))?;
        *docker = Some(made.clone());
        Ok(made)
    }

    /// Agrees on an API version with the engine (every clone of this client uses it).
    pub async fn negotiate(&self) -> Result<()> {
        tokio::time::timeout(QUICK, self.docker()?.negotiate_version())
            .await
            .map_err(|_| {
                anyhow!(
                    "the Docker engine at {} did not answer within {} s",
                    self.inner.host,
                    QUICK.as_secs()
                )
            })?
            .with_context(|| {
                format!(
                    "cannot reach the Docker engine at {} (is it running, and may this user use it?)",
                    self.inner.host
                )
            })?;
        Ok(())
    }

    /// Whether the engine answers (`/_ping`), within a few seconds.
    pub async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(PING, self.docker()?.ping()).await {
            Ok(answer) => answer.map(drop).with_context(|| {
                format!(
                    "the Docker engine at {} does not answer /_ping",
                    self.inner.host
                )
            }),
            Err(_) => Err(anyhow!(
                "the Docker engine at {} did not answer within {} s",
                self.inner.host,
                PING.as_secs()
            )),
        }
    }

    /// The memory of the engine's machine, in bytes (`MemTotal` of `/info`).
    pub async fn memory(&self) -> Result<u64> {
        let info = quick(self.docker()?.info()).await.with_context(|| {
            format!(
                "cannot ask the Docker engine at {} for its memory",
                self.inner.host
            )
        })?;
        Ok(info.mem_total.unwrap_or(0).max(0) as u64)
    }

    pub async fn version(&self) -> Result<EngineVersion> {
        let v = quick(self.docker()?.version()).await?;
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    /// The `sha256:` id of a local image, or `None` if the engine does not have it.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        match quick(self.docker()?.inspect_image(image)).await {
            Ok(info) => Ok(info.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.context(format!("cannot inspect image {image}"))),
        }
    }

    /// Whether the engine has a volume of this name.
    pub async fn volume_exists(&self, name: &str) -> Result<bool> {
        match quick(self.docker()?.inspect_volume(name)).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e.context(format!("cannot inspect volume {name}"))),
        }
    }

    /// Pulls an image, reporting progress through `progress`.
    pub async fn pull(&self, image: &str, mut progress: impl FnMut(&str)) -> Result<()> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut stream = self.docker()?.create_image(Some(options), None, None);
        while let Some(info) = stream.next().await {
            let info = info.with_context(|| format!("cannot pull {image}"))?;
            if let Some(status) = info.status {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                progress(&line);
            }
        }
        Ok(())
    }

    /// Creates a container with the server's isolation: no network, no capabilities, no new
    /// privileges, limits on memory (no swap beyond it), CPUs and processes, no TTY.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let limits = &spec.limits;
        let host_config = HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory: Some(limits.memory as i64),
            memory_swap: Some(limits.memory as i64),
            nano_cpus: limits.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(limits.pids),
            mounts: (!spec.mounts.is_empty()).then(|| {
                spec.mounts
                    .iter()
                    .map(|m| Mount {
                        target: Some(m.target.clone()),
                        source: Some(m.source.clone()),
                        typ: Some(if m.volume {
                            MountType::VOLUME
                        } else {
                            MountType::BIND
                        }),
                        read_only: Some(true),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            working_dir: Some(spec.working_dir.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            tty: Some(false),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = quick(self.docker()?.create_container(Some(options), body)).await?;
        Ok(created.id)
    }

    /// Copies files and empty folders into a stopped container through the archive API. The
    /// tar is built on a blocking thread and streamed, so a large layout is never held in memory.
    pub async fn stage(&self, container: &str, dirs: &[&str], files: &[StagedFile]) -> Result<()> {
        let (writer, rx) = ChunkSender::new();
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        let files = files.to_vec();
        let producer = tokio::task::spawn_blocking(move || {
            let mut tar = tar::Builder::new(writer);
            let result = (|| -> std::io::Result<()> {
                for dir in &dirs {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o777);
                    header.set_size(0);
                    header.set_mtime(0);
                    tar.append_data(&mut header, dir.trim_start_matches('/'), std::io::empty())?;
                }
                for file in &files {
                    let mut source = std::fs::File::open(&file.source)?;
                    let mut header = tar::Header::new_gnu();
                    header.set_metadata(&source.metadata()?);
                    header.set_mode(0o644);
                    tar.append_data(
                        &mut header,
                        file.target.trim_start_matches('/'),
                        &mut source,
                    )?;
                }
                tar.finish()
            })();
            if let (Err(e), Ok(writer)) = (result, tar.into_inner()) {
                writer.fail(e);
            }
        });
        let body = bollard::body_try_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        let uploaded = self
            .docker()?
            .upload_to_container(container, Some(options), body)
            .await;
        producer.await.context("the staging thread failed")?;
        uploaded.with_context(|| format!("cannot copy the input into container {container}"))
    }

    pub async fn start(&self, container: &str) -> Result<()> {
        quick(self.docker()?.start_container(container, None)).await
    }

    /// The container's output from its start, stdout and stderr interleaved, each line
    /// prefixed with the engine's RFC 3339 timestamp. With `follow`, the stream goes on until
    /// the container stops (but may end early: see the runner); without, it ends at once.
    pub fn logs(
        &self,
        container: &str,
        follow: bool,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .build();
        match self.docker() {
            Ok(docker) => docker
                .logs(container, Some(options))
                .map_ok(|out| out.into_bytes())
                .map_err(anyhow::Error::from)
                .left_stream(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).right_stream(),
        }
    }

    /// Returns once the container is no longer running.
    pub async fn wait(&self, container: &str) -> Result<()> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = self.docker()?.wait_container(container, Some(options));
        match stream.next().await {
            // A non-zero exit is a result, not a failure: bollard reports it as an error.
            Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) | None => Ok(()),
            Some(Err(e)) => {
                Err(anyhow::Error::from(e)
                    .context(format!("cannot wait for container {container}")))
            }
        }
    }

    /// The container's state (`created`, `running`, `exited`, ...), `None` if it is gone. The
    /// engine answers once a start it is making has ended.
    pub async fn state(&self, container: &str) -> Result<Option<String>> {
        match quick(self.docker()?.inspect_container(container, None)).await {
            Ok(info) => Ok(Some(
                info.state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Exit code and whether the kernel killed it for memory.
    pub async fn exit(&self, container: &str) -> Result<Exit> {
        let info = quick(self.docker()?.inspect_container(container, None)).await?;
        let state = info.state.unwrap_or_default();
        Ok(Exit {
            code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    /// Asks the container to stop (SIGTERM), killing it after `grace`.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<()> {
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs() as i32)
            .build();
        match tokio::time::timeout(
            grace + QUICK,
            self.docker()?.stop_container(container, Some(options)),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            // 304: not running; 404: gone, removed meanwhile by whoever else stopped it (a
            // runner and `runs delete --force` can both be at it).
            Ok(Err(e)) if is_not_modified(&e) || status_of(&e) == Some(404) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(anyhow!("container {container} did not stop")),
        }
    }

    pub async fn kill(&self, container: &str) -> Result<()> {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match quick(self.docker()?.kill_container(container, Some(options))).await {
            // 409: it is not running any more, which is what we wanted.
            Err(e)
                if e.downcast_ref::<DockerError>()
                    .is_some_and(|e| status_of(e) == Some(409)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Copies `path` out of a container into `dest` (which is created), keeping the last path
    /// component: `/work` lands in `dest/work`. Only regular files and folders are kept
    /// ([`crate::storage::unpack_tree`]); the answer names what was skipped. `None` if the path
    /// does not exist.
    pub async fn copy_out(
        &self,
        container: &str,
        path: &str,
        dest: &Path,
    ) -> Result<Option<Unpacked>> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let mut stream = self
            .docker()?
            .download_from_container(container, Some(options))
            .peekable();
        if let Some(Err(e)) = std::pin::Pin::new(&mut stream).peek().await {
            if status_of(e) == Some(404) {
                return Ok(None);
            }
            let message = e.to_string();
            return Err(anyhow!(
                "cannot copy {path} out of container {container}: {message}"
            ));
        }
        let reader = StreamReader::new(stream.map_err(std::io::Error::other));
        let bridge = SyncIoBridge::new(reader);
        let dest = dest.to_path_buf();
        let from = path.to_string();
        let unpacked = tokio::task::spawn_blocking(move || unpack_tree(bridge, &from, &dest))
            .await
            .context("the copy thread failed")?
            .with_context(|| format!("cannot copy {path} out of container {container}"))?;
        Ok(Some(unpacked))
    }

    /// Removes a container, whatever its state. A container that is already gone, or that
    /// someone else is removing (409 "removal ... already in progress"), is fine. A 500 is
    /// asked again twice, 200 ms apart: two removals at once can make the engine fail the
    /// second one's file system removal (fuse-overlayfs: "directory not empty") and leave the
    /// container `dead`, which a removal then takes.
    pub async fn remove(&self, container: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let docker = self.docker()?;
        let mut tries = 0;
        loop {
            let removed = quick(docker.remove_container(container, Some(options.clone())));
            let status = match removed.await {
                Ok(()) => return Ok(()),
                Err(e) => match e.downcast_ref::<DockerError>().and_then(status_of) {
                    // 404: gone; 409 (forced): its removal is in progress, by another caller.
                    Some(404 | 409) => return Ok(()),
                    Some(500) if tries < 2 => 500,
                    _ => return Err(e),
                },
            };
            tries += 1;
            tracing::debug!(%container, status, "the engine failed a removal: asking again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// All containers (running or not) carrying every one of `labels` (`name=value`).
    pub async fn containers_labelled(&self, labels: &[String]) -> Result<Vec<Labelled>> {
        let filters = HashMap::from([("label", labels.to_vec())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = quick(self.docker()?.list_containers(Some(options))).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(Labelled {
                    id: c.id?,
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// A container found by its labels.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub name: String,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
    pub state: String,
    pub labels: HashMap<String, String>,
}

/// Reads an engine's TLS files as bollard will. bollard takes a CA file without a certificate
/// in it for an empty list, and reads the client's certificate and key only when it first
/// connects, where a bad one shows as a failed handshake; here each is an error at once.
fn check_tls(tls: &Tls) -> Result<()> {
    use rustls_pki_types::pem::{Error as PemError, PemObject};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let read = |path: &Path, key: &str| {
        std::fs::read(path).with_context(|| format!("tls.{key}: cannot read {}", path.display()))
    };
    for (path, key) in [(&tls.ca, "ca"), (&tls.cert, "cert")] {
        let pem = read(path, key)?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                anyhow!(
                    "tls.{key}: {} is not a PEM certificate file ({e})",
                    path.display()
                )
            })?;
        if certificates.is_empty() {
            bail!(
                "tls.{key}: {} holds no certificate: give it in PEM (\"-----BEGIN CERTIFICATE-----\")",
                path.display()
            );
        }
    }
    let pem = read(&tls.key, "key")?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(()),
        Err(PemError::NoItemsFound) => bail!(
            "tls.key: {} holds no private key: give it in PEM (\"-----BEGIN PRIVATE KEY-----\")",
            tls.key.display()
        ),
        Err(e) => bail!(
            "tls.key: {} is not a PEM private key file ({e})",
            tls.key.display()
        ),
    }
}

async fn quick<T>(call: impl Future<Output = Result<T, DockerError>>) -> Result<T> {
    match tokio::time::timeout(QUICK, call).await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!(
            "the Docker engine did not answer within {} s",
            QUICK.as_secs()
        )),
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<DockerError>()
        .is_some_and(|e| status_of(e) == Some(404))
}

fn is_not_modified(e: &DockerError) -> bool {
    status_of(e) == Some(304)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    /// `ca.pem`, `cert.pem` and `key.pem` in a new folder, in PEM (not real ones: bollard does
    /// not look inside them until it connects).
    fn tls_files() -> (tempfile::TempDir, Tls) {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&tls.ca, CERTIFICATE).unwrap();
        std::fs::write(&tls.cert, CERTIFICATE).unwrap();
        std::fs::write(&tls.key, KEY).unwrap();
        (dir, tls)
    }

    fn tcp(tls: &Tls) -> EngineHost {
        EngineHost::Tcp {
            // Nothing listens on port 1: a connection is refused at once.
            address: "127.0.0.1:1".into(),
            tls: Some(tls.clone()),
        }
    }

    #[tokio::test]
    async fn a_socket_that_is_not_there_is_a_client_whose_calls_name_the_host() {
        let host = EngineHost::Unix("/nonexistent/docker.sock".into());
        let engine = Engine::client_for(&host).unwrap();
        for e in [
            engine.negotiate().await.unwrap_err(),
            engine.ping().await.unwrap_err(),
            engine.memory().await.unwrap_err(),
            Engine::connect_to(&host).await.map(drop).unwrap_err(),
        ] {
            let e = format!("{e:#}");
            assert!(
                e.contains("the Docker engine at unix:///nonexistent/docker.sock"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn tls_files_in_pem_make_a_client_and_negotiating_names_the_host() {
        let (_dir, tls) = tls_files();
        let engine = Engine::client_for(&tcp(&tls)).unwrap();
        let e = format!("{:#}", engine.negotiate().await.unwrap_err());
        assert!(
            e.starts_with("cannot reach the Docker engine at tcp://127.0.0.1:1"),
            "{e}"
        );
    }

    #[test]
    fn a_tls_file_that_is_not_pem_is_refused_naming_it() {
        for (key, text, why) in [
            (
                "ca",
                "not a certificate",
                "holds no certificate: give it in PEM (\"-----BEGIN CERTIFICATE-----\")",
            ),
            (
                "ca",
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "is not a PEM certificate file (base64 decode error: ",
            ),
            (
                "ca",
                "-----BEGIN CERTIFICATE-----\nAAAA\n",
                "is not a PEM certificate file (missing section end marker: ",
            ),
            (
                "cert",
                KEY,
                "holds no certificate: give it in PEM (\"-----BEGIN CERTIFICATE-----\")",
            ),
            (
                "key",
                CERTIFICATE,
                "holds no private key: give it in PEM (\"-----BEGIN PRIVATE KEY-----\")",
            ),
            (
                "key",
                "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
                "is not a PEM private key file (base64 decode error: ",
            ),
        ] {
            let (dir, tls) = tls_files();
            let path = dir.path().join(format!("{key}.pem"));
            std::fs::write(&path, text).unwrap();
            let e = Engine::client_for(&tcp(&tls)).map(drop).unwrap_err();
            let expected = format!(
                "cannot make a client of the Docker engine at tcp://127.0.0.1:1: tls.{key}: {} {why}",
                path.display()
            );
            let e = format!("{e:#}");
            assert!(e.starts_with(&expected), "{key} {text:?}: {e}");
        }
        // A file that went away since the config was read.
        let (_dir, tls) = tls_files();
        std::fs::remove_file(&tls.cert).unwrap();
        let e = format!(
            "{:#}",
            Engine::client_for(&tcp(&tls)).map(drop).unwrap_err()
        );
        assert_eq!(
            e,
            format!(
                "cannot make a client of the Docker engine at tcp://127.0.0.1:1: tls.cert: cannot read {}: No such file or directory (os error 2)",
                tls.cert.display()
            )
        );
    }
}
