//! A run's log over HTTP (`GET .../logs` of prechecks and jobs alike): served from the run's log
//! file, so logs outlive the container.
//!
//! Without `follow`, a JSON document `{"lines", "since", "last_timestamp", "has_more"}` streamed
//! as it is read; with `follow=true`, plain text lines, then new ones as the container prints
//! them, until the run ends. Neither holds the log in memory.

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::openapi::string_enum;
use super::query;
use super::state::AppState;
use crate::logs::{self, Filter, Line};
use crate::model::Run;
use crate::storage::ChunkSender;

// `write_json` streams this document without holding it; this type is its schema, and its test
// reads what `write_json` writes into it.
/// A log as JSON.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct LogsBody {
    /// The lines, oldest first (with their RFC 3339 timestamp in front when `timestamps`).
    lines: Vec<String>,
    /// The `since` asked for, in Unix seconds (0 without).
    since: f64,
    /// The first microsecond after the last line sent (`since` when none): the next call's
    /// `since`, for the lines that came after.
    last_timestamp: f64,
    /// Whether the run may still add lines (it has not finished).
    has_more: bool,
}

/// `tail`: a number of lines, or `all`.
struct Tail(Option<usize>);

impl PartialSchema for Tail {
    fn schema() -> RefOr<Schema> {
        let lines = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0));
        OneOfBuilder::new()
            .item(lines)
            .item(string_enum(["all"]))
            .into()
    }
}

impl ToSchema for Tail {}

impl<'de> Deserialize<'de> for Tail {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tail, D::Error> {
        query::text(d, |value| match value {
            "all" => Ok(Tail(None)),
            n => n
                .parse::<usize>()
                .map(|n| Tail(Some(n)))
                .map_err(|_| format!("{value:?} must be a number of lines or \"all\"")),
        })
    }
}

/// `since`: a time, as [`logs::parse_since`] reads it.
struct Since(i64);

impl<'de> Deserialize<'de> for Since {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Since, D::Error> {
        query::text(d, |value| {
            logs::parse_since(value).map(Since).ok_or_else(|| {
                format!(
                    "{value:?} must be a Unix time in seconds (up to 9 decimals, e.g. the last_timestamp of the previous answer) or an RFC 3339 time (e.g. a line's stamp with timestamps=true)"
                )
            })
        })
    }
}

/// A yes or no: `true`, `1`, `yes`; `false`, `0`, `no` or nothing.
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        query::text(d, |value| match value {
            "true" | "1" | "yes" => Ok(Flag(true)),
            "false" | "0" | "no" | "" => Ok(Flag(false)),
            _ => Err(format!("{value:?} must be true or false")),
        })
    }
}

/// The query of `GET .../logs`, for prechecks and jobs alike.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only lines stamped at or after this time, as Docker's `since`: Unix seconds with up to
    /// nine digits of fraction (`1795523829.123456789`, read exactly), or an RFC 3339 time such as
    /// a line's stamp with `timestamps=true`. E.g. the previous answer's `last_timestamp`.
    #[param(value_type = Option<String>, example = "1795523829.123456789")]
    since: Option<Since>,
    /// Only the last N lines, or `all` (the default).
    #[param(inline)]
    tail: Option<Tail>,
    /// Put each line's RFC 3339 timestamp in front of it (`1`, `yes`, `0` and `no` too).
    #[param(value_type = Option<bool>, default = false)]
    timestamps: Option<Flag>,
    /// Send text lines, then new ones as the container prints them, until the run ends (`1`,
    /// `yes`, `0` and `no` too).
    #[param(value_type = Option<bool>, default = false)]
    follow: Option<Flag>,
}

/// What a log request asks for.
struct LogQuery {
    filter: Filter,
    timestamps: bool,
    follow: bool,
}

impl From<LogParams> for LogQuery {
    fn from(p: LogParams) -> LogQuery {
        LogQuery {
            filter: Filter {
                since: p.since.map(|Since(t)| t),
                tail: p.tail.and_then(|Tail(n)| n),
            },
            timestamps: p.timestamps.is_some_and(|Flag(f)| f),
            follow: p.follow.is_some_and(|Flag(f)| f),
        }
    }
}

fn parse_query(query: Option<&str>) -> Result<LogQuery, ApiError> {
    query::parse::<LogParams>(query).map(LogQuery::from)
}

/// A run's log, as `GET .../logs` answers for prechecks and jobs alike.
pub async fn logs_of(
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
    out: &mut impl Write,
) -> std::io::Result<()> {
    let since = q.filter.since.unwrap_or(0);
    let mut last: Option<i64> = None;
    let mut first = true;
    out.write_all(b"{\"lines\":[")?;
    logs::for_each_line(path, q.filter, |line| {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        last = last.max(Some(line.nanos));
        serde_json::to_writer(&mut *out, &render(&line, q.timestamps))?;
        Ok(())
    })?;
    // The next `since`: the first whole microsecond after the last line, which a client that
    // reads JSON numbers as doubles gets back exactly (a nanosecond time it would round). A
    // line stamped in that same microsecond but appended after this read is not returned by
    // the next one (docs/decisions.md, "Lists at scale and small edges").
    let next = match last {
        Some(nanos) => nanos
            .div_euclid(1000)
            .saturating_add(1)
            .saturating_mul(1000),
        None => since,
    };
    write!(
        out,
        "],\"since\":{},\"last_timestamp\":{},\"has_more\":{}}}",
        logs::seconds_text(since),
        logs::seconds_text(next),
        has_more
    )?;
    out.flush()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON the log writer streams is exactly what its documented schema, [`LogsBody`], says.
    #[test]
    fn the_json_log_is_a_logs_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.txt");
        std::fs::write(
            &path,
            "2026-11-24T12:37:09.000000001Z first \"line\"\n2026-11-24T12:37:10Z second\n",
        )
        .unwrap();
        for query in ["", "tail=1&timestamps=true", "since=9e9"] {
            let q = parse_query(Some(query)).unwrap();
            let mut out = Vec::new();
            write_json(&path, &q, true, &mut out).unwrap();
            let body: LogsBody = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{query:?}: {e}: {}", String::from_utf8_lossy(&out)));
            assert!(body.has_more);
            match query {
                "" => assert_eq!(body.lines, ["first \"line\"", "second"]),
                "since=9e9" => assert!(body.lines.is_empty() && body.since == 9e9),
                _ => assert_eq!(body.lines, ["2026-11-24T12:37:10Z second"]),
            }
        }
    }

    #[test]
    fn log_queries_are_read_or_refused_by_name() {
        let q = parse_query(Some("since=1.5&tail=3&timestamps=yes&follow=")).unwrap();
        assert_eq!(q.filter.since, Some(1_500_000_000));
        assert_eq!(q.filter.tail, Some(3));
        assert!(q.timestamps && !q.follow);
        let q = parse_query(Some("tail=all&follow=1")).unwrap();
        assert_eq!(q.filter.tail, None);
        assert!(q.follow && !q.timestamps);
        for (query, message) in [
            (
                "tail=abc",
                "tail: \"abc\" must be a number of lines or \"all\"",
            ),
            (
                "tail=-5",
                "tail: \"-5\" must be a number of lines or \"all\"",
            ),
            ("follow=maybe", "follow: \"maybe\" must be true or false"),
            ("timestamps=2", "timestamps: \"2\" must be true or false"),
            (
                "lines=5",
                "unknown query parameter \"lines\": use since, tail, timestamps or follow",
            ),
        ] {
            let refused = parse_query(Some(query)).err().map(|e| e.to_string());
            assert_eq!(refused.as_deref(), Some(message), "{query}");
        }
        let refused = parse_query(Some("since=x")).err().map(|e| e.to_string());
        assert!(
            refused.is_some_and(|m| m.starts_with("since: \"x\" must be a Unix time")),
            "since=x"
        );
    }
}
