//! The precheck image on the engine: found, pulled when it is missing (retried with backoff),
//! and self-tested before any run trusts it.
//!
//! The real image enters a Nix shell in its entrypoint and copies `/workspace` into the Nix store
//! at every start; whether that works with no capabilities and no new privileges is only known by
//! trying. So every image id the server meets is probed once: `python3 precheck.py --help` in a
//! container made exactly as a precheck's (same isolation, limits, working directory, environment
//! and entrypoint). A run of a broken image fails at once with the probe's words instead of after
//! hours; `/health` shows the probe's last log lines. Presence is looked at again by `/health` and
//! by every precheck, so a `docker tag` or `docker rmi` needs no restart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerSpec, Engine};

/// Where the configured precheck image stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageStatus {
    /// Not looked at yet, or being pulled.
    Pulling,
    /// Not on the engine, and the last pull failed (`error` says why and when it is tried again).
    Missing { error: String },
    /// On the engine; its self-test is running.
    Probing { id: String },
    /// On the engine, and its self-test passed.
    Ready { id: String },
    /// On the engine, but its self-test failed: every precheck of it would fail.
    Broken {
        id: String,
        error: String,
        /// The self-test's last log lines.
        log: Vec<String>,
    },
}

impl ImageStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageStatus::Pulling => "pulling",
            ImageStatus::Missing { .. } => "missing",
            ImageStatus::Probing { .. } => "probing",
            ImageStatus::Ready { .. } => "ready",
            ImageStatus::Broken { .. } => "broken",
        }
    }

    /// The image id the status is about, if it is on the engine.
    pub fn id(&self) -> Option<&str> {
        match self {
            ImageStatus::Probing { id }
            | ImageStatus::Ready { id }
            | ImageStatus::Broken { id, .. } => Some(id),
            ImageStatus::Pulling | ImageStatus::Missing { .. } => None,
        }
    }
}

/// How many of the self-test's last log lines are kept, and how long each may be.
const LOG_LINES: usize = 20;
const LOG_LINE_CHARS: usize = 500;

/// The first wait before a failed pull is tried again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Watches the configured image. Cheap to clone.
#[derive(Clone)]
pub struct ImageWatch {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    image: String,
    /// The self-test's container: a precheck's, with `python3 precheck.py --help` as command.
    probe: ContainerSpec,
    probe_timeout: Duration,
    status: watch::Sender<ImageStatus>,
    /// Wakes the watcher to look at the engine again.
    poke: Notify,
}

impl ImageWatch {
    /// A watch of `probe.image`, which [`ImageWatch::start`] sets going.
    pub fn new(engine: Engine, probe: ContainerSpec, probe_timeout: Duration) -> ImageWatch {
        ImageWatch {
            inner: Arc::new(Inner {
                engine,
                image: probe.image.clone(),
                probe,
                probe_timeout,
                status: watch::Sender::new(ImageStatus::Pulling),
                poke: Notify::new(),
            }),
        }
    }

    /// Finds the image, pulls it if it is missing (again, with backoff, while that fails) and
    /// probes each new id, until `stop`. An image already on the engine is `probing` when this
    /// returns, so the queue holds runs back until its verdict. The task ends soon after
    /// `stop`, having removed its self-test's container.
    pub async fn start(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        if let Ok(Some(id)) = self.inner.engine.image_id(&self.inner.image).await {
            self.set(ImageStatus::Probing { id });
        }
        tokio::spawn(self.clone().run(stop))
    }

    /// Returns once no self-test is running (at most the self-test's bound): the queue claims
    /// no run meanwhile, so a precheck is never `running` while it waits for a verdict, where a
    /// stop would find it without a container.
    pub async fn settled(&self) {
        let mut status = self.inner.status.subscribe();
        let probing = status.wait_for(|s| !matches!(s, ImageStatus::Probing { .. }));
        let _ = tokio::time::timeout(self.inner.probe_timeout, probing).await;
    }

    /// The configured image's name.
    pub fn image(&self) -> &str {
        &self.inner.image
    }

    pub fn status(&self) -> ImageStatus {
        self.inner.status.borrow().clone()
    }

    /// The status as it changes.
    pub fn subscribe(&self) -> watch::Receiver<ImageStatus> {
        self.inner.status.subscribe()
    }

    /// Wakes the watcher to look at the engine again now (its engine came back).
    pub fn poke(&self) {
        self.inner.poke.notify_one();
    }

    /// Looks at the engine now (for `/health`): an image that appeared, changed or went away
    /// since the watcher last looked wakes it, and the answer already says so.
    pub async fn recheck(&self) -> ImageStatus {
        if let Ok(found) = self.inner.engine.image_id(&self.inner.image).await {
            self.noticed(found.as_deref());
        }
        self.status()
    }

    /// Whether a precheck may run on the image with `id`, which it found on the engine: waits
    /// for that id's self-test (starting it if the watcher has not met the id yet) and returns
    /// the reason if the image is broken.
    pub async fn verdict(&self, id: &str) -> Result<(), String> {
        let mut status = self.inner.status.subscribe();
        let wait = async {
            let mut poked = false;
            loop {
                match &*status.borrow_and_update() {
                    ImageStatus::Ready { id: ready } if ready == id => return Ok(()),
                    ImageStatus::Broken { id: broken, .. } if broken == id => {
                        return Err(self.broken_message());
                    }
                    ImageStatus::Probing { id: probing } if probing == id => {}
                    // The watcher knows another id, or none: it looks again, once.
                    _ if !poked => {
                        poked = true;
                        self.inner.poke.notify_one();
                    }
                    _ => {}
                }
                if status.changed().await.is_err() {
                    return Err("the server is stopping".to_string());
                }
            }
        };
        // The self-test's own bound, and time for a pull the watcher may be finishing first.
        let bound = self.inner.probe_timeout + Duration::from_secs(60);
        tokio::time::timeout(bound, wait).await.unwrap_or_else(|_| {
            Err(format!(
                "the self-test of the image {} did not finish within {} s",
                self.inner.image,
                bound.as_secs()
            ))
        })
    }

    /// A precheck found the image missing: the watcher pulls it again without waiting for its
    /// backoff.
    pub fn missing(&self) {
        self.noticed(None);
    }

    /// What a run of a broken image fails with.
    fn broken_message(&self) -> String {
        match &*self.inner.status.borrow() {
            ImageStatus::Broken { error, log, .. } => {
                let last = log.last().map(|l| format!(": {l}")).unwrap_or_default();
                format!("{error}{last} (GET /health shows its last log lines)")
            }
            other => format!("the image {} is {}", self.inner.image, other.as_str()),
        }
    }

    /// Records what was found on the engine, waking the watcher if it differs from what it knew.
    fn noticed(&self, found: Option<&str>) {
        let changed = self.inner.status.send_if_modified(|status| {
            let next = match (status.id(), found) {
                (Some(known), Some(found)) if known == found => return false,
                (None, None) => return false,
                (_, Some(found)) => ImageStatus::Probing {
                    id: found.to_string(),
                },
                (Some(_), None) => ImageStatus::Pulling,
            };
            *status = next;
            true
        });
        if changed {
            self.inner.poke.notify_one();
        }
    }

    fn set(&self, status: ImageStatus) {
        self.inner.status.send_replace(status);
    }

    async fn run(self, stop: CancellationToken) {
        let image = self.inner.image.clone();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let retry = match self.inner.engine.image_id(&image).await {
                Ok(Some(id)) => {
                    let known = matches!(self.status(),
                        ImageStatus::Ready { id: ref k } | ImageStatus::Broken { id: ref k, .. } if *k == id);
                    if known {
                        backoff = FIRST_BACKOFF;
                        None
                    } else {
                        self.set(ImageStatus::Probing { id: id.clone() });
                        match self.probe(&id, &stop).await {
                            Ok(None) => return,
                            Ok(Some(verdict)) => {
                                self.set(verdict);
                                backoff = FIRST_BACKOFF;
                                None
                            }
                            Err(e) => Some(format!(
                                "the self-test's container cannot be made: {e:#} (tried again in {} s)",
                                backoff.as_secs()
                            )),
                        }
                    }
                }
                Ok(None) => {
                    tracing::info!(%image, "the image is not on the engine: pulling it");
                    self.set(ImageStatus::Pulling);
                    let pulled = tokio::select! {
                        pulled = self.inner.engine.pull(&image, |line| tracing::info!(%image, "pull: {line}")) => pulled,
                        _ = stop.cancelled() => return,
                    };
                    match pulled {
                        // Found and probed at the top of the loop.
                        Ok(()) => continue,
                        Err(e) => Some(format!(
                            "{e:#}; run `docker pull {image}` on the engine's host (tried again in {} s)",
                            backoff.as_secs()
                        )),
                    }
                }
                Err(e) => Some(format!(
                    "{e:#} (looked for again in {} s)",
                    backoff.as_secs()
                )),
            };
            match retry {
                Some(error) => {
                    tracing::error!(%image, "the image is missing: {error}");
                    self.set(ImageStatus::Missing { error });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.inner.poke.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                None => tokio::select! {
                    _ = self.inner.poke.notified() => {}
                    _ = stop.cancelled() => return,
                },
            }
        }
    }

    /// Runs the self-test on image `id` and says what it found, or `None` if `stop` came
    /// first. The container is removed whatever happens. An error means the engine failed
    /// before the image was tried (it is tried again); an image that cannot start, fails or
    /// hangs is `Broken`.
    async fn probe(
        &self,
        id: &str,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<ImageStatus>> {
        let engine = &self.inner.engine;
        let mut spec = self.inner.probe.clone();
        spec.image = id.to_string();
        spec.name = format!("{}probe-{}", spec.name, uuid::Uuid::new_v4());
        tracing::info!(image = %self.inner.image, %id, "self-test: {}", spec.cmd.join(" "));
        let container = engine.create(&spec).await?;
        let tested = async {
            engine.start(&container).await?;
            let waited =
                tokio::time::timeout(self.inner.probe_timeout, engine.wait(&container)).await;
            let exit = match waited {
                Ok(waited) => {
                    waited?;
                    Some(engine.exit(&container).await?)
                }
                Err(_) => None,
            };
            anyhow::Ok(exit)
        };
        let tested = tokio::select! {
            tested = tested => tested,
            _ = stop.cancelled() => {
                let _ = engine.remove(&container).await;
                return Ok(None);
            }
        };
        let log = last_lines(engine, &container).await;
        if let Err(e) = engine.remove(&container).await {
            tracing::warn!(%container, "cannot remove the self-test's container: {e:#}");
        }
        let command = spec.cmd.join(" ");
        Ok(Some(match tested {
            Ok(Some(exit)) if exit.code == 0 => {
                tracing::info!(image = %self.inner.image, %id, "self-test passed");
                ImageStatus::Ready { id: id.to_string() }
            }
            Ok(Some(exit)) => self.broken(
                id,
                format!("`{command}` exited with code {}", exit.code),
                log,
            ),
            Ok(None) => self.broken(
                id,
                format!(
                    "`{command}` did not finish within {} s",
                    self.inner.probe_timeout.as_secs()
                ),
                log,
            ),
            Err(e) => self.broken(id, format!("`{command}` could not run: {e:#}"), log),
        }))
    }

    fn broken(&self, id: &str, why: String, log: Vec<String>) -> ImageStatus {
        let error = format!(
            "the image {} fails its self-test under the runs' isolation (no network, no capabilities, no new privileges, the precheck's limits): {why}",
            self.inner.image
        );
        tracing::error!(%id, "{error}");
        ImageStatus::Broken {
            id: id.to_string(),
            error,
            log,
        }
    }
}

/// The container's last log lines, without their timestamps, each cut to a bounded length.
async fn last_lines(engine: &Engine, container: &str) -> Vec<String> {
    let mut lines: VecDeque<String> = VecDeque::with_capacity(LOG_LINES + 1);
    let mut stream = std::pin::pin!(engine.logs(container, false));
    while let Some(Ok(message)) = stream.next().await {
        let text = String::from_utf8_lossy(&message);
        // "2026-12-02T15:38:02.123456789Z text"
        let text = text.split_once(' ').map_or(&*text, |(_, rest)| rest);
        for line in text.lines() {
            lines.push_back(line.chars().take(LOG_LINE_CHARS).collect());
            if lines.len() > LOG_LINES {
                lines.pop_front();
            }
        }
    }
    lines.into()
}
