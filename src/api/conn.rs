//! The HTTP edge: accepting connections and holding each one to the `[http]` limits.
//!
//! `axum::serve` has no timeouts and no connection limit, so the server runs its own accept loop
//! over hyper's HTTP/1.1 connection:
//!
//! - at most `max_connections` connections are open; when they all are, the loop stops accepting
//!   (a new connection waits, unanswered, in the kernel's listen backlog) until one closes, and
//!   says so once per burst;
//! - a request's head must arrive within `header_read_timeout` of its first byte;
//! - a connection with no request in flight is closed after `idle_timeout`. A request is in flight
//!   from its head until its answer's body has ended or been dropped, so a `/wait`, a followed
//!   log, `/api/v1/events` or an upload that keeps coming in is never cut, however long it takes;
//! - a request whose body the server is waiting for, and which sends none of it for
//!   `idle_timeout`, is closed too: an upload that stalls holds no connection for ever;
//! - while a request is in flight, the socket's error is looked at every [`RESET_CHECK`]: a client that
//!   reset the connection (went away) has its request dropped at once, even while the handler
//!   reads nothing of it (an upload whose layout reader is behind), so its work stops;
//! - the answers hyper writes by itself when it cannot read a request (400 for a request line or
//!   header it cannot parse, such as raw non-ASCII bytes in the path, 414, 431) get a
//!   `{"message"}` body like every other error.
//!
//! On shutdown the loop stops accepting, every connection finishes the request it is answering
//! (and is then closed), and after `grace` those still open are dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Http;

/// The most header lines a request may have (hyper's default, set here to be named in the 431).
const MAX_HEADERS: usize = 100;
/// The most bytes of a request's head hyper buffers (its default: 8 KiB and 4 KiB per header
/// line); a longer head gets 431.
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// How often a connection with a request in flight is checked for a reset by its client.
const RESET_CHECK: Duration = Duration::from_millis(200);

/// Serves `app` on `listener` until `shutdown` completes, then gives open requests `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    http: Http,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let limits = Arc::new(http);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let closing = CancellationToken::new();
    let dropping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let service = TowerToHyperService::new(app);
    let mut full = false;
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                full = false;
                permit
            }
            Err(_) => {
                if !full {
                    tracing::warn!(
                        "{} connections are open (http.max_connections): new connections wait until one closes",
                        limits.max_connections
                    );
                    full = true;
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let connection = Connection {
            stream,
            peer,
            service: service.clone(),
            limits: limits.clone(),
            closing: closing.clone(),
            dropping: dropping.clone(),
        };
        tracker.spawn(async move {
            connection.serve().await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    closing.cancel();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::info!(
            "requests still open after {} s: closing them",
            grace.as_secs()
        );
        dropping.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    service: TowerToHyperService<Router>,
    limits: Arc<Http>,
    /// Cancelled at shutdown: finish the request in flight, then close.
    closing: CancellationToken,
    /// Cancelled when the shutdown's grace has passed: close now.
    dropping: CancellationToken,
}

impl Connection {
    async fn serve(self) {
        let Connection {
            stream,
            peer,
            service,
            limits,
            closing,
            dropping,
        } = self;
        // A second descriptor of the socket, to look at while hyper owns the stream.
        let peek = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
        let mut reset_check = tokio::time::interval(RESET_CHECK);
        reset_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
            replacement: None,
        });
        let requests = activity.clone();
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = InFlight::begin(&requests);
            let mut request = request.map(|body| {
                Body::new(Reading {
                    body,
                    activity: requests.clone(),
                    waiting: false,
                })
            });
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = hyper::service::Service::call(&service, request);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(io, handler);
        tokio::pin!(connection);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    return;
                }
                why = activity.expired(&limits) => {
                    tracing::debug!(%peer, "closing the connection: {why}");
                    return;
                }
                // (A condition here would be read once, when the select starts.)
                _ = reset_check.tick(), if peek.is_some() => {
                    if let Some(fd) = &peek && activity.in_flight() && was_reset(fd) {
                        tracing::debug!(%peer, "the client reset the connection: dropping its request");
                        return;
                    }
                }
                _ = closing.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = dropping.cancelled() => return,
            }
        }
    }
}

/// Whether the peer reset the connection: the socket has a pending error. A read would only
/// report it once the bytes the kernel holds for the socket are read, which for an upload
/// waiting on its layout reader may be seconds away. (A peer's FIN is no error: a client may
/// close its side and wait for the answer.)
fn was_reset(fd: &std::os::fd::OwnedFd) -> bool {
    matches!(rustix::net::sockopt::socket_error(fd), Ok(Err(_)))
}

/// What a connection is doing, for its watchdog ([`Activity::expired`]).
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    /// Requests whose answer has not ended.
    in_flight: usize,
    /// When the last request in flight ended (or the connection opened).
    idle_since: Instant,
    /// When the first byte of a head arrived, while no request is in flight.
    head_started: Option<Instant>,
    /// Request bodies the server is waiting for bytes of, and since when it last got one.
    bodies_waiting: usize,
    body_since: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
                bodies_waiting: 0,
                body_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ActivityState> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes came in.
    fn read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn in_flight(&self) -> bool {
        self.state().in_flight > 0
    }

    /// A request body is waited for (`true`), or it gave a frame, ended or was dropped.
    fn body_waiting(&self, waiting: bool) {
        let mut state = self.state();
        state.body_since = Instant::now();
        if waiting {
            state.bodies_waiting += 1;
            drop(state);
            self.changed.notify_one();
        } else {
            state.bodies_waiting -= 1;
        }
    }

    /// Completes when the connection has been idle for `idle_timeout`, a head has taken longer
    /// than `header_read_timeout`, or a request body has sent nothing for `idle_timeout`; says
    /// which.
    async fn expired(&self, limits: &Http) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let state = self.state();
                if state.bodies_waiting > 0 {
                    Some((
                        state.body_since + limits.idle_timeout,
                        "the request's body sent nothing for http.idle_timeout",
                    ))
                } else if state.in_flight > 0 {
                    None
                } else if let Some(started) = state.head_started {
                    Some((
                        started + limits.header_read_timeout,
                        "the request's head did not arrive within http.header_read_timeout",
                    ))
                } else {
                    Some((
                        state.idle_since + limits.idle_timeout,
                        "no request for http.idle_timeout",
                    ))
                }
            };
            // A body's bytes move its deadline without a notification (that would be one per
            // chunk), so a deadline that passes is checked again.
            match deadline {
                None => changed.await,
                Some((deadline, why)) if deadline <= Instant::now() => return why,
                Some((deadline, _)) => tokio::select! {
                    _ = &mut changed => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                },
            }
        }
    }
}

/// One request in flight, from its head until its answer's body ends or is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        let mut state = activity.state();
        state.in_flight += 1;
        state.head_started = None;
        drop(state);
        activity.changed.notify_one();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// An answer's body that keeps its request in flight while it streams.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request's body, telling the connection's watchdog while the server waits for its bytes.
struct Reading {
    body: Incoming,
    activity: Arc<Activity>,
    /// The last poll found no bytes yet.
    waiting: bool,
}

impl HttpBody for Reading {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let waiting = polled.is_pending();
        if waiting != self.waiting {
            self.waiting = waiting;
            self.activity.body_waiting(waiting);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if self.waiting {
            self.activity.body_waiting(false);
        }
    }
}

/// The connection's socket, noting when bytes come in and giving hyper's own error answers a
/// `{"message"}` body.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// The answer written instead of one of hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Hyper's answer to a request it could not read, with a body instead of none.
    ///
    /// Hyper writes such an answer (a 4xx head with `content-length: 0`) only when no request is
    /// in flight: it has read part of a head and cannot go on. Every answer of the app carries
    /// an `x-request-id` (`api/mod.rs`), so an empty 4xx of its own, written just after its
    /// request stopped being in flight, is never taken for one of hyper's.
    fn replace(&mut self, buf: &[u8]) -> bool {
        if self.activity.in_flight() {
            return false;
        }
        let has = |needle: &[u8]| {
            buf.windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        };
        if has(b"\r\nx-request-id:") {
            return false;
        }
        let Some(status) = buf
            .strip_prefix(b"HTTP/1.1 4")
            .and_then(|rest| rest.get(..2))
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse::<u16>().ok())
            .map(|n| 400 + n)
        else {
            return false;
        };
        if !buf.ends_with(b"\r\n\r\n") || !has(b"\r\ncontent-length: 0\r\n") {
            return false;
        }
        self.replacement = Some((error_answer(status), 0));
        true
    }
}

/// The whole answer to a request the server could not read, with `{"message"}`.
fn error_answer(status: u16) -> Vec<u8> {
    let message = match status {
        431 => format!(
            "the request's headers are too large: at most {MAX_HEADERS} header lines and {} KiB in all",
            MAX_HEAD_BYTES / 1024
        ),
        414 => "the request's path and query are too long".to_string(),
        // A request line or header hyper cannot parse, a bad Content-Length or
        // Transfer-Encoding: its 400.
        _ => "the request cannot be read as HTTP/1.1: its request line or headers are malformed (a path must be ASCII: percent-encode other bytes, e.g. %C3%A9 for \u{e9})".to_string(),
    };
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    let body = serde_json::json!({ "message": message }).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if self.replace(buf) {
            // Written by the flush that follows.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next())
            && self.replace(only)
        {
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_whole_http_with_a_json_message() {
        let answer = String::from_utf8(error_answer(431)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let message: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            message["message"]
                .as_str()
                .unwrap()
                .contains("100 header lines")
        );
    }

    /// Every answer hyper writes by itself, with its message: (status, head's first line, message).
    #[test]
    fn each_of_hypers_own_answers_says_what_is_wrong() {
        let malformed = "the request cannot be read as HTTP/1.1: its request line or headers are malformed (a path must be ASCII: percent-encode other bytes, e.g. %C3%A9 for \u{e9})";
        for (status, line, message) in [
            (
                431,
                "HTTP/1.1 431 Request Header Fields Too Large",
                "the request's headers are too large: at most 100 header lines and 408 KiB in all",
            ),
            (
                414,
                "HTTP/1.1 414 URI Too Long",
                "the request's path and query are too long",
            ),
            (400, "HTTP/1.1 400 Bad Request", malformed),
            // Any other status hyper might write gets the 400's words, with its own reason.
            (408, "HTTP/1.1 408 Request Timeout", malformed),
        ] {
            let answer = String::from_utf8(error_answer(status)).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some(line));
            let lines: Vec<&str> = lines.collect();
            let length = format!("content-length: {}", body.len());
            assert_eq!(
                lines,
                [
                    "content-type: application/json",
                    length.as_str(),
                    "connection: close"
                ]
            );
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body, serde_json::json!({ "message": message }), "{status}");
        }
    }
}
