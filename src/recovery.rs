//! Restarts that lose nothing, and what nothing owns.
//!
//! At start, every run the database calls `running` is matched with its container by label
//! (like Docker's live-restore): a container that is still running, or that finished while the
//! server was down, is watched again from where the run's log file ends; one that never started
//! is removed and its run goes back to its place in the queue (unless its start was asked for:
//! then it is started once, docs/decisions.md "A run's end"); a run without a container fails if
//! its container was ever asked to start, and is queued again if not.
//! The same labels tell `precheck-server cleanup` which containers and files nothing owns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

use crate::db::Db;
use crate::docker::{Engine, Labelled};
use crate::engines::{Member, Pool, Reach};
use crate::logs;
use crate::model::{Outcome, Run, RunStatus, Scope, exit_code};
use crate::runner::{
    Attach, Due, PROBE_LABEL, RUN_LABEL, Record, Runner, STORAGE_LABEL, read_ending,
};
use crate::storage::{Entry, EntryKind, Storage};

/// Why a run without a container failed.
pub const LOST: &str = "container lost while the server was down";

/// How recovery ends a run: noted in its log, and recorded once; a database that will not take
/// it fails the server's start, and the next start finds the run as this one did.
const AT_START: Due = Due {
    note: true,
    record: Record::Once,
};

/// What recovery found of the runs that were running.
#[derive(Default)]
pub struct Recovered {
    /// Runs to watch again, each on its engine.
    pub resumed: Vec<(Run, Arc<Member>, Attach)>,
    /// Runs whose engine does not answer: they stay running for its `grace`
    /// ([`recover_when_back`]).
    pub away: Vec<(Run, Arc<Member>)>,
}

/// Matches the running runs with their containers on their engines (see the module's text)
/// and removes the containers no running run owns on every engine that answers.
pub async fn recover(runner: &Runner, pool: &Pool) -> Result<Recovered> {
    let running = runner.db.runs(vec![RunStatus::Running], Scope::All).await?;
    let mut recovered = Recovered::default();
    for run in running {
        let Some(member) = pool.home_of(&run).cloned() else {
            let name = run.engine.clone().unwrap_or_default();
            gone_engine(runner, &run, &name).await?;
            continue;
        };
        if !member.reach().is_up() {
            tracing::warn!(run_id = %run.id, engine = member.name(), "its engine does not answer: the run waits for it");
            recovered.away.push((run, member));
            continue;
        }
        if let Some(attach) = recover_one(runner, &member, &run).await? {
            recovered.resumed.push((run, member, attach));
        }
    }
    // Nothing of this server runs yet: an earlier server's self-tests and prepared containers
    // are leftovers too (their queued runs are prepared again).
    for member in pool.members().iter().filter(|m| m.reach().is_up()) {
        let engine = &member.engine;
        for container in
            orphan_containers(engine, &runner.db, &runner.storage, Asking::Start).await?
        {
            tracing::info!(engine = member.name(), container = %container.name, "removing a container no running run owns");
            engine.remove(&container.id).await?;
        }
    }
    Ok(recovered)
}

/// A run whose engine did not answer at start: recovered as at start once the engine answers,
/// or failed when its `grace` is over. Returns what to watch again, if anything.
pub async fn recover_when_back(
    runner: &Runner,
    member: &Member,
    run: &Run,
) -> Result<Option<Attach>> {
    let since = match member.reach() {
        Reach::Down { since, .. } => since,
        _ => OffsetDateTime::now_utc(),
    };
    let until = Instant::now() + member.config.grace;
    if !member.wait_up(until).await {
        let outcome = Outcome::failed(
            exit_code::NOT_RUN,
            crate::engines::unreachable(member.name(), since),
        );
        runner.ends().ended(run, &outcome, AT_START).await?;
        return Ok(None);
    }
    let attach = recover_one(runner, member, run).await?;
    // Its engine's leftovers were not looked at at start.
    for container in
        orphan_containers(&member.engine, &runner.db, &runner.storage, Asking::Serving).await?
    {
        tracing::info!(engine = member.name(), container = %container.name, "removing a container no queued or running run owns");
        member.engine.remove(&container.id).await?;
    }
    Ok(attach)
}

/// A run whose engine the config no longer has: queued again if it never started, failed if
/// its container may have run (it is on an engine the server no longer drives).
async fn gone_engine(runner: &Runner, run: &Run, name: &str) -> Result<()> {
    if !runner.db.start_sent(run.id).await? {
        return requeue(
            runner,
            run,
            &format!("its engine {name:?} is no longer in the config and it never started"),
        )
        .await;
    }
    let outcome = Outcome::failed(
        exit_code::NOT_RUN,
        format!(
            "its engine {name:?} is no longer in the config: its container is left on that engine"
        ),
    );
    runner.ends().ended(run, &outcome, AT_START).await
}

/// Matches one running run with its container on `member` (see the module's text): what to
/// watch again, or `None` if the run was queued again or ended here.
async fn recover_one(runner: &Runner, member: &Member, run: &Run) -> Result<Option<Attach>> {
    let engine = &member.engine;
    let containers = engine
        .containers_labelled(&[
            storage_label(&runner.storage),
            format!("{RUN_LABEL}={}", run.id),
        ])
        .await?;
    let start_sent = runner.db.start_sent(run.id).await?;
    let Some(container) = containers.first() else {
        if !start_sent {
            // Stopped before its container was made: nothing has run yet.
            requeue(runner, run, "it was stopped before its container was made").await?;
            return Ok(None);
        }
        lost(runner, run).await?;
        return Ok(None);
    };
    let mut state = container.state.clone();
    let mut restarted = false;
    if state == "created" {
        if !start_sent {
            // Stopped while its container was being prepared: the engine was never asked
            // to start it, so the run starts over from its place in the queue.
            engine.remove(&container.id).await?;
            requeue(runner, run, "its container never started").await?;
            return Ok(None);
        }
        // Stopped just as it asked the engine to start it: the engine may be starting it
        // now (inspecting waits for that start to end) or never got the request. Either
        // way the container is started once: by the engine, or here.
        let Some(now) = engine.state(&container.id).await? else {
            lost(runner, run).await?;
            return Ok(None);
        };
        state = now;
        if state == "created" {
            tracing::info!(run_id = %run.id, container = %container.id, "its start was never made: starting it now");
            if let Err(e) = engine.start(&container.id).await {
                let outcome = Outcome::failed(
                    exit_code::NOT_RUN,
                    format!("cannot start the container: {e:#}"),
                );
                runner.ends().ended(run, &outcome, AT_START).await?;
                engine.remove(&container.id).await?;
                return Ok(None);
            }
            state = "running".into();
            restarted = true;
        }
    }
    let path = runner.storage.log_path(run.id);
    let (skip, _) = tokio::task::spawn_blocking(move || logs::complete_lines(&path)).await??;
    let stopped = matches!(state.as_str(), "exited" | "dead");
    let ended = match stopped {
        true => read_ending(&runner.storage.run_dir(run.id)).await,
        false => None,
    };
    let deadline = (!stopped).then(|| {
        let elapsed = run
            .started_at
            .filter(|_| !restarted)
            .map(|t| OffsetDateTime::now_utc() - t)
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        Instant::now()
            + runner
                .config
                .limits_for(run.kind())
                .0
                .timeout
                .saturating_sub(elapsed)
    });
    tracing::info!(run_id = %run.id, engine = member.name(), container = %container.id, state = %state, "reattaching");
    Ok(Some(Attach {
        container: container.id.clone(),
        skip,
        deadline,
        ended,
    }))
}

/// Ends a run whose container is gone: with the outcome kept in its folder if the server knew
/// how it ended but could not record it, as lost if not.
async fn lost(runner: &Runner, run: &Run) -> Result<()> {
    let (outcome, due) = match read_ending(&runner.storage.run_dir(run.id)).await {
        // Noted in the log when the server first knew it.
        Some(kept) => (
            kept,
            Due {
                note: false,
                ..AT_START
            },
        ),
        None => {
            tracing::warn!(run_id = %run.id, "{LOST}");
            (Outcome::failed(exit_code::NOT_RUN, LOST), AT_START)
        }
    };
    runner.ends().ended(run, &outcome, due).await
}

/// Puts a run that never started back in its place in the queue, with a fresh log.
async fn requeue(runner: &Runner, run: &Run, why: &str) -> Result<()> {
    runner.storage.remove_run(run.id).await?;
    runner.db.requeue_run(run.id).await?;
    tracing::info!(run_id = %run.id, "{why}: queued again");
    Ok(())
}

/// The label (`name=value`) on every container of the server that uses this storage folder.
pub fn storage_label(storage: &Storage) -> String {
    format!("{STORAGE_LABEL}={}", storage.root().display())
}

/// The containers (running or not) that carry this storage folder's label.
pub async fn our_containers(engine: &Engine, storage: &Storage) -> Result<Vec<Labelled>> {
    engine.containers_labelled(&[storage_label(storage)]).await
}

/// Who asks [`orphan_containers`]: what nothing owns depends on whether a server is at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    /// A server starting: nothing of it runs yet, so the containers prepared for queued runs
    /// and image self-tests that an earlier server left are leftovers too.
    Start,
    /// While a server may be serving (`precheck-server cleanup`, an engine back after an
    /// outage): a queued run's prepared container and a self-test are its own.
    Serving,
}

/// This storage folder's containers that no run owns: their run finished before its
/// container was removed, was deleted, or never existed (and, at a start, see [`Asking`]).
pub async fn orphan_containers(
    engine: &Engine,
    db: &Db,
    storage: &Storage,
    asking: Asking,
) -> Result<Vec<Labelled>> {
    // Containers first: the server has a run queued or running before it creates its
    // container, so a container listed here whose run is neither afterwards is not about to be
    // used.
    let containers = our_containers(engine, storage).await?;
    let owners = match asking {
        Asking::Start => vec![RunStatus::Running],
        Asking::Serving => vec![RunStatus::Running, RunStatus::Queued],
    };
    let owned: HashSet<Uuid> = db
        .runs(owners, Scope::All)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let serving = asking == Asking::Serving;
    Ok(containers
        .into_iter()
        .filter(|c| !run_of(c).is_some_and(|id| owned.contains(&id)))
        .filter(|c| !(serving && c.labels.contains_key(PROBE_LABEL)))
        .collect())
}

/// Upload files, run folders and blobs that no row references and that have not changed for
/// `min_age` (a running server may be about to record a younger one). Names that are not ids
/// (or, for blobs, sha256s) were not written by the server and are left alone.
pub async fn orphan_files(db: &Db, storage: &Storage, min_age: Duration) -> Result<Vec<Entry>> {
    let listed = storage.clone();
    let entries = tokio::task::spawn_blocking(move || listed.entries()).await??;
    let known = db.known_names().await?;
    let now = std::time::SystemTime::now();
    Ok(entries
        .into_iter()
        .filter(|e| {
            let (ours, known) = match e.kind {
                EntryKind::Upload => (is_id(&e.name), known.uploads.contains(&e.name)),
                EntryKind::Run => (is_id(&e.name), known.runs.contains(&e.name)),
                EntryKind::Blob => (is_sha256(&e.name), known.blobs.contains(&e.name)),
            };
            let old = now
                .duration_since(e.modified)
                .is_ok_and(|age| age >= min_age);
            ours && !known && old
        })
        .collect())
}

fn is_id(name: &str) -> bool {
    Uuid::parse_str(name).is_ok_and(|id| id.to_string() == name)
}

fn is_sha256(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn run_of(container: &Labelled) -> Option<Uuid> {
    container
        .labels
        .get(RUN_LABEL)
        .and_then(|v| Uuid::parse_str(v).ok())
}
