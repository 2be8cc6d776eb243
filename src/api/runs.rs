//! What every kind of run shares over HTTP, prechecks and jobs alike: the run's body, `/wait`,
//! cancel, and a run's webhook. The routes of each kind (`prechecks.rs`, `jobs.rs`) find the
//! run their path names and hand it here; logs are `logs.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, PartialSchema, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Json;
use super::openapi::string_enum;
use super::query;
use super::respond::rfc3339;
use super::state::AppState;
use crate::config::Webhooks;
use crate::db::Cancel;
use crate::model::{Run, RunKind, RunParams, RunStatus};

/// A run: a precheck, or a project's simulation or build job.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct RunBody {
    pub id: Uuid,
    pub kind: RunKind,
    /// RFC 3339.
    pub created: String,
    /// The `sha256:` id of the image that ran (or runs) it.
    #[schema(required = true)]
    pub image: Option<String>,
    pub state: RunState,
    pub config: RunConfig,
    /// The name of the API key that created it (none without authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub owner: Option<String>,
    /// Where it stands in the queue, while it is queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub queue: Option<QueueBody>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct RunState {
    pub status: RunStatus,
    /// Once it has finished: 0 passed, 1 a check failed, 2 bad arguments, 124 timed out,
    /// 125 not run (or lost), 130 cancelled, 137 killed (e.g. out of memory).
    #[schema(required = true)]
    pub exit_code: Option<i64>,
    /// Why it did not pass, in a sentence a person can act on.
    #[schema(required = true)]
    pub error: Option<String>,
    /// RFC 3339.
    #[schema(required = true)]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[schema(required = true)]
    pub finished_at: Option<String>,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    /// A build's LibreLane step, read from its log.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub progress: Option<ProgressBody>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ProgressBody {
    pub step: u32,
    pub name: String,
    /// How many steps the flow has, once known (see docs/decisions.md).
    #[schema(required = true)]
    pub count: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// The image's name.
    pub image: String,
    /// The Docker engine it went to (`[[engines]]`' name), once it left the queue; null
    /// while queued.
    pub engine: Option<String>,
    /// A precheck's `upload_id`, `top_cell`, `die_id`, `slot` and `cob`; a simulation's
    /// `project_id`, `tool`, `top` and `files`; a build's `project_id` and `config`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct QueueBody {
    /// 1 for the next to start.
    pub position: u64,
    pub length: u64,
}

/// What a run is.
impl PartialSchema for RunKind {
    fn schema() -> RefOr<Schema> {
        string_enum(RunKind::ALL.map(RunKind::as_str)).into()
    }
}

impl ToSchema for RunKind {}

/// Where a run stands.
impl PartialSchema for RunStatus {
    fn schema() -> RefOr<Schema> {
        string_enum(RunStatus::ALL.map(RunStatus::as_str)).into()
    }
}

impl ToSchema for RunStatus {}

impl Serialize for RunKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RunKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RunKind, D::Error> {
        query::text(d, str::parse)
    }
}

impl Serialize for RunStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// As a body's `State.Status` and a list's `status` parameter read it.
impl<'de> Deserialize<'de> for RunStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RunStatus, D::Error> {
        query::text(d, str::parse)
    }
}

impl From<&Run> for RunBody {
    fn from(run: &Run) -> RunBody {
        let labels = match &run.params {
            RunParams::Precheck(p) => BTreeMap::from([
                ("upload_id", p.upload_id.to_string()),
                ("top_cell", p.top_cell.clone()),
                ("die_id", p.die_id.clone()),
                ("slot", p.slot.clone()),
                ("cob", p.cob.to_string()),
            ]),
            RunParams::Simulation(p) => BTreeMap::from([
                ("project_id", p.project_id.to_string()),
                ("tool", p.tool.as_str().to_string()),
                ("top", p.top.clone()),
                ("files", p.sources.join(" ")),
            ]),
            RunParams::Build(p) => BTreeMap::from([
                ("project_id", p.project_id.to_string()),
                ("config", p.config.clone()),
            ]),
        };
        RunBody {
            id: run.id,
            kind: run.kind(),
            created: rfc3339(run.created),
            image: run.image_id.clone(),
            state: RunState {
                status: run.status,
                exit_code: run.exit_code,
                error: run.error.clone(),
                started_at: run.started_at.map(rfc3339),
                finished_at: run.finished_at.map(rfc3339),
                oom_killed: run.oom_killed,
                progress: run.progress.as_ref().map(|p| ProgressBody {
                    step: p.step,
                    name: p.name.clone(),
                    count: p.count,
                }),
            },
            config: RunConfig {
                image: run.image.clone(),
                engine: run.engine.clone(),
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            },
            owner: run.owner.clone(),
            queue: run
                .queue
                .map(|(position, length)| QueueBody { position, length }),
        }
    }
}

/// What a run is called in messages: `precheck`, `simulation job`, `build job`.
pub fn noun(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Precheck => "precheck",
        RunKind::Simulation => "simulation job",
        RunKind::Build => "build job",
    }
}

/// A run's webhook: the one asked for (checked against the config's `[webhooks]`), or the
/// config's default.
pub fn notify_url(hooks: &Webhooks, given: Option<String>) -> Result<Option<String>, ApiError> {
    match given {
        Some(url) => hooks
            .check_url(&url)
            .map(|u| Some(u.to_string()))
            .map_err(|e| ApiError::BadRequest(format!("notify_url: {e}"))),
        None => Ok(hooks.default_url.as_ref().map(|u| u.to_string())),
    }
}

/// How a run ended, as Docker's `/wait` says it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct WaitBody {
    /// 0 passed; see `State.ExitCode` of a run.
    pub status_code: i64,
    /// Why it did not pass; null when it passed.
    #[schema(required = true)]
    pub error: Option<WaitError>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct WaitError {
    pub message: String,
}

/// How long `/wait` may be asked to wait.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How long `/wait` waits unless `timeout` says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The query of `POST .../wait`, for prechecks and jobs alike.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// How long to wait, in seconds (default 300).
    #[param(value_type = Option<f64>, minimum = 0, maximum = 86400)]
    timeout: Option<Timeout>,
    /// Accepted for Docker clients, and ignored: the wait is always for the run's end.
    #[param(value_type = Option<String>)]
    #[allow(dead_code)] // Accepted, and never read.
    condition: Option<serde::de::IgnoredAny>,
}

/// `timeout`: seconds, from 0 to [`MAX_WAIT`].
struct Timeout(Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timeout, D::Error> {
        query::text(d, |value| {
            value
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(Duration::from_secs_f64)
                .filter(|t| *t <= MAX_WAIT)
                .map(Timeout)
                .ok_or_else(|| {
                    format!(
                        "{value:?} must be a number of seconds from 0 to {}",
                        MAX_WAIT.as_secs()
                    )
                })
        })
    }
}

/// Blocks until a run is terminal, as `POST .../wait` answers for prechecks and jobs alike.
pub async fn wait_for(
    state: &AppState,
    run: &Run,
    query: Option<String>,
) -> Result<Json<WaitBody>, ApiError> {
    let (id, what) = (run.id, noun(run.kind()));
    let params: WaitParams = query::parse(query.as_deref())?;
    let timeout = params.timeout.map_or(DEFAULT_WAIT, |Timeout(t)| t);
    let run = state.queue.wait(id, timeout).await?;
    waited(id, what, run, || state.queue.is_stopping(), timeout)
}

/// The answer of `/wait` once the wait is over: how the run (`None`: deleted meanwhile) ended,
/// or why it has not (`stopping`: the server is shutting down; else `timeout` passed).
fn waited(
    id: Uuid,
    what: &str,
    run: Option<Run>,
    stopping: impl FnOnce() -> bool,
    timeout: Duration,
) -> Result<Json<WaitBody>, ApiError> {
    let run = run.ok_or_else(|| no_such(what, id))?;
    if !run.status.is_terminal() && stopping() {
        return Err(ApiError::Unavailable(format!(
            "the server is shutting down; {what} {id} is still {} and goes on: call /wait again once the server is back",
            run.status
        )));
    }
    if !run.status.is_terminal() {
        return Err(ApiError::Timeout(format!(
            "{what} {id} is still {} after {} s: call /wait again",
            run.status,
            timeout.as_secs_f64()
        )));
    }
    Ok(Json(WaitBody {
        status_code: run.exit_code.unwrap_or(crate::model::exit_code::NOT_RUN),
        error: run.error.map(|message| WaitError { message }),
    }))
}

/// How long a cancel waits for the container to be stopped and the run recorded.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Cancels a run, as `DELETE` answers for prechecks and jobs alike.
pub async fn cancel_run(state: &AppState, run: &Run) -> Result<Json<RunBody>, ApiError> {
    let (id, what) = (run.id, noun(run.kind()));
    match state.queue.cancel(id).await? {
        Cancel::Cancelled(run) => Ok(Json(RunBody::from(&*run))),
        Cancel::Running => {
            let run = state
                .queue
                .wait(id, CANCEL_WAIT)
                .await?
                .ok_or_else(|| no_such(what, id))?;
            Ok(Json(RunBody::from(&run)))
        }
        Cancel::AlreadyFinished(status) => Err(already_finished(what, id, status)),
        Cancel::NotFound => Err(no_such(what, id)),
    }
}

/// The refusal of a run that went away while it was waited for or cancelled (deleted meanwhile).
fn no_such(what: &str, id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no such {what}: {id}"))
}

/// The refusal of a cancel of a run that has ended (`status`).
fn already_finished(what: &str, id: Uuid, status: RunStatus) -> ApiError {
    ApiError::Conflict(format!(
        "{what} {id} has already finished ({status}): there is nothing to cancel"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_queries_are_read_or_refused_by_name() {
        let timeout = |q: &str| {
            query::parse::<WaitParams>(Some(q))
                .map(|p| p.timeout.map(|Timeout(t)| t))
                .map_err(|e| e.to_string())
        };
        assert_eq!(timeout(""), Ok(None));
        assert_eq!(
            timeout("condition=next-exit&timeout=1.5"),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(timeout("timeout=86400"), Ok(Some(MAX_WAIT)));
        for value in ["abc", "-1", "", "86401", "inf", "NaN"] {
            assert_eq!(
                timeout(&format!("timeout={value}")),
                Err(format!(
                    "timeout: {value:?} must be a number of seconds from 0 to 86400"
                ))
            );
        }
        assert_eq!(
            timeout("timout=5"),
            Err("unknown query parameter \"timout\": use timeout or condition".into())
        );
    }

    /// Every answer of `/wait` once the wait is over: (run, stopping, the answer).
    #[test]
    fn a_wait_answers_the_end_or_says_why_there_is_none() {
        let run = Run::precheck_of(None);
        let id = run.id;
        let wait = Duration::from_millis(1500);
        let answer = |run: Option<Run>, stopping: bool| {
            waited(id, "precheck", run, || stopping, wait)
                .map(|Json(body)| (body.status_code, body.error.map(|e| e.message)))
                .map_err(|e| (e.status().as_u16(), e.to_string()))
        };
        let mut ended = run.clone().with_status(RunStatus::Completed);
        ended.exit_code = Some(0);
        assert_eq!(answer(Some(ended), true), Ok((0, None)));
        let mut failed = run.clone().with_status(RunStatus::Failed);
        failed.error = Some("lost".into());
        assert_eq!(
            answer(Some(failed), false),
            Ok((crate::model::exit_code::NOT_RUN, Some("lost".into())))
        );
        assert_eq!(
            answer(None, false),
            Err((404, format!("no such precheck: {id}")))
        );
        assert_eq!(
            answer(Some(run.clone()), false),
            Err((
                408,
                format!("precheck {id} is still queued after 1.5 s: call /wait again")
            ))
        );
        assert_eq!(
            answer(Some(run.with_status(RunStatus::Running)), true),
            Err((
                503,
                format!(
                    "the server is shutting down; precheck {id} is still running and goes on: call /wait again once the server is back"
                )
            ))
        );
    }

    #[test]
    fn a_cancel_of_an_ended_or_deleted_run_is_refused() {
        let id = Uuid::new_v4();
        let e = already_finished("build job", id, RunStatus::Failed);
        assert_eq!(e.status().as_u16(), 409);
        assert_eq!(
            e.to_string(),
            format!("build job {id} has already finished (failed): there is nothing to cancel")
        );
        let e = no_such("simulation job", id);
        assert_eq!(e.status().as_u16(), 404);
        assert_eq!(e.to_string(), format!("no such simulation job: {id}"));
    }

    /// A `notify_url` is checked against `[webhooks]` (whose rules `config` tests), its refusal
    /// named; without one, the config's default.
    #[test]
    fn a_notify_url_is_the_one_given_or_the_default() {
        let hooks = Webhooks {
            secret: Some("s".into()),
            default_url: Some("http://ci.example/hook".parse().unwrap()),
            allowed_hosts: vec!["ci.example".into()],
            give_up_after: Duration::from_secs(60),
            first_retry_after: Duration::from_secs(1),
        };
        assert_eq!(
            notify_url(&hooks, None).unwrap().as_deref(),
            Some("http://ci.example/hook")
        );
        assert_eq!(
            notify_url(&hooks, Some("https://ci.example/x".into()))
                .unwrap()
                .as_deref(),
            Some("https://ci.example/x")
        );
        match notify_url(&hooks, Some("http://evil.example/".into())) {
            Err(ApiError::BadRequest(m)) => assert_eq!(
                m,
                "notify_url: the host \"evil.example\" is not in webhooks.allowed_hosts (ci.example)"
            ),
            other => panic!("{other:?}"),
        }
        let none = Webhooks {
            secret: None,
            default_url: None,
            ..hooks
        };
        assert_eq!(notify_url(&none, None).unwrap(), None);
        match notify_url(&none, Some("http://ci.example/".into())) {
            Err(ApiError::BadRequest(m)) => assert_eq!(
                m,
                "notify_url: this server sends no webhooks: its config has no webhooks.secret"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// A run's body reads back as what it was written from, for the CLI and webhook receivers.
    #[test]
    fn statuses_and_kinds_read_back() {
        for status in RunStatus::ALL {
            let text = serde_json::to_string(&status).unwrap();
            assert_eq!(serde_json::from_str::<RunStatus>(&text).unwrap(), status);
        }
        for kind in RunKind::ALL {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<RunKind>(&text).unwrap(), kind);
        }
        assert!(serde_json::from_str::<RunStatus>("\"done\"").is_err());
    }
}
