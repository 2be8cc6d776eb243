//! Who may call: the address allowlist and API keys, applied to every route but the
//! [`PUBLIC`] ones.
//! The key's name becomes the request's [`Caller`], which decides what it sees.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;

use super::error::ApiError;
use super::extract::Caller;
use super::state::AppState;
use crate::auth::{client_ip, hash_key, match_config_key};
use crate::model::Scope;

/// The routes anyone may read, without a key and from any address: the health check and the
/// API's OpenAPI document (which says so for every other route).
pub const PUBLIC: [&str; 2] = ["/health", "/api/v1/openapi.json"];

pub fn is_public(path: &str) -> bool {
    PUBLIC.contains(&path)
}

pub async fn authenticate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match admit(&state, peer, request).await {
        Ok(request) => next.run(request).await,
        // The refused request's body is never read.
        Err(e) => e.closing_connection(),
    }
}

/// Checks the caller's address and key; the request goes on with its [`Caller`].
async fn admit(
    state: &AppState,
    peer: SocketAddr,
    mut request: Request,
) -> Result<Request, ApiError> {
    if is_public(request.uri().path()) {
        return Ok(request);
    }
    let auth = &state.config.auth;
    if !auth.allowed_ips.is_empty() {
        // Every line of the header, in order: a client's own line must not hide a proxy's.
        let forwarded: Vec<&[u8]> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let ip = client_ip(peer.ip().to_canonical(), &forwarded, &auth.trusted_proxies)
            .map_err(ApiError::BadRequest)?;
        if !auth.allowed_ips.iter().any(|net| net.contains(ip)) {
            return Err(ApiError::Forbidden(format!(
                "requests from {ip} are not allowed: the server's auth.allowed_ips does not list it"
            )));
        }
    }
    let caller = if auth.required {
        identify(state, request.headers()).await?
    } else {
        Caller {
            name: None,
            scope: Scope::All,
        }
    };
    request.extensions_mut().insert(caller);
    Ok(request)
}

async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let key = presented_key(headers).ok_or_else(|| {
        ApiError::Unauthorized(
            "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
                .into(),
        )
    })?;
    let hash = hash_key(key);
    if let Some(k) = match_config_key(&state.config_keys, &hash) {
        return Ok(caller(k.name.clone(), k.admin));
    }
    match state.db.api_key_by_hash(hash).await? {
        Some(k) if k.revoked.is_none() => {
            if let Err(e) = state
                .db
                .touch_api_key(k.name.clone(), OffsetDateTime::now_utc())
                .await
            {
                tracing::warn!("cannot record the use of key {}: {e:#}", k.name);
            }
            Ok(caller(k.name, k.admin))
        }
        Some(k) => Err(ApiError::Unauthorized(format!(
            "the API key {:?} has been revoked: ask for a new one",
            k.name
        ))),
        None => Err(ApiError::Unauthorized(
            "unknown API key: check it, or ask the operator for one".into(),
        )),
    }
}

fn caller(name: String, admin: bool) -> Caller {
    let scope = if admin {
        Scope::All
    } else {
        Scope::Owner(name.clone())
    };
    Caller {
        name: Some(name),
        scope,
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let header = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    bearer.or(header).filter(|k| !k.is_empty())
}
