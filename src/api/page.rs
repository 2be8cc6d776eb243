//! Pages of a run list (`GET /api/v1/prechecks`, `GET /api/v1/projects/{id}/jobs`): `limit`
//! runs, newest first, and `before=<id>` for the runs older than that one. The answer stays a
//! bare JSON array (as the Python server's); the next page's cursor is in `X-Next-Before`.

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Json;
use super::query;
use super::runs::RunBody;
use crate::db::Db;
use crate::model::{Run, Scope};

/// How many runs a page holds unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most runs a page may hold.
pub const MAX_LIMIT: usize = 1000;

/// The header that holds the next page's `before`, present when there are older runs.
pub const NEXT_BEFORE: HeaderName = HeaderName::from_static("x-next-before");

/// A list's `limit`: from 1 to [`MAX_LIMIT`] runs.
pub struct Limit(usize);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
        query::text(d, |value| {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .map(Limit)
                .ok_or_else(|| {
                    format!(
                        "{value:?} must be a number of runs from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"
                    )
                })
        })
    }
}

/// A list's `before`: the id of a run of the list. `what` names the listed runs in messages
/// ("precheck", "job"); for a `deserialize_with` of the list's parameters.
pub fn before<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<Option<Uuid>, D::Error> {
    query::text(d, |value| {
        Uuid::parse_str(value).map(Some).map_err(|_| {
            format!("{value:?} is not a {what} id: give the X-Next-Before of the previous page")
        })
    })
}

/// Refuses a `before` whose run (`run`: as the database has it, if at all) is not one of the
/// list (`of_list`) the caller may see. `what` names the listed runs.
fn in_list(
    before: Uuid,
    run: Option<&Run>,
    scope: &Scope,
    what: &str,
    of_list: impl FnOnce(&Run) -> bool,
) -> Result<(), ApiError> {
    match run {
        Some(run) if scope.sees(run.owner.as_deref()) && of_list(run) => Ok(()),
        _ => Err(ApiError::BadRequest(format!(
            "before: no such {what}: {before} (it may have been deleted meanwhile: start again from the first page)"
        ))),
    }
}

/// Which page of a list to answer.
pub struct Page {
    pub limit: usize,
    pub before: Option<Uuid>,
}

impl Page {
    /// The page a list's `limit` and `before` ask for.
    pub fn new(limit: Option<Limit>, before: Option<Uuid>) -> Page {
        Page {
            limit: limit.map_or(DEFAULT_LIMIT, |Limit(n)| n),
            before,
        }
    }

    /// Refuses a `before` that is not a run of the list (`of_list`) the caller may see: another
    /// key's, another project's, deleted meanwhile. `what` names the listed runs.
    pub async fn check_before(
        &self,
        db: &Db,
        scope: &Scope,
        what: &str,
        of_list: impl FnOnce(&Run) -> bool,
    ) -> Result<(), ApiError> {
        let Some(before) = self.before else {
            return Ok(());
        };
        let run = db.run(before).await?;
        in_list(before, run.as_ref(), scope, what, of_list)
    }

    /// How many rows to ask for: one more than a page, to know whether another page follows.
    pub fn fetch(&self) -> usize {
        self.limit + 1
    }

    /// The answer: the page's runs as a JSON array, and `X-Next-Before` when older runs follow.
    pub fn respond(&self, mut runs: Vec<Run>) -> Response {
        let more = runs.len() > self.limit;
        runs.truncate(self.limit);
        let body: Vec<RunBody> = runs.iter().map(RunBody::from).collect();
        let mut response = Json(body).into_response();
        // A UUID's text is always a header value.
        if more
            && let Some(last) = runs.last()
            && let Ok(value) = HeaderValue::from_str(&last.id.to_string())
        {
            response.headers_mut().insert(NEXT_BEFORE, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunKind;

    /// A `before` must be a run of the list that the caller sees: (the run, the scope).
    #[test]
    fn a_before_that_is_not_a_run_of_the_list_is_refused() {
        let ci = Scope::Owner("ci".into());
        let mine = Run::precheck_of(Some("ci"));
        let theirs = Run::precheck_of(Some("other"));
        let job = Run::build_of(Uuid::new_v4(), Some("ci"));
        let prechecks = |run: &Run| run.kind() == RunKind::Precheck;
        let before = Uuid::new_v4();
        assert!(in_list(mine.id, Some(&mine), &ci, "precheck", prechecks).is_ok());
        assert!(in_list(theirs.id, Some(&theirs), &Scope::All, "precheck", prechecks).is_ok());
        for (run, scope) in [
            (None, &ci),
            (Some(&theirs), &ci),
            (Some(&job), &ci),
            (Some(&job), &Scope::All),
        ] {
            match in_list(before, run, scope, "precheck", prechecks) {
                Err(ApiError::BadRequest(m)) => assert_eq!(
                    m,
                    format!(
                        "before: no such precheck: {before} (it may have been deleted meanwhile: start again from the first page)"
                    )
                ),
                other => panic!("{run:?} {scope:?}: {other:?}"),
            }
        }
    }
}
