//! `GET /api/v1/events`: one JSON line per run state change, as it happens, like Docker's
//! `/events`. Live only: a client that was not connected does not get what it missed.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, Message};
use super::extract::Caller;
use super::openapi::string_enum;
use super::query;
use super::respond::rfc3339;
use super::state::AppState;
use crate::model::RunStatus;
use crate::queue::RunEvent;

/// What happened to a run: its event's `Action`.
const ACTIONS: [&str; 4] = ["created", "started", "finished", "cancelled"];

/// An event's `Action`, as the `type` filter names it.
struct EventAction(&'static str);

impl utoipa::PartialSchema for EventAction {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        actions().into()
    }
}

impl ToSchema for EventAction {}

impl<'de> Deserialize<'de> for EventAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EventAction, D::Error> {
        query::text(d, |value| {
            ACTIONS
                .into_iter()
                .find(|a| *a == value)
                .map(EventAction)
                .ok_or_else(|| {
                    format!(
                        "{value:?} is not an event: use one of {}",
                        ACTIONS.join(", ")
                    )
                })
        })
    }
}

/// A run's id, as the `run` filter names it.
struct RunId(Uuid);

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RunId, D::Error> {
        query::text(d, |value| {
            Uuid::parse_str(value)
                .map(RunId)
                .map_err(|_| format!("{value:?} is not a run id"))
        })
    }
}

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
    /// `kind`, `status`, `exit_code` (once it has one), `engine` (once it left the queue)
    /// and `resumed` (`true` for a run the server took up again after a restart).
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
        if let Some(engine) = &e.engine {
            attributes.insert("engine", engine.clone());
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

/// The query of `GET /api/v1/events`: which events a client asked for, any of these runs and
/// any of these actions (all when left out).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Only these runs' events (repeatable); all runs when left out.
    #[param(value_type = Option<Vec<Uuid>>, explode)]
    run: Option<Vec<RunId>>,
    /// Only these events (repeatable); all when left out.
    #[param(inline, explode)]
    #[serde(rename = "type")]
    actions: Option<Vec<EventAction>>,
}

impl Filter {
    fn passes(&self, e: &RunEvent) -> bool {
        let runs = self.run.as_deref().unwrap_or_default();
        let actions = self.actions.as_deref().unwrap_or_default();
        (runs.is_empty() || runs.iter().any(|RunId(id)| *id == e.run_id))
            && (actions.is_empty() || actions.iter().any(|EventAction(a)| *a == action(e.status)))
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
    params(Filter),
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
    let filter: Filter = query::parse(query.as_deref())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_read_or_refused_by_name() {
        let id = Uuid::new_v4();
        let filter: Filter =
            query::parse(Some(&format!("type=finished&run={id}&type=cancelled"))).unwrap();
        let actions: Vec<&str> = filter.actions.iter().flatten().map(|a| a.0).collect();
        assert_eq!(actions, ["finished", "cancelled"]);
        assert_eq!(filter.run.as_deref().map(<[RunId]>::len), Some(1));
        for (query, message) in [
            (
                "type=died",
                "type: \"died\" is not an event: use one of created, started, finished, cancelled",
            ),
            ("run=abc", "run: \"abc\" is not a run id"),
            (
                "since=1",
                "unknown query parameter \"since\": use run or type",
            ),
        ] {
            let refused = query::parse::<Filter>(Some(query))
                .err()
                .map(|e| e.to_string());
            assert_eq!(refused.as_deref(), Some(message), "{query}");
        }
    }
}
