//! The server as a function of (config, listener, shutdown): `main` passes a bound port and
//! Ctrl-C; tests pass port 0 and their own signal. One code path for both. It builds the
//! parts, hands them to the API as its `AppState`, and starts the background tasks (queue,
//! webhooks, upload sweeper).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::auth::{ConfigKey, hash_key};
use crate::config::Config;
use crate::db::Db;
use crate::engines::{Pool, Reach, host_text};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::runner::Runner;
use crate::storage::Storage;

/// Keys without `auth.required` are checked when sent but not needed: anyone reaches the API
/// without one, which an operator who made keys rarely means. Says so at start.
async fn warn_of_unused_keys(config: &Config, db: &Db) -> Result<()> {
    if config.auth.required {
        return Ok(());
    }
    let stored = db
        .api_keys()
        .await?
        .iter()
        .filter(|k| k.revoked.is_none())
        .count();
    let in_config = config.auth.api_keys.len();
    if in_config + stored > 0 {
        tracing::warn!(
            config_keys = in_config,
            stored_keys = stored,
            "API keys exist ({in_config} in the config, {stored} made with `apikey generate`) but auth.required is false: \
             every client reaches the API without a key; set auth.required = true to require one"
        );
    }
    Ok(())
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = Arc::new(config);
    let storage = Storage::open(&config.storage_path)?;
    let db = {
        let path = storage.db_path();
        tokio::task::spawn_blocking(move || Db::open(&path)).await??
    };
    warn_of_unused_keys(&config, &db).await?;
    let pool = {
        let (config, storage) = (config.clone(), storage.clone());
        Pool::new(config.clone(), move |engine| {
            crate::runner::precheck_image_watch(engine, &config, &storage)
        })?
    };
    pool.look(&db).await;
    for member in pool.members() {
        match member.reach() {
            Reach::Up {
                version,
                api_version,
            } => {
                let (_, total) = member.slots();
                tracing::info!(engine = member.name(), host = %host_text(&member.config.host), %version, api = %api_version, slots = total, "connected to the Docker engine");
            }
            Reach::Down { error, .. } => {
                tracing::warn!(engine = member.name(), host = %host_text(&member.config.host), "the Docker engine does not answer (it takes no runs until it does): {error}");
            }
            Reach::Unknown => {}
        }
    }
    if !pool.members().iter().any(|m| m.reach().is_up()) {
        // With one engine, as before engines were a pool: a server that can run nothing
        // says so at once.
        let errors: Vec<String> = pool
            .members()
            .iter()
            .map(|m| match m.reach() {
                Reach::Down { error, .. } => {
                    format!("{} ({}): {error}", m.name(), host_text(&m.config.host))
                }
                _ => m.name().to_string(),
            })
            .collect();
        anyhow::bail!("no Docker engine answers: {}", errors.join("; "));
    }

    let stop = CancellationToken::new();
    let names: Vec<&str> = config.engines.iter().map(|e| e.name.as_str()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    let runner = Runner {
        db: db.clone(),
        storage: storage.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        starts: Default::default(),
    };
    let starts = runner.starts.clone();
    let recovered = crate::recovery::recover(&runner, &pool)
        .await
        .context("cannot recover the runs that were running when the server stopped")?;

    // After recovery, which removes the containers of an earlier server's self-tests.
    let mut watchers = vec![];
    for member in pool.members() {
        watchers.push(member.image.start(stop.clone()).await);
    }
    pool.watch(db.clone(), stop.clone());
    let queue = Queue::start(runner, pool.clone(), stop.clone(), recovered);
    tokio::spawn(sweep_uploads(db.clone(), storage.clone(), stop.clone()));

    let config_keys = config
        .auth
        .api_keys
        .iter()
        .map(|k| ConfigKey {
            name: k.name.clone(),
            sha256: hash_key(&k.key),
            admin: k.admin,
        })
        .collect();
    let state = AppState {
        config,
        db,
        storage,
        pool,
        queue,
        config_keys: Arc::new(config_keys),
        metrics,
    };
    crate::webhooks::start(state.config.clone(), state.db.clone(), state.queue.clone());
    let url_file = state.storage.server_url_path();
    let http = state.config.http.clone();
    let app = crate::api::router(state);
    let addr = listener.local_addr()?;
    let local = if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(loopback, addr.port())
    } else {
        addr
    };
    // Written whole before anyone is told the server listens: a reader never sees half of it.
    let part = url_file.with_extension("url.part");
    let written = async {
        tokio::fs::write(&part, format!("http://{local}\n")).await?;
        tokio::fs::rename(&part, &url_file).await
    };
    written
        .await
        .with_context(|| format!("cannot write {}", url_file.display()))?;
    tracing::info!("listening on http://{addr}");
    println!("listening on http://{addr}");
    // In-flight requests get a moment to finish (a `/wait` answers at once with the run as it
    // is, a followed log ends); an upload that is still coming in is cut off. Running containers
    // are left alone: the next start reattaches them.
    crate::api::serve(
        listener,
        app,
        http,
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop.cancel();
        },
        SHUTDOWN_GRACE,
    )
    .await;
    // A container start that is being made ends, and no other begins: a run's container is
    // never left half-way to its start, which the next start could not tell from one that
    // never started.
    if tokio::time::timeout(Duration::from_secs(60), starts.close())
        .await
        .is_err()
    {
        tracing::warn!("a container start did not end within 60 s");
    }
    // The images' self-tests, if any are going, remove their containers before the process
    // ends.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(watchers),
    )
    .await;
    let _ = tokio::fs::remove_file(&url_file).await;
    Ok(())
}

/// How long open requests may go on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Marks expired uploads and removes their files: at each upload's expiry time, and every
/// minute as a backstop.
async fn sweep_uploads(db: Db, storage: Storage, stop: CancellationToken) {
    loop {
        let now = OffsetDateTime::now_utc();
        match db.expire_uploads(now).await {
            Ok(ids) => {
                for id in ids {
                    tracing::info!(upload_id = %id, "upload expired");
                    if let Err(e) = storage.remove_upload(id).await {
                        tracing::warn!(upload_id = %id, "cannot remove expired upload: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("cannot expire uploads: {e:#}"),
        }
        let next = db.next_upload_expiry().await.ok().flatten();
        let wait = next
            .map(|t| {
                (t - OffsetDateTime::now_utc()).clamp(time::Duration::ZERO, time::Duration::MINUTE)
            })
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
