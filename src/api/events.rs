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
use uuid::Uuid;

use super::prechecks::query_pairs;
use super::{ApiError, Caller, rfc3339};
use crate::model::RunStatus;
use crate::queue::RunEvent;
use crate::server::AppState;

/// What happened to a run: its event's `Action`.
const ACTIONS: [&str; 4] = ["created", "started", "finished", "cancelled"];

fn action(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "created",
        RunStatus::Running => "started",
        RunStatus::Completed | RunStatus::Failed => "finished",
        RunStatus::Cancelled => "cancelled",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EventBody {
    /// Always `run`: the only kind of object with events.
    #[serde(rename = "Type")]
    kind: &'static str,
    action: &'static str,
    actor: Actor,
    time: String,
    time_nano: i128,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Actor {
    #[serde(rename = "ID")]
    id: Uuid,
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
                        serde_json::to_vec(&EventBody::from(&e)).unwrap_or_default()
                    }
                    Ok(_) => continue,
                    // The client reads slower than runs change: say so, and go on.
                    Err(RecvError::Lagged(n)) => serde_json::to_vec(&serde_json::json!({
                        "message": format!("{n} events were dropped because the client read too slowly")
                    }))
                    .unwrap_or_default(),
                    Err(RecvError::Closed) => return,
                },
                // The server is shutting down: the client connects again once it is back.
                _ = state.queue.stopping() => return,
                _ = tx.closed() => return,
            };
            let mut line = line;
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
