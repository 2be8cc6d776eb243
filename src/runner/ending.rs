//! The one step every run's end goes through, whoever ends it: the runner (its container stopped,
//! or could not be made), the queue (a queued run cancelled) or recovery at start (a run whose
//! container is gone, whose start fails, or whose end was kept in its folder). [`Ends::ended`]
//! notes the end in the run's log when that is due, records it in the database and counts it in
//! the metrics; the queue then tells the run's waiters.
//!
//! An end the database would not take is kept in the run's folder ([`ENDING`]) while the runner
//! tries again, so a server stopped meanwhile finds it at its next start.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::db::Db;
use crate::metrics::Metrics;
use crate::model::{Outcome, Run, RunStatus};
use crate::storage::Storage;

use super::log_file::{finished_note, note};

/// The file in a run's folder that holds how it ended while the database would not take it.
const ENDING: &str = "ending";

/// How an end reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The call that ended the run recorded it already (a queued run's cancel).
    Done,
    /// Once; an error is returned. Recovery at start: the start fails, and the next start finds
    /// the run as this one did.
    Once,
    /// Again and again until the database takes it (another process may hold its lock, the disk
    /// may be full), the end kept in the run's folder meanwhile. The runner: the run's container
    /// stays until then, so a server stopped meanwhile finds both.
    UntilTaken,
}

/// What one end needs besides its count, which every end gets.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    /// A line in the run's log. Not for a run that never started (it has no log), nor for an
    /// end read back from the run's folder (noted when it was first known).
    pub note: bool,
    pub record: Record,
}

/// Ends runs. Borrowed from the runner's handles: `Runner::ends`.
pub struct Ends<'a> {
    pub db: &'a Db,
    pub storage: &'a Storage,
    pub metrics: &'a Metrics,
}

impl Ends<'_> {
    /// Ends a run with `outcome`: notes it in the run's log if `due.note`, records it as
    /// `due.record` says and, if this call is the one that recorded it, counts it in the
    /// finished-runs metric. A run deleted meanwhile (`runs delete --force`) loses its files
    /// too; one that was no longer running is left as it is.
    pub async fn ended(&self, run: &Run, outcome: &Outcome, due: Due) -> Result<()> {
        if due.note
            && let Err(e) = note(&self.storage.log_path(run.id), &finished_note(outcome)).await
        {
            tracing::warn!(run_id = %run.id, "cannot note the end of the run in its log: {e}");
        }
        let now = time::OffsetDateTime::now_utc();
        let recorded = match due.record {
            Record::Done => {
                self.metrics.run_finished(run, outcome, now);
                return Ok(());
            }
            Record::Once => self.db.finish_run(run.id, outcome.clone(), now).await?,
            Record::UntilTaken => self.record_until_taken(run, outcome, now).await,
        };
        if recorded {
            self.metrics.run_finished(run, outcome, now);
        } else if let Ok(None) = self.db.run(run.id).await
            && let Err(e) = self.storage.remove_run(run.id).await
        {
            tracing::warn!(run_id = %run.id, "cannot remove a deleted run's files: {e}");
        }
        // Kept by this step, or by the server before a restart (a resumed run's kept end).
        remove_ending(&self.storage.run_dir(run.id)).await;
        Ok(())
    }

    /// Records how the run ended, trying again until the database takes it; meanwhile the
    /// outcome waits in the run's folder. Returns false if the run was not running.
    async fn record_until_taken(
        &self,
        run: &Run,
        outcome: &Outcome,
        ended: time::OffsetDateTime,
    ) -> bool {
        let mut pending = false;
        let mut wait = Duration::from_millis(250);
        let recorded = loop {
            match self.db.finish_run(run.id, outcome.clone(), ended).await {
                Ok(recorded) => break recorded,
                Err(e) => {
                    if !pending {
                        pending = true;
                        tracing::error!(run_id = %run.id, "cannot record the end of the run, trying again until it is: {e:#}");
                        let ending = self.storage.run_dir(run.id).join(ENDING);
                        if let Err(e) = write_ending(&ending, outcome).await {
                            tracing::warn!(run_id = %run.id, "cannot keep the run's end in its folder: {e}");
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        if pending {
            tracing::info!(run_id = %run.id, "the end of the run is recorded");
        }
        recorded
    }
}

/// Writes a run's outcome where recovery finds it: status, exit code, OOM, then the message.
async fn write_ending(path: &Path, outcome: &Outcome) -> std::io::Result<()> {
    let text = format!(
        "{}\n{}\n{}\n{}",
        outcome.status,
        outcome.exit_code,
        outcome.oom_killed,
        outcome.error.as_deref().unwrap_or("")
    );
    let part = path.with_extension("part");
    tokio::fs::write(&part, text).await?;
    tokio::fs::rename(&part, path).await
}

/// Removes the outcome [`write_ending`] kept, once the database has the run's end.
async fn remove_ending(run_dir: &Path) {
    let _ = tokio::fs::remove_file(run_dir.join(ENDING)).await;
}

/// The outcome [`write_ending`] kept in a run's folder, if there is one that reads back.
pub async fn read_ending(run_dir: &Path) -> Option<Outcome> {
    let text = tokio::fs::read_to_string(run_dir.join(ENDING)).await.ok()?;
    let mut lines = text.splitn(4, '\n');
    let status = lines.next()?.parse().ok()?;
    let exit_code = lines.next()?.parse().ok()?;
    let oom_killed = lines.next()?.parse().ok()?;
    let error = lines.next().filter(|e| !e.is_empty()).map(str::to_string);
    if !RunStatus::is_terminal(status) {
        return None;
    }
    if status == RunStatus::Completed && exit_code != 0 {
        return None;
    }
    if status != RunStatus::Completed && exit_code == 0 {
        return None;
    }
    Some(Outcome {
        status,
        exit_code,
        error,
        oom_killed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_ending_reads_back_until_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let oom = Outcome {
            oom_killed: true,
            ..Outcome::failed(137, "out of memory\nsecond line")
        };
        for outcome in [Outcome::completed(), Outcome::cancelled(), oom] {
            write_ending(&dir.path().join(ENDING), &outcome)
                .await
                .unwrap();
            let read = read_ending(dir.path()).await.unwrap();
            assert_eq!(
                (read.status, read.exit_code, read.error, read.oom_killed),
                (
                    outcome.status,
                    outcome.exit_code,
                    outcome.error,
                    outcome.oom_killed
                )
            );
        }
        remove_ending(dir.path()).await;
        assert!(read_ending(dir.path()).await.is_none());
    }

    #[tokio::test]
    async fn an_ending_that_contradicts_itself_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "completed\n1\nfalse\n",
            "failed\n0\nfalse\n",
            "running\n0\nfalse\n",
            "failed\n",
        ] {
            tokio::fs::write(dir.path().join(ENDING), text)
                .await
                .unwrap();
            assert!(read_ending(dir.path()).await.is_none(), "{text:?}");
        }
    }
}
