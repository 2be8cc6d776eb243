//! `/health` and `/api/v1/queue`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::{ApiError, Json};
use crate::server::{AppState, ImageStatus};

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    version: &'static str,
    docker: DockerHealth,
    database: Check,
    image: ImageHealth,
}

#[derive(Serialize)]
struct DockerHealth {
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ImageHealth {
    name: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /metrics`: the Prometheus text exposition; the gauges are read now.
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let m = &state.metrics;
    if let Ok((queued, running)) = state.db.queue_counts().await {
        m.queued.set(queued as i64);
        m.running.set(running as i64);
    }
    let engine = tokio::time::timeout(std::time::Duration::from_secs(5), state.engine.version());
    m.engine_up
        .set(i64::from(matches!(engine.await, Ok(Ok(_)))));
    let (text, content_type) = m.render();
    ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Healthy when the engine and the database answer and the image is there (or being pulled).
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let docker = match state.engine.version().await {
        Ok(v) => DockerHealth {
            reachable: true,
            version: Some(v.version),
            api_version: Some(v.api_version),
            error: None,
        },
        Err(e) => DockerHealth {
            reachable: false,
            version: None,
            api_version: None,
            error: Some(format!("{e:#}")),
        },
    };
    let database = match state.db.ping().await {
        Ok(()) => Check {
            ok: true,
            error: None,
        },
        Err(e) => Check {
            ok: false,
            error: Some(format!("{e:#}")),
        },
    };
    let status = state
        .image
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let name = state.config.image.clone();
    let image = match status {
        ImageStatus::Ready { id } => ImageHealth {
            name,
            status: "ready",
            id: Some(id),
            error: None,
        },
        ImageStatus::Pulling => ImageHealth {
            name,
            status: "pulling",
            id: None,
            error: None,
        },
        ImageStatus::Missing { error } => ImageHealth {
            name,
            status: "missing",
            id: None,
            error: Some(error),
        },
    };
    let healthy = docker.reachable && database.ok && image.status != "missing";
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" },
        version: env!("CARGO_PKG_VERSION"),
        docker,
        database,
        image,
    };
    (code, Json(body))
}

#[derive(Serialize)]
pub struct QueueCounts {
    queued: u64,
    running: u64,
    max_concurrent: usize,
}

pub async fn queue(State(state): State<AppState>) -> Result<Json<QueueCounts>, ApiError> {
    let (queued, running) = state.db.queue_counts().await?;
    Ok(Json(QueueCounts {
        queued,
        running,
        max_concurrent: state.config.max_concurrent,
    }))
}
