//! Uploads (each a layout file in the storage folder) and their cells: stored, read, deleted unless
//! a queued or running run uses them, and expired once no run does and their time is up.

use std::collections::HashSet;

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Db, bad_value, earliest, from_micros, micros, parse_uuid};
use crate::layout::Layout;
use crate::model::{LayoutFormat, Scope, Upload};

pub(super) const UPLOAD_COLUMNS: &str =
    "id, name, size, sha256, format, created, expires_at, expired, owner, dbu_microns";

/// What deleting an upload did.
#[derive(Debug, PartialEq)]
pub enum DeleteUpload {
    Deleted,
    NotFound,
    /// A queued or running run uses it.
    InUse(Uuid),
}

impl Db {
    pub async fn insert_upload(&self, upload: Upload) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let id = upload.id.to_string();
            tx.execute(
                "INSERT INTO uploads (id, name, size, sha256, format, created, expires_at, expired, owner, dbu_microns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)",
                params![
                    id,
                    upload.name,
                    upload.size as i64,
                    upload.sha256,
                    upload.format.as_str(),
                    micros(upload.created),
                    upload.expires_at.map(micros),
                    upload.owner,
                    upload.layout.as_ref().map(|l| l.dbu_microns),
                ],
            )?;
            if let Some(layout) = &upload.layout {
                let mut insert = tx.prepare(
                    "INSERT INTO upload_cells (upload_id, seq, name, top) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let tops: HashSet<&String> = layout.top_cells.iter().collect();
                for (seq, name) in layout.cells.iter().enumerate() {
                    insert.execute(params![id, seq as i64, name, tops.contains(name)])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub async fn upload(&self, id: Uuid) -> Result<Option<Upload>> {
        self.call(move |c| {
            let upload = c
                .query_row(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"),
                    [id.to_string()],
                    upload_from_row,
                )
                .optional()?;
            upload.map(|u| with_cells(c, u)).transpose()
        })
        .await
    }

    /// The uploads `scope` sees, newest first.
    pub async fn uploads(&self, scope: Scope) -> Result<Vec<Upload>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE ?1 IS NULL OR owner = ?1
                 ORDER BY created DESC, id"
            ))?;
            let uploads = stmt
                .query_map([scope.owner()], upload_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            uploads.into_iter().map(|u| with_cells(c, u)).collect()
        })
        .await
    }

    /// Removes an upload's row unless a queued or running run uses it.
    pub async fn delete_upload(&self, id: Uuid) -> Result<DeleteUpload> {
        self.call(move |c| {
            let tx = c.transaction()?;
            if let Some(run) = run_using_upload(&tx, id)? {
                return Ok(DeleteUpload::InUse(run));
            }
            let n = tx.execute("DELETE FROM uploads WHERE id = ?1", [id.to_string()])?;
            tx.commit()?;
            Ok(if n == 0 {
                DeleteUpload::NotFound
            } else {
                DeleteUpload::Deleted
            })
        })
        .await
    }

    /// The first queued or running run that uses the upload.
    pub async fn upload_in_use(&self, id: Uuid) -> Result<Option<Uuid>> {
        self.call(move |c| run_using_upload(c, id)).await
    }

    /// Marks uploads past their expiry (and used by no run) as expired; returns their ids so
    /// their files can be removed.
    pub async fn expire_uploads(&self, now: OffsetDateTime) -> Result<Vec<Uuid>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "UPDATE uploads SET expired = 1
                 WHERE expired = 0 AND expires_at IS NOT NULL AND expires_at <= ?1
                 RETURNING id",
            )?;
            let ids = stmt.query_map([micros(now)], |r| r.get::<_, String>(0))?;
            ids.map(|id| parse_uuid(&id?)).collect()
        })
        .await
    }

    /// The earliest time at which an upload will expire, if any will.
    pub async fn next_upload_expiry(&self) -> Result<Option<OffsetDateTime>> {
        self.call(|c| {
            earliest(
                c,
                "SELECT MIN(expires_at) FROM uploads WHERE expired = 0 AND expires_at IS NOT NULL",
            )
        })
        .await
    }
}

fn run_using_upload(c: &Connection, id: Uuid) -> rusqlite::Result<Option<Uuid>> {
    let run: Option<String> = c
        .query_row(
            "SELECT id FROM runs WHERE upload_id = ?1 AND status IN ('queued', 'running')
             ORDER BY seq LIMIT 1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    run.map(|r| parse_uuid(&r)).transpose()
}

/// Fills in an inspected upload's cells (its unit came with its row).
fn with_cells(c: &Connection, mut upload: Upload) -> rusqlite::Result<Upload> {
    let Some(layout) = upload.layout.as_mut() else {
        return Ok(upload);
    };
    let mut stmt =
        c.prepare_cached("SELECT name, top FROM upload_cells WHERE upload_id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([upload.id.to_string()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
    })?;
    for row in rows {
        let (name, top) = row?;
        if top {
            layout.top_cells.push(name.clone());
        }
        layout.cells.push(name);
    }
    Ok(upload)
}

pub(super) fn upload_from_row(r: &Row) -> rusqlite::Result<Upload> {
    let format: String = r.get(4)?;
    let format = LayoutFormat::parse(&format)
        .ok_or_else(|| bad_value(format!("unknown format {format}")))?;
    Ok(Upload {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        name: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        sha256: r.get(3)?,
        format,
        created: from_micros(r.get(5)?)?,
        expires_at: r.get::<_, Option<i64>>(6)?.map(from_micros).transpose()?,
        expired: r.get(7)?,
        owner: r.get(8)?,
        layout: r.get::<_, Option<f64>>(9)?.map(|dbu_microns| Layout {
            format,
            dbu_microns,
            cells: vec![],
            top_cells: vec![],
            die: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::CreateRunError;
    use crate::db::fixtures::{new_run, now, params, upload};
    #[tokio::test]
    async fn expiry_and_reopening_keep_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        let old = upload(time::Duration::seconds(-1));
        db.insert_upload(old.clone()).await.unwrap();
        assert_eq!(db.expire_uploads(now()).await.unwrap(), vec![old.id]);
        let e = db
            .create_run(Uuid::new_v4(), params(old.id), Scope::All, new_run())
            .await
            .unwrap();
        assert_eq!(e.unwrap_err(), CreateRunError::UploadExpired);
        let e = db
            .create_run(
                Uuid::new_v4(),
                params(Uuid::new_v4()),
                Scope::All,
                new_run(),
            )
            .await
            .unwrap();
        assert_eq!(e.unwrap_err(), CreateRunError::UnknownUpload);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert!(db.upload(old.id).await.unwrap().unwrap().expired);
    }
}
