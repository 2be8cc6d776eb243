//! The storage folder: where uploads, runs and the database live, streaming saves, tarballs.
//!
//! ```text
//! <storage_path>/
//!   precheck.sqlite          the database (WAL)
//!   server.url               where the running server listens, for the admin CLI
//!   tmp/<id>.part            uploads being received; removed at start and on any failure
//!   uploads/<id>             finished uploads, named by id (the client's name is only text)
//!   runs/<id>/logs.txt       the run's log, one timestamped line per line the container printed
//!   runs/<id>/output/        what the container wrote to /output
//!   runs/<id>/work/          the flow directory the container wrote to /work
//!   blobs/<sha256>           project files' contents, each stored once, never changed
//! ```
//! Every path here is built from a UUID; no string from a client becomes part of a path.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::layout::{self, Layout, LayoutError};

/// The storage folder of one server.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    blobs: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A finished upload as written to disk.
#[derive(Debug)]
pub struct Saved {
    pub size: u64,
    pub sha256: String,
    /// What the layout holds, read while it was written.
    pub layout: Layout,
}

impl Storage {
    /// Creates the folder layout and removes uploads that were interrupted by a crash.
    pub fn open(root: &Path) -> Result<Storage> {
        for dir in ["tmp", "uploads", "runs", "blobs"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        // Only the server's user may enter the folder, whatever made it before (files made
        // before keep their modes, behind it; new ones are 0600 by the server's umask).
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", root.display()))?;
        let storage = Storage::at(root);
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(storage)
    }

    /// The storage folder as it is, changing nothing (for the admin CLI, while a server runs).
    pub fn at(root: &Path) -> Storage {
        Storage {
            root: root.to_path_buf(),
            blobs: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("precheck.sqlite")
    }

    /// Holds the running server's URL (`http://127.0.0.1:8080`) while it serves.
    pub fn server_url_path(&self) -> PathBuf {
        self.root.join("server.url")
    }

    pub fn upload_path(&self, id: Uuid) -> PathBuf {
        self.root.join("uploads").join(id.to_string())
    }

    pub fn run_dir(&self, id: Uuid) -> PathBuf {
        self.root.join("runs").join(id.to_string())
    }

    pub fn log_path(&self, id: Uuid) -> PathBuf {
        self.run_dir(id).join("logs.txt")
    }

    /// The checked layout the precheck wrote to `/output/design.gds`.
    pub fn output_path(&self, id: Uuid) -> PathBuf {
        self.run_dir(id).join("output").join("design.gds")
    }

    /// Starts receiving an upload. Chunks go to a blocking thread that writes and hashes them.
    pub fn upload_writer(&self, id: Uuid) -> UploadWriter {
        let part = self.root.join("tmp").join(format!("{id}.part"));
        let dest = self.upload_path(id);
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::task::spawn_blocking(move || write_upload(rx, &part, &dest));
        UploadWriter { tx, task }
    }

    /// A project file's content, named by its sha256.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    /// Where a new blob is written before it is committed.
    pub fn blob_part(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.blob.part", Uuid::new_v4()))
    }

    pub fn blob_writer(&self) -> BlobWriter {
        let part = self.blob_part();
        ChunkWriter::reading(move |reader| Ok(stage_blob(reader, part)?))
    }

    /// Unpacks a `.tar.gz` of source files streamed in: each regular file becomes a staged
    /// blob under its (checked) path; folders are skipped; anything else is refused.
    pub fn tar_gz_importer(
        &self,
        max_file: u64,
        max_total: u64,
    ) -> ChunkWriter<Vec<(String, StagedBlob)>> {
        let storage = self.clone();
        ChunkWriter::reading(move |reader| import_tar_gz(reader, &storage, max_file, max_total))
    }

    /// Moves staged content to its blob (content already there is kept: it is the same).
    /// Call it while holding [`Storage::blob_lock`], with the rows that name the blob.
    pub async fn commit_blob(&self, staged: StagedBlob) -> io::Result<()> {
        let dest = self.blob_path(&staged.sha256);
        if tokio::fs::try_exists(&dest).await? {
            return Ok(());
        }
        tokio::fs::rename(&staged.part, &dest).await
    }

    /// Removes a blob; one already gone is fine. Call it while holding the blob lock, after
    /// checking that no row names it.
    pub async fn remove_blob(&self, sha256: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.blob_path(sha256)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Held while blobs are committed with their rows, and while unused ones are removed, so
    /// a blob is never removed between its file landing and its row being written.
    pub async fn blob_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.blobs.lock().await
    }

    /// Removes an upload's file; a file that is already gone is fine.
    pub async fn remove_upload(&self, id: Uuid) -> io::Result<()> {
        match tokio::fs::remove_file(self.upload_path(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes a run's folder: its log, output and flow directory.
    pub async fn remove_run(&self, id: Uuid) -> io::Result<()> {
        match tokio::fs::remove_dir_all(self.run_dir(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Everything in `uploads/`, `runs/` and `blobs/`, with sizes (blocking: it walks the
    /// folders).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut entries = vec![];
        for (dir, kind) in [
            ("uploads", EntryKind::Upload),
            ("runs", EntryKind::Run),
            ("blobs", EntryKind::Blob),
        ] {
            let dir = self.root.join(dir);
            if !dir.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let path = entry.path();
                let meta = entry.metadata()?;
                entries.push(Entry {
                    kind,
                    name: entry.file_name().to_string_lossy().into_owned(),
                    size: disk_usage(&path)?,
                    modified: meta.modified()?,
                    path,
                });
            }
        }
        Ok(entries)
    }
}

/// An upload file or a run folder in the storage folder.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: EntryKind,
    /// An upload's or run's id, or a blob's sha256 (if it is not, the server did not write it).
    pub name: String,
    pub path: PathBuf,
    /// Bytes, with everything below a folder.
    pub size: u64,
    pub modified: std::time::SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Upload,
    Run,
    Blob,
}

/// Bytes in a file, or in everything below a folder (symlinks are not followed).
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += disk_usage(&entry?.path())?;
    }
    Ok(total)
}

enum Chunk {
    Data(Bytes),
    Finish,
}

/// Why an upload was not saved.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes are not a layout the server can use.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The data breaks a rule of what may be stored (a bad path, a link in a tarball).
    #[error("{0}")]
    Rejected(String),
    /// The data is larger than a limit.
    #[error("{0}")]
    Oversize(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A file being written from async code by a blocking thread, chunk by chunk. Dropping it
/// without [`ChunkWriter::finish`] aborts the write (and removes the partial file).
pub struct ChunkWriter<T> {
    tx: mpsc::Sender<Chunk>,
    task: JoinHandle<Result<T, UploadError>>,
}

/// An upload being written: stored, hashed and read as a layout.
pub type UploadWriter = ChunkWriter<Saved>;
/// A project file being written: stored and hashed, then committed as a blob.
pub type BlobWriter = ChunkWriter<StagedBlob>;

impl<T: Send + 'static> ChunkWriter<T> {
    /// Runs `consume` on a blocking thread over the chunks written, read as one stream.
    fn reading(
        consume: impl FnOnce(ChannelReader<'_>) -> Result<T, UploadError> + Send + 'static,
    ) -> ChunkWriter<T> {
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::task::spawn_blocking(move || {
            consume(ChannelReader {
                rx: &mut rx,
                chunk: Bytes::new(),
                finished: false,
            })
        });
        ChunkWriter { tx, task }
    }
}

impl<T> ChunkWriter<T> {
    pub async fn write(&mut self, data: Bytes) -> Result<(), UploadError> {
        if self.tx.send(Chunk::Data(data)).await.is_err() {
            // The writer stopped early: its result says why.
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Ends the data and returns what the writer made of it.
    pub async fn finish(mut self) -> Result<T, UploadError> {
        if self.tx.send(Chunk::Finish).await.is_err() {
            return Err(self.failure().await);
        }
        (&mut self.task)
            .await
            .map_err(|e| UploadError::Io(io::Error::other(e)))?
    }

    async fn failure(&mut self) -> UploadError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => io::Error::other("the writer stopped").into(),
            Err(e) => io::Error::other(e).into(),
        }
    }
}

/// A file's content written to `tmp/` and hashed, waiting to become the blob named by its
/// sha256. Dropped without [`Storage::commit_blob`], it is removed.
#[derive(Debug)]
pub struct StagedBlob {
    part: PathBuf,
    pub sha256: String,
    pub size: u64,
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.part);
    }
}

/// The chunks of a [`ChunkWriter`] read as one stream, on its blocking thread.
struct ChannelReader<'a> {
    rx: &'a mut mpsc::Receiver<Chunk>,
    chunk: Bytes,
    finished: bool,
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.finished {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(data)) => self.chunk = data,
                Some(Chunk::Finish) => self.finished = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "upload aborted",
                    ));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Writes `reader` to `part`, hashing it: a blob to be.
pub fn stage_blob(mut reader: impl Read, part: PathBuf) -> io::Result<StagedBlob> {
    let mut staged = StagedBlob {
        part,
        sha256: String::new(),
        size: 0,
    };
    let mut file = BufWriter::with_capacity(256 * 1024, File::create(&staged.part)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        staged.size += n as u64;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    staged.sha256 = format!("{:x}", hasher.finalize());
    Ok(staged)
}

/// Chunks handed from the writer thread to the layout reader's thread, read as one stream; it
/// ends when the writer drops its sender.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.chunk = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

fn write_upload(
    mut rx: mpsc::Receiver<Chunk>,
    part: &Path,
    dest: &Path,
) -> Result<Saved, UploadError> {
    let result = store_upload(&mut rx, part, dest);
    if result.is_err() {
        let _ = std::fs::remove_file(part);
    }
    result
}

/// Hashes and writes the upload's chunks while a second thread reads the layout from the same
/// chunks (a `Bytes` clone shares them), so the two run side by side.
fn store_upload(
    rx: &mut mpsc::Receiver<Chunk>,
    part: &Path,
    dest: &Path,
) -> Result<Saved, UploadError> {
    let (to_reader, chunks) = std::sync::mpsc::sync_channel::<Bytes>(16);
    let reader = std::thread::Builder::new()
        .name("layout".into())
        .spawn(move || {
            layout::inspect(ChunkReader {
                rx: chunks,
                chunk: Bytes::new(),
            })
        })?;
    let mut file = BufWriter::with_capacity(256 * 1024, File::create(part)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut store = |data: &Bytes| -> io::Result<()> {
        hasher.update(data);
        size += data.len() as u64;
        file.write_all(data)
    };
    let next = |rx: &mut mpsc::Receiver<Chunk>| match rx.blocking_recv() {
        Some(Chunk::Data(data)) => Ok(Some(data)),
        Some(Chunk::Finish) => Ok(None),
        None => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "upload aborted",
        )),
    };
    // Until the reader stops: at the end of the data, at the layout's end record, or at a fault.
    let mut finished = true;
    while let Some(data) = next(rx)? {
        store(&data)?;
        if to_reader.send(data).is_err() {
            finished = false;
            break;
        }
    }
    drop(to_reader);
    // A fault ends the upload here, whatever is still to come.
    let layout = reader
        .join()
        .map_err(|_| io::Error::other("the layout reader failed"))??;
    // Whatever follows the layout's end record (padding) is stored as sent.
    if !finished {
        while let Some(data) = next(rx)? {
            store(&data)?;
        }
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(part, dest)?;
    Ok(Saved {
        size,
        sha256: format!("{:x}", hasher.finalize()),
        layout,
    })
}

/// At most this many files come from one tarball.
const MAX_IMPORT_FILES: usize = 100_000;

fn import_tar_gz(
    reader: impl Read,
    storage: &Storage,
    max_file: u64,
    max_total: u64,
) -> Result<Vec<(String, StagedBlob)>, UploadError> {
    let mut gz = io::BufReader::new(reader);
    if !io::BufRead::fill_buf(&mut gz)?.starts_with(&[0x1f, 0x8b]) {
        return Err(UploadError::Rejected(
            "expected a .tar.gz of source files (the body is not gzip)".into(),
        ));
    }
    let mut archive = tar::Archive::new(flate2::bufread::MultiGzDecoder::new(gz));
    let mut files: Vec<(String, StagedBlob)> = vec![];
    let mut total = 0u64;
    let entries = archive.entries().map_err(tar_error)?;
    for entry in entries {
        let entry = entry.map_err(tar_error)?;
        let raw = entry.path_bytes();
        let name = std::str::from_utf8(&raw)
            .map_err(|_| UploadError::Rejected("a tarball entry's name is not UTF-8".into()))?
            .to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            let what = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_hard_link() {
                "a hard link"
            } else {
                "not a regular file"
            };
            return Err(UploadError::Rejected(format!(
                "the tarball entry {name:?} is {what}: only files and folders are imported"
            )));
        }
        let mut path = name.as_str();
        while let Some(rest) = path.strip_prefix("./") {
            path = rest;
        }
        crate::model::check_project_path(path)
            .map_err(|e| UploadError::Rejected(format!("tarball entry: {e}")))?;
        let size = entry.header().size().map_err(tar_error)?;
        if size > max_file {
            return Err(UploadError::Oversize(format!(
                "the tarball entry {path:?} is larger than the limit of {} a file (projects.max_file_size)",
                crate::config::human_bytes(max_file)
            )));
        }
        total += size;
        if total > max_total {
            return Err(UploadError::Oversize(format!(
                "the tarball holds more than the limit of {} a project (projects.max_project_size)",
                crate::config::human_bytes(max_total)
            )));
        }
        let path = path.to_string();
        let staged = stage_blob(entry, storage.blob_part())?;
        files.retain(|(p, _)| *p != path);
        files.push((path, staged));
        if files.len() > MAX_IMPORT_FILES {
            return Err(UploadError::Oversize(format!(
                "the tarball holds more than {MAX_IMPORT_FILES} files"
            )));
        }
    }
    Ok(files)
}

/// A broken tarball or gzip stream is the client's to fix; the end of the data is truncation.
fn tar_error(e: io::Error) -> UploadError {
    if e.kind() == io::ErrorKind::ConnectionAborted {
        return e.into();
    }
    UploadError::Rejected(format!("the tarball cannot be read: {e}"))
}

/// A [`Write`] that hands its bytes, in chunks, to an async consumer: how blocking producers
/// (tar, gzip) feed a response body or an upload to the engine without holding the whole thing.
pub struct ChunkSender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl ChunkSender {
    /// The writer and the receiving end; the channel is bounded, so memory stays constant.
    pub fn new() -> (ChunkSender, mpsc::Receiver<io::Result<Bytes>>) {
        let (tx, rx) = mpsc::channel(4);
        (
            ChunkSender {
                tx,
                buf: Vec::with_capacity(CHUNK),
            },
            rx,
        )
    }

    /// Passes an error on to the consumer (ending its stream with it).
    pub fn fail(self, error: io::Error) {
        let _ = self.tx.blocking_send(Err(error));
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver has gone"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl Drop for ChunkSender {
    fn drop(&mut self) {
        let _ = self.send_buf();
    }
}

/// Opens the regular file at `rel` (a checked relative path) under `root`, with its length;
/// `None` if there is none. No part of the path may be a symlink: files a container wrote are
/// served, never what a link of theirs points to.
pub fn open_inside(root: &Path, rel: &str) -> io::Result<Option<(std::fs::File, u64)>> {
    let mut path = root.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let file = std::fs::File::open(&path)?;
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

/// Writes `dir` as a gzip'd tar whose entries start with `prefix/`. Symlinks are stored as links,
/// never followed, so nothing outside `dir` is read.
pub fn write_tar_gz(dir: &Path, prefix: &str, out: impl Write) -> io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all(prefix, dir)?;
    tar.into_inner()?.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upload_is_hashed_and_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let mut gds = crate::layout::GdsWriter::new(1e-9);
        gds.cell("leaf", &[], &[]);
        gds.cell("chip_top", &["leaf"], &[]);
        let mut bytes = gds.finish();
        // Padding after ENDLIB is kept as sent.
        bytes.extend([0u8; 100]);
        let mut w = storage.upload_writer(id);
        let (a, b) = bytes.split_at(37);
        w.write(Bytes::copy_from_slice(a)).await.unwrap();
        w.write(Bytes::copy_from_slice(b)).await.unwrap();
        let saved = w.finish().await.unwrap();
        assert_eq!(saved.size, bytes.len() as u64);
        assert_eq!(saved.sha256, format!("{:x}", Sha256::digest(&bytes)));
        assert_eq!(saved.layout.top_cells, ["chip_top"]);
        assert_eq!(std::fs::read(storage.upload_path(id)).unwrap(), bytes);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // A file that is not a layout is refused and leaves nothing.
        let id = Uuid::new_v4();
        let mut w = storage.upload_writer(id);
        let _ = w.write(Bytes::from_static(b"hello world")).await;
        let e = w.finish().await.unwrap_err();
        assert!(matches!(e, UploadError::Layout(_)), "{e}");
        assert!(!storage.upload_path(id).exists());

        // A fault stops the upload at once: the chunks after it are refused, not stored.
        let id = Uuid::new_v4();
        let mut w = storage.upload_writer(id);
        let mut bad = bytes.clone();
        bad[64] = 0x7f;
        let mut refused = None;
        for i in 0..1000 {
            let chunk = if i == 0 {
                Bytes::from(bad.clone())
            } else {
                Bytes::from(vec![0u8; 65536])
            };
            if let Err(e) = w.write(chunk).await {
                refused = Some((i, e));
                break;
            }
        }
        let (after, e) = refused.expect("the writer refuses the rest of a corrupt upload");
        assert!(after < 100, "refused only after {after} chunks");
        assert!(e.to_string().contains("unknown type 0x7f"), "{e}");
        assert!(!storage.upload_path(id).exists());
    }

    #[tokio::test]
    async fn dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let mut w = storage.upload_writer(id);
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        let tmp = dir.path().join("tmp");
        for _ in 0..100 {
            if std::fs::read_dir(&tmp).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        assert!(!storage.upload_path(id).exists());
    }

    #[test]
    fn leftover_parts_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/x.part"), b"half").unwrap();
        Storage::open(dir.path()).unwrap();
        assert!(!dir.path().join("tmp/x.part").exists());
    }
}
