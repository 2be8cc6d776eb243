//! The queue's side of engines: the oldest queued run, its claim for an engine (never for one an
//! operator drained), and the drained set (`precheck-server engines drain`, `resume`).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::run_list::select_run;
use super::{Db, micros, parse_uuid};
use crate::model::Run;

impl Db {
    /// The oldest queued run but those in `placed`, without claiming it: the queue finds it an
    /// engine first.
    pub async fn next_queued(&self, placed: HashSet<Uuid>) -> Result<Option<Run>> {
        self.call(move |c| {
            let mut head =
                c.prepare("SELECT id FROM runs WHERE status = 'queued' ORDER BY seq LIMIT ?1")?;
            let ids = head.query_map([placed.len() as i64 + 1], |r| r.get::<_, String>(0))?;
            for id in ids {
                let id = parse_uuid(&id?)?;
                if !placed.contains(&id) {
                    return select_run(c, id);
                }
            }
            Ok(None)
        })
        .await
    }

    /// Claims a queued run for `engine`: running, started now, on that engine. `None` if it is
    /// no longer queued (cancelled or deleted meanwhile) or the engine is drained: the check
    /// and the claim are one statement, so a drain that has committed is never overtaken.
    pub async fn claim_run(
        &self,
        id: Uuid,
        engine: String,
        now: OffsetDateTime,
    ) -> Result<Option<Run>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE runs SET status = 'running', started_at = ?3, engine = ?2
                 WHERE id = ?1 AND status = 'queued'
                   AND NOT EXISTS (SELECT 1 FROM engines WHERE name = ?2 AND drained)",
                params![id.to_string(), engine, micros(now)],
            )?;
            let run = match n {
                1 => select_run(&tx, id)?,
                _ => None,
            };
            tx.commit()?;
            Ok(run)
        })
        .await
    }

    /// Drains (true) or resumes (false) an engine; whether that changed anything.
    pub async fn set_drained(
        &self,
        name: String,
        drained: bool,
        now: OffsetDateTime,
    ) -> Result<bool> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let was: bool = tx
                .query_row(
                    "SELECT drained FROM engines WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            if was != drained {
                tx.execute(
                    "INSERT INTO engines (name, drained, changed) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET drained = ?2, changed = ?3",
                    params![name, drained, micros(now)],
                )?;
            }
            tx.commit()?;
            Ok(was != drained)
        })
        .await
    }

    /// The names of the drained engines.
    pub async fn drained_engines(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT name FROM engines WHERE drained ORDER BY name")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })
        .await
    }

    /// How many runs are running on each engine (runs without an engine under "").
    pub async fn running_per_engine(&self) -> Result<HashMap<String, u64>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT coalesce(engine, ''), COUNT(*) FROM runs WHERE status = 'running'
                 GROUP BY coalesce(engine, '')",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixtures::{new_run, now, params, upload};
    use crate::model::{RunStatus, Scope};

    async fn queued(n: usize) -> (tempfile::TempDir, Db, Vec<Uuid>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let u = upload(time::Duration::minutes(5));
        db.insert_upload(u.clone()).await.unwrap();
        let mut ids = vec![];
        for _ in 0..n {
            let id = Uuid::new_v4();
            db.create_run(id, params(u.id), Scope::All, new_run())
                .await
                .unwrap()
                .unwrap();
            ids.push(id);
        }
        (dir, db, ids)
    }

    #[tokio::test]
    async fn a_claim_records_the_engine_and_never_overtakes_a_drain() {
        let (_dir, db, ids) = queued(3).await;
        let head = |placed: &[Uuid]| {
            let db = db.clone();
            let placed = placed.iter().copied().collect();
            async move { db.next_queued(placed).await.unwrap().map(|r| r.id) }
        };
        assert_eq!(head(&[]).await, Some(ids[0]));
        // The runs placed already (their containers being prepared) are passed over.
        assert_eq!(head(&[ids[0]]).await, Some(ids[1]));
        assert_eq!(head(&[ids[1], ids[0]]).await, Some(ids[2]));
        assert_eq!(head(&ids).await, None);
        let run = db
            .claim_run(ids[0], "a".into(), now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.engine.as_deref(), Some("a"));
        assert!(run.started_at.is_some());
        // Claimed once only; the queue's head moves on.
        assert!(
            db.claim_run(ids[0], "b".into(), now())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(head(&[]).await, Some(ids[1]));

        assert!(db.set_drained("b".into(), true, now()).await.unwrap());
        assert!(
            !db.set_drained("b".into(), true, now()).await.unwrap(),
            "already drained"
        );
        assert_eq!(db.drained_engines().await.unwrap(), vec!["b".to_string()]);
        assert!(
            db.claim_run(ids[1], "b".into(), now())
                .await
                .unwrap()
                .is_none()
        );
        let still = db.run(ids[1]).await.unwrap().unwrap();
        assert_eq!((still.status, still.engine), (RunStatus::Queued, None));
        assert!(db.set_drained("b".into(), false, now()).await.unwrap());
        assert!(
            !db.set_drained("c".into(), false, now()).await.unwrap(),
            "never drained"
        );
        assert!(db.drained_engines().await.unwrap().is_empty());
        assert!(
            db.claim_run(ids[1], "b".into(), now())
                .await
                .unwrap()
                .is_some()
        );

        // A cancelled run is not claimed.
        db.cancel(ids[2], now()).await.unwrap();
        assert!(
            db.claim_run(ids[2], "a".into(), now())
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(head(&[]).await, None);

        let per = db.running_per_engine().await.unwrap();
        assert_eq!(per.get("a"), Some(&1));
        assert_eq!(per.get("b"), Some(&1));
        // Queued again, a run forgets its engine.
        assert!(db.requeue_run(ids[1]).await.unwrap());
        assert_eq!(db.run(ids[1]).await.unwrap().unwrap().engine, None);
        assert_eq!(db.running_per_engine().await.unwrap().get("b"), None);
    }
}
