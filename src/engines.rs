//! The Docker engines runs go to: the `[[engines]]` of the config (or the one local engine),
//! each with its slots, its reachability, whether an operator drained it, and its own watch of
//! the precheck image.
//!
//! A [`Pool`] knows engines, not runs: the queue asks it where the oldest queued run not yet
//! placed may go ([`Pool::place`]), which puts the run in that engine's line (a [`Ticket`]);
//! the run's container is prepared there while it waits, and at its turn it takes a [`Slot`],
//! given back the moment its container has stopped. One task looks at every engine every
//! [`TICK`] (a ping, and the drained set in the database, which `precheck-server engines drain`
//! changes from another process) and wakes the queue when anything changed.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, EngineConfig};
use crate::db::Db;
use crate::docker::Engine;
pub use crate::docker::host_name as host_text;
use crate::image::{ImageStatus, ImageWatch};
use crate::model::{Run, RunKind};

/// How often every engine is looked at.
pub const TICK: Duration = Duration::from_secs(2);

/// Whether an engine answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Not looked at yet.
    Unknown,
    Up {
        version: String,
        api_version: String,
    },
    Down {
        since: OffsetDateTime,
        error: String,
    },
}

impl Reach {
    pub fn is_up(&self) -> bool {
        matches!(self, Reach::Up { .. })
    }
}

/// One engine of the pool.
pub struct Member {
    pub config: EngineConfig,
    pub engine: Engine,
    /// The configured precheck image on this engine.
    pub image: ImageWatch,
    reach: watch::Sender<Reach>,
    /// Slots in all: `max_concurrent`, or what the engine's memory allows once it has answered.
    total: AtomicUsize,
    used: AtomicUsize,
    drained: AtomicBool,
    /// The runs placed here that have not started, in the order they were placed: the first
    /// takes the next free slot. A std Mutex: it is never held across an `.await`.
    line: Mutex<VecDeque<Uuid>>,
    /// Bumped at every change that may give the first in line its turn, or take its engine
    /// away (a slot given back, a look at the engines, a drain).
    changes: watch::Sender<u64>,
}

impl Member {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn reach(&self) -> Reach {
        self.reach.borrow().clone()
    }

    /// Waits until the engine answers, or `until` passes; whether it answers.
    pub async fn wait_up(&self, until: tokio::time::Instant) -> bool {
        let mut reach = self.reach.subscribe();
        let up = reach.wait_for(Reach::is_up);
        matches!(tokio::time::timeout_at(until, up).await, Ok(Ok(_)))
    }

    /// A call to the engine found it not answering, before the pool's next look did: its runs
    /// wait for that look to find it back.
    pub fn seen_down(&self, error: &anyhow::Error) {
        self.reach.send_if_modified(|reach| {
            if matches!(reach, Reach::Down { .. }) {
                return false;
            }
            *reach = Reach::Down {
                since: OffsetDateTime::now_utc(),
                error: format!("{error:#}"),
            };
            true
        });
    }

    /// (used, total) slots.
    pub fn slots(&self) -> (usize, usize) {
        (
            self.used.load(Ordering::SeqCst),
            self.total.load(Ordering::SeqCst),
        )
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// How many runs are placed here and wait for a slot, their containers being prepared or
    /// ready to start.
    pub fn waiting(&self) -> usize {
        self.line().len()
    }

    fn line(&self) -> std::sync::MutexGuard<'_, VecDeque<Uuid>> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots neither used nor promised to a run in line; and room in line beyond them (as many
    /// runs as it has slots may wait prepared for the next ones).
    fn room(&self) -> (usize, usize) {
        let (used, total) = self.slots();
        let taken = used + self.waiting();
        (
            total.saturating_sub(taken),
            (2 * total).saturating_sub(taken),
        )
    }

    /// Whether it may take a run now: it answers and is not drained.
    fn usable(&self) -> bool {
        self.reach().is_up() && !self.drained()
    }
}

/// What an engine has of the image a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Has {
    Yes,
    /// Not yet: it is being pulled or self-tested.
    Soon,
    No,
}

/// The engines. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<Arc<Member>>,
    /// Poked when an engine's state or slots change: the queue waits on it.
    wake: Notify,
    config: Arc<Config>,
}

impl Pool {
    /// The config's engines: their clients (nothing is asked of them yet) and image watches
    /// (`watch` makes an engine's). A client that cannot be made (a TLS file that is not a
    /// certificate) stops the start, naming the engine.
    pub fn new(config: Arc<Config>, watch: impl Fn(&Engine) -> ImageWatch) -> Result<Pool> {
        let mut members = vec![];
        for engine_config in &config.engines {
            let engine = Engine::client_for(&engine_config.host)
                .map_err(|e| anyhow::anyhow!("engine {:?}: {e:#}", engine_config.name))?;
            let image = watch(&engine);
            members.push(Arc::new(Member {
                config: engine_config.clone(),
                engine,
                image,
                reach: watch::Sender::new(Reach::Unknown),
                total: AtomicUsize::new(engine_config.max_concurrent.unwrap_or(0)),
                used: AtomicUsize::new(0),
                drained: AtomicBool::new(false),
                line: Mutex::new(VecDeque::new()),
                changes: watch::Sender::new(0),
            }));
        }
        Ok(Pool {
            inner: Arc::new(Inner {
                members,
                wake: Notify::new(),
                config,
            }),
        })
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.inner.members
    }

    pub fn member(&self, name: &str) -> Option<&Arc<Member>> {
        self.inner.members.iter().find(|m| m.name() == name)
    }

    /// The engine a run went to: the one it names, or for a run from before engines were
    /// recorded, the first (the only engine a server had then). `None` if the config no longer
    /// has it.
    pub fn home_of(&self, run: &Run) -> Option<&Arc<Member>> {
        match &run.engine {
            Some(name) => self.member(name),
            None => self.inner.members.first(),
        }
    }

    /// Looks at every engine once (negotiating each one's API version the first time it
    /// answers) and reads the drained set; logs each engine's state.
    pub async fn look(&self, db: &Db) {
        let looks = self.inner.members.iter().map(|m| self.look_at(m));
        futures_util::future::join_all(looks).await;
        self.look_drained(db).await;
    }

    /// Keeps looking at the engines every [`TICK`] until `stop`; wakes the queue at every look
    /// (a queued run that waits for an engine is placed again; see `queue.rs`).
    pub fn watch(&self, db: Db, stop: CancellationToken) {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stop.cancelled() => return,
                }
                pool.look(&db).await;
                pool.poke();
            }
        });
        // A precheck waits for its engine's image: a verdict wakes the queue.
        for member in &self.inner.members {
            let mut status = member.image.subscribe();
            let pool = self.clone();
            tokio::spawn(async move {
                while status.changed().await.is_ok() {
                    pool.poke();
                }
            });
        }
    }

    /// Wakes the queue, and every run in an engine's line.
    pub fn poke(&self) {
        self.inner.wake.notify_one();
        for member in &self.inner.members {
            member.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Completes at the next [`Pool::poke`] (or at once if one came since the last wait).
    pub async fn woken(&self) {
        self.inner.wake.notified().await
    }

    async fn look_at(&self, member: &Member) {
        let was = member.reach();
        let asked = tokio::time::timeout(crate::docker::PING, async {
            if !was.is_up() {
                member.engine.negotiate().await?;
            }
            member.engine.version().await
        });
        let now = match asked.await {
            Ok(Ok(v)) => Reach::Up {
                version: v.version,
                api_version: v.api_version,
            },
            Ok(Err(e)) => down(&was, e),
            Err(_) => down(
                &was,
                anyhow::anyhow!(
                    "it did not answer within {} s",
                    crate::docker::PING.as_secs()
                ),
            ),
        };
        if now.is_up() && member.config.max_concurrent.is_none() {
            if let Ok(memory) = member.engine.memory().await {
                let per_run = self
                    .inner
                    .config
                    .limits_for(RunKind::Precheck)
                    .0
                    .memory
                    .max(1);
                let slots = usize::try_from(memory / per_run)
                    .unwrap_or(usize::MAX)
                    .max(1);
                if member.total.swap(slots, Ordering::SeqCst) != slots {
                    tracing::info!(
                        engine = member.name(),
                        slots,
                        "slots from the engine's memory / limits.memory"
                    );
                }
            }
        }
        let name = member.name();
        match (&was, &now) {
            (Reach::Up { .. }, Reach::Up { .. }) | (Reach::Down { .. }, Reach::Down { .. }) => {}
            (
                _,
                Reach::Up {
                    version,
                    api_version,
                },
            ) => {
                tracing::info!(engine = name, %version, api = %api_version, "the engine answers");
                // Back after an outage: its image is looked at again now, not at the end of
                // a backoff that the outage made long.
                if matches!(was, Reach::Down { .. }) {
                    member.image.poke();
                }
            }
            (_, Reach::Down { error, .. }) => {
                tracing::warn!(engine = name, "the engine does not answer: {error}");
            }
            (_, Reach::Unknown) => {}
        }
        member.reach.send_replace(now);
    }

    /// Reads the drained set from the database.
    pub async fn look_drained(&self, db: &Db) {
        let drained: HashSet<String> = match db.drained_engines().await {
            Ok(names) => names.into_iter().collect(),
            Err(e) => {
                tracing::warn!("cannot read which engines are drained: {e:#}");
                return;
            }
        };
        for member in &self.inner.members {
            let now = drained.contains(member.name());
            if member.drained.swap(now, Ordering::SeqCst) != now {
                tracing::info!(
                    engine = member.name(),
                    "{}",
                    if now {
                        "drained: it takes no new runs"
                    } else {
                        "resumed: it takes runs again"
                    }
                );
            }
        }
    }

    /// Where `run` may go now, in that engine's line: of the engines that answer, are not drained
    /// and have its image, the one with the most free slots, or if none is free, the one with
    /// the most room in line (its container is prepared there while the slots are busy). `None`
    /// to wait: every such engine is full, or one will have the image soon. A run whose image
    /// no usable engine has goes to a free one all the same, where it fails at once saying what
    /// to do (as with one engine).
    pub async fn place(&self, run: &Run) -> Option<Ticket> {
        let mut usable = vec![];
        for member in self.inner.members.iter().filter(|m| m.usable()) {
            let (free, room) = member.room();
            let has = self.has_image(member, run).await;
            usable.push((member, Look { free, room, has }));
        }
        let looks: Vec<Look> = usable.iter().map(|(_, look)| *look).collect();
        let member = usable[choose(&looks)?].0.clone();
        member.line().push_back(run.id);
        Some(Ticket {
            pool: self.clone(),
            member,
            run: run.clone(),
        })
    }

    /// Whether an engine other than `member` could start `run` now: usable, with its image, and
    /// a slot that no run in its line waits for.
    async fn free_elsewhere(&self, member: &Arc<Member>, run: &Run) -> bool {
        for other in self.inner.members.iter() {
            if Arc::ptr_eq(other, member) || !other.usable() || other.room().0 == 0 {
                continue;
            }
            if self.has_image(other, run).await == Has::Yes {
                return true;
            }
        }
        false
    }

    async fn has_image(&self, member: &Member, run: &Run) -> Has {
        if run.kind() == RunKind::Precheck && run.image == member.image.image() {
            return match member.image.status() {
                ImageStatus::Ready { .. } => Has::Yes,
                ImageStatus::Probing { .. } | ImageStatus::Pulling => Has::Soon,
                ImageStatus::Missing { .. } | ImageStatus::Broken { .. } => Has::No,
            };
        }
        match member.engine.image_id(&run.image).await {
            Ok(Some(_)) => Has::Yes,
            Ok(None) | Err(_) => Has::No,
        }
    }

    /// Takes a slot on `member` (even past its total: a run found running at start), held
    /// until [`Slot::free`] or the slot is dropped.
    pub fn take(&self, member: &Arc<Member>) -> Slot {
        member.used.fetch_add(1, Ordering::SeqCst);
        Slot {
            pool: self.clone(),
            member: member.clone(),
            held: AtomicBool::new(true),
        }
    }

    /// Whether at least one engine can take runs: it answers, is not drained, and its image
    /// is not missing or broken.
    pub fn can_take_runs(&self) -> bool {
        self.inner.members.iter().any(|m| {
            m.usable()
                && !matches!(
                    m.image.status(),
                    ImageStatus::Missing { .. } | ImageStatus::Broken { .. }
                )
        })
    }
}

/// A run's place in its engine's line, from [`Pool::place`]; it leaves the line when it takes
/// its slot ([`Ticket::turn`]) or is dropped.
pub struct Ticket {
    pool: Pool,
    member: Arc<Member>,
    run: Run,
}

impl Ticket {
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Waits until the run is first in its engine's line and a slot is free there, and takes
    /// it. `None` if the engine stops answering or is drained first, or if, first in line, the
    /// run could start on another engine now (one freed up while this one's slots stay busy,
    /// maybe for hours): the run is placed again.
    pub async fn turn(self) -> Option<Slot> {
        let member = &self.member;
        let mut changes = member.changes.subscribe();
        loop {
            if !member.usable() {
                return None;
            }
            let first = {
                let mut line = member.line();
                let (used, total) = member.slots();
                let first = line.front() == Some(&self.run.id);
                if first && used < total {
                    line.pop_front();
                    drop(line);
                    return Some(self.pool.take(member));
                }
                first
            };
            if first && self.pool.free_elsewhere(member, &self.run).await {
                return None;
            }
            if changes.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut line = self.member.line();
        if let Some(at) = line.iter().position(|id| *id == self.run.id) {
            line.remove(at);
            drop(line);
            // The next in line may have its turn now, and the queue may place one more.
            self.pool.poke();
        }
    }
}

/// A run's slot on its engine, from [`Pool::take`]. It is given back (waking the queue) when
/// the run's container has stopped ([`Slot::free`]), so the next run starts while this one's
/// results are copied out and its end recorded; or when it is dropped, however the run ends.
pub struct Slot {
    pool: Pool,
    member: Arc<Member>,
    held: AtomicBool,
}

impl Slot {
    /// Gives the slot back, once.
    pub fn free(&self) {
        if self.held.swap(false, Ordering::SeqCst) {
            let _ = self
                .member
                .used
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_sub(1));
            self.pool.poke();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free();
    }
}

/// What [`Pool::place`] sees of one usable engine: free slots, room in line, the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    free: usize,
    room: usize,
    has: Has,
}

/// Which of the usable engines takes the run, by index; `None` to wait. See [`Pool::place`].
fn choose(engines: &[Look]) -> Option<usize> {
    let most = |of: fn(&Look) -> usize| {
        let mut best: Option<(usize, usize)> = None;
        for (i, look) in engines.iter().enumerate() {
            let n = of(look);
            if look.has == Has::Yes && n > 0 && best.is_none_or(|(_, b)| n > b) {
                best = Some((i, n));
            }
        }
        best.map(|(i, _)| i)
    };
    if let Some(i) = most(|l| l.free).or_else(|| most(|l| l.room)) {
        return Some(i);
    }
    // One has it (full), or will soon: wait for it.
    if engines.iter().any(|l| l.has != Has::No) {
        return None;
    }
    // No usable engine has it: a free one takes it and fails it saying so.
    engines.iter().position(|l| l.free > 0)
}

fn down(was: &Reach, error: anyhow::Error) -> Reach {
    let since = match was {
        Reach::Down { since, .. } => *since,
        _ => OffsetDateTime::now_utc(),
    };
    Reach::Down {
        since,
        error: format!("{error:#}"),
    }
}

/// Why a run ended whose engine stayed away past its grace.
pub fn unreachable(engine: &str, since: OffsetDateTime) -> String {
    let since = since
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    format!("engine {engine:?} unreachable since {since}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_goes_to_the_most_free_engine_with_its_image_or_waits_for_one() {
        use Has::{No, Soon, Yes};
        // (free slots, room in line): an engine with both slots busy and none in line has
        // (0, 2).
        let at = |list: &[(usize, usize, Has)]| {
            let looks: Vec<Look> = list
                .iter()
                .map(|&(free, room, has)| Look { free, room, has })
                .collect();
            choose(&looks)
        };
        // Most free slots first; the first in the config on a tie.
        assert_eq!(at(&[(1, 3, Yes), (3, 5, Yes), (3, 5, Yes)]), Some(1));
        assert_eq!(at(&[(2, 4, Yes), (2, 4, Yes)]), Some(0));
        // An engine without the image gets none, however free.
        assert_eq!(at(&[(1, 3, Yes), (5, 10, No)]), Some(0));
        // A free slot wins over more room in line.
        assert_eq!(at(&[(0, 4, Yes), (1, 1, Yes)]), Some(1));
        // Every slot busy: the most room in line, where the run is prepared.
        assert_eq!(at(&[(0, 1, Yes), (0, 2, Yes)]), Some(1));
        // The one with the image is full: wait for it rather than go where it is missing.
        assert_eq!(at(&[(0, 0, Yes), (5, 10, No)]), None);
        // It will have it soon (pulling, or self-testing): wait.
        assert_eq!(at(&[(5, 10, Soon), (5, 10, No)]), None);
        assert_eq!(at(&[(0, 0, Soon), (1, 2, Yes)]), Some(1));
        // No usable engine has it: a free one takes it and fails it with what to do.
        assert_eq!(at(&[(0, 2, No), (2, 4, No)]), Some(1));
        // Nothing free, or no usable engine at all: wait.
        assert_eq!(at(&[(0, 2, No)]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn an_unreachable_engine_is_named_with_the_time_it_went() {
        let since = time::macros::datetime!(2026-12-03 18:02:11.123 UTC);
        assert_eq!(
            unreachable("big-1", since),
            "engine \"big-1\" unreachable since 2026-12-03T18:02:11Z"
        );
    }
}
