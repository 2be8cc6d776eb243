//! `precheck-server submit FILE`: the client for CI jobs and designers. Uploads a layout (with a
//! progress bar on a terminal), starts a precheck, follows its log live, downloads the checked
//! layout or the debug tarball, and exits with the run's `StatusCode`.
//!
//! Every call is retried with backoff while the server cannot be reached or answers 5xx (a
//! restart, say); the create carries an `Idempotency-Key`, so a retried create never makes a
//! second run. Ctrl-C cancels the run on the server; `--timeout` cancels it too.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::api::{DieBody, Message, RunBody, UploadBody, WaitBody};
use crate::model::microns;
use crate::units::human_bytes;

/// Exit code when the server refuses the layout or the request, before any run.
pub const REFUSED: u8 = 2;
/// Exit code when the server cannot be reached for longer than the retries last.
pub const UNREACHABLE: u8 = 3;
/// Exit code when `--timeout` ran out (as `timeout(1)` reports it); the run is cancelled.
pub const TIMED_OUT: u8 = 124;
/// Exit code after Ctrl-C (the run is cancelled).
pub const INTERRUPTED: u8 = 130;

/// How long one step keeps retrying while the server is unreachable.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Why `submit` stops before the run's end: with an exit code, having said why, or with an
/// error for `main` to print.
enum Stop {
    Exit(u8),
    Error(anyhow::Error),
}

/// As the debug tarball's failed download says it (after the failure itself, for an exit).
impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Exit(code) => write!(f, "exit code {code}"),
            Stop::Error(e) if f.alternate() => write!(f, "{e:#}"),
            Stop::Error(e) => write!(f, "{e}"),
        }
    }
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Stop {
        Stop::Error(e)
    }
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Error(e.into())
    }
}

impl From<reqwest::Error> for Stop {
    fn from(e: reqwest::Error) -> Stop {
        Stop::Error(e.into())
    }
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The layout: GDSII, gzip'd GDSII or OASIS.
    pub file: PathBuf,
    /// The server's URL.
    #[arg(long, env = "PRECHECK_SERVER", value_name = "URL")]
    pub server: String,
    /// The top cell (default: the layout's only top cell).
    #[arg(long, value_name = "CELL")]
    pub top: Option<String>,
    /// The die id: 8 letters or digits (default FFFFFFFF).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The slot size: 1x1, 0p5x1, 1x0p5 or 0p5x0p5 (default 1x1).
    #[arg(long)]
    pub slot: Option<String>,
    /// Chip on board.
    #[arg(long)]
    pub cob: bool,
    /// Where to write the checked layout (default: the name the server gives, here).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Where to write the debug tarball of a failed run (default: precheck-<id>.tar.gz, here).
    #[arg(long, value_name = "PATH")]
    pub debug: Option<PathBuf>,
    /// Give up (and cancel the run) after this long, e.g. 90m or 6h.
    #[arg(long, value_name = "DURATION", value_parser = super::parse_age)]
    pub timeout: Option<Duration>,
}

/// A call that did not succeed: worth trying again, or not.
enum Failure {
    Retry(String),
    Fatal(Stop),
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Calls `attempt` until it succeeds or fails for good, waiting 0.5 s, 1 s, 2 s ... (at
    /// most 10 s) between tries, for at most [`RETRY_FOR`].
    async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why)) => {
                    if started.elapsed() + wait > RETRY_FOR {
                        eprintln!("precheck-server: {what}: {why}; giving up");
                        return Err(Stop::Exit(UNREACHABLE));
                    }
                    eprintln!(
                        "precheck-server: {what}: {why}; retrying in {:.1} s",
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Sends a request and returns its answer, as the server's type for it; 5xx and network
    /// errors are retried, other errors are refusals (the server's message is printed, exit code
    /// [`REFUSED`]).
    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, Stop> {
        self.retry(what, || async {
            let resp = build().send().await.map_err(network)?;
            answer(check(resp).await?, what).await
        })
        .await
    }
}

/// A successful answer's body as `T`. A body cut off is worth asking for again; one that is not
/// a `T` (a server of another version, say) is not.
async fn answer<T: DeserializeOwned>(resp: reqwest::Response, what: &str) -> Result<T, Failure> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::Retry(format!("cannot read the answer: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure::Fatal(Stop::Error(anyhow!(
            "{what}: the server's answer is not what this client reads ({e}): {}",
            String::from_utf8_lossy(&body)
        )))
    })
}

fn network(e: reqwest::Error) -> Failure {
    Failure::Retry(format!("cannot reach the server ({e})"))
}

/// A successful answer, or the failure its status means.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let message = resp
        .json::<Message>()
        .await
        .map_or_else(|_| status.to_string(), |m| m.message);
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Err(Failure::Retry(format!(
            "the server answered {status}: {message}"
        )));
    }
    eprintln!("precheck-server: refused ({}): {message}", status.as_u16());
    Err(Failure::Fatal(Stop::Exit(REFUSED)))
}

/// Submits the layout; the exit code is the run's `StatusCode`, or why there is none (the
/// constants above), once it has said why.
pub async fn run(args: SubmitArgs) -> Result<ExitCode> {
    match submit(args).await {
        Ok(code) | Err(Stop::Exit(code)) => Ok(ExitCode::from(code)),
        Err(Stop::Error(e)) => Err(e),
    }
}

async fn submit(args: SubmitArgs) -> Result<u8, Stop> {
    let key = std::env::var("PRECHECK_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let base = args.server.trim_end_matches('/').to_string();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(anyhow!("--server: {base:?} is not an http:// or https:// URL").into());
    }
    let client = Client {
        // reqwest aborts a connection whose sent data waits unacknowledged for 30 s (its
        // default TCP user timeout), which a busy server reading a large layout slowly
        // does: the server's own idle timeouts bound a stuck upload instead.
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_user_timeout(None)
            .build()?,
        base,
        key,
    };
    let size = tokio::fs::metadata(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let upload = upload(&client, &args.file, size).await?;
    let run_id = create(&client, &args, &upload).await?;

    // From here on, the run exists: Ctrl-C and --timeout cancel it.
    let timeout = async {
        match args.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        ended = follow_and_wait(&client, &run_id) => ended?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("precheck-server: interrupted: cancelling precheck {run_id}");
            cancel(&client, &run_id).await;
            return Err(Stop::Exit(INTERRUPTED));
        }
        _ = timeout => {
            eprintln!(
                "precheck-server: --timeout ran out: cancelling precheck {run_id}"
            );
            cancel(&client, &run_id).await;
            return Err(Stop::Exit(TIMED_OUT));
        }
    };
    let code = ended.status_code;
    if code == 0 {
        let path = download(
            &client,
            &format!("/api/v1/prechecks/{run_id}/output"),
            args.output.as_deref(),
            None,
        )
        .await?;
        eprintln!(
            "precheck-server: precheck {run_id} passed; the checked layout is {}",
            path.display()
        );
        return Ok(0);
    }
    let error = ended
        .error
        .as_ref()
        .map_or("failed", |e| e.message.as_str());
    eprintln!("precheck-server: precheck {run_id} failed (exit code {code}): {error}");
    let default = format!("precheck-{run_id}.tar.gz");
    match download(
        &client,
        &format!("/api/v1/debug/prechecks/{run_id}"),
        args.debug.as_deref(),
        Some(&default),
    )
    .await
    {
        Ok(path) => eprintln!("precheck-server: the debug tarball is {}", path.display()),
        Err(e) => eprintln!("precheck-server: cannot download the debug tarball: {e:#}"),
    }
    Ok(code.clamp(1, 255) as u8)
}

/// Uploads the layout, streamed from the file, with progress; returns the upload's body.
async fn upload(client: &Client, file: &Path, size: u64) -> Result<UploadBody, Stop> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "layout.gds".into());
    let progress = Progress::new(&name, size);
    let upload = client
        .retry("upload", || async {
            progress.restart();
            let source = tokio::fs::File::open(file).await.map_err(|e| {
                Failure::Fatal(Stop::Error(anyhow!("cannot read {}: {e}", file.display())))
            })?;
            let counter = progress.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(source, 256 * 1024).inspect(
                move |chunk| {
                    if let Ok(chunk) = chunk {
                        counter.advance(chunk.len() as u64);
                    }
                },
            );
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                size,
            )
            .file_name(name.clone());
            let form = reqwest::multipart::Form::new().part("file", part);
            let resp = client
                .request(Method::POST, "/api/v1/uploads")
                .multipart(form)
                .send()
                .await
                .map_err(network)?;
            answer(check(resp).await?, "upload").await
        })
        .await;
    progress.finish();
    let upload: UploadBody = upload?;
    let layout = &upload.layout;
    let tops = layout.top_cells.as_deref().unwrap_or_default();
    eprintln!(
        "precheck-server: uploaded {name} ({}, {}), top cells: {}",
        human_bytes(size),
        layout.format,
        if tops.is_empty() {
            "none".to_string()
        } else {
            tops.join(", ")
        }
    );
    if let Some(die) = &layout.die {
        eprintln!("precheck-server: die {}", die_line(die));
    }
    Ok(upload)
}

/// The die as the upload says it: "chip_top: 3932 x 5122 µm from (0, 0)".
fn die_line(die: &DieBody) -> String {
    let nm = |um: f64| (um * 1000.0).round() as i64;
    match die.bbox.map(|b| b.map(nm)) {
        Some([left, bottom, right, top]) => format!(
            "{}: {} x {} µm from ({}, {})",
            die.cell,
            microns(right - left),
            microns(top - bottom),
            microns(left),
            microns(bottom)
        ),
        None => format!("{}: no shapes", die.cell),
    }
}

/// Starts the precheck; returns its id. The idempotency key makes a retried create return
/// the run the first one made.
async fn create(client: &Client, args: &SubmitArgs, upload: &UploadBody) -> Result<String, Stop> {
    let mut body = json!({"upload_id": upload.id});
    for (field, value) in [
        ("top_cell", &args.top),
        ("die_id", &args.id),
        ("slot", &args.slot),
    ] {
        if let Some(value) = value {
            body[field] = json!(value);
        }
    }
    if args.cob {
        body["cob"] = json!(true);
    }
    let key = Uuid::new_v4().to_string();
    let run: RunBody = client
        .json("create the precheck", || {
            client
                .request(Method::POST, "/api/v1/prechecks")
                .header("Idempotency-Key", &key)
                .json(&body)
        })
        .await?;
    let id = run.id.to_string();
    match run.queue {
        Some(q) => eprintln!(
            "precheck-server: precheck {id} queued ({} of {})",
            q.position, q.length
        ),
        None => eprintln!("precheck-server: precheck {id} started"),
    }
    Ok(id)
}

/// Prints the run's log as it is written, until the run ends, reconnecting (from the last
/// line printed) when the connection drops; returns `/wait`'s answer.
async fn follow_and_wait(client: &Client, run_id: &str) -> Result<WaitBody, Stop> {
    let mut last: Option<(f64, usize)> = None;
    let mut out = std::io::stdout();
    loop {
        let since = last.map(|(t, _)| format!("&since={:.6}", (t - 0.000_001).max(0.0)));
        let path = format!(
            "/api/v1/prechecks/{run_id}/logs?follow=true&timestamps=true{}",
            since.unwrap_or_default()
        );
        let stream = client
            .retry("follow the log", || async {
                let resp = client
                    .request(Method::GET, &path)
                    .send()
                    .await
                    .map_err(network)?;
                check(resp).await
            })
            .await?;
        // Lines already printed at the last time printed are skipped again.
        let mut skip = last.map_or(0, |(_, n)| n);
        let mut pending = Vec::new();
        let mut body = stream.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let (stamp, text) = line
                    .trim_end_matches('\n')
                    .split_once(' ')
                    .unwrap_or(("", &line));
                let t = parse_stamp(stamp);
                match (t, last) {
                    (Some(t), Some((lt, _))) if t < lt => continue,
                    (Some(t), Some((lt, n))) if t == lt => {
                        if skip > 0 {
                            skip -= 1;
                            continue;
                        }
                        last = Some((t, n + 1));
                    }
                    (Some(t), _) => last = Some((t, 1)),
                    (None, _) => {}
                }
                let _ = writeln!(out, "{text}");
            }
            let _ = out.flush();
        }
        // The stream ends when the run does, or when the connection or the server goes.
        let run: RunBody = client
            .json("inspect the precheck", || {
                client.request(Method::GET, &format!("/api/v1/prechecks/{run_id}"))
            })
            .await?;
        if run.state.status.is_terminal() {
            break;
        }
    }
    client
        .json("wait for the precheck", || {
            client.request(
                Method::POST,
                &format!("/api/v1/prechecks/{run_id}/wait?timeout=60"),
            )
        })
        .await
}

fn parse_stamp(stamp: &str) -> Option<f64> {
    let t =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Cancels the run, trying for a little while.
async fn cancel(client: &Client, run_id: &str) {
    for _ in 0..5 {
        match client
            .request(Method::DELETE, &format!("/api/v1/prechecks/{run_id}"))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::CONFLICT => {
                eprintln!("precheck-server: precheck {run_id} cancelled");
                return;
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    eprintln!(
        "precheck-server: could not cancel precheck {run_id}: cancel it with DELETE /api/v1/prechecks/{run_id}"
    );
}

/// Streams a download to `to`, or to the name the server gives (else `default`) in the current
/// folder; the file appears only once complete.
async fn download(
    client: &Client,
    path: &str,
    to: Option<&Path>,
    default: Option<&str>,
) -> Result<PathBuf, Stop> {
    let resp = client
        .retry("download", || async {
            let resp = client
                .request(Method::GET, path)
                .send()
                .await
                .map_err(network)?;
            check(resp).await
        })
        .await?;
    let target = match to {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(
            disposition_name(&resp)
                .or(default.map(String::from))
                .unwrap_or_else(|| "download".into()),
        ),
    };
    let part = target.with_extension("part");
    let mut file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download was cut off")?;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    tokio::fs::rename(&part, &target).await?;
    Ok(target)
}

/// The file name of a `Content-Disposition: attachment; filename="..."` header, without any
/// folder.
fn disposition_name(resp: &reqwest::Response) -> Option<String> {
    let value = resp.headers().get("content-disposition")?.to_str().ok()?;
    let name = value.split("filename=").nth(1)?.trim_matches('"');
    let name = name.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// Upload progress: a bar on a terminal, else (or with `CI` set) a line every 10 %.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    name: String,
    size: u64,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn new(name: &str, size: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("uploading {name}"));
            bar
        });
        Progress {
            bar,
            name: name.to_string(),
            size,
            sent: Default::default(),
        }
    }

    fn restart(&self) {
        self.sent.store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }

    fn advance(&self, n: u64) {
        let before = self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let after = before + n;
        match &self.bar {
            Some(bar) => bar.set_position(after),
            None => {
                let tenth = |v: u64| (v * 10).checked_div(self.size).unwrap_or(10);
                if tenth(after) > tenth(before) {
                    eprintln!(
                        "precheck-server: uploading {}: {}% ({} of {})",
                        self.name,
                        tenth(after) * 10,
                        human_bytes(after),
                        human_bytes(self.size)
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: &str, file: &Path) -> SubmitArgs {
        SubmitArgs {
            file: file.to_path_buf(),
            server: server.into(),
            top: None,
            id: None,
            slot: None,
            cob: false,
            output: None,
            debug: None,
            timeout: None,
        }
    }

    /// What `submit` refuses before it calls the server: (server, file, the message).
    #[tokio::test]
    async fn a_bad_server_url_or_file_is_refused_before_any_call() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.gds");
        let cases = [
            (
                "ftp://server/",
                "--server: \"ftp://server\" is not an http:// or https:// URL".to_string(),
            ),
            (
                "server:8000",
                "--server: \"server:8000\" is not an http:// or https:// URL".into(),
            ),
            (
                "",
                "--server: \"\" is not an http:// or https:// URL".into(),
            ),
            (
                "http://127.0.0.1:9/",
                format!("cannot read {}", missing.display()),
            ),
        ];
        for (server, message) in cases {
            match submit(args(server, &missing)).await {
                Err(Stop::Error(e)) => assert_eq!(e.to_string(), message, "{server:?}"),
                Err(Stop::Exit(code)) => panic!("{server:?}: exit {code}"),
                Ok(code) => panic!("{server:?}: a run's exit {code}"),
            }
        }
    }
}
