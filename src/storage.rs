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
//! Every path of this layout is built from a UUID or a sha256; no string from a client becomes
//! part of one. Below a run's folder, the names are the container's (`unpack_tree` keeps only
//! checked names of regular files and folders); a project's paths are only text in the database.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::ProjectLimits;
use crate::layout::{self, InflationLimits, Layout, LayoutError};

/// Where a precheck's checked layout is in its run's folder.
pub const OUTPUT_LAYOUT: &str = "output/design.gds";

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
        let mode = std::fs::metadata(root)
            .with_context(|| format!("cannot read {}", root.display()))?
            .permissions()
            .mode();
        if mode & 0o777 != 0o700 {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private (mode 0700)", root.display()))?;
        }
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
        self.run_dir(id).join(OUTPUT_LAYOUT)
    }

    /// Starts receiving an upload. Chunks go to a blocking thread that writes and hashes them,
    /// while a second one reads the layout within `limits`. Dropped unfinished (the client went
    /// away), the writer stops both at their next read.
    pub fn upload_writer(&self, id: Uuid, limits: InflationLimits) -> UploadWriter {
        let part = self.root.join("tmp").join(format!("{id}.part"));
        let dest = self.upload_path(id);
        let (tx, rx) = mpsc::channel(8);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task =
            tokio::task::spawn_blocking(move || write_upload(rx, &part, &dest, limits, stopping));
        UploadWriter { tx, task, stop }
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
        ChunkWriter::reading(move |reader, _| Ok(stage_blob(reader, part)?))
    }

    /// Unpacks a `.tar.gz` of source files streamed in: each regular file becomes a staged
    /// blob under its (checked) path; folders are skipped; anything else is refused. `existing`
    /// are the paths the project holds: the import is refused before a file that would make
    /// the project hold more than `limits.max_files` is staged.
    pub fn tar_gz_importer(
        &self,
        limits: ProjectLimits,
        inflation: InflationLimits,
        existing: HashSet<String>,
    ) -> ChunkWriter<Vec<(String, StagedBlob)>> {
        let storage = self.clone();
        ChunkWriter::reading(move |reader, stop| {
            let meter = layout::Meter::new(inflation, stop);
            import_tar_gz(reader, &storage, &limits, &existing, meter)
        })
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
        remove_tree(&self.run_dir(id)).await
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

/// Removes a folder and everything in it; one that is already gone is fine. Someone else may
/// be writing into it meanwhile (a server copying a run's results out while the CLI deletes the
/// run, each removing the folder once it knows the run is gone), so a folder that filled up
/// again while it was emptied is emptied again, for up to 10 s.
pub async fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 200 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => return Ok(()),
        }
    }
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
/// without [`ChunkWriter::finish`] aborts the write (and removes the partial file): the channel
/// closes and the stop flag is set, which the layout reader and the tarball's inflation look at
/// on every read.
pub struct ChunkWriter<T> {
    tx: mpsc::Sender<Chunk>,
    task: JoinHandle<Result<T, UploadError>>,
    stop: Arc<AtomicBool>,
}

impl<T> Drop for ChunkWriter<T> {
    fn drop(&mut self) {
        // After `finish` the work is done and this changes nothing.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An upload being written: stored, hashed and read as a layout.
pub type UploadWriter = ChunkWriter<Saved>;
/// A project file being written: stored and hashed, then committed as a blob.
pub type BlobWriter = ChunkWriter<StagedBlob>;

impl<T: Send + 'static> ChunkWriter<T> {
    /// Runs `consume` on a blocking thread over the chunks written, read as one stream, with
    /// the flag that is set when the writer is dropped unfinished.
    fn reading(
        consume: impl FnOnce(ChannelReader<'_>, &AtomicBool) -> Result<T, UploadError> + Send + 'static,
    ) -> ChunkWriter<T> {
        let (tx, mut rx) = mpsc::channel(8);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx: &mut rx,
                chunk: Bytes::new(),
                finished: false,
            };
            consume(reader, &flag)
        });
        ChunkWriter { tx, task, stop }
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

    /// Aborts the write and waits until the partial file is removed, so that an answer sent
    /// after it finds nothing left behind. (Dropping the writer aborts too, without waiting.)
    pub async fn abandon(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Ended already (a failed write has awaited it, and a handle must not be awaited twice):
        // what it made goes with the handle.
        if self.task.is_finished() {
            return;
        }
        // The blocking side ends once its channel closes: replace the sender, dropping ours.
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        let _ = (&mut self.task).await;
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
    limits: InflationLimits,
    stop: Arc<AtomicBool>,
) -> Result<Saved, UploadError> {
    let result = store_upload(&mut rx, part, dest, limits, stop);
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
    limits: InflationLimits,
    stop: Arc<AtomicBool>,
) -> Result<Saved, UploadError> {
    // However this thread ends (a write fails, the client goes away), the reader stops at its
    // next read instead of inflating what it was handed already.
    let _stop_reader = StopOnDrop(stop.clone());
    let (to_reader, chunks) = std::sync::mpsc::sync_channel::<Bytes>(16);
    let reader = std::thread::Builder::new()
        .name("layout".into())
        .spawn(move || {
            let chunks = ChunkReader {
                rx: chunks,
                chunk: Bytes::new(),
            };
            layout::inspect_within(chunks, limits, &stop)
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

/// Sets a stop flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reads a project's tarball, its gzip stream inflated within `meter`'s bounds, and stages its
/// files.
fn import_tar_gz(
    reader: impl Read,
    storage: &Storage,
    limits: &ProjectLimits,
    existing: &HashSet<String>,
    meter: layout::Meter<'_>,
) -> Result<Vec<(String, StagedBlob)>, UploadError> {
    let (max_file, max_total, max_files) = (
        limits.max_file_size,
        limits.max_project_size,
        limits.max_files,
    );
    let mut gz = io::BufReader::new(reader);
    if !io::BufRead::fill_buf(&mut gz)?.starts_with(&[0x1f, 0x8b]) {
        return Err(UploadError::Rejected(
            "expected a .tar.gz of source files (the body is not gzip)".into(),
        ));
    }
    let gunzip = flate2::bufread::MultiGzDecoder::new(meter.compressed(gz));
    let mut archive = tar::Archive::new(meter.inflated(gunzip, "the tarball"));
    let mut files: Vec<(String, StagedBlob)> = vec![];
    // Where each path is in `files` (a path given twice keeps its last content).
    let mut index: HashMap<String, usize> = HashMap::new();
    // Paths the project does not hold yet.
    let mut new_paths = 0usize;
    // Files read, a path given twice counted twice: each costs a staged blob.
    let mut file_entries = 0usize;
    let mut folders = 0usize;
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
            // Folders cost nothing to store, but reading a million of them would.
            folders += 1;
            if folders > max_files {
                return Err(UploadError::Oversize(format!(
                    "the tarball holds more than {max_files} folders, the limit of files a project (projects.max_files)"
                )));
            }
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
                crate::units::human_bytes(max_file)
            )));
        }
        if !index.contains_key(path) && !existing.contains(path) {
            new_paths += 1;
            if existing.len() + new_paths > max_files {
                let held = if existing.is_empty() {
                    String::new()
                } else {
                    format!(" (it holds {} already)", existing.len())
                };
                return Err(UploadError::Oversize(format!(
                    "the import would give the project more than the limit of {max_files} files{held} (projects.max_files)"
                )));
            }
        }
        file_entries += 1;
        if file_entries > max_files {
            return Err(UploadError::Oversize(format!(
                "the tarball holds more than {max_files} files, the limit of files a project (projects.max_files): a path given twice counts twice"
            )));
        }
        total += size;
        if total > max_total {
            return Err(UploadError::Oversize(format!(
                "the tarball holds more than the limit of {} a project (projects.max_project_size)",
                crate::units::human_bytes(max_total)
            )));
        }
        let path = path.to_string();
        let staged = stage_blob(EntryReads(entry), storage.blob_part()).map_err(|e| {
            match e.get_ref().and_then(|i| i.downcast_ref::<EntryReadError>()) {
                // The tarball's bytes broke off or are corrupt inside a file: the client's to fix.
                Some(EntryReadError(inner)) => {
                    UploadError::Rejected(format!("the tarball cannot be read: {inner}"))
                }
                None => stop_error(e),
            }
        })?;
        if staged.size != size {
            return Err(UploadError::Rejected(format!(
                "the tarball cannot be read: it ends inside {path:?}, after {} of its {size} bytes",
                staged.size
            )));
        }
        match index.get(&path) {
            Some(&i) => files[i].1 = staged,
            None => {
                index.insert(path.clone(), files.len());
                files.push((path, staged));
            }
        }
    }
    Ok(files)
}

/// The content of a tarball entry, its read errors marked as the tarball's (so that they are told
/// apart from the staging file's write errors, which are the server's). A stop of the
/// [`layout::Meter`] passes unmarked.
struct EntryReads<R>(R);

#[derive(Debug)]
struct EntryReadError(io::Error);

impl std::fmt::Display for EntryReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for EntryReadError {}

impl<R: Read> Read for EntryReads<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if layout::stopped(&e).is_some() || e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(e.kind(), EntryReadError(e))
            }
        })
    }
}

/// A broken tarball or gzip stream is the client's to fix; the end of the data is truncation.
fn tar_error(e: io::Error) -> UploadError {
    if e.kind() == io::ErrorKind::ConnectionAborted || layout::stopped(&e).is_some() {
        return stop_error(e);
    }
    UploadError::Rejected(format!("the tarball cannot be read: {e}"))
}

/// A read stopped by the tarball's [`layout::Meter`]: past a bound of inflation (the client's
/// to fix, named in the message) or abandoned by the client.
fn stop_error(e: io::Error) -> UploadError {
    match layout::stopped(&e) {
        Some(layout::Stop::Limit(message)) => UploadError::Rejected(message.clone()),
        Some(layout::Stop::Abandoned) => {
            io::Error::new(io::ErrorKind::ConnectionAborted, "upload aborted").into()
        }
        None => e.into(),
    }
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

/// Opens the regular file at `path` without following a link, with its length; `None` if there
/// is no regular file there (nothing, a symlink, a folder, a fifo, a device).
pub fn open_regular(path: &Path) -> io::Result<Option<(File, u64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    // O_NOFOLLOW: a link put there since is refused (ELOOP), never followed.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

/// Whether `path` is a folder itself, not a link to one.
fn is_real_dir(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens the regular file at `rel` (a checked relative path) under the folder `root`, with its
/// length; `None` if there is none. Neither `root` nor any part of the path may be a symlink:
/// files a container wrote are served, never what a link of theirs points to.
pub fn open_inside(root: &Path, rel: &str) -> io::Result<Option<(File, u64)>> {
    if !is_real_dir(root)? {
        return Ok(None);
    }
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    let Some((last, folders)) = parts.split_last() else {
        return Ok(None);
    };
    for part in folders {
        path.push(part);
        if !is_real_dir(&path)? {
            return Ok(None);
        }
    }
    path.push(last);
    open_regular(&path)
}

/// Writes `dir` as a gzip'd tar whose entries start with `prefix/`: its folders and regular
/// files only. Nothing is followed: a symlink (or fifo, or device) is left out, and so is
/// everything if `dir` itself is not a folder, so nothing outside `dir` is read.
pub fn write_tar_gz(dir: &Path, prefix: &str, out: impl Write) -> io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    if is_real_dir(dir)? {
        let mut pending = vec![(dir.to_path_buf(), PathBuf::from(prefix))];
        while let Some((folder, name)) = pending.pop() {
            append_dir_entry(&mut tar, &folder, &name)?;
            let mut children = vec![];
            for entry in std::fs::read_dir(&folder)? {
                let entry = entry?;
                children.push((entry.file_name(), entry.file_type()?));
            }
            children.sort_by(|a, b| a.0.cmp(&b.0));
            // Folders are popped last-pushed first: push them in reverse to keep names sorted.
            for (child, kind) in children.iter().rev() {
                let path = folder.join(child);
                if kind.is_dir() {
                    pending.push((path, name.join(child)));
                }
            }
            for (child, kind) in &children {
                if kind.is_file()
                    && let Some((file, len)) = open_regular(&folder.join(child))?
                {
                    let mut header = tar::Header::new_gnu();
                    header.set_metadata_in_mode(&file.metadata()?, tar::HeaderMode::Complete);
                    header.set_size(len);
                    // A file that grows while it is read (a running precheck's log) is cut
                    // at the length its header says.
                    tar.append_data(&mut header, name.join(child), file.take(len))?;
                }
            }
        }
    }
    tar.into_inner()?.finish()?.flush()
}

fn append_dir_entry(
    tar: &mut tar::Builder<impl Write>,
    folder: &Path,
    name: &Path,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(
        &std::fs::symlink_metadata(folder)?,
        tar::HeaderMode::Complete,
    );
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    tar.append_data(&mut header, name, io::empty())
}

/// At most this many entries a copy skipped are named; the rest are counted.
pub const MAX_SKIPPED_NAMED: usize = 100;

/// What [`unpack_tree`] did not keep of a container's files.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// One line per entry not kept (the first [`MAX_SKIPPED_NAMED`]), e.g.
    /// `skipped symlink "/work/x" -> "/etc"`.
    pub skipped: Vec<String>,
    /// Entries not kept beyond those named.
    pub unnamed: u64,
}

impl Unpacked {
    fn skip(&mut self, line: String) {
        if self.skipped.len() < MAX_SKIPPED_NAMED {
            self.skipped.push(line);
        } else {
            self.unnamed += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.skipped.is_empty() && self.unnamed == 0
    }

    /// Adds what another copy skipped.
    pub fn extend(&mut self, other: Unpacked) {
        for line in other.skipped {
            self.skip(line);
        }
        self.unnamed += other.unnamed;
    }
}

/// A name a container chose, as a quoted, escaped string of bounded length for a log line.
fn quoted(bytes: &[u8]) -> String {
    const MAX: usize = 240;
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Unpacks a tar of `path` as a container's engine hands it (its names start with `path`'s last
/// component: `/work` gives `work/...`) into `dest`, keeping only regular files and folders.
/// Symlinks, hard links, fifos and devices are never created, and never followed: each is
/// skipped, at every level and also when it is `path` itself, and named in the answer (as a
/// path in the container) for the run's log. So are entries with `..` or another root. Every
/// file is created below folders this call made or checked are folders, and opened with
/// `O_NOFOLLOW`.
pub fn unpack_tree(reader: impl Read, path: &str, dest: &Path) -> io::Result<Unpacked> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::create_dir_all(dest)?;
    if !is_real_dir(dest)? {
        return Err(io::Error::other(format!(
            "{} is not a folder",
            dest.display()
        )));
    }
    let container = Path::new(path);
    let root = container.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
    let parent = container
        .parent()
        .map(|p| p.as_os_str().as_bytes())
        .unwrap_or(b"");
    let parent = parent.strip_suffix(b"/").unwrap_or(parent);
    // The name an entry had in the container, for the log.
    let shown = |parts: &[&[u8]]| -> String {
        let mut full = parent.to_vec();
        for part in parts {
            full.push(b'/');
            full.extend_from_slice(part);
        }
        quoted(&full)
    };
    let mut unpacked = Unpacked::default();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes().into_owned();
        let parts: Vec<&[u8]> = raw
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .collect();
        let kind = entry.header().entry_type();
        if parts.is_empty()
            || matches!(
                kind,
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
            )
        {
            continue;
        }
        if parts.contains(&&b".."[..]) || parts[0] != root || raw.starts_with(b"/") {
            unpacked.skip(format!(
                "skipped {}: it is not a path below {}",
                quoted(&raw),
                quoted(container.as_os_str().as_bytes())
            ));
            continue;
        }
        let name = shown(&parts);
        let what = if kind.is_dir() || kind.is_file() || kind == tar::EntryType::Continuous {
            None
        } else if kind.is_symlink() {
            let target = entry.link_name_bytes().unwrap_or_default();
            Some(format!("skipped symlink {name} -> {}", quoted(&target)))
        } else if kind.is_hard_link() {
            let target = entry.link_name_bytes().unwrap_or_default();
            let target: Vec<&[u8]> = target
                .split(|b| *b == b'/')
                .filter(|p| !p.is_empty())
                .collect();
            Some(format!("skipped hard link {name} -> {}", shown(&target)))
        } else if kind.is_fifo() {
            Some(format!("skipped fifo {name}"))
        } else if kind.is_character_special() || kind.is_block_special() {
            Some(format!("skipped device {name}"))
        } else {
            Some(format!(
                "skipped {name}: an entry of tar type {:?}",
                kind.as_byte() as char
            ))
        };
        if let Some(line) = what {
            unpacked.skip(line);
            continue;
        }
        // Each folder on the way is one this copy made, or a folder (not a link) already.
        let folders = if kind.is_dir() {
            &parts[..]
        } else {
            &parts[..parts.len() - 1]
        };
        let mut at = dest.to_path_buf();
        let mut blocked = None;
        for (i, part) in folders.iter().enumerate() {
            at.push(std::ffi::OsStr::from_bytes(part));
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    blocked = Some(shown(&parts[..=i]));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
                Err(e) => return Err(e),
            }
        }
        if let Some(folder) = blocked {
            unpacked.skip(format!("skipped {name}: {folder} is not a folder"));
            continue;
        }
        if kind.is_dir() {
            continue;
        }
        at.push(std::ffi::OsStr::from_bytes(parts[parts.len() - 1]));
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if !meta.is_file() => {
                unpacked.skip(format!(
                    "skipped {name}: something that is not a file has that name"
                ));
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&at);
        let mut file = match opened {
            Ok(file) if file.metadata()?.is_file() => file,
            Ok(_) => {
                unpacked.skip(format!(
                    "skipped {name}: something that is not a file has that name"
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        io::copy(&mut entry, &mut file)?;
        if let Ok(mtime) = entry.header().mtime() {
            let _ =
                file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
        }
    }
    Ok(unpacked)
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
        let mut w = storage.upload_writer(id, Default::default());
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
        let mut w = storage.upload_writer(id, Default::default());
        let _ = w.write(Bytes::from_static(b"hello world")).await;
        let e = w.finish().await.unwrap_err();
        assert!(matches!(e, UploadError::Layout(_)), "{e}");
        assert!(!storage.upload_path(id).exists());

        // A fault stops the upload at once: the chunks after it are refused, not stored.
        let id = Uuid::new_v4();
        let mut w = storage.upload_writer(id, Default::default());
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
        let mut w = storage.upload_writer(id, Default::default());
        w.write(Bytes::from_static(b"partial")).await.unwrap();
        drop(w);
        // The blocking side removes the part once it sees the writer gone (on a busy machine it
        // may only now be creating it): wait for an empty folder that stays empty.
        let tmp = dir.path().join("tmp");
        let count = || std::fs::read_dir(&tmp).unwrap().count();
        let mut empty_since = None;
        for _ in 0..1000 {
            match (count(), empty_since) {
                (0, None) => empty_since = Some(std::time::Instant::now()),
                (0, Some(t)) if t.elapsed() > std::time::Duration::from_millis(300) => break,
                (0, Some(_)) => {}
                _ => empty_since = None,
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 0);
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

    /// A tar entry written header byte by header byte, so names `tar::Builder` refuses (`..`,
    /// absolute) can be made as a hostile engine or container could.
    fn raw_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        name: impl AsRef<[u8]>,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) {
        let name = name.as_ref();
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }

    /// Every path below `dir`, with `/` after folders' names; links and others are listed too.
    fn tree(dir: &Path) -> Vec<String> {
        let mut found = vec![];
        let mut pending = vec![dir.to_path_buf()];
        while let Some(at) = pending.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let entry = entry.unwrap();
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                if entry.file_type().unwrap().is_dir() {
                    found.push(format!("{rel}/"));
                    pending.push(entry.path());
                } else {
                    found.push(rel);
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn unpack_keeps_only_files_and_folders_and_names_the_rest() {
        use tar::EntryType as T;
        let mut tar = tar::Builder::new(vec![]);
        raw_entry(&mut tar, "work/", T::Directory, "", b"");
        raw_entry(&mut tar, "work/a.txt", T::Regular, "", b"a");
        raw_entry(&mut tar, "./work/sub/b.txt", T::Regular, "", b"b");
        raw_entry(&mut tar, "work/link", T::Symlink, "/etc", b"");
        raw_entry(&mut tar, "work/hard", T::Link, "work/a.txt", b"");
        raw_entry(&mut tar, "work/fifo", T::Fifo, "", b"");
        raw_entry(&mut tar, "work/tty", T::Char, "", b"");
        raw_entry(&mut tar, "work/../evil", T::Regular, "", b"x");
        raw_entry(&mut tar, "/work/abs", T::Regular, "", b"x");
        raw_entry(&mut tar, "other/x", T::Regular, "", b"x");
        raw_entry(
            &mut tar,
            "work/bad\nname",
            T::Symlink,
            "/etc\n2026 forged line",
            b"",
        );
        let bytes = tar.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack_tree(&bytes[..], "/work", dir.path()).unwrap();
        assert_eq!(
            tree(dir.path()),
            ["work/", "work/a.txt", "work/sub/", "work/sub/b.txt"]
        );
        assert_eq!(
            std::fs::read(dir.path().join("work/sub/b.txt")).unwrap(),
            b"b"
        );
        assert_eq!(
            unpacked.skipped,
            [
                r#"skipped symlink "/work/link" -> "/etc""#,
                r#"skipped hard link "/work/hard" -> "/work/a.txt""#,
                r#"skipped fifo "/work/fifo""#,
                r#"skipped device "/work/tty""#,
                r#"skipped "work/../evil": it is not a path below "/work""#,
                r#"skipped "/work/abs": it is not a path below "/work""#,
                r#"skipped "other/x": it is not a path below "/work""#,
                r#"skipped symlink "/work/bad\nname" -> "/etc\n2026 forged line""#,
            ]
        );
        assert_eq!(unpacked.unnamed, 0);
    }

    #[test]
    fn a_root_that_is_a_link_or_a_file_below_a_file_is_skipped() {
        use tar::EntryType as T;
        let mut tar = tar::Builder::new(vec![]);
        raw_entry(&mut tar, "tag", T::Symlink, "/home", b"");
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack_tree(
            &tar.into_inner().unwrap()[..],
            "/project/runs/tag",
            dir.path(),
        )
        .unwrap();
        assert_eq!(tree(dir.path()), Vec::<String>::new());
        assert_eq!(
            unpacked.skipped[0],
            r#"skipped symlink "/project/runs/tag" -> "/home""#
        );

        let mut tar = tar::Builder::new(vec![]);
        raw_entry(&mut tar, "work", T::Regular, "", b"a file");
        raw_entry(&mut tar, "work/x", T::Regular, "", b"x");
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack_tree(&tar.into_inner().unwrap()[..], "/work", dir.path()).unwrap();
        assert_eq!(tree(dir.path()), ["work"]);
        assert_eq!(
            unpacked.skipped,
            [r#"skipped "/work/x": "/work" is not a folder"#]
        );
    }

    #[test]
    fn unpack_never_follows_a_link_already_in_its_folder() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("kept"), b"host").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("work/sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("kept"), dir.path().join("work/a")).unwrap();
        let mut tar = tar::Builder::new(vec![]);
        raw_entry(&mut tar, "work/sub/new", tar::EntryType::Regular, "", b"x");
        raw_entry(&mut tar, "work/a", tar::EntryType::Regular, "", b"x");
        let unpacked = unpack_tree(&tar.into_inner().unwrap()[..], "/work", dir.path()).unwrap();
        assert_eq!(unpacked.skipped.len(), 2, "{:?}", unpacked.skipped);
        assert_eq!(tree(outside.path()), ["kept"]);
        assert_eq!(std::fs::read(outside.path().join("kept")).unwrap(), b"host");

        // A destination that is itself a link is refused.
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(outside.path(), &linked).unwrap();
        let mut tar = tar::Builder::new(vec![]);
        raw_entry(&mut tar, "work/x", tar::EntryType::Regular, "", b"x");
        assert!(unpack_tree(&tar.into_inner().unwrap()[..], "/work", &linked).is_err());
        assert_eq!(tree(outside.path()), ["kept"]);
    }

    #[test]
    fn skipped_entries_beyond_the_bound_are_counted() {
        let mut tar = tar::Builder::new(vec![]);
        for i in 0..MAX_SKIPPED_NAMED + 50 {
            raw_entry(
                &mut tar,
                format!("w/l{i}"),
                tar::EntryType::Symlink,
                "/",
                b"",
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack_tree(&tar.into_inner().unwrap()[..], "/w", dir.path()).unwrap();
        assert_eq!(unpacked.skipped.len(), MAX_SKIPPED_NAMED);
        assert_eq!(unpacked.unnamed, 50);
    }

    #[test]
    fn tarballs_and_reads_of_run_folders_follow_no_link() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("sub")).unwrap();
        std::fs::write(run.join("sub/real"), b"real").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), run.join("file-link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), run.join("dir-link")).unwrap();
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(outside.path(), &linked).unwrap();

        let names = |dir: &Path| {
            let mut bytes = vec![];
            write_tar_gz(dir, "p", &mut bytes).unwrap();
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
            archive
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    assert!(e.header().entry_type().is_file() || e.header().entry_type().is_dir());
                    e.path().unwrap().display().to_string()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&run), ["p", "p/sub", "p/sub/real"]);
        assert_eq!(names(&linked), Vec::<String>::new());

        assert!(open_inside(&run, "sub/real").unwrap().is_some());
        for rel in ["file-link", "dir-link/secret", "sub", "missing"] {
            assert!(open_inside(&run, rel).unwrap().is_none(), "{rel}");
        }
        assert!(open_inside(&linked, "secret").unwrap().is_none());
        assert!(open_regular(&run.join("file-link")).unwrap().is_none());
    }

    /// The limits of the import tables: 1 KiB a file, 2 KiB a project, 3 files.
    fn small_limits() -> ProjectLimits {
        ProjectLimits {
            max_file_size: 1024,
            max_project_size: 2048,
            max_files: 3,
        }
    }

    fn roomy_limits() -> ProjectLimits {
        ProjectLimits {
            max_file_size: 1 << 30,
            max_project_size: 1 << 30,
            max_files: 100_000,
        }
    }

    /// Each staged file's path, size and sha256.
    fn staged_as(files: &[(String, StagedBlob)]) -> Vec<(&str, u64, String)> {
        files
            .iter()
            .map(|(path, blob)| (path.as_str(), blob.size, blob.sha256.clone()))
            .collect()
    }

    /// Bytes that do not compress, so that a cut of their gzip lands inside them.
    fn pseudo_random(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// One tar entry: its name as raw bytes, its kind, its link's target and its content.
    type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a str, &'a [u8]);

    /// A tar of `entries`, each written byte for byte.
    fn tar_of(entries: &[RawEntry]) -> Vec<u8> {
        let mut tar = tar::Builder::new(vec![]);
        for (name, kind, link, data) in entries {
            raw_entry(&mut tar, name, *kind, link, data);
        }
        tar.into_inner().unwrap()
    }

    fn tar_gz(entries: &[RawEntry]) -> Vec<u8> {
        gzip(&tar_of(entries))
    }

    /// A `.tar.gz` of regular files.
    fn files_tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let entries: Vec<RawEntry> = files
            .iter()
            .map(|(name, data)| (name.as_bytes(), tar::EntryType::Regular, "", *data))
            .collect();
        tar_gz(&entries)
    }

    /// A `.tar.gz` of `n` folders.
    fn folders_tar_gz(n: usize) -> Vec<u8> {
        let names: Vec<String> = (0..n).map(|i| format!("d{i}/")).collect();
        let entries: Vec<RawEntry> = names
            .iter()
            .map(|n| (n.as_bytes(), tar::EntryType::Directory, "", &b""[..]))
            .collect();
        tar_gz(&entries)
    }

    /// Runs the importer over `body` as for a project that holds `existing`.
    fn import(
        storage: &Storage,
        body: &[u8],
        limits: &ProjectLimits,
        existing: &[&str],
        inflation: InflationLimits,
    ) -> Result<Vec<(String, StagedBlob)>, UploadError> {
        let stop = AtomicBool::new(false);
        let existing = existing.iter().map(|p| p.to_string()).collect();
        import_tar_gz(
            body,
            storage,
            limits,
            &existing,
            layout::Meter::new(inflation, &stop),
        )
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Refusal {
        /// A rule of what may be stored (400).
        Rejected,
        /// A limit (413).
        Oversize,
    }

    fn refusal(result: Result<Vec<(String, StagedBlob)>, UploadError>) -> (Refusal, String) {
        match result {
            Err(UploadError::Rejected(m)) => (Refusal::Rejected, m),
            Err(UploadError::Oversize(m)) => (Refusal::Oversize, m),
            Err(e) => panic!("not a refusal: {e:?}"),
            Ok(files) => panic!(
                "imported {:?}",
                files.iter().map(|f| &f.0).collect::<Vec<_>>()
            ),
        }
    }

    /// Files in `tmp/`: the blobs staged and not yet dropped.
    fn staged_parts(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    fn sha256_hex(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    #[test]
    fn tarball_import_refuses_each_rule_with_its_message() {
        use Refusal::{Oversize, Rejected};
        use tar::EntryType as T;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let kib = [b'k'; 1024];
        let ok: RawEntry = (b"ok.v", T::Regular, "", b"x");
        let not_gzip = "expected a .tar.gz of source files (the body is not gzip)";
        // What, the body, the paths the project holds, the refusal and its message.
        type Case<'a> = (&'a str, Vec<u8>, &'a [&'a str], Refusal, &'a str);
        let cases: Vec<Case> = vec![
            (
                "a body that is not gzip",
                b"just text".to_vec(),
                &[],
                Rejected,
                not_gzip,
            ),
            ("an empty body", vec![], &[], Rejected, not_gzip),
            ("a tar not gzip'd", tar_of(&[ok]), &[], Rejected, not_gzip),
            (
                "a name that is not UTF-8",
                tar_gz(&[ok, (b"src/\xff.v", T::Regular, "", b"x")]),
                &[],
                Rejected,
                "a tarball entry's name is not UTF-8",
            ),
            (
                "a symlink",
                tar_gz(&[ok, (b"src/link.v", T::Symlink, "/etc/passwd", b"")]),
                &[],
                Rejected,
                r#"the tarball entry "src/link.v" is a symbolic link: only files and folders are imported"#,
            ),
            (
                "a hard link",
                tar_gz(&[ok, (b"hard.v", T::Link, "ok.v", b"")]),
                &[],
                Rejected,
                r#"the tarball entry "hard.v" is a hard link: only files and folders are imported"#,
            ),
            (
                "a fifo",
                tar_gz(&[ok, (b"fifo", T::Fifo, "", b"")]),
                &[],
                Rejected,
                r#"the tarball entry "fifo" is not a regular file: only files and folders are imported"#,
            ),
            (
                "a character device",
                tar_gz(&[ok, (b"dev/tty", T::Char, "", b"")]),
                &[],
                Rejected,
                r#"the tarball entry "dev/tty" is not a regular file: only files and folders are imported"#,
            ),
            (
                "an absolute path",
                tar_gz(&[ok, (b"/etc/evil.v", T::Regular, "", b"x")]),
                &[],
                Rejected,
                r#"tarball entry: the path "/etc/evil.v" is absolute: give it relative to the project, e.g. src/top.v"#,
            ),
            (
                "a leading ..",
                tar_gz(&[ok, (b"../evil.v", T::Regular, "", b"x")]),
                &[],
                Rejected,
                r#"tarball entry: the path "../evil.v" contains '..'"#,
            ),
            (
                "a .. after ./",
                tar_gz(&[(b"./src/../../evil.v", T::Regular, "", b"x")]),
                &[],
                Rejected,
                r#"tarball entry: the path "src/../../evil.v" contains '..'"#,
            ),
            (
                "a '.' part past the start",
                tar_gz(&[(b"src/./a.v", T::Regular, "", b"x")]),
                &[],
                Rejected,
                r#"tarball entry: the path "src/./a.v" has an empty or '.' part"#,
            ),
            (
                "an entry larger than max_file_size",
                files_tar_gz(&[("./src/big.v", &[b'b'; 1025])]),
                &[],
                Oversize,
                r#"the tarball entry "src/big.v" is larger than the limit of 1 KiB a file (projects.max_file_size)"#,
            ),
            (
                "more folders than max_files",
                folders_tar_gz(4),
                &[],
                Oversize,
                "the tarball holds more than 3 folders, the limit of files a project (projects.max_files)",
            ),
            (
                "more new paths than max_files",
                files_tar_gz(&[("a.v", b"a"), ("b.v", b"b"), ("c.v", b"c"), ("d.v", b"d")]),
                &[],
                Oversize,
                "the import would give the project more than the limit of 3 files (projects.max_files)",
            ),
            (
                "more new paths than the project has room for",
                files_tar_gz(&[("a.v", b"a"), ("b.v", b"b")]),
                &["old1.v", "old2.v"],
                Oversize,
                "the import would give the project more than the limit of 3 files (it holds 2 already) (projects.max_files)",
            ),
            (
                "a new path in a full project",
                files_tar_gz(&[("a.v", b"a"), ("d.v", b"d")]),
                &["a.v", "b.v", "c.v"],
                Oversize,
                "the import would give the project more than the limit of 3 files (it holds 3 already) (projects.max_files)",
            ),
            (
                "a path given twice counts twice",
                files_tar_gz(&[("a.v", b"1"), ("a.v", b"2"), ("./a.v", b"3"), ("a.v", b"4")]),
                &[],
                Oversize,
                "the tarball holds more than 3 files, the limit of files a project (projects.max_files): a path given twice counts twice",
            ),
            (
                "more bytes in all than max_project_size",
                files_tar_gz(&[("a.v", &kib), ("b.v", &kib), ("c.v", b"c")]),
                &[],
                Oversize,
                "the tarball holds more than the limit of 2 KiB a project (projects.max_project_size)",
            ),
        ];
        for (what, body, existing, kind, message) in cases {
            let got = refusal(import(
                &storage,
                &body,
                &small_limits(),
                existing,
                Default::default(),
            ));
            assert_eq!(got, (kind, message.to_string()), "{what}");
            assert_eq!(
                staged_parts(dir.path()),
                0,
                "{what}: nothing staged is left"
            );
        }
    }

    #[test]
    fn a_tarball_that_cannot_be_read_or_inflates_too_far_is_refused() {
        use tar::EntryType as T;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let whole = tar_of(&[
            (b"a.v", T::Regular, "", &[b'a'; 600]),
            (b"b.v", T::Regular, "", &[b'b'; 600]),
        ]);
        // a.v is its header and two blocks; then b.v's header.
        let next_header = 512 + 1024;
        // A first gzip member that ends after a.v, then a second one cut inside its stream.
        let mut member_cut = gzip(&whole[..next_header]);
        let second = gzip(&whole[next_header..]);
        member_cut.extend_from_slice(&second[..second.len() / 2]);
        let cannot_be_read = [
            (
                "a gzip stream cut before any tar block",
                gzip(&whole)[..12].to_vec(),
            ),
            ("a gzip member cut at the next header", member_cut),
            ("a tar cut inside its first header", gzip(&whole[..100])),
            ("a tar cut inside a file", gzip(&whole[..512 + 300])),
            // The gzip stream itself breaks off inside a file's content (issue 14: was a 500).
            ("a gzip stream cut inside a file", {
                let big = files_tar_gz(&[("big.v", &pseudo_random(100_000))]);
                big[..big.len() / 2].to_vec()
            }),
            (
                "a tar cut inside the next header",
                gzip(&whole[..next_header + 100]),
            ),
        ];
        for (what, body) in cannot_be_read {
            let (kind, message) = refusal(import(
                &storage,
                &body,
                &roomy_limits(),
                &[],
                Default::default(),
            ));
            assert_eq!(kind, Refusal::Rejected, "{what}: {message}");
            assert!(
                message.starts_with("the tarball cannot be read: "),
                "{what}: {message}"
            );
            assert_eq!(
                staged_parts(dir.path()),
                0,
                "{what}: nothing staged is left"
            );
        }

        // Inflation is bounded while a file's content is read, and while headers are.
        let zeros = files_tar_gz(&[("zeros.v", &vec![0u8; 200_000])]);
        let headers = folders_tar_gz(1000);
        let at_most = InflationLimits {
            max_inflated: 64 << 10,
            ..Default::default()
        };
        let ratio = InflationLimits {
            max_ratio: 10,
            ratio_floor: 1024,
            ..Default::default()
        };
        for (what, body) in [("file content", &zeros), ("headers", &headers)] {
            let got = refusal(import(&storage, body, &roomy_limits(), &[], at_most));
            let past = "the tarball inflates to more than 64 KiB, the server's limit (server.max_inflated_size)";
            assert_eq!(got, (Refusal::Rejected, past.to_string()), "{what}");
            let (kind, message) = refusal(import(&storage, body, &roomy_limits(), &[], ratio));
            assert_eq!(kind, Refusal::Rejected, "{what}: {message}");
            assert!(
                message.starts_with(
                    "the tarball inflates to more than 10 times its compressed size ("
                ) && message
                    .ends_with("): refused as a decompression bomb (server.max_inflation_ratio)"),
                "{what}: {message}"
            );
            assert_eq!(
                staged_parts(dir.path()),
                0,
                "{what}: nothing staged is left"
            );
        }
        // Within the bounds, the same tarballs are imported.
        let within = |body: &[u8]| {
            import(&storage, body, &roomy_limits(), &[], Default::default())
                .unwrap()
                .len()
        };
        assert_eq!(within(&zeros), 1);
        assert_eq!(within(&headers), 0);

        // A client gone away (the writer dropped) is not a refusal.
        let stop = AtomicBool::new(true);
        let e = import_tar_gz(
            &zeros[..],
            &storage,
            &roomy_limits(),
            &HashSet::new(),
            layout::Meter::new(Default::default(), &stop),
        )
        .unwrap_err();
        assert!(
            matches!(&e, UploadError::Io(e) if e.kind() == io::ErrorKind::ConnectionAborted),
            "{e:?}"
        );
    }

    #[test]
    fn a_good_tarball_is_staged_path_by_path() {
        use tar::EntryType as T;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let a = [b'a'; 1024];
        let tb = vec![b't'; 1000];
        let readme = b"a counter, a test bench\n";
        assert_eq!(a.len() + tb.len() + readme.len(), 2048);
        // At each limit (a file's size, the project's, three folders, three files), not past.
        let body = tar_gz(&[
            (b"./", T::Directory, "", b""),
            (b"./src/", T::Directory, "", b""),
            (b"./src/a.v", T::Regular, "", &a),
            (b"tb/", T::Directory, "", b""),
            (b"tb/tb.v", T::Regular, "", &tb),
            (b"././README", T::Regular, "", readme),
        ]);
        let files = import(&storage, &body, &small_limits(), &[], Default::default()).unwrap();
        let got = staged_as(&files);
        assert_eq!(
            got,
            [
                ("src/a.v", 1024, sha256_hex(&a)),
                ("tb/tb.v", 1000, sha256_hex(&tb)),
                ("README", 24, sha256_hex(readme)),
            ]
        );
        assert_eq!(std::fs::read(&files[0].1.part).unwrap(), a);
        assert_eq!(std::fs::read(&files[2].1.part).unwrap(), readme);
        assert_eq!(staged_parts(dir.path()), 3);
        drop(files);
        assert_eq!(
            staged_parts(dir.path()),
            0,
            "an uncommitted blob is removed"
        );

        // The paths the project holds already are replaced, not counted as new.
        let body = files_tar_gz(&[("a.v", b"a"), ("b.v", b"b"), ("c.v", b"c")]);
        let existing = ["a.v", "b.v", "c.v"];
        let files = import(
            &storage,
            &body,
            &small_limits(),
            &existing,
            Default::default(),
        );
        assert_eq!(files.unwrap().len(), 3);
    }

    #[test]
    fn a_path_given_twice_keeps_its_last_content() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let body = files_tar_gz(&[("a.v", b"first"), ("b.v", b"b"), ("./a.v", b"second")]);
        let files = import(&storage, &body, &small_limits(), &[], Default::default()).unwrap();
        let got = staged_as(&files);
        assert_eq!(
            got,
            [
                ("a.v", 6, sha256_hex(b"second")),
                ("b.v", 1, sha256_hex(b"b"))
            ]
        );
        assert_eq!(std::fs::read(&files[0].1.part).unwrap(), b"second");
        // The content it replaced is not left staged.
        assert_eq!(staged_parts(dir.path()), 2);
    }
}
