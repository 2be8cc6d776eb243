//! The queue: runs start in the order they were created, at most `max_concurrent` at once.
//!
//! The database holds the queue; this module only decides when to claim the next run. It sleeps
//! on a [`Notify`] that is poked when a run is created or finishes, and on a [`Semaphore`] with
//! one permit per container slot: no polling loop. State changes are broadcast as [`RunEvent`]s
//! so `/wait` and log followers wake the moment a run ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Cancel, Db};
use crate::model::{Outcome, Run, RunKind, RunStatus};
use crate::runner::{ActiveRun, Attach, Due, Record, Runner};

/// A run changed state (the database already says so).
#[derive(Debug, Clone)]
pub struct RunEvent {
    pub run_id: Uuid,
    pub kind: RunKind,
    /// The name of the API key that made the run: who may see the event.
    pub owner: Option<String>,
    pub status: RunStatus,
    /// How it ended, once it has.
    pub exit_code: Option<i64>,
    /// A running run watched again after the server restarted.
    pub resumed: bool,
    pub time: OffsetDateTime,
}

/// A handle to the queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    runner: Runner,
    wake: Notify,
    slots: Slots,
    events: broadcast::Sender<RunEvent>,
    // A std Mutex: it is never held across an `.await`.
    active: Mutex<HashMap<Uuid, Arc<ActiveRun>>>,
    shutdown: CancellationToken,
}

impl Queue {
    /// Starts the scheduler, first resuming the runs that were running when the server
    /// stopped. It stops claiming runs when `shutdown` is cancelled.
    pub fn start(
        runner: Runner,
        max_concurrent: usize,
        shutdown: CancellationToken,
        resumed: Vec<(Run, Attach)>,
    ) -> Queue {
        let (events, _) = broadcast::channel(1024);
        let queue = Queue {
            inner: Arc::new(Inner {
                db: runner.db.clone(),
                runner,
                wake: Notify::new(),
                slots: Slots::new(max_concurrent, resumed.len()),
                events,
                active: Mutex::new(HashMap::new()),
                shutdown: shutdown.clone(),
            }),
        };
        for (run, attach) in resumed {
            queue.launch(run, Some(attach));
        }
        let scheduler = queue.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = scheduler.schedule() => {}
                _ = shutdown.cancelled() => {}
            }
        });
        queue
    }

    /// Tells the scheduler a run was queued.
    pub fn created(&self, run: &Run) {
        self.publish(run, RunStatus::Queued, None, false);
        self.inner.wake.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.inner.events.subscribe()
    }

    /// The length of a running run's log file, to wait on; `None` if the run is not executing.
    pub fn log_len(&self, run_id: Uuid) -> Option<watch::Receiver<u64>> {
        self.active(run_id).map(|a| a.log_len.subscribe())
    }

    /// Cancels a run: a queued one never starts; a running one's container is stopped.
    /// Returns the run once it is terminal.
    pub async fn cancel(&self, run_id: Uuid) -> Result<Cancel> {
        let answer = self
            .inner
            .db
            .cancel(run_id, OffsetDateTime::now_utc())
            .await?;
        match &answer {
            Cancel::Cancelled(run) => {
                // The cancel recorded it; a run that never started has no log to note it in.
                let cancelled = Outcome::cancelled();
                let due = Due {
                    note: false,
                    record: Record::Done,
                };
                self.inner.runner.ends().ended(run, &cancelled, due).await?;
                self.publish(run, RunStatus::Cancelled, Some(cancelled.exit_code), false);
            }
            Cancel::Running => {
                // If the run is not registered yet, the scheduler sees the request in the
                // database right after registering it.
                if let Some(active) = self.active(run_id) {
                    active.cancel.cancel();
                }
            }
            Cancel::AlreadyFinished(_) | Cancel::NotFound => {}
        }
        Ok(answer)
    }

    /// Completes when the server begins to shut down.
    pub async fn stopping(&self) {
        self.inner.shutdown.cancelled().await
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Waits until the run is terminal, `timeout` passes or the server shuts down; returns the
    /// run as it then is (`None` if there is no such run).
    pub async fn wait(&self, run_id: Uuid, timeout: Duration) -> Result<Option<Run>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.subscribe();
        loop {
            let run = self.inner.db.run(run_id).await?;
            match &run {
                Some(r) if !r.status.is_terminal() => {}
                _ => return Ok(run),
            }
            // Wait for an event about this run (a lagged receiver re-reads the database).
            let woken = tokio::time::timeout_at(deadline, async {
                loop {
                    match events.recv().await {
                        Ok(e) if e.run_id == run_id => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            tokio::select! {
                woken = woken => if woken.is_err() {
                    return self.inner.db.run(run_id).await;
                },
                _ = self.stopping() => return self.inner.db.run(run_id).await,
            }
        }
    }

    fn active(&self, run_id: Uuid) -> Option<Arc<ActiveRun>> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run_id)
            .cloned()
    }

    fn publish(&self, run: &Run, status: RunStatus, exit_code: Option<i64>, resumed: bool) {
        let _ = self.inner.events.send(RunEvent {
            run_id: run.id,
            kind: run.kind(),
            owner: run.owner.clone(),
            status,
            exit_code,
            resumed,
            time: OffsetDateTime::now_utc(),
        });
    }

    async fn schedule(&self) {
        loop {
            if !self.inner.slots.take().await {
                return;
            }
            let run = loop {
                // Not while the precheck image's self-test runs: see `ImageWatch::settled`.
                self.inner.runner.image.settled().await;
                match self
                    .inner
                    .db
                    .claim_next_run(OffsetDateTime::now_utc())
                    .await
                {
                    Ok(Some(run)) => break run,
                    Ok(None) => self.inner.wake.notified().await,
                    Err(e) => {
                        tracing::error!("cannot claim the next run: {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            tracing::info!(run_id = %run.id, kind = %run.kind(), "run started");
            self.inner.runner.metrics.run_started(&run);
            self.launch(run, None);
        }
    }

    /// Executes a running run (or watches its container again) in a task of its own, which
    /// gives its slot back when the run is over.
    fn launch(&self, run: Run, attach: Option<Attach>) {
        let active = Arc::new(ActiveRun::new());
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.id, active.clone());
        self.publish(&run, RunStatus::Running, None, attach.is_some());
        let queue = self.clone();
        tokio::spawn(async move {
            // A cancel recorded before the run was registered (or before a restart) counts.
            if queue
                .inner
                .db
                .cancel_requested(run.id)
                .await
                .unwrap_or(false)
            {
                active.cancel.cancel();
            }
            let runner = &queue.inner.runner;
            let outcome = match attach {
                None => runner.execute(&run, &active).await,
                Some(attach) => runner.resume(&run, &active, attach).await,
            };
            tracing::info!(run_id = %run.id, status = %outcome.status, exit_code = outcome.exit_code, "run finished");
            queue
                .inner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run.id);
            queue.publish(&run, outcome.status, Some(outcome.exit_code), false);
            queue.inner.slots.give_back();
        });
    }
}

/// Container slots: `max_concurrent` of them. Runs resumed at start take theirs first; if more
/// were running than `max_concurrent` now allows, all of them go on and no new run starts until
/// enough of them have finished (the excess is a debt paid off by the first to finish).
struct Slots {
    free: Semaphore,
    debt: Mutex<usize>,
}

impl Slots {
    fn new(max_concurrent: usize, resumed: usize) -> Slots {
        Slots {
            free: Semaphore::new(max_concurrent.saturating_sub(resumed)),
            debt: Mutex::new(resumed.saturating_sub(max_concurrent)),
        }
    }

    /// Waits for a free slot and takes it; false once the semaphore is closed.
    async fn take(&self) -> bool {
        match self.free.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    fn give_back(&self) {
        let mut debt = self.debt.lock().unwrap_or_else(|e| e.into_inner());
        if *debt > 0 {
            *debt -= 1;
        } else {
            self.free.add_permits(1);
        }
    }
}
