//! `/health` and `/api/v1/queue`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::Object;

use super::error::{ApiError, Message};
use super::extract::Json;
use super::openapi::string_enum;
use super::state::AppState;
use crate::engines::{Member, host_text};
use crate::image::ImageStatus;

/// The server's health: it is healthy when the database answers and at least one engine can
/// take runs (it answers, is not drained, and its image is there, or being pulled or
/// self-tested, and not broken).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(schema_with = health_status)]
    pub status: String,
    /// The server's version.
    pub version: String,
    /// The first engine's (the only one without `[[engines]]`): `engines` has them all.
    pub docker: DockerHealth,
    pub database: DatabaseHealth,
    /// The precheck image on the first engine.
    pub image: ImageHealth,
    /// Every engine, in the config's order.
    pub engines: Vec<EngineHealth>,
}

/// One engine: whether it answers, its slots, whether it is drained, and the precheck image on
/// it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EngineHealth {
    pub name: String,
    /// Its host, as the config names it.
    pub host: String,
    #[serde(flatten)]
    pub docker: DockerHealth,
    /// Drained by `precheck-server engines drain`: it takes no new runs.
    pub drained: bool,
    /// Runs on it now.
    pub slots_used: usize,
    /// How many may run on it at once.
    pub slots_total: usize,
    /// Queued runs placed on it, waiting for a slot there with their containers being
    /// prepared or ready to start (up to `slots_total` beyond its free slots).
    pub prepared: usize,
    /// Whether it takes runs now.
    pub can_take_runs: bool,
    pub image: ImageHealth,
}

fn health_status() -> Object {
    string_enum(["healthy", "unhealthy"])
}

fn image_status() -> Object {
    string_enum(["ready", "probing", "pulling", "missing", "broken"])
}

/// The Docker engine: its version when it answers, else why not.
#[derive(Serialize, Deserialize, ToSchema, Clone, Default)]
pub struct DockerHealth {
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// The database: whether it takes a write, else why not.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DatabaseHealth {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// The precheck image: `ready` (its self-test passed), `probing` (its self-test is running),
/// `pulling`, `missing` (and why), or `broken` (its self-test failed: why, and its last log lines).
#[derive(Serialize, Deserialize, ToSchema, Clone, Default)]
pub struct ImageHealth {
    pub name: String,
    #[schema(schema_with = image_status)]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    /// The self-test's last log lines, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub log: Option<Vec<String>>,
}

/// Prometheus metrics
///
/// The Prometheus text exposition (format 0.0.4) of the queue, runs, uploads, logs and engine;
/// the gauges are read at the request.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "system",
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let m = &state.metrics;
    if let Ok((queued, running)) = state.db.queue_counts().await {
        m.queued.set(queued as i64);
        m.running.set(running as i64);
    }
    let looks = state.pool.members().iter().map(|member| async move {
        let version =
            tokio::time::timeout(std::time::Duration::from_secs(5), member.engine.version());
        let up = matches!(version.await, Ok(Ok(_)));
        (member, up)
    });
    for (member, up) in futures_util::future::join_all(looks).await {
        let (used, total) = member.slots();
        m.engine(member.name(), up, used, total);
    }
    let (text, content_type) = m.render();
    ([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response()
}

/// Health
///
/// Healthy when the engine answers, the database takes a write and the image is there (or being pulled or
/// self-tested) and not broken. Looks for the image on the engine again at every call. Needs no key.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "system",
    responses(
        (status = 200, description = "Healthy.", body = Health),
        (status = 503, description = "Unhealthy: the report says what is wrong.", body = Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let database = match state
        .db
        .check_writable(time::OffsetDateTime::now_utc())
        .await
    {
        Ok(()) => DatabaseHealth {
            ok: true,
            error: None,
        },
        Err(e) => DatabaseHealth {
            ok: false,
            error: Some(format!("{e:#}")),
        },
    };
    let looks = state.pool.members().iter().map(|m| engine_health(m));
    let engines: Vec<EngineHealth> = futures_util::future::join_all(looks).await;
    let healthy = database.ok && engines.iter().any(|e| e.can_take_runs);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (docker, image) = match engines.first() {
        Some(first) => (first.docker.clone(), first.image.clone()),
        None => (DockerHealth::default(), ImageHealth::default()),
    };
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" }.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        docker,
        database,
        image,
        engines,
    };
    (code, Json(body))
}

/// One engine as it is now: asked for its version, and for the image again when it answers.
async fn engine_health(member: &Member) -> EngineHealth {
    let docker = match member.engine.version().await {
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
    let status = if docker.reachable {
        member.image.recheck().await
    } else {
        member.image.status()
    };
    let image = ImageHealth {
        name: member.image.image().to_string(),
        status: status.as_str().to_string(),
        id: status.id().map(str::to_string),
        error: match &status {
            ImageStatus::Missing { error } | ImageStatus::Broken { error, .. } => {
                Some(error.clone())
            }
            _ => None,
        },
        log: match status {
            ImageStatus::Broken { log, .. } => Some(log),
            _ => None,
        },
    };
    let (slots_used, slots_total) = member.slots();
    let drained = member.drained();
    EngineHealth {
        name: member.name().to_string(),
        host: host_text(&member.config.host),
        can_take_runs: docker.reachable
            && !drained
            && !matches!(image.status.as_str(), "missing" | "broken"),
        docker,
        drained,
        slots_used,
        slots_total,
        prepared: member.waiting(),
        image,
    }
}

/// How many runs are queued and running, and how many may run at once (on all engines).
#[derive(Serialize, ToSchema)]
pub struct QueueCounts {
    queued: u64,
    running: u64,
    max_concurrent: usize,
}

/// Queue counts
#[utoipa::path(
    get,
    path = "/api/v1/queue",
    operation_id = "queue",
    tag = "system",
    responses(
        (status = 200, description = "The counts.", body = QueueCounts),
        (status = 500, description = "The database failed.", body = Message),
    )
)]
pub async fn queue(State(state): State<AppState>) -> Result<Json<QueueCounts>, ApiError> {
    let (queued, running) = state.db.queue_counts().await?;
    Ok(Json(QueueCounts {
        queued,
        running,
        max_concurrent: state.pool.members().iter().map(|m| m.slots().1).sum(),
    }))
}
