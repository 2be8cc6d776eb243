//! The queue: one for the whole server, runs leave it in the order they were created, each to
//! an engine of the [`Pool`] with a free slot.
//!
//! The database holds the queue; this module only decides when the oldest queued run goes and
//! where ([`Pool::place`]). A placed run waits in its engine's line while its container is
//! prepared there (made, its files staged: [`Runner::prepare`]), still queued; at its turn it
//! takes the free slot, is claimed (running, on that engine) and only its start is left. The
//! scheduler sleeps on the pool's wake, poked when a run is created or cancelled, when a slot
//! is given back, when an engine's image changes, and at each look at the engines
//! ([`crate::engines::TICK`]). State changes are broadcast as [`RunEvent`]s so `/wait` and log
//! followers wake the moment a run ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::{Cancel, Db};
use crate::engines::{Member, Pool, Slot, Ticket};
use crate::model::{Outcome, Run, RunKind, RunStatus};
use crate::recovery::{Recovered, recover_when_back};
use crate::runner::{ActiveRun, Attach, Due, Finished, Prepared, Record, Runner};

/// How a launched run begins.
enum Start {
    /// Claimed from the queue at its turn: its prepared container is started now.
    New(String),
    /// Claimed from the queue to end: its preparation found it cannot run (and the container
    /// made before that, if any, is removed).
    Unstarted(Outcome, Option<String>),
    /// Found running (or ended) at start: its container is watched again.
    Resume(Attach),
    /// Found running at start on an engine that did not answer: it waits for the engine.
    WhenBack,
}

/// A queued run placed on an engine, as a cancel sees it.
#[derive(Clone)]
struct Placed {
    /// Abandons its preparation or its wait (the run was cancelled).
    abandon: CancellationToken,
    /// Cancelled when its task has ended, its container removed if it was abandoned.
    done: CancellationToken,
}

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
    /// The engine it went to, once it left the queue.
    pub engine: Option<String>,
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
    pool: Pool,
    events: broadcast::Sender<RunEvent>,
    // A std Mutex: it is never held across an `.await`.
    active: Mutex<HashMap<Uuid, Arc<ActiveRun>>>,
    /// The queued runs placed on an engine (being prepared, or waiting for their turn). Same
    /// Mutex rule.
    placed: Mutex<HashMap<Uuid, Placed>>,
    shutdown: CancellationToken,
}

impl Queue {
    /// Starts the scheduler, first resuming the runs that were running when the server
    /// stopped (each on its engine, taking a slot there even past its total). It stops
    /// claiming runs when `shutdown` is cancelled.
    pub fn start(
        runner: Runner,
        pool: Pool,
        shutdown: CancellationToken,
        recovered: Recovered,
    ) -> Queue {
        let (events, _) = broadcast::channel(1024);
        let queue = Queue {
            inner: Arc::new(Inner {
                db: runner.db.clone(),
                runner,
                pool,
                events,
                active: Mutex::new(HashMap::new()),
                placed: Mutex::new(HashMap::new()),
                shutdown: shutdown.clone(),
            }),
        };
        let pool = &queue.inner.pool;
        for (run, member, attach) in recovered.resumed {
            let slot = pool.take(&member);
            queue.launch(run, member, slot, Start::Resume(attach));
        }
        for (run, member) in recovered.away {
            let slot = pool.take(&member);
            queue.launch(run, member, slot, Start::WhenBack);
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
        self.inner.pool.poke();
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
                // Its container may be prepared on an engine: that goes before the answer, so
                // that a cancelled run has no container left (a minute at most, for an engine
                // that stopped answering in the middle of it).
                let placed = self.placed().get(&run_id).cloned();
                if let Some(placed) = placed {
                    placed.abandon.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(60), placed.done.cancelled())
                        .await;
                }
                // It may have been the run the scheduler waits to place.
                self.inner.pool.poke();
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

    fn placed(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Placed>> {
        self.inner.placed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, run: &Run, status: RunStatus, exit_code: Option<i64>, resumed: bool) {
        let _ = self.inner.events.send(RunEvent {
            run_id: run.id,
            kind: run.kind(),
            owner: run.owner.clone(),
            status,
            exit_code,
            resumed,
            engine: run.engine.clone(),
            time: OffsetDateTime::now_utc(),
        });
    }

    /// Places the oldest queued run not placed yet on an engine, one after the other.
    async fn schedule(&self) {
        let (db, pool) = (&self.inner.db, &self.inner.pool);
        loop {
            let placed: HashSet<Uuid> = self.placed().keys().copied().collect();
            let head = match db.next_queued(placed).await {
                Ok(head) => head,
                Err(e) => {
                    tracing::error!("cannot read the queue: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(head) = head else {
                pool.woken().await;
                continue;
            };
            let Some(ticket) = pool.place(&head).await else {
                pool.woken().await;
                continue;
            };
            self.prepare(head, ticket);
        }
    }

    /// Prepares a placed run's container on its engine while it waits in line there, then at
    /// its turn claims it and launches it. A run whose engine goes away or is drained while it
    /// waits, or whose claim fails, has its container removed; a cancelled one ends there, the
    /// others are placed again. A run that cannot run is claimed to end it.
    fn prepare(&self, run: Run, ticket: Ticket) {
        let placed = Placed {
            abandon: CancellationToken::new(),
            done: CancellationToken::new(),
        };
        self.placed().insert(run.id, placed.clone());
        let queue = self.clone();
        tokio::spawn(async move {
            let _done = placed.done.drop_guard();
            let abandon = placed.abandon;
            let (runner, db, pool) = (&queue.inner.runner, &queue.inner.db, &queue.inner.pool);
            let member = ticket.member().clone();
            // A cancel between the scheduler's read of the queue and the token's insertion
            // found no token: the database says so now (the cancel writes there first).
            if !matches!(db.run(run.id).await, Ok(Some(r)) if r.status == RunStatus::Queued) {
                drop(ticket);
                queue.placed().remove(&run.id);
                pool.poke();
                return;
            }
            let (start, slot) = match runner.prepare(&run, &member, &abandon).await {
                Prepared::Ready(id) => {
                    let slot = tokio::select! {
                        biased;
                        _ = abandon.cancelled() => None,
                        // Left as it is: the next start removes the container of a queued run.
                        _ = queue.stopping() => return,
                        slot = ticket.turn() => slot,
                    };
                    match slot {
                        Some(slot) => (Start::New(id), slot),
                        None => {
                            runner.remove(&run, &member, Some(id)).await;
                            queue.placed().remove(&run.id);
                            pool.poke();
                            return;
                        }
                    }
                }
                // Its end takes a slot for a moment, even past the total.
                Prepared::Ended(outcome, container) => {
                    drop(ticket);
                    (Start::Unstarted(outcome, container), pool.take(&member))
                }
            };
            // Nothing starts once the server stops; a run that cannot run is ended all the same
            // (or, cancelled, has its container removed).
            if matches!(start, Start::New(_)) && queue.is_stopping() {
                return;
            }
            let claimed = db
                .claim_run(run.id, member.name().to_string(), OffsetDateTime::now_utc())
                .await;
            let claimed = match claimed {
                Ok(Some(run)) => Some(run),
                // Cancelled or deleted meanwhile, or its engine was drained: the drained set
                // is read again before the next placement.
                Ok(None) => {
                    pool.look_drained(db).await;
                    None
                }
                Err(e) => {
                    tracing::error!(run_id = %run.id, "cannot claim the run: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    None
                }
            };
            queue.placed().remove(&run.id);
            let Some(run) = claimed else {
                let container = match start {
                    Start::New(id) | Start::Unstarted(_, Some(id)) => Some(id),
                    _ => None,
                };
                runner.remove(&run, &member, container).await;
                drop(slot);
                return;
            };
            tracing::info!(run_id = %run.id, kind = %run.kind(), engine = member.name(), "run started");
            runner.metrics.run_started(&run);
            queue.launch(run, member, slot, start);
        });
    }

    /// Executes a running run (or watches its container again) in a task of its own, holding
    /// its slot until its container stops (or the run ends without one).
    fn launch(&self, run: Run, member: Arc<Member>, slot: Slot, start: Start) {
        let active = Arc::new(ActiveRun::new(slot));
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.id, active.clone());
        let resumed = matches!(start, Start::Resume(_) | Start::WhenBack);
        self.publish(&run, RunStatus::Running, None, resumed);
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
            let finished = match start {
                Start::New(id) => Some(runner.execute(&run, &active, &member, id).await),
                Start::Unstarted(outcome, container) => {
                    Some(runner.end_unstarted(&run, outcome, container).await)
                }
                Start::Resume(attach) => Some(runner.resume(&run, &active, &member, attach).await),
                Start::WhenBack => match recover_when_back(runner, &member, &run).await {
                    Ok(Some(attach)) => Some(runner.resume(&run, &active, &member, attach).await),
                    // Ended or queued again there: the database says which.
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!(run_id = %run.id, "cannot recover the run (the next start tries again): {e:#}");
                        None
                    }
                },
            };
            queue
                .inner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run.id);
            match finished {
                // Told first, then its container goes: `/wait` does not wait for the removal.
                Some(Finished { outcome, container }) => {
                    tracing::info!(run_id = %run.id, status = %outcome.status, exit_code = outcome.exit_code, "run finished");
                    queue.publish(&run, outcome.status, Some(outcome.exit_code), false);
                    runner.remove(&run, &member, container).await;
                }
                None => {
                    if let Ok(Some(now)) = queue.inner.db.run(run.id).await {
                        queue.publish(&now, now.status, now.exit_code, false);
                    }
                }
            }
            // Freed when its container stopped, unless the run ended without one.
            active.slot.free();
        });
    }
}
