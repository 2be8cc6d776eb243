//! A stored layout file and who may see it.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::layout::{Layout, LayoutFormat};

/// Whose uploads and runs a caller may see and touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: an admin key, or a server without authentication.
    All,
    /// Only what the key with this name made.
    Owner(String),
}

impl Scope {
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Owner(name) => owner == Some(name.as_str()),
        }
    }

    /// The owner to filter lists by, if any.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Owner(name) => Some(name),
        }
    }
}

/// A stored upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: Uuid,
    /// The client's file name: text only, never used as a path.
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub format: LayoutFormat,
    pub created: OffsetDateTime,
    /// `None` once a run uses the upload: it is then kept for that run.
    pub expires_at: Option<OffsetDateTime>,
    /// Set when the sweeper removed the file after it expired.
    pub expired: bool,
    /// The name of the API key that made it (none without authentication).
    pub owner: Option<String>,
    /// What the layout holds; `None` for uploads stored before layouts were inspected.
    pub layout: Option<Layout>,
}

impl Upload {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expired || self.expires_at.is_some_and(|t| t <= now)
    }
}
