//! A run's log file as the runner writes it: the container's messages appended as they arrive
//! (engine replays left out, followers woken after each flush, a build's progress followed), and
//! the server's own notes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use uuid::Uuid;

use crate::db::Db;
use crate::logs;
use crate::model::{Outcome, Progress};
use crate::progress;

/// How often a busy log is flushed to its file (and its followers woken).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A build's progress as its log goes by, recorded when it changes.
pub(super) struct ProgressState {
    pub db: Db,
    pub run_id: Uuid,
    pub progress: Progress,
}

pub(super) type Tracker = Arc<std::sync::Mutex<ProgressState>>;

/// Feeds one log message to a build's tracker; returns what to record, if it changed.
fn track(tracker: &Tracker, message: &[u8]) -> Option<(Db, Uuid, Progress)> {
    let text = String::from_utf8_lossy(message);
    let mut state = tracker.lock().ok()?;
    let next = progress::advance(&state.progress, &text)?;
    state.progress = next.clone();
    Some((state.db.clone(), state.run_id, next))
}

/// Appends the container's log messages to the run's log file as they arrive, after skipping
/// the first `skip`, publishing the file's length after each batch so followers wake. Messages
/// the engine sends again ([`Replays`]) are neither appended nor counted. Returns how many
/// messages the file now holds (`skip` if the stream had fewer).
pub(super) async fn append_logs(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes>> + Send + 'static,
    path: std::path::PathBuf,
    log_len: watch::Sender<u64>,
    skip: usize,
    tracker: Option<Tracker>,
    log_bytes: IntCounter,
) -> Result<usize> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut log = LogFile {
        durable: file.metadata().await?.len(),
        out: tokio::io::BufWriter::with_capacity(64 * 1024, file),
        log_len,
        log_bytes,
    };
    let appended = log.append(stream, skip, tracker).await;
    if appended.is_err() {
        // A write that failed half-way (a full disk) leaves no half line behind: the file goes
        // back to its last complete line, which the next note starts after.
        let _ = log.out.get_ref().set_len(log.durable).await;
    }
    let (seen, replayed) = appended?;
    if replayed > 0 {
        tracing::info!(
            log = %path.display(),
            "the engine sent {replayed} log messages a second time (a json-file rotation); they were left out"
        );
    }
    Ok(seen.max(skip))
}

/// A run's log file as [`append_logs`] writes it.
struct LogFile {
    out: tokio::io::BufWriter<tokio::fs::File>,
    /// The file's length after its last flush: whole lines only.
    durable: u64,
    log_len: watch::Sender<u64>,
    log_bytes: IntCounter,
}

impl LogFile {
    /// Writes what is buffered and tells followers.
    async fn flush(&mut self, len: u64) -> Result<()> {
        self.out.flush().await?;
        self.log_bytes.inc_by(len - self.durable);
        self.durable = len;
        self.log_len.send_replace(len);
        Ok(())
    }

    /// Returns how many messages the stream sent (replays left out) and how many replays.
    async fn append(
        &mut self,
        stream: impl futures_util::Stream<Item = Result<bytes::Bytes>> + Send + 'static,
        skip: usize,
        tracker: Option<Tracker>,
    ) -> Result<(usize, u64)> {
        let mut len = self.durable;
        let mut batches = std::pin::pin!(stream.ready_chunks(1024));
        let mut seen = 0;
        let mut replays = Replays::default();
        let mut replayed = 0u64;
        // Flushed at most every FLUSH_EVERY while lines pour in, and as soon as they pause: a
        // flush per message would cost a blocking write each.
        let mut dirty = false;
        let mut last_flush = tokio::time::Instant::now();
        loop {
            let next = if dirty {
                match tokio::time::timeout(FLUSH_EVERY, batches.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush(len).await?;
                        dirty = false;
                        last_flush = tokio::time::Instant::now();
                        continue;
                    }
                }
            } else {
                batches.next().await
            };
            let Some(batch) = next else { break };
            for message in batch {
                let message = message?;
                if !replays.is_new(&message) {
                    replayed += 1;
                    continue;
                }
                seen += 1;
                if seen <= skip {
                    continue;
                }
                if let Some(tracker) = &tracker
                    && let Some((db, run_id, progress)) = track(tracker, &message)
                    && let Err(e) = db.set_progress(run_id, progress).await
                {
                    tracing::warn!(%run_id, "cannot record the build's progress: {e:#}");
                }
                self.out.write_all(&message).await?;
                len += message.len() as u64;
                if !message.ends_with(b"\n") {
                    self.out.write_all(b"\n").await?;
                    len += 1;
                }
                dirty = true;
            }
            if dirty && last_flush.elapsed() >= FLUSH_EVERY {
                self.flush(len).await?;
                dirty = false;
                last_flush = tokio::time::Instant::now();
            }
        }
        self.flush(len).await?;
        Ok((seen, replayed))
    }
}

/// Tells a log message the engine sends again from one it sends for the first time. Docker
/// 20.10's followed log stream, when the container's json-file log rotates (`max-size`), can end
/// early (the runner then reads the rest unfollowed) or send the new file's messages a second
/// time: a replay, its messages stamped before the newest one taken. A message stamped before it
/// is not always a replay, though: the engine stamps stdout's and stderr's lines before it
/// writes them, in either order. So a message stamped no later than the newest is a replay if it
/// is one of the last [`Replays::WINDOW`] taken (same time, same bytes), or older than all of
/// them (a line written that late behind thousands of others is not a race of two streams).
#[derive(Default)]
struct Replays {
    newest: Option<i128>,
    /// The times and hashes of the last messages taken, oldest first, and the same as a set.
    recent: std::collections::VecDeque<(i128, u64)>,
    known: std::collections::HashSet<(i128, u64)>,
}

impl Replays {
    const WINDOW: usize = 16 * 1024;

    /// Whether `message` (`<RFC 3339 time> <text>`) is one the stream has not sent before; it
    /// is remembered as taken if so. Messages without a readable time are always new.
    fn is_new(&mut self, message: &[u8]) -> bool {
        let Some(time) = message_time(message) else {
            return true;
        };
        let key = (time, {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            message.hash(&mut hasher);
            hasher.finish()
        });
        match self.newest {
            Some(newest) if time <= newest => {
                let before_window = self.recent.len() == Self::WINDOW
                    && self
                        .recent
                        .front()
                        .is_some_and(|(oldest, _)| time < *oldest);
                if before_window || self.known.contains(&key) {
                    return false;
                }
            }
            _ => self.newest = Some(time),
        }
        if self.recent.len() == Self::WINDOW
            && let Some(old) = self.recent.pop_front()
        {
            self.known.remove(&old);
        }
        self.recent.push_back(key);
        self.known.insert(key);
        true
    }
}

/// The engine's time of a log message, in nanoseconds since the epoch.
fn message_time(message: &[u8]) -> Option<i128> {
    let end = message.iter().position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(&message[..end]).ok()?;
    let time =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(time.unix_timestamp_nanos())
}

/// Appends a line of the server's own to a run's log.
pub async fn note(path: &Path, text: &str) -> std::io::Result<()> {
    let line = format!(
        "{} [precheck-server] {text}\n",
        logs::stamp(time::OffsetDateTime::now_utc())
    );
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .await?;
    // A note starts a line of its own, whatever the file ends with.
    let len = file.metadata().await?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.seek(std::io::SeekFrom::Start(len - 1)).await?;
        file.read_exact(&mut last).await?;
    }
    let line = if last[0] == b'\n' {
        line
    } else {
        format!("\n{line}")
    };
    file.write_all(line.as_bytes()).await?;
    file.flush().await
}

pub fn finished_note(outcome: &Outcome) -> String {
    match &outcome.error {
        None => format!("run {} (exit code {})", outcome.status, outcome.exit_code),
        Some(e) => format!(
            "run {} (exit code {}): {e}",
            outcome.status, outcome.exit_code
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(nanos: u32, text: &str) -> Vec<u8> {
        format!("2026-12-02T16:23:34.{nanos:09}Z {text}\n").into_bytes()
    }

    #[test]
    fn replayed_log_messages_are_dropped_once_each() {
        let mut replays = Replays::default();
        let first: Vec<Vec<u8>> = (1..=5)
            .map(|i| stamped(i * 10, &format!("line {i}")))
            .collect();
        assert!(first.iter().all(|m| replays.is_new(m)));
        // After a rotation the engine sends lines 3 to 5 again, then goes on.
        assert!(first[2..].iter().all(|m| !replays.is_new(m)));
        assert!(replays.is_new(&stamped(60, "line 6")));
        // A stderr line stamped before the last stdout line is not a replay; a second copy is.
        let late = stamped(55, "an error");
        assert!(replays.is_new(&late));
        assert!(!replays.is_new(&late));
        // The same text at another time is another message; lines without a time always count.
        assert!(replays.is_new(&stamped(70, "line 6")));
        assert!(replays.is_new(b"no time here\n"));
        assert!(replays.is_new(b"no time here\n"));
    }

    #[test]
    fn a_replay_from_before_the_window_is_dropped() {
        let mut replays = Replays::default();
        let n = Replays::WINDOW as u32 + 100;
        let lines: Vec<Vec<u8>> = (0..n)
            .map(|i| stamped(i * 10, &format!("line {i}")))
            .collect();
        assert!(lines.iter().all(|m| replays.is_new(m)));
        assert!(lines.iter().all(|m| !replays.is_new(m)));
        assert!(replays.is_new(&stamped(n * 10, "next")));
        assert_eq!(replays.recent.len(), Replays::WINDOW);
        assert_eq!(replays.known.len(), Replays::WINDOW);
    }
}
