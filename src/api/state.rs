//! What every request handler may use: the server's parts, built once by `server::serve`.

use std::sync::Arc;

use crate::auth::ConfigKey;
use crate::config::Config;
use crate::db::Db;
use crate::docker::Engine;
use crate::image::ImageWatch;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::storage::Storage;

/// Everything a request handler may use.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    pub engine: Engine,
    pub queue: Queue,
    pub image: ImageWatch,
    /// The config file's API keys, hashed once at start.
    pub config_keys: Arc<Vec<ConfigKey>>,
    pub metrics: Arc<Metrics>,
}
