//! `GET /api/v1/events`: one JSON line per run state change, as it happens, like Docker's
//! `/events`. Live only: a client that was not connected does not get what it missed.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;
use utoipa::openapi::schema::Object;
use uuid::Uuid;

use super::error::Message;
use super::openapi::string_enum;
use super::prechecks::query_pairs;
use super::{ApiError, Caller, rfc3339};
use crate::model::RunStatus;
use crate::queue::RunEvent;
use crate::server::AppState;

/// What happened to a run: its event's `Action`.
const ACTIONS: [&str; 4] = ["created", "started", "finished", "cancelled"];

/// An event's `Action`, as the `type` filter names it. Only its schema is used.
enum EventAction {}

impl utoipa::PartialSchema for EventAction {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        actions().into()
    }
}

impl ToSchema for EventAction {}

fn action(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "created",
        RunStatus::Running => "started",
        RunStatus::Completed | RunStatus::Failed => "finished",
        RunStatus::Cancelled => "cancelled",
    }
}

fn actions() -> Object {
    string_enum(ACTIONS)
}

fn run_type() -> Object {
    string_enum(["run"])
}

/// One line of the event stream: an event, or a note that the client read too slowly and
/// missed some.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum EventLine {
    Event(EventBody),
    Dropped(Message),
}

/// A run's state change, as Docker's `/events` writes one.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct EventBody {
    /// Always `run`: the only kind of object with events.
    #[serde(rename = "Type")]
    #[schema(schema_with = run_type)]
    kind: &'static str,
    /// `created` (queued), `started`, `finished` (completed or failed) or `cancelled`.
    #[schema(schema_with = actions)]
    action: &'static str,
    actor: Actor,
    /// When, RFC 3339.
    time: String,
    /// When, in nanoseconds since the Unix epoch.
    time_nano: i128,
}

/// The run.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct Actor {
    #[serde(rename = "ID")]
    id: Uuid,
    /// `kind`, `status`, `exit_code` (once it has one) and `resumed` (`true` for a run the
    /// server took up again after a restart).
    attributes: BTreeMap<&'static str, String>,
}

impl From<&RunEvent> for EventBody {
    fn from(e: &RunEvent) -> EventBody {
        let mut attributes = BTreeMap::from([
            ("kind", e.kind.as_str().to_string()),
            ("status", e.status.as_str().to_string()),
        ]);
        if let Some(code) = e.exit_code {
            attributes.insert("exit_code", code.to_string());
        }
        if e.resumed {
            attributes.insert("resumed", "true".into());
        }
        EventBody {
            kind: "run",
            action: action(e.status),
            actor: Actor {
                id: e.run_id,
                attributes,
            },
            time: rfc3339(e.time),
            time_nano: e.time.unix_timestamp_nanos(),
        }
    }
}

/// Which events a client asked for: any of these runs and any of these actions (all when empty).
struct Filter {
    runs: Vec<Uuid>,
    actions: Vec<&'static str>,
}

impl Filter {
    fn parse(query: Option<&str>) -> Result<Filter, ApiError> {
        let mut filter = Filter {
            runs: vec![],
            actions: vec![],
        };
        for (key, value) in query_pairs(query)? {
            match key.as_str() {
                "run" => filter.runs.push(Uuid::parse_str(&value).map_err(|_| {
                    ApiError::BadRequest(format!("run: {value:?} is not a run id"))
                })?),
                "type" => {
                    filter
                        .actions
                        .push(ACTIONS.into_iter().find(|a| *a == value).ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "type: {value:?} is not an event: use one of {}",
                                ACTIONS.join(", ")
                            ))
                        })?)
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {other:?}: use run or type"
                    )));
                }
            }
        }
        Ok(filter)
    }

    fn passes(&self, e: &RunEvent) -> bool {
        (self.runs.is_empty() || self.runs.contains(&e.run_id))
            && (self.actions.is_empty() || self.actions.contains(&action(e.status)))
    }
}

/// Run events
///
/// One JSON line per run state change, as it happens, until the client or the server goes.
/// Live only: a client that was not connected does not get what it missed. A key that is not an
/// admin's sees its own runs' events.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "events",
    tag = "events",
    params(
        ("run" = Option<Vec<Uuid>>, Query, explode, description = "Only these runs' events (repeatable); all runs when left out."),
        ("type" = inline(Option<Vec<EventAction>>), Query, explode, description = "Only these events (repeatable); all when left out."),
    ),
    responses(
        (status = 200, description = "The events, one JSON document a line, streamed.", body = EventLine, content_type = "application/x-ndjson"),
        (status = 400, description = "A bad filter: `run` not a UUID, `type` not an event, or an unknown parameter.", body = Message),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(query.as_deref())?;
    let mut events = state.queue.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                event = events.recv() => match event {
                    Ok(e) if filter.passes(&e) && caller.scope.sees(e.owner.as_deref()) => {
                        EventLine::Event(EventBody::from(&e))
                    }
                    Ok(_) => continue,
                    // The client reads slower than runs change: say so, and go on.
                    Err(RecvError::Lagged(n)) => EventLine::Dropped(Message {
                        message: format!(
                            "{n} events were dropped because the client read too slowly"
                        ),
                    }),
                    Err(RecvError::Closed) => return,
                },
                // The server is shutting down: the client connects again once it is back.
                _ = state.queue.stopping() => return,
                _ = tx.closed() => return,
            };
            let mut line = serde_json::to_vec(&line).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
