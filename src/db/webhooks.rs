//! Webhook deliveries: one queued when a run with a `notify_url` ends, then tried until delivered
//! or given up.

use anyhow::Result;
use rusqlite::{Connection, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Db, earliest, from_micros, micros, parse_uuid};

/// A webhook to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub run_id: Uuid,
    pub url: String,
    pub created: OffsetDateTime,
    pub attempts: u32,
}

impl Db {
    /// Up to `limit` webhooks due now, oldest first.
    pub async fn due_deliveries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Delivery>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, run_id, url, created, attempts FROM deliveries
                 WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt <= ?1
                 ORDER BY next_attempt, seq LIMIT ?2",
            )?;
            stmt.query_map(params![micros(now), limit], |r| {
                Ok(Delivery {
                    seq: r.get(0)?,
                    run_id: parse_uuid(&r.get::<_, String>(1)?)?,
                    url: r.get(2)?,
                    created: from_micros(r.get(3)?)?,
                    attempts: r.get::<_, i64>(4)? as u32,
                })
            })?
            .collect()
        })
        .await
    }

    /// When the next pending webhook is due, if any is pending.
    pub async fn next_delivery(&self) -> Result<Option<OffsetDateTime>> {
        self.call(|c| {
            earliest(
                c,
                "SELECT MIN(next_attempt) FROM deliveries
                 WHERE delivered_at IS NULL AND given_up_at IS NULL",
            )
        })
        .await
    }

    /// Records an attempt of a webhook: delivered, to be tried again at `retry`, or (without
    /// `retry`) given up.
    pub async fn delivery_attempted(
        &self,
        seq: i64,
        error: Option<String>,
        retry: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.call(move |c| {
            let delivered = error.is_none();
            c.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?2,
                    delivered_at = CASE WHEN ?5 THEN ?3 END,
                    next_attempt = COALESCE(?4, next_attempt),
                    given_up_at = CASE WHEN NOT ?5 AND ?4 IS NULL THEN ?3 END
                 WHERE seq = ?1",
                params![seq, error, micros(now), retry.map(micros), delivered],
            )
            .map(drop)
        })
        .await
    }
}

/// Queues the webhook of a run that has just ended, if it has a `notify_url`.
pub(super) fn queue_delivery(
    c: &Connection,
    id: Uuid,
    now: OffsetDateTime,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO deliveries (run_id, url, created, next_attempt)
         SELECT id, notify_url, ?2, ?2 FROM runs WHERE id = ?1 AND notify_url IS NOT NULL",
        params![id.to_string(), micros(now)],
    )?;
    Ok(())
}
