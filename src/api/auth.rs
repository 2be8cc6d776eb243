//! Who may call: the address allowlist and API keys, applied to every route but the
//! [`PUBLIC`] ones.
//! The key's name becomes the request's [`Caller`], which decides what it sees.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use time::OffsetDateTime;

use super::error::ApiError;
use super::extract::Caller;
use super::state::AppState;
use crate::auth::{client_ip, hash_key, match_config_key};
use crate::config::Auth;
use crate::db::StoredKey;
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
    check_address(auth, peer.ip(), request.headers())?;
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

/// Refuses a client whose address (the TCP `peer`'s, or the one a trusted proxy forwarded) is
/// not in `auth.allowed_ips`, when that lists any.
fn check_address(auth: &Auth, peer: IpAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    if auth.allowed_ips.is_empty() {
        return Ok(());
    }
    // Every line of the header, in order: a client's own line must not hide a proxy's.
    let forwarded: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let ip = client_ip(peer.to_canonical(), &forwarded, &auth.trusted_proxies)
        .map_err(ApiError::BadRequest)?;
    if !auth.allowed_ips.iter().any(|net| net.contains(ip)) {
        return Err(ApiError::Forbidden(format!(
            "requests from {ip} are not allowed: the server's auth.allowed_ips does not list it"
        )));
    }
    Ok(())
}

async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let key = presented_key(headers)?;
    let hash = hash_key(key);
    if let Some(k) = match_config_key(&state.config_keys, &hash) {
        return Ok(caller(k.name.clone(), k.admin));
    }
    let k = usable(state.db.api_key_by_hash(hash).await?)?;
    if let Err(e) = state
        .db
        .touch_api_key(k.name.clone(), OffsetDateTime::now_utc())
        .await
    {
        tracing::warn!("cannot record the use of key {}: {e:#}", k.name);
    }
    Ok(caller(k.name, k.admin))
}

/// The database's key of the presented key's hash (if any), unless it has been revoked.
fn usable(key: Option<StoredKey>) -> Result<StoredKey, ApiError> {
    match key {
        Some(k) if k.revoked.is_none() => Ok(k),
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

/// The key the request presents: `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
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
    bearer.or(header).filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::Unauthorized(
            "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers
    }

    /// The status and message of a refusal.
    fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
        let e = result.expect_err("taken");
        (e.status().as_u16(), e.to_string())
    }

    /// Every refusal of a client's address: (peer, X-Forwarded-For lines, the answer).
    #[test]
    fn only_allowed_addresses_get_in() {
        let auth = Auth {
            required: false,
            allowed_ips: vec!["192.0.2.0/24".parse().unwrap()],
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            api_keys: vec![],
        };
        let check = |peer: &str, forwarded: &[&[u8]]| {
            let pairs: Vec<(&str, &[u8])> =
                forwarded.iter().map(|l| ("x-forwarded-for", *l)).collect();
            check_address(&auth, peer.parse().unwrap(), &headers(&pairs))
                .map_err(|e| (e.status().as_u16(), e.to_string()))
        };
        assert_eq!(check("192.0.2.7", &[]), Ok(()));
        assert_eq!(check("::ffff:192.0.2.7", &[]), Ok(()));
        // A proxy's client, and a client's own claim that is not believed.
        assert_eq!(check("10.0.0.1", &[b"192.0.2.9"]), Ok(()));
        let refused = |ip: &str| {
            Err((
                403,
                format!(
                    "requests from {ip} are not allowed: the server's auth.allowed_ips does not list it"
                ),
            ))
        };
        assert_eq!(
            check("198.51.100.1", &[b"192.0.2.9"]),
            refused("198.51.100.1")
        );
        assert_eq!(check("10.0.0.1", &[]), refused("10.0.0.1"));
        assert_eq!(
            check("10.0.0.1", &[b"198.51.100.1, 10.0.0.2"]),
            refused("198.51.100.1")
        );
        assert_eq!(
            check("10.0.0.1", &[b"junk"]),
            Err((400, "X-Forwarded-For: \"junk\" is not an IP address".into()))
        );
        assert_eq!(
            check("10.0.0.1", &[b"192.0.2.9\xff"]),
            Err((
                400,
                "X-Forwarded-For: not ASCII: it must list IP addresses".into()
            ))
        );
        // Without an allowlist, every address gets in and the header is not read.
        let open = Auth {
            allowed_ips: vec![],
            ..auth.clone()
        };
        let junk = headers(&[("x-forwarded-for", b"junk")]);
        assert!(check_address(&open, "10.0.0.1".parse().unwrap(), &junk).is_ok());
    }

    #[test]
    fn a_key_is_taken_from_either_header() {
        let key = |pairs: &[(&str, &[u8])]| presented_key(&headers(pairs)).map(String::from);
        assert_eq!(key(&[("authorization", b"Bearer k1")]).unwrap(), "k1");
        assert_eq!(key(&[("authorization", b"bearer  k1 ")]).unwrap(), "k1");
        assert_eq!(key(&[("x-api-key", b" k2")]).unwrap(), "k2");
        assert_eq!(
            key(&[("x-api-key", b"k2"), ("authorization", b"Bearer k1")]).unwrap(),
            "k1"
        );
        assert_eq!(
            key(&[("authorization", b"Basic a2V5"), ("x-api-key", b"k2")]).unwrap(),
            "k2"
        );
        let required = (
            401,
            "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
                .to_string(),
        );
        for pairs in [
            &[][..],
            &[("authorization", &b"Basic a2V5"[..])][..],
            &[("authorization", &b"Bearer "[..])][..],
            &[("authorization", &b"Bearer \xff"[..])][..],
            &[("x-api-key", &b"  "[..])][..],
        ] {
            assert_eq!(refusal(key(pairs)), required, "{pairs:?}");
        }
    }

    #[test]
    fn only_a_known_key_that_is_not_revoked_gets_in() {
        let stored = |revoked| StoredKey {
            name: "ci".into(),
            admin: false,
            created: OffsetDateTime::now_utc(),
            last_used: None,
            revoked,
        };
        assert_eq!(usable(Some(stored(None))).unwrap().name, "ci");
        assert_eq!(
            refusal(usable(Some(stored(Some(OffsetDateTime::now_utc()))))),
            (
                401,
                "the API key \"ci\" has been revoked: ask for a new one".into()
            )
        );
        assert_eq!(
            refusal(usable(None)),
            (
                401,
                "unknown API key: check it, or ask the operator for one".into()
            )
        );
        assert_eq!(caller("ci".into(), false).scope, Scope::Owner("ci".into()));
        assert_eq!(caller("ops".into(), true).scope, Scope::All);
    }
}
