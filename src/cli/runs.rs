//! `precheck-server runs list | inspect | delete | prune`.

use anyhow::{Result, bail};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Admin, Output, RunsCommand, print_json, table};
use crate::api::RunBody;
use crate::db::{DeleteRun, RunFilter};
use crate::model::{Run, RunParams, RunStatus};
use crate::recovery::storage_label;
use crate::runner::RUN_LABEL;
use crate::units::human_bytes;

/// How long a force-deleted run's container gets to stop before it is killed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(admin: &Admin, command: RunsCommand) -> Result<()> {
    match command {
        RunsCommand::List {
            statuses,
            no_trunc,
            limit,
            output,
        } => list(admin, statuses, no_trunc, limit, output).await,
        RunsCommand::Inspect { id, output: _ } => {
            print_json(&RunBody::from(&resolve(admin, &id).await?))
        }
        RunsCommand::Delete { id, force, output } => delete(admin, &id, force, output).await,
        RunsCommand::Prune {
            statuses,
            older_than,
            dry_run,
            output,
        } => prune(admin, statuses, older_than, dry_run, output).await,
    }
}

async fn list(
    admin: &Admin,
    statuses: Vec<RunStatus>,
    no_trunc: bool,
    limit: Option<usize>,
    output: Output,
) -> Result<()> {
    let runs = admin
        .db
        .runs_where(RunFilter {
            statuses,
            limit,
            ..RunFilter::default()
        })
        .await?;
    if output.json {
        return print_json(&runs.iter().map(RunBody::from).collect::<Vec<_>>());
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                if no_trunc {
                    r.id.to_string()
                } else {
                    short(&r.id)
                },
                r.kind().to_string(),
                printable(&subject(r)),
                status_text(r, now),
                printable(r.engine.as_deref().unwrap_or("-")),
                table::ago(r.created, now),
                r.owner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table::print(
        &[
            "RUN ID", "KIND", "SUBJECT", "STATUS", "ENGINE", "CREATED", "OWNER",
        ],
        &rows,
    )
}

/// What a run works on: a precheck's top cell, a simulation's testbench, a build's config.
fn subject(run: &Run) -> String {
    match &run.params {
        RunParams::Precheck(p) => p.top_cell.clone(),
        RunParams::Simulation(p) => format!("{} ({})", p.top, p.tool.as_str()),
        RunParams::Build(p) => p.config.clone(),
    }
}

/// The first 12 hex digits of an id, as `docker ps` shows them.
fn short(id: &Uuid) -> String {
    id.simple().to_string()[..12].to_string()
}

/// A client's string made safe for a terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// "Queued (2 of 5)", "Running for 3 minutes", "Failed (1) 2 hours ago".
fn status_text(run: &Run, now: OffsetDateTime) -> String {
    match run.status {
        RunStatus::Queued => match run.queue {
            Some((position, length)) => format!("Queued ({position} of {length})"),
            None => "Queued".into(),
        },
        RunStatus::Running => match run.started_at {
            Some(t) => format!("Running for {}", table::span(now - t)),
            None => "Running".into(),
        },
        status => {
            let mut text = capitalized(status.as_str());
            if let Some(code) = run.exit_code {
                text.push_str(&format!(" ({code})"));
            }
            if let Some(t) = run.finished_at {
                text.push(' ');
                text.push_str(&table::ago(t, now));
            }
            text
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Finds a run by its id or a unique start of it, as Docker does.
pub async fn resolve(admin: &Admin, id: &str) -> Result<Run> {
    let text = id.trim().to_ascii_lowercase();
    if let Ok(uuid) = Uuid::parse_str(&text) {
        return match admin.db.run(uuid).await? {
            Some(run) => Ok(run),
            None => bail!("no run with id {uuid}"),
        };
    }
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{id:?} is not a run id: use the id `runs list` shows, or a start of it");
    }
    let mut found = admin.db.runs_by_prefix(digits).await?;
    match found.len() {
        0 => bail!("no run with an id starting with {id}"),
        1 => Ok(found.remove(0)),
        _ => bail!("more than one run has an id starting with {id}: give more of it"),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Deleted {
    deleted: Uuid,
    /// True if it was running and its container was stopped.
    container_stopped: bool,
    space_reclaimed: u64,
}

async fn delete(admin: &Admin, id: &str, force: bool, output: Output) -> Result<()> {
    let run = resolve(admin, id).await?;
    let running = run.status == RunStatus::Running;
    if running && !force {
        bail!(
            "run {} is running: add --force to stop its container and delete it",
            run.id
        );
    }
    // Its engine first: a running run is not deleted if its container cannot be stopped.
    let engine = match running {
        true => Some(admin.engine(admin.engine_of(&run)?).await?),
        false => None,
    };
    deleted(
        run.id,
        admin
            .db
            .delete_run(run.id, force, upload_expiry(admin))
            .await?,
    )?;
    // Its row is gone, so a server watching the container removes what it copies out.
    let mut container_stopped = false;
    if let Some(engine) = engine {
        let labels = [
            storage_label(&admin.storage),
            format!("{RUN_LABEL}={}", run.id),
        ];
        for container in engine.containers_labelled(&labels).await? {
            engine.stop(&container.id, STOP_GRACE).await?;
            engine.remove(&container.id).await?;
            container_stopped = true;
        }
    }
    let space_reclaimed = remove_files(admin, run.id).await?;
    if output.json {
        return print_json(&Deleted {
            deleted: run.id,
            container_stopped,
            space_reclaimed,
        });
    }
    let stopped = if container_stopped {
        ", its container stopped"
    } else {
        ""
    };
    outln!(
        "Deleted run {} ({}{stopped}, {} of files)",
        run.id,
        run.status,
        human_bytes(space_reclaimed)
    )?;
    Ok(())
}

/// Refuses a delete the database did not make: the run `id` went, or started, since it was
/// found.
fn deleted(id: Uuid, outcome: DeleteRun) -> Result<()> {
    match outcome {
        DeleteRun::Deleted(_) => Ok(()),
        DeleteRun::NotFound => bail!("no run with id {id} (it was deleted meanwhile)"),
        DeleteRun::Running => {
            bail!("run {id} started meanwhile: add --force to stop its container and delete it")
        }
    }
}

/// When an upload that no run uses any more expires (from now).
fn upload_expiry(admin: &Admin) -> OffsetDateTime {
    OffsetDateTime::now_utc() + admin.config.upload_expiry
}

/// How many bytes a run's folder holds.
async fn files_size(admin: &Admin, id: Uuid) -> Result<u64> {
    let dir = admin.storage.run_dir(id);
    Ok(tokio::task::spawn_blocking(move || crate::storage::disk_usage(&dir).unwrap_or(0)).await?)
}

/// Removes a run's folder; returns how many bytes it held.
async fn remove_files(admin: &Admin, id: Uuid) -> Result<u64> {
    let size = files_size(admin, id).await?;
    admin.storage.remove_run(id).await?;
    Ok(size)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Pruned {
    runs_deleted: Vec<Uuid>,
    space_reclaimed: u64,
    dry_run: bool,
}

async fn prune(
    admin: &Admin,
    statuses: Vec<RunStatus>,
    older_than: Option<std::time::Duration>,
    dry_run: bool,
    output: Output,
) -> Result<()> {
    if let Some(s) = statuses.iter().find(|s| !s.is_terminal()) {
        bail!(
            "--status {s}: prune deletes finished runs only (completed, failed, cancelled); use `runs delete` for a {s} run"
        );
    }
    let now = OffsetDateTime::now_utc();
    let before = older_than.map(|age| now - age);
    let runs = admin
        .db
        .prune_runs(statuses, before, dry_run, upload_expiry(admin))
        .await?;
    let mut space_reclaimed = 0;
    for run in &runs {
        let size = if dry_run {
            files_size(admin, run.id).await?
        } else {
            remove_files(admin, run.id).await?
        };
        space_reclaimed += size;
        if !output.json {
            let finished = run
                .finished_at
                .map(|t| format!(", finished {}", table::ago(t, now)))
                .unwrap_or_default();
            let verb = if dry_run { "Would delete" } else { "Deleted" };
            outln!(
                "{verb} run {} ({}{finished}, {})",
                run.id,
                run.status,
                human_bytes(size)
            )?;
        }
    }
    if output.json {
        return print_json(&Pruned {
            runs_deleted: runs.iter().map(|r| r.id).collect(),
            space_reclaimed,
            dry_run,
        });
    }
    let total = if dry_run {
        "Total space that would be reclaimed"
    } else {
        "Total reclaimed space"
    };
    outln!("{total}: {}", human_bytes(space_reclaimed))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::NewRun;
    use crate::model::{LayoutFormat, PrecheckParams, Scope, Upload};

    /// Queued prechecks of these ids, in a new storage folder.
    async fn admin_with_runs(dir: &std::path::Path, ids: &[&str]) -> Admin {
        let admin = Admin::in_temp(dir, "");
        let now = OffsetDateTime::now_utc();
        let upload = Upload {
            id: Uuid::new_v4(),
            name: "chip.gds".into(),
            size: 10,
            sha256: "ab".into(),
            format: LayoutFormat::Gds,
            created: now,
            expires_at: Some(now + time::Duration::hours(1)),
            expired: false,
            owner: None,
            layout: None,
        };
        admin.db.insert_upload(upload.clone()).await.unwrap();
        for id in ids {
            let params = PrecheckParams {
                upload_id: upload.id,
                top_cell: "chip_top".into(),
                die_id: "FFFFFFFF".into(),
                slot: "1x1".into(),
                cob: false,
            };
            let new = NewRun {
                image: "img".into(),
                owner: None,
                notify_url: None,
                idempotency: None,
                created: now,
            };
            admin
                .db
                .create_run(id.parse().unwrap(), params, Scope::All, new)
                .await
                .unwrap()
                .unwrap();
        }
        admin
    }

    const A1: &str = "aaaa1111-0000-4000-8000-000000000001";
    const A2: &str = "aaaa2222-0000-4000-8000-000000000002";

    /// A run is named by its id or a unique start of it: (what is given, the run or the refusal).
    #[tokio::test]
    async fn runs_are_found_by_id_or_a_unique_start_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin_with_runs(dir.path(), &[A1, A2]).await;
        let unknown = "bbbbbbbb-0000-4000-8000-000000000000";
        let cases = [
            (A1, Ok(A1)),
            (" AAAA2222-0000-4000-8000-000000000002 ", Ok(A2)),
            ("aaaa1", Ok(A1)),
            ("AAAA-2", Ok(A2)),
            (unknown, Err(format!("no run with id {unknown}"))),
            ("bb", Err("no run with an id starting with bb".into())),
            (
                "aaaa",
                Err("more than one run has an id starting with aaaa: give more of it".into()),
            ),
            (
                "xyz",
                Err(
                    "\"xyz\" is not a run id: use the id `runs list` shows, or a start of it"
                        .into(),
                ),
            ),
            (
                "",
                Err("\"\" is not a run id: use the id `runs list` shows, or a start of it".into()),
            ),
            (
                "--",
                Err(
                    "\"--\" is not a run id: use the id `runs list` shows, or a start of it".into(),
                ),
            ),
        ];
        for (given, expected) in cases {
            let found = resolve(&admin, given)
                .await
                .map(|run| run.id.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(found, expected.map(String::from), "{given:?}");
        }
    }

    #[tokio::test]
    async fn a_running_run_is_deleted_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin_with_runs(dir.path(), &[A1]).await;
        let run = admin
            .db
            .claim_next_run(OffsetDateTime::now_utc())
            .await
            .unwrap()
            .unwrap();
        let output = Output { json: true };
        let e = delete(&admin, A1, false, output).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("run {A1} is running: add --force to stop its container and delete it")
        );
        assert_eq!(
            admin.db.run(run.id).await.unwrap().unwrap().status,
            RunStatus::Running
        );
        // What the database says when the run went or started between the look and the delete.
        let id = run.id;
        assert!(deleted(id, DeleteRun::Deleted(Box::new(run))).is_ok());
        assert_eq!(
            deleted(id, DeleteRun::NotFound).unwrap_err().to_string(),
            format!("no run with id {id} (it was deleted meanwhile)")
        );
        assert_eq!(
            deleted(id, DeleteRun::Running).unwrap_err().to_string(),
            format!("run {id} started meanwhile: add --force to stop its container and delete it")
        );
    }

    #[tokio::test]
    async fn prune_deletes_finished_runs_only() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin_with_runs(dir.path(), &[A1]).await;
        let output = Output { json: true };
        for status in [RunStatus::Queued, RunStatus::Running] {
            let statuses = vec![RunStatus::Completed, status];
            let e = prune(&admin, statuses, None, false, output)
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "--status {status}: prune deletes finished runs only (completed, failed, cancelled); use `runs delete` for a {status} run"
                )
            );
        }
        let run = admin.db.run(A1.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Queued);
    }
}
