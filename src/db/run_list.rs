//! What reads runs: one run, a filtered page of them, the runs of an id prefix, counts by status;
//! and the row mapper every read of a run goes through, which also fills in the queue positions
//! of queued runs.

use anyhow::Result;
use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::{Db, bad_value, from_micros, parse_uuid};
use crate::model::{
    BuildParams, PrecheckParams, Progress, Run, RunKind, RunParams, RunStatus, Scope,
    SimulationParams, SimulationTool,
};

/// The columns of a run, read by index: by [`run_from_row`], and `seq` (16) by [`select_runs`].
pub(super) const RUN_COLUMNS: &str =
    "id, created, upload_id, top_cell, die_id, slot, cob, image, image_id, status,
    exit_code, error, oom_killed, started_at, finished_at, owner, seq,
    kind, project_id, tool, top, sources, config, progress_step, progress_name, progress_count,
    notify_url, engine";

/// Which runs to list.
#[derive(Debug, Clone)]
pub struct RunFilter {
    /// Any of these (all when empty).
    pub statuses: Vec<RunStatus>,
    pub scope: Scope,
    /// Any of these kinds (all when empty).
    pub kinds: Vec<RunKind>,
    /// Only this project's jobs.
    pub project_id: Option<Uuid>,
    /// Only runs older than this one (created before it): the cursor of the next page.
    pub before: Option<Uuid>,
    /// At most this many (all when `None`).
    pub limit: Option<usize>,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            statuses: vec![],
            scope: Scope::All,
            kinds: vec![],
            project_id: None,
            before: None,
            limit: None,
        }
    }
}

impl Db {
    pub async fn run(&self, id: Uuid) -> Result<Option<Run>> {
        self.call(move |c| select_run(c, id)).await
    }

    /// The runs `scope` sees with any of `statuses` (all when empty), newest first.
    pub async fn runs(&self, statuses: Vec<RunStatus>, scope: Scope) -> Result<Vec<Run>> {
        self.runs_where(RunFilter {
            statuses,
            scope,
            ..RunFilter::default()
        })
        .await
    }

    /// The runs that pass `filter`, newest first, with their queue positions.
    ///
    /// The conditions are written out (no `?1 IS NULL OR ...`) so that SQLite can walk an index
    /// in `seq` order and stop after `limit` rows; the queue positions of the page's queued runs
    /// come from one pass over the queue ([`fill_queue`]), not a count per row.
    pub async fn runs_where(&self, filter: RunFilter) -> Result<Vec<Run>> {
        self.call(move |c| {
            let RunFilter {
                statuses,
                scope,
                kinds,
                project_id,
                before,
                limit,
            } = filter;
            let mut conditions: Vec<String> = Vec::new();
            let mut values: Vec<Value> = Vec::new();
            if let Some(owner) = scope.owner() {
                values.push(Value::Text(owner.to_string()));
                conditions.push(format!("owner = ?{}", values.len()));
            }
            if let Some(project) = project_id {
                values.push(Value::Text(project.to_string()));
                conditions.push(format!("project_id = ?{}", values.len()));
            }
            if !kinds.is_empty() {
                let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
                conditions.push(format!("kind IN ({})", list.join(", ")));
            }
            if !statuses.is_empty() {
                let list: Vec<String> = statuses
                    .iter()
                    .map(|s| format!("'{}'", s.as_str()))
                    .collect();
                conditions.push(format!("status IN ({})", list.join(", ")));
            }
            if let Some(before) = before {
                values.push(Value::Text(before.to_string()));
                conditions.push(format!(
                    "seq < (SELECT seq FROM runs b WHERE b.id = ?{})",
                    values.len()
                ));
            }
            let filter = match conditions.is_empty() {
                true => String::new(),
                false => format!("WHERE {}", conditions.join(" AND ")),
            };
            let limit = match limit {
                Some(n) => format!("LIMIT {}", n.min(i64::MAX as usize)),
                None => String::new(),
            };
            select_runs(
                c,
                &format!("SELECT {RUN_COLUMNS} FROM runs {filter} ORDER BY seq DESC {limit}"),
                rusqlite::params_from_iter(values),
            )
        })
        .await
    }

    /// The runs whose id, without its dashes, starts with `digits` (lower-case hex), at most
    /// two: enough to tell a unique prefix from an ambiguous one.
    pub async fn runs_by_prefix(&self, digits: String) -> Result<Vec<Run>> {
        self.call(move |c| {
            select_runs(
                c,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs
                     WHERE substr(replace(id, '-', ''), 1, length(?1)) = ?1 ORDER BY seq LIMIT 2"
                ),
                [digits],
            )
        })
        .await
    }

    /// How many runs have each status (statuses without runs are left out).
    pub async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT status, COUNT(*) FROM runs GROUP BY status")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    parse_status(&r.get::<_, String>(0)?)?,
                    r.get::<_, i64>(1)? as u64,
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// (queued, running) counts.
    pub async fn queue_counts(&self) -> Result<(u64, u64)> {
        self.call(|c| {
            c.query_row(
                "SELECT COUNT(*) FILTER (WHERE status = 'queued'), COUNT(*) FILTER (WHERE status = 'running')
                 FROM runs",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }
}

pub(super) fn select_run(c: &Connection, id: Uuid) -> rusqlite::Result<Option<Run>> {
    let runs = select_runs(
        c,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [id.to_string()],
    )?;
    Ok(runs.into_iter().next())
}

/// The runs a `SELECT {RUN_COLUMNS} ...` finds, in its order, with their queue positions.
pub(super) fn select_runs(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Run>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt
        .query_map(params, |r| Ok((run_from_row(r)?, r.get::<_, i64>(16)?)))?
        .collect::<rusqlite::Result<Vec<(Run, i64)>>>()?;
    fill_queue(c, &mut rows)?;
    Ok(rows.into_iter().map(|(run, _)| run).collect())
}

/// Sets the queue position (1 = next to start) and the queue's length of each queued run in
/// `runs` (each with its `seq`), in one pass over the queue whatever the number of runs: the
/// queued runs between one of them and the next are counted once, as a range of the
/// `runs_by_status` index.
fn fill_queue(c: &Connection, runs: &mut [(Run, i64)]) -> rusqlite::Result<()> {
    let mut queued: Vec<(i64, usize)> = runs
        .iter()
        .enumerate()
        .filter(|(_, (run, _))| run.status == RunStatus::Queued)
        .map(|(i, (_, seq))| (*seq, i))
        .collect();
    if queued.is_empty() {
        return Ok(());
    }
    queued.sort_unstable();
    let mut count = c.prepare_cached(
        "SELECT COUNT(*) FROM runs WHERE status = 'queued' AND seq > ?1 AND seq <= ?2",
    )?;
    let mut between = |after: i64, upto: i64| -> rusqlite::Result<u64> {
        Ok(count.query_row([after, upto], |r| r.get::<_, i64>(0))? as u64)
    };
    let (mut position, mut previous) = (0u64, i64::MIN);
    let mut positions = Vec::with_capacity(queued.len());
    for &(seq, i) in &queued {
        position += between(previous, seq)?;
        positions.push((i, position));
        previous = seq;
    }
    let length = position + between(previous, i64::MAX)?;
    for (i, position) in positions {
        runs[i].0.queue = Some((position, length));
    }
    Ok(())
}

/// A run from a row of [`RUN_COLUMNS`], without its queue position (see [`fill_queue`]).
fn run_from_row(r: &Row) -> rusqlite::Result<Run> {
    let kind: RunKind = r.get::<_, String>(17)?.parse().map_err(bad_value)?;
    let project_id = || parse_uuid(&r.get::<_, String>(18)?);
    let params = match kind {
        RunKind::Precheck => RunParams::Precheck(PrecheckParams {
            upload_id: parse_uuid(&r.get::<_, String>(2)?)?,
            top_cell: r.get(3)?,
            die_id: r.get(4)?,
            slot: r.get(5)?,
            cob: r.get(6)?,
        }),
        RunKind::Simulation => {
            let tool: String = r.get(19)?;
            RunParams::Simulation(SimulationParams {
                project_id: project_id()?,
                tool: SimulationTool::parse(&tool)
                    .ok_or_else(|| bad_value(format!("unknown simulation tool {tool:?}")))?,
                top: r.get(20)?,
                sources: r
                    .get::<_, String>(21)?
                    .split('\n')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            })
        }
        RunKind::Build => RunParams::Build(BuildParams {
            project_id: project_id()?,
            config: r.get(22)?,
        }),
    };
    let progress = match r.get::<_, Option<i64>>(23)? {
        Some(step) => Some(Progress {
            step: step as u32,
            name: r.get::<_, Option<String>>(24)?.unwrap_or_default(),
            count: r.get::<_, Option<i64>>(25)?.map(|c| c as u32),
        }),
        None => None,
    };
    Ok(Run {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        created: from_micros(r.get(1)?)?,
        params,
        progress,
        notify_url: r.get(26)?,
        image: r.get(7)?,
        image_id: r.get(8)?,
        status: parse_status(&r.get::<_, String>(9)?)?,
        exit_code: r.get(10)?,
        error: r.get(11)?,
        oom_killed: r.get(12)?,
        started_at: r.get::<_, Option<i64>>(13)?.map(from_micros).transpose()?,
        finished_at: r.get::<_, Option<i64>>(14)?.map(from_micros).transpose()?,
        owner: r.get(15)?,
        queue: None,
        engine: r.get(27)?,
    })
}

pub(super) fn parse_status(s: &str) -> rusqlite::Result<RunStatus> {
    s.parse().map_err(bad_value)
}
