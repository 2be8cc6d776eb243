//! `/api/v1/prechecks/{id}/logs`: served from the run's log file, so logs outlive the container.
//!
//! Without `follow`, a JSON document `{"lines", "since", "last_timestamp", "has_more"}` streamed
//! as it is read; with `follow=true`, plain text lines, then new ones as the container prints
//! them, until the run ends. Neither holds the log in memory.

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::prechecks::{find, query_pairs};
use super::{ApiError, Caller};
use crate::logs::{self, Filter, Line};
use crate::model::Run;
use crate::server::AppState;
use crate::storage::ChunkSender;

struct LogQuery {
    filter: Filter,
    timestamps: bool,
    follow: bool,
}

fn parse_query(query: Option<&str>) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery {
        filter: Filter::default(),
        timestamps: false,
        follow: false,
    };
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "since" => {
                let since = value.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "since: {value:?} must be a Unix time in seconds, e.g. the last_timestamp of the previous answer"
                    ))
                })?;
                q.filter.since = Some(since);
            }
            "tail" => {
                q.filter.tail = match value.as_str() {
                    "all" => None,
                    n => Some(n.parse::<usize>().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "tail: {value:?} must be a number of lines or \"all\""
                        ))
                    })?),
                }
            }
            "timestamps" => q.timestamps = parse_bool("timestamps", &value)?,
            "follow" => q.follow = parse_bool("follow", &value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: use since, tail, timestamps or follow"
                )));
            }
        }
    }
    Ok(q)
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "{key}: {value:?} must be true or false"
        ))),
    }
}

pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let run = find(&state, &caller, &id).await?;
    logs_of(state, run, query).await
}

/// A run's log, as `GET .../logs` answers for prechecks and jobs alike.
pub(super) async fn logs_of(
    state: AppState,
    run: Run,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let id = run.id;
    let q = parse_query(query.as_deref())?;
    let (writer, rx) = ChunkSender::new();
    let body = Body::from_stream(ReceiverStream::new(rx));
    if q.follow {
        tokio::spawn(follow(state, id, q, writer));
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let path = state.storage.log_path(id);
    let has_more = !run.status.is_terminal();
    tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        if let Err(e) = write_json(&path, &q, has_more, &mut writer) {
            writer.fail(e);
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn write_json(
    path: &std::path::Path,
    q: &LogQuery,
    has_more: bool,
    out: &mut ChunkSender,
) -> std::io::Result<()> {
    let since = q.filter.since.unwrap_or(0.0);
    let mut last = since;
    let mut first = true;
    out.write_all(b"{\"lines\":[")?;
    logs::for_each_line(path, q.filter, |line| {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        if line.timestamp > last {
            last = line.timestamp;
        }
        serde_json::to_writer(&mut *out, &render(&line, q.timestamps))?;
        Ok(())
    })?;
    write!(
        out,
        "],\"since\":{},\"last_timestamp\":{},\"has_more\":{}}}",
        json_f64(since),
        json_f64(last),
        has_more
    )?;
    out.flush()
}

fn json_f64(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(|| "0".into(), |n| n.to_string())
}

fn render(line: &Line, timestamps: bool) -> String {
    if timestamps && !line.stamp.is_empty() {
        format!("{} {}", line.stamp, line.text)
    } else {
        line.text.clone()
    }
}

/// Streams the log as text until the run is terminal and every line has been sent.
async fn follow(state: AppState, id: Uuid, q: LogQuery, writer: ChunkSender) {
    let path = state.storage.log_path(id);
    let mut writer = writer;
    let start = {
        let path = path.clone();
        let filter = q.filter;
        tokio::task::spawn_blocking(move || logs::start_offset(&path, filter)).await
    };
    let mut offset = match start {
        Ok(Ok(offset)) => offset,
        _ => return,
    };
    let mut events = state.queue.subscribe();
    loop {
        // Subscribe before reading, so a line written during the read wakes the wait below.
        let log_len = state.queue.log_len(id);
        let finished = match state.db.run(id).await {
            Ok(Some(run)) => run.status.is_terminal(),
            _ => true,
        };
        let (path2, since, timestamps) = (path.clone(), q.filter.since, q.timestamps);
        let read = tokio::task::spawn_blocking(move || {
            let result = logs::read_lines(&path2, offset, since, |line| {
                writer.write_all(render(&line, timestamps).as_bytes())?;
                writer.write_all(b"\n")
            })
            .and_then(|end| writer.flush().map(|()| end));
            (writer, result)
        })
        .await;
        let Ok((w, Ok(end))) = read else { return };
        writer = w;
        offset = end;
        if finished {
            // The run was terminal before this read began, so the read saw every line.
            return;
        }
        let wake = async {
            match log_len {
                Some(mut len) => {
                    let _ = len.changed().await;
                }
                None => loop {
                    match events.recv().await {
                        Ok(e) if e.run_id == id => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                },
            }
        };
        // A backstop: a run that starts between the checks above is seen within a second.
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(1), wake) => {}
            // The server is shutting down: the client follows again once it is back.
            _ = state.queue.stopping() => return,
        }
    }
}
