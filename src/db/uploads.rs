//! Uploads (each a layout file in the storage folder) and their cells: stored, read, deleted unless
//! a queued or running run uses them, and expired once no run does and their time is up.

use std::collections::HashSet;

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Db, bad_value, earliest, from_micros, micros, parse_uuid};
use crate::layout::{Die, Layout, Rect};
use crate::model::{LayoutFormat, Scope, Upload};

pub(super) const UPLOAD_COLUMNS: &str =
    "id, name, size, sha256, format, created, expires_at, expired, owner, dbu_microns,
     die_cell, die_left, die_bottom, die_right, die_top, die_layers";

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
            let die = upload.layout.as_ref().and_then(|l| l.die.as_ref());
            let bbox = die.and_then(|d| d.bbox);
            tx.execute(
                "INSERT INTO uploads (id, name, size, sha256, format, created, expires_at, expired, owner, dbu_microns,
                                      die_cell, die_left, die_bottom, die_right, die_top, die_layers)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
                    die.map(|d| &d.cell),
                    bbox.map(|b| b.left),
                    bbox.map(|b| b.bottom),
                    bbox.map(|b| b.right),
                    bbox.map(|b| b.top),
                    die.map(|d| layers_text(&d.layers)),
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
        layout: match r.get::<_, Option<f64>>(9)? {
            Some(dbu_microns) => Some(Layout {
                format,
                dbu_microns,
                cells: vec![],
                top_cells: vec![],
                die: die_from_row(r)?,
            }),
            None => None,
        },
    })
}

/// The die columns (10 to 15 of [`UPLOAD_COLUMNS`]).
fn die_from_row(r: &Row) -> rusqlite::Result<Option<Die>> {
    let Some(cell) = r.get::<_, Option<String>>(10)? else {
        return Ok(None);
    };
    let sides: [Option<i64>; 4] = [r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?];
    let bbox = match sides {
        [Some(left), Some(bottom), Some(right), Some(top)] => {
            Some(Rect::new(left, bottom, right, top))
        }
        _ => None,
    };
    let text: String = r.get::<_, Option<String>>(15)?.unwrap_or_default();
    let layers = text
        .split_whitespace()
        .map(|pair| {
            pair.split_once('/')
                .and_then(|(l, d)| Some((l.parse().ok()?, d.parse().ok()?)))
                .ok_or_else(|| bad_value(format!("bad die layer {pair:?}")))
        })
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(Die { cell, bbox, layers }))
}

/// Layers as the `die_layers` column keeps them: "22/0 34/0 167/5".
fn layers_text(layers: &[(u32, u32)]) -> String {
    let pairs: Vec<String> = layers.iter().map(|(l, d)| format!("{l}/{d}")).collect();
    pairs.join(" ")
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

    #[tokio::test]
    async fn an_uploads_die_is_kept_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let layout = |die| Layout {
            format: LayoutFormat::Gds,
            dbu_microns: 0.001,
            cells: vec!["leaf".into(), "chip_top".into()],
            top_cells: vec!["chip_top".into()],
            die,
        };
        let dies = [
            None,
            Some(Die {
                cell: "chip_top".into(),
                bbox: None,
                layers: vec![],
            }),
            Some(Die {
                cell: "chip_top".into(),
                bbox: Some(Rect::new(-10, 0, 3_932_000, 5_122_000)),
                layers: vec![(22, 0), (34, 0), (167, 5), (65535, 65535)],
            }),
        ];
        for die in dies {
            let mut stored = upload(time::Duration::hours(1));
            stored.layout = Some(layout(die));
            db.insert_upload(stored.clone()).await.unwrap();
            let read = db.upload(stored.id).await.unwrap().unwrap();
            assert_eq!(read.layout, stored.layout);
        }
    }
}
