//! Projects, their files (each a blob by sha256) and the jobs run on them: a job is a run that
//! keeps its own copy of the project's file list (`job_files`), and a build records its progress.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::run_list::select_run;
use super::runs::NewRun;
use super::{Db, bad_value, from_micros, micros, parse_uuid};
use crate::model::{JobFile, Progress, Project, ProjectFile, Run, RunParams, Scope};

const PROJECT_COLUMNS: &str = "id, name, description, owner, created, updated,
    (SELECT COUNT(*) FROM project_files f WHERE f.project_id = projects.id),
    (SELECT COALESCE(SUM(size), 0) FROM project_files f WHERE f.project_id = projects.id)";

/// What storing a project file did.
#[derive(Debug, PartialEq)]
pub enum PutFile {
    /// Stored; the blobs the paths named before (they may now be unused).
    Stored {
        replaced: Vec<String>,
    },
    /// The project would hold more than its limit: the bytes it would hold.
    ProjectTooLarge(u64),
    /// The project would hold more files than its limit: how many.
    TooManyFiles(u64),
    NoProject,
}

/// Why a job could not be created.
#[derive(Debug, PartialEq)]
pub enum CreateJobError {
    NoProject,
    /// The project has no file at this path.
    MissingFile(String),
}

/// What deleting a project did.
#[derive(Debug, PartialEq)]
pub enum DeleteProject {
    /// Deleted; the blobs its files named (they may now be unused).
    Deleted(Vec<String>),
    /// A queued or running job of the project.
    Busy(Uuid),
    NotFound,
}

impl Db {
    /// Queues a job of a project, with a snapshot of the project's files as they are now; each
    /// of `needs` must be one of them.
    pub async fn create_job(
        &self,
        id: Uuid,
        params: RunParams,
        needs: Vec<String>,
        new: NewRun,
    ) -> Result<Result<Run, CreateJobError>> {
        self.call(move |c| {
            let NewRun {
                image,
                owner,
                notify_url,
                created: now,
                ..
            } = new;
            let tx = c.transaction()?;
            let Some(project_id) = params.project_id().map(|p| p.to_string()) else {
                return Err(bad_value("a precheck is not a job".into()));
            };
            let exists = tx
                .query_row("SELECT 1 FROM projects WHERE id = ?1", [&project_id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(Err(CreateJobError::NoProject));
            }
            for path in needs {
                let found = tx
                    .query_row(
                        "SELECT 1 FROM project_files WHERE project_id = ?1 AND path = ?2",
                        params![project_id, path],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !found {
                    return Ok(Err(CreateJobError::MissingFile(path)));
                }
            }
            let (tool, top, sources, config) = match &params {
                RunParams::Simulation(p) => (
                    Some(p.tool.as_str()),
                    Some(p.top.clone()),
                    Some(p.sources.join("\n")),
                    None,
                ),
                RunParams::Build(p) => (None, None, None, Some(p.config.clone())),
                RunParams::Precheck(_) => (None, None, None, None),
            };
            tx.execute(
                "INSERT INTO runs (id, kind, created, project_id, tool, top, sources, config, image, owner,
                    notify_url, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'queued')",
                params![
                    id.to_string(),
                    params.kind().as_str(),
                    micros(now),
                    project_id,
                    tool,
                    top,
                    sources,
                    config,
                    image,
                    owner,
                    notify_url,
                ],
            )?;
            tx.execute(
                "INSERT INTO job_files (run_id, path, size, sha256)
                 SELECT ?1, path, size, sha256 FROM project_files WHERE project_id = ?2",
                params![id.to_string(), project_id],
            )?;
            let run = select_run(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            tx.commit()?;
            Ok(Ok(run))
        })
        .await
    }

    /// The project files a job was given, by path.
    pub async fn job_files(&self, run_id: Uuid) -> Result<Vec<JobFile>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT path, size, sha256 FROM job_files WHERE run_id = ?1 ORDER BY path",
            )?;
            stmt.query_map([run_id.to_string()], |r| {
                Ok(JobFile {
                    path: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    sha256: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Records where a build is.
    pub async fn set_progress(&self, id: Uuid, progress: Progress) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE runs SET progress_step = ?2, progress_name = ?3, progress_count = ?4
                 WHERE id = ?1",
                params![id.to_string(), progress.step, progress.name, progress.count],
            )
            .map(drop)
        })
        .await
    }

    /// How many steps the last completed build of this project and config had, if any did.
    pub async fn last_build_steps(&self, project_id: Uuid, config: String) -> Result<Option<u32>> {
        self.call(move |c| {
            let steps: Option<Option<i64>> = c
                .query_row(
                    "SELECT progress_count FROM runs WHERE kind = 'build' AND status = 'completed'
                     AND project_id = ?1 AND config = ?2 AND progress_count IS NOT NULL
                     ORDER BY seq DESC LIMIT 1",
                    params![project_id.to_string(), config],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(steps.flatten().map(|n| n as u32))
        })
        .await
    }

    pub async fn create_project(&self, project: Project) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO projects (id, name, description, owner, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![
                    project.id.to_string(),
                    project.name,
                    project.description,
                    project.owner,
                    micros(project.created),
                ],
            )
            .map(drop)
        })
        .await
    }

    pub async fn project(&self, id: Uuid) -> Result<Option<Project>> {
        self.call(move |c| select_project(c, id)).await
    }

    /// The projects `scope` sees, newest first.
    pub async fn projects(&self, scope: Scope) -> Result<Vec<Project>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects WHERE ?1 IS NULL OR owner = ?1
                 ORDER BY created DESC, id"
            ))?;
            stmt.query_map([scope.owner()], project_from_row)?.collect()
        })
        .await
    }

    /// Renames or redescribes a project; returns it as it now is.
    pub async fn update_project(
        &self,
        id: Uuid,
        name: Option<String>,
        description: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Option<Project>> {
        self.call(move |c| {
            c.execute(
                "UPDATE projects SET name = COALESCE(?2, name),
                 description = COALESCE(?3, description), updated = ?4 WHERE id = ?1",
                params![id.to_string(), name, description, micros(now)],
            )?;
            select_project(c, id)
        })
        .await
    }

    /// Deletes a project and its files, unless a job of it is queued or running. Its finished
    /// jobs stay: they are runs, kept (with the files they were given) until deleted or pruned.
    pub async fn delete_project(&self, id: Uuid) -> Result<DeleteProject> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let busy: Option<String> = tx
                .query_row(
                    "SELECT id FROM runs WHERE project_id = ?1 AND status IN ('queued', 'running')
                     ORDER BY seq LIMIT 1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(job) = busy {
                return Ok(DeleteProject::Busy(parse_uuid(&job)?));
            }
            let blobs: Vec<String> = {
                let mut stmt =
                    tx.prepare("SELECT DISTINCT sha256 FROM project_files WHERE project_id = ?1")?;
                stmt.query_map([id.to_string()], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let n = tx.execute("DELETE FROM projects WHERE id = ?1", [id.to_string()])?;
            tx.commit()?;
            Ok(if n == 1 {
                DeleteProject::Deleted(blobs)
            } else {
                DeleteProject::NotFound
            })
        })
        .await
    }

    /// A project's files, by path.
    pub async fn project_files(&self, id: Uuid) -> Result<Vec<ProjectFile>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT path, size, sha256, modified FROM project_files WHERE project_id = ?1
                 ORDER BY path",
            )?;
            stmt.query_map([id.to_string()], file_from_row)?.collect()
        })
        .await
    }

    pub async fn project_file(&self, id: Uuid, path: String) -> Result<Option<ProjectFile>> {
        self.call(move |c| {
            c.query_row(
                "SELECT path, size, sha256, modified FROM project_files
                 WHERE project_id = ?1 AND path = ?2",
                params![id.to_string(), path],
                file_from_row,
            )
            .optional()
        })
        .await
    }

    /// Stores (or replaces) files of a project, all or none, unless the project would then
    /// hold more than `max_size` bytes or `max_files` files.
    pub async fn put_files(
        &self,
        id: Uuid,
        files: Vec<ProjectFile>,
        max_size: u64,
        max_files: usize,
    ) -> Result<PutFile> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM projects WHERE id = ?1",
                    [id.to_string()],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Ok(PutFile::NoProject);
            }
            let mut replaced = vec![];
            for f in &files {
                let old: Option<String> = tx
                    .query_row(
                        "SELECT sha256 FROM project_files WHERE project_id = ?1 AND path = ?2",
                        params![id.to_string(), f.path],
                        |r| r.get(0),
                    )
                    .optional()?;
                tx.execute(
                    "INSERT INTO project_files (project_id, path, size, sha256, modified)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (project_id, path) DO UPDATE
                     SET size = ?3, sha256 = ?4, modified = ?5",
                    params![
                        id.to_string(),
                        f.path,
                        f.size as i64,
                        f.sha256,
                        micros(f.modified)
                    ],
                )?;
                replaced.extend(old.filter(|old| *old != f.sha256));
            }
            let (total, count): (i64, i64) = tx.query_row(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM project_files WHERE project_id = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if total as u64 > max_size {
                return Ok(PutFile::ProjectTooLarge(total as u64));
            }
            if count as u64 > max_files as u64 {
                return Ok(PutFile::TooManyFiles(count as u64));
            }
            if let Some(f) = files.first() {
                tx.execute(
                    "UPDATE projects SET updated = ?2 WHERE id = ?1",
                    params![id.to_string(), micros(f.modified)],
                )?;
            }
            tx.commit()?;
            Ok(PutFile::Stored { replaced })
        })
        .await
    }

    /// Deletes a project file; returns the blob it named, if it existed.
    pub async fn delete_file(&self, id: Uuid, path: String) -> Result<Option<String>> {
        self.call(move |c| {
            c.query_row(
                "DELETE FROM project_files WHERE project_id = ?1 AND path = ?2 RETURNING sha256",
                params![id.to_string(), path],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Whether any project file, or any job's copy of one, names this blob.
    pub async fn blob_in_use(&self, sha256: String) -> Result<bool> {
        self.call(move |c| {
            c.query_row(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM project_files WHERE sha256 = ?1)
                 OR EXISTS (SELECT 1 FROM job_files WHERE sha256 = ?1)",
                [sha256],
                |_| Ok(true),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
        })
        .await
    }
}

/// The project `id`, if there is one.
fn select_project(c: &Connection, id: Uuid) -> rusqlite::Result<Option<Project>> {
    c.query_row(
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
        [id.to_string()],
        project_from_row,
    )
    .optional()
}

fn project_from_row(r: &Row) -> rusqlite::Result<Project> {
    Ok(Project {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        name: r.get(1)?,
        description: r.get(2)?,
        owner: r.get(3)?,
        created: from_micros(r.get(4)?)?,
        updated: from_micros(r.get(5)?)?,
        files: r.get::<_, i64>(6)? as u64,
        size: r.get::<_, i64>(7)? as u64,
    })
}

fn file_from_row(r: &Row) -> rusqlite::Result<ProjectFile> {
    Ok(ProjectFile {
        path: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        sha256: r.get(2)?,
        modified: from_micros(r.get(3)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DeleteRun;
    use crate::db::fixtures::{new_run, now};
    use crate::model::{BuildParams, Outcome, RunKind};
    /// A job needs its project and every file it names (the API's 404 and 400).
    #[tokio::test]
    async fn a_job_is_refused_without_its_project_or_a_file_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let project = crate::db::fixtures::project();
        let build = |project_id| {
            RunParams::Build(BuildParams {
                project_id,
                config: "config.json".into(),
            })
        };
        let needs = vec!["config.json".to_string()];
        let e = db
            .create_job(Uuid::new_v4(), build(project.id), needs.clone(), new_run())
            .await
            .unwrap();
        assert_eq!(e.unwrap_err(), CreateJobError::NoProject);
        db.create_project(project.clone()).await.unwrap();
        let e = db
            .create_job(Uuid::new_v4(), build(project.id), needs.clone(), new_run())
            .await
            .unwrap();
        assert_eq!(
            e.unwrap_err(),
            CreateJobError::MissingFile("config.json".into())
        );
        let file = ProjectFile {
            path: "config.json".into(),
            size: 2,
            sha256: "ab".into(),
            modified: now(),
        };
        db.put_files(project.id, vec![file], 1 << 20, 10)
            .await
            .unwrap();
        let run = db
            .create_job(Uuid::new_v4(), build(project.id), needs, new_run())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, crate::model::RunStatus::Queued);
    }

    #[tokio::test]
    async fn a_project_holds_at_most_max_files_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let project = crate::db::fixtures::project();
        db.create_project(project.clone()).await.unwrap();
        let file = |path: &str| ProjectFile {
            path: path.into(),
            size: 1,
            sha256: "aa".into(),
            modified: now(),
        };
        let put = |paths: &[&str]| {
            db.put_files(project.id, paths.iter().map(|p| file(p)).collect(), 100, 2)
        };
        assert!(matches!(
            put(&["a", "b"]).await.unwrap(),
            PutFile::Stored { .. }
        ));
        // Replacing at the limit is fine; one more file is not, and nothing of it is stored.
        assert!(matches!(put(&["b"]).await.unwrap(), PutFile::Stored { .. }));
        assert!(matches!(
            put(&["b", "c"]).await.unwrap(),
            PutFile::TooManyFiles(3)
        ));
        let paths: Vec<String> = db
            .project_files(project.id)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(paths, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_job_keeps_the_files_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let project = crate::db::fixtures::project();
        db.create_project(project.clone()).await.unwrap();
        let file = |path: &str, sha: &str| ProjectFile {
            path: path.into(),
            size: 3,
            sha256: sha.into(),
            modified: now(),
        };
        db.put_files(project.id, vec![file("config.json", "aa")], 100, 10)
            .await
            .unwrap();
        let build = |config: &str| {
            RunParams::Build(BuildParams {
                project_id: project.id,
                config: config.into(),
            })
        };
        let e = db
            .create_job(
                Uuid::new_v4(),
                build("x.json"),
                vec!["x.json".into()],
                new_run(),
            )
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e, CreateJobError::MissingFile("x.json".into()));
        let id = Uuid::new_v4();
        let run = db
            .create_job(
                id,
                build("config.json"),
                vec!["config.json".into()],
                new_run(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.kind(), RunKind::Build);
        // Replaced, then the project deleted (the job is queued: it refuses, until the job ends).
        db.put_files(project.id, vec![file("config.json", "bb")], 100, 10)
            .await
            .unwrap();
        assert_eq!(
            db.delete_project(project.id).await.unwrap(),
            DeleteProject::Busy(id)
        );
        db.claim_next_run(now()).await.unwrap().unwrap();
        db.finish_run(id, Outcome::completed(), now())
            .await
            .unwrap();
        assert!(matches!(
            db.delete_project(project.id).await.unwrap(),
            DeleteProject::Deleted(_)
        ));
        let kept = db.job_files(id).await.unwrap();
        assert_eq!(
            (kept[0].path.as_str(), kept[0].sha256.as_str()),
            ("config.json", "aa")
        );
        assert!(db.blob_in_use("aa".into()).await.unwrap());
        assert!(!db.blob_in_use("bb".into()).await.unwrap());
        assert!(db.known_names().await.unwrap().blobs.contains("aa"));
        db.set_progress(
            id,
            Progress {
                step: 3,
                name: "Floorplan".into(),
                count: Some(3),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            db.last_build_steps(project.id, "config.json".into())
                .await
                .unwrap(),
            Some(3)
        );
        assert!(matches!(
            db.delete_run(id, false, now()).await.unwrap(),
            DeleteRun::Deleted(_)
        ));
        assert!(!db.blob_in_use("aa".into()).await.unwrap());
    }
}
