//! What every request handler may use: the server's parts, built once by `server::serve`.

use std::sync::Arc;

use crate::auth::ConfigKey;
use crate::config::Config;
use crate::db::Db;
use crate::engines::Pool;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::storage::Storage;

/// Everything a request handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    /// The Docker engines.
    pub pool: Pool,
    pub queue: Queue,
    /// The config file's API keys, hashed once at start.
    pub config_keys: Arc<Vec<ConfigKey>>,
    pub metrics: Arc<Metrics>,
}
