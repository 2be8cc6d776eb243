//! `precheck-server status` and `precheck-server cleanup`.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use super::{Admin, Output, print_json};
use crate::api::Health;
use crate::config::EngineConfig;
use crate::model::RunStatus;
use crate::recovery::{Asking, orphan_containers, orphan_files};
use crate::runner::RUN_LABEL;
use crate::storage::{EntryKind, disk_usage};
use crate::units::human_bytes;

/// How long `status` waits for the server's `/health`.
const HEALTH_WAIT: Duration = Duration::from_secs(3);
/// Files younger than this are left alone by `cleanup`: a running server may be about to
/// record them (an upload is renamed into place just before its row is written).
const CLEANUP_MIN_AGE: Duration = Duration::from_secs(60);

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Status {
    server: ServerStatus,
    /// The first engine's (the only one without `[[engines]]`).
    engine: EngineStatus,
    /// Every engine, in the config's order.
    engines: Vec<EngineStatus>,
    image: String,
    runs: RunCounts,
    disk: DiskUsage,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServerStatus {
    /// Where the server said it listens (`server.url` in the storage folder).
    url: Option<String>,
    reachable: bool,
    /// The server's `/health` answer.
    health: Option<Health>,
    error: Option<String>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "PascalCase")]
struct EngineStatus {
    name: String,
    host: String,
    version: Option<String>,
    api_version: Option<String>,
    error: Option<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunCounts {
    queued: u64,
    running: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DiskUsage {
    path: String,
    total: u64,
    uploads: u64,
    runs: u64,
    /// Project files' contents (`blobs/`).
    projects: u64,
    database: u64,
}

/// Prints the report; fails (after printing it) if the server or the engine cannot be reached.
pub async fn status(admin: &Admin, output: Output) -> Result<()> {
    let looks = admin.config.engines.iter().map(|e| engine_status(admin, e));
    let (server, engines) =
        tokio::join!(server_status(admin), futures_util::future::join_all(looks));
    let mut runs = RunCounts::default();
    for (status, n) in admin.db.run_counts().await? {
        *match status {
            RunStatus::Queued => &mut runs.queued,
            RunStatus::Running => &mut runs.running,
            RunStatus::Completed => &mut runs.completed,
            RunStatus::Failed => &mut runs.failed,
            RunStatus::Cancelled => &mut runs.cancelled,
        } = n;
    }
    let storage = admin.storage.clone();
    let disk = tokio::task::spawn_blocking(move || {
        let size = |path: std::path::PathBuf| disk_usage(&path).unwrap_or(0);
        let database: u64 = ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut path = storage.db_path().into_os_string();
                path.push(suffix);
                size(path.into())
            })
            .sum();
        DiskUsage {
            path: storage.root().display().to_string(),
            total: size(storage.root().to_path_buf()),
            uploads: size(storage.root().join("uploads")),
            runs: size(storage.root().join("runs")),
            projects: size(storage.root().join("blobs")),
            database,
        }
    })
    .await?;
    let status = Status {
        server,
        engine: engines[0].clone(),
        engines,
        image: admin.config.image.clone(),
        runs,
        disk,
    };
    if output.json {
        print_json(&status)?;
    } else {
        print_status(&status)?;
    }
    if let Some(e) = &status.server.error {
        bail!("the server is {e}");
    }
    let down: Vec<String> = status
        .engines
        .iter()
        .filter_map(|e| e.error.as_ref().map(|error| format!("{}: {error}", e.name)))
        .collect();
    match down.as_slice() {
        [] => {}
        [one] if status.engines.len() == 1 => {
            bail!(
                "the Docker engine is not reachable: {}",
                one.split_once(": ").map_or(one.as_str(), |(_, e)| e)
            )
        }
        _ => bail!("Docker engines are not reachable: {}", down.join("; ")),
    }
    Ok(())
}

fn print_status(s: &Status) -> Result<()> {
    let server = match (&s.server.url, &s.server.error) {
        (_, Some(e)) => e.clone(),
        (url, None) => {
            let health = s
                .server
                .health
                .as_ref()
                .map_or("unknown", |h| h.status.as_str());
            format!(
                "running at {} (health: {health})",
                url.as_deref().unwrap_or("?")
            )
        }
    };
    let engine = |e: &EngineStatus| match (&e.version, &e.error) {
        (Some(v), _) => format!(
            "Docker {v} (API {})",
            e.api_version.as_deref().unwrap_or("?")
        ),
        (None, error) => format!("not reachable: {}", error.as_deref().unwrap_or("")),
    };
    let r = &s.runs;
    let d = &s.disk;
    outln!("Server:     {server}")?;
    if let [one] = s.engines.as_slice() {
        outln!("Engine:     {}", engine(one))?;
    } else {
        outln!("Engines:")?;
        for e in &s.engines {
            outln!("  {} ({}): {}", e.name, e.host, engine(e))?;
        }
    }
    outln!("Image:      {}", s.image)?;
    outln!(
        "Runs:       {} queued, {} running, {} completed, {} failed, {} cancelled",
        r.queued,
        r.running,
        r.completed,
        r.failed,
        r.cancelled
    )?;
    outln!(
        "Disk used:  {} in {} (uploads {}, runs {}, projects {}, database {})",
        human_bytes(d.total),
        d.path,
        human_bytes(d.uploads),
        human_bytes(d.runs),
        human_bytes(d.projects),
        human_bytes(d.database)
    )
}

async fn server_status(admin: &Admin) -> ServerStatus {
    let url_file = admin.storage.server_url_path();
    let Ok(url) = tokio::fs::read_to_string(&url_file).await else {
        return ServerStatus {
            url: None,
            reachable: false,
            health: None,
            error: Some(format!("not running ({} is missing)", url_file.display())),
        };
    };
    let url = url.trim().to_string();
    let answer = async {
        let client = reqwest::Client::builder().timeout(HEALTH_WAIT).build()?;
        let resp = client.get(format!("{url}/health")).send().await?;
        resp.json::<Health>().await
    };
    match answer.await {
        Ok(health) => ServerStatus {
            url: Some(url),
            reachable: true,
            health: Some(health),
            error: None,
        },
        Err(e) => ServerStatus {
            error: Some(format!("not reachable at {url}: {}", reqwest_reason(&e))),
            url: Some(url),
            reachable: false,
            health: None,
        },
    }
}

/// The innermost cause of an HTTP failure ("Connection refused"), on one line.
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        return format!("no answer within {} s", HEALTH_WAIT.as_secs());
    }
    source.to_string()
}

async fn engine_status(admin: &Admin, engine: &EngineConfig) -> EngineStatus {
    let version = async { admin.engine(engine).await?.version().await };
    let (name, host) = (engine.name.clone(), crate::docker::host_name(&engine.host));
    match version.await {
        Ok(v) => EngineStatus {
            name,
            host,
            version: Some(v.version),
            api_version: Some(v.api_version),
            error: None,
        },
        Err(e) => EngineStatus {
            name,
            host,
            version: None,
            api_version: None,
            error: Some(format!("{e:#}")),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Cleaned {
    containers_deleted: Vec<String>,
    files_deleted: Vec<String>,
    space_reclaimed: u64,
    dry_run: bool,
}

pub async fn cleanup(admin: &Admin, dry_run: bool, output: Output) -> Result<()> {
    let verb = if dry_run { "Would remove" } else { "Removed" };
    let mut cleaned = Cleaned {
        containers_deleted: vec![],
        files_deleted: vec![],
        space_reclaimed: 0,
        dry_run,
    };
    // Every engine that answers is cleaned; one that does not is named at the end, and the
    // command fails then, so that a cron job notices.
    let mut unreachable = vec![];
    let several = admin.config.engines.len() > 1;
    for engine_config in &admin.config.engines {
        let engine = match admin.engine(engine_config).await {
            Ok(engine) => engine,
            Err(e) => {
                unreachable.push(format!("{e:#}"));
                continue;
            }
        };
        let on = match several {
            true => format!(" on engine {}", engine_config.name),
            false => String::new(),
        };
        for container in
            orphan_containers(&engine, &admin.db, &admin.storage, Asking::Serving).await?
        {
            if !dry_run {
                engine.remove(&container.id).await?;
            }
            if !output.json {
                let run = container.labels.get(RUN_LABEL).map_or("-", String::as_str);
                outln!(
                    "{verb} container {}{on} (run {run}, {}): no queued or running run owns it",
                    container.name,
                    container.state
                )?;
            }
            cleaned.containers_deleted.push(container.id);
        }
    }
    for entry in orphan_files(&admin.db, &admin.storage, CLEANUP_MIN_AGE).await? {
        if !dry_run {
            let path = entry.path.clone();
            tokio::task::spawn_blocking(move || match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) => Err(e),
            })
            .await??;
        }
        let relative = entry
            .path
            .strip_prefix(admin.storage.root())
            .unwrap_or(&entry.path)
            .display()
            .to_string();
        if !output.json {
            let what = match entry.kind {
                EntryKind::Upload => "no upload has this id",
                EntryKind::Run => "no run has this id",
                EntryKind::Blob => "no project file has this content",
            };
            outln!("{verb} {relative} ({}): {what}", human_bytes(entry.size))?;
        }
        cleaned.space_reclaimed += entry.size;
        cleaned.files_deleted.push(relative);
    }
    if output.json {
        return print_json(&cleaned);
    }
    if cleaned.containers_deleted.is_empty() && cleaned.files_deleted.is_empty() {
        outln!("Nothing to clean up.")?;
    } else {
        let total = if dry_run {
            "Total space that would be reclaimed"
        } else {
            "Total reclaimed space"
        };
        outln!("{total}: {}", human_bytes(cleaned.space_reclaimed))?;
    }
    if !unreachable.is_empty() {
        bail!("not every engine was cleaned: {}", unreachable.join("; "));
    }
    Ok(())
}
