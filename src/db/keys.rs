//! API keys, stored by their sha256 (never the key itself).

use anyhow::Result;
use rusqlite::{OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::{Db, from_micros, micros};

/// An API key as stored (its hash, never the key).
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub name: String,
    pub admin: bool,
    pub created: OffsetDateTime,
    pub last_used: Option<OffsetDateTime>,
    pub revoked: Option<OffsetDateTime>,
}

impl Db {
    /// Stores a new key's hash; false if the name is taken.
    pub async fn insert_api_key(
        &self,
        name: String,
        sha256: String,
        admin: bool,
        now: OffsetDateTime,
    ) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO api_keys (name, sha256, admin, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![name, sha256, admin, micros(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredKey>> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT name, admin, created, last_used, revoked FROM api_keys ORDER BY created, name")?;
            stmt.query_map([], key_from_row)?.collect()
        })
        .await
    }

    /// The key with this hash, if any (revoked ones too: the caller says why it fails).
    pub async fn api_key_by_hash(&self, sha256: String) -> Result<Option<StoredKey>> {
        self.call(move |c| {
            c.query_row(
                "SELECT name, admin, created, last_used, revoked FROM api_keys WHERE sha256 = ?1",
                [sha256],
                key_from_row,
            )
            .optional()
        })
        .await
    }

    /// Records that a key was used (at most once a second per key, to spare the disk).
    pub async fn touch_api_key(&self, name: String, now: OffsetDateTime) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE api_keys SET last_used = ?2 WHERE name = ?1 AND (last_used IS NULL OR last_used < ?2 - 1000000)",
                params![name, micros(now)],
            )
            .map(drop)
        })
        .await
    }

    /// Revokes a key; false if there is no key of that name that is not revoked already.
    pub async fn revoke_api_key(&self, name: String, now: OffsetDateTime) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked = ?2 WHERE name = ?1 AND revoked IS NULL",
                params![name, micros(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }
}

fn key_from_row(r: &Row) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        name: r.get(0)?,
        admin: r.get(1)?,
        created: from_micros(r.get(2)?)?,
        last_used: r.get::<_, Option<i64>>(3)?.map(from_micros).transpose()?,
        revoked: r.get::<_, Option<i64>>(4)?.map(from_micros).transpose()?,
    })
}
