//! A run's log file: one line per line the container printed, each prefixed with the time the
//! engine received it, as Docker's `logs --timestamps` prints them:
//!
//! ```text
//! 2026-11-24T12:00:01.123456789Z Running DRC...
//! ```
//! The runner appends to it while the container runs; readers read it (all of it, the last N
//! lines, or lines after a time) without holding it in memory, during and after the run.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One line of a log.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Nanoseconds since the Unix epoch, exactly as stamped (0 for a line without a stamp).
    pub nanos: i64,
    /// The raw timestamp as stored.
    pub stamp: String,
    pub text: String,
}

/// Which lines to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    /// Only lines stamped at or after this time (nanoseconds since the epoch), as Docker's
    /// `since`.
    pub since: Option<i64>,
    /// Only the last N lines (of those after `since`).
    pub tail: Option<usize>,
}

/// Formats a time as stored in the file (RFC 3339, nanoseconds, UTC).
pub fn stamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Splits a stored line into its parts. A line without a readable timestamp keeps its whole text.
pub fn parse_line(raw: &str) -> Line {
    let raw = raw.strip_suffix('\n').unwrap_or(raw);
    let raw = raw.strip_suffix('\r').unwrap_or(raw);
    if let Some((stamp, text)) = raw.split_once(' ')
        && let Ok(t) = OffsetDateTime::parse(stamp, &Rfc3339)
    {
        let nanos = i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        return Line {
            nanos,
            stamp: stamp.to_string(),
            text: text.to_string(),
        };
    }
    Line {
        nanos: 0,
        stamp: String::new(),
        text: raw.to_string(),
    }
}

/// Reads the lines of a log file that pass `filter`, in order, calling `f` for each.
/// A missing file has no lines.
pub fn for_each_line(
    path: &Path,
    filter: Filter,
    f: impl FnMut(Line) -> io::Result<()>,
) -> io::Result<()> {
    let offset = start_offset(path, filter)?;
    read_lines(path, offset, filter.since, f).map(drop)
}

/// Where reading starts for `filter`: 0, or where its last `tail` lines start.
pub fn start_offset(path: &Path, filter: Filter) -> io::Result<u64> {
    let Some(n) = filter.tail else { return Ok(0) };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let after_since = match filter.since {
        // The lines after `since` are a suffix of the file: find where it starts, so the tail
        // counts only those.
        Some(since) => first_line_from(&mut file, len, since)?,
        None => 0,
    };
    Ok(tail_offset(&mut file, len, n)?.max(after_since))
}

/// Reads the complete lines from `offset` on (a line still being written is left for the next
/// call), skipping those stamped before `since`. Returns the offset after the last line read.
pub fn read_lines(
    path: &Path,
    offset: u64,
    since: Option<i64>,
    mut f: impl FnMut(Line) -> io::Result<()>,
) -> io::Result<u64> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut raw = Vec::new();
    let mut offset = offset;
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw)?;
        if n == 0 || raw.last() != Some(&b'\n') {
            return Ok(offset);
        }
        offset += n as u64;
        let line = parse_line(&String::from_utf8_lossy(&raw));
        if since.is_some_and(|since| line.nanos < since) {
            continue;
        }
        f(line)?;
    }
}

/// The texts of the log's last complete lines: at most `max_lines` of them, all from its last
/// `max_bytes` bytes (a line that starts before those is left out), so a log of any size costs
/// at most `max_bytes` of memory. A missing file has none.
pub fn last_lines(path: &Path, max_lines: usize, max_bytes: u64) -> io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // One byte before the window says whether the window starts a line.
    let from = len.saturating_sub(max_bytes.saturating_add(1));
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(len - from).read_to_end(&mut buf)?;
    let mut window = buf.as_slice();
    if from > 0 || buf.len() as u64 > max_bytes {
        let first_start = window
            .iter()
            .position(|b| *b == b'\n')
            .map_or(window.len(), |i| i + 1);
        window = &window[first_start..];
    }
    let mut lines: Vec<&[u8]> = window.split_inclusive(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| !l.ends_with(b"\n")) {
        lines.pop();
    }
    let skip = lines.len().saturating_sub(max_lines);
    Ok(lines[skip..]
        .iter()
        .map(|raw| parse_line(&String::from_utf8_lossy(raw)).text)
        .collect())
}

/// Counts the complete lines of a log the server stopped writing abruptly, cutting off a last
/// line that was only partly written (it is read again from the engine). Returns the number of
/// lines and the file's length; a missing file has none.
pub fn complete_lines(path: &Path) -> io::Result<(usize, u64)> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let mut lines = 0;
    let mut pos = 0u64;
    let mut end = 0u64;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, byte) in buf[..n].iter().enumerate() {
            if *byte == b'\n' {
                lines += 1;
                end = pos + i as u64 + 1;
            }
        }
        pos += n as u64;
    }
    if pos > end {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok((lines, end))
}

/// Reads a `since`: Unix seconds with up to nine digits of fraction (`1795523829.123456789`,
/// Docker's form, read exactly: no floating point), an RFC 3339 time (the stamp a line carries
/// with `timestamps=true`), or, for older clients, any other non-negative number (`1e9`, read as
/// a float). Returns nanoseconds since the epoch.
pub fn parse_since(text: &str) -> Option<i64> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(seconds) && (fraction.is_empty() || digits(fraction)) && !text.ends_with('.') {
        if fraction.len() > 9 {
            return None;
        }
        let seconds: i64 = seconds.parse().ok()?;
        let nanos: i64 = format!("{fraction:0<9}").parse().ok()?;
        return seconds.checked_mul(1_000_000_000)?.checked_add(nanos);
    }
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos())
            .ok()
            .filter(|n| *n >= 0);
    }
    let seconds: f64 = text.parse().ok()?;
    (seconds.is_finite() && (0.0..9.2e9).contains(&seconds)).then(|| (seconds * 1e9).round() as i64)
}

/// Writes nanoseconds since the epoch as Unix seconds, exactly, without trailing zeros:
/// `1795523829.1234`, `1795523829`.
pub fn seconds_text(nanos: i64) -> String {
    let (seconds, fraction) = (
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000),
    );
    if fraction == 0 {
        return seconds.to_string();
    }
    let fraction = format!("{fraction:09}");
    format!("{seconds}.{}", fraction.trim_end_matches('0'))
}

/// The offset where the last `n` lines of the file start.
fn tail_offset(file: &mut File, len: u64, n: usize) -> io::Result<u64> {
    if n == 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut end = len;
    let mut newlines = 0usize;
    // The file's final newline ends the last line; it does not start a new one.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for i in (0..chunk.len()).rev() {
            if chunk[i] == b'\n' {
                if skip_last && start + i as u64 == len - 1 {
                    skip_last = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        skip_last = false;
        end = start;
    }
    Ok(0)
}

/// The offset of the first line stamped at or after `since` (nanoseconds), by binary search
/// over line starts: lines are appended in time order.
fn first_line_from(file: &mut File, len: u64, since: i64) -> io::Result<u64> {
    let (mut lo, mut hi) = (0u64, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (start, line) = line_at_or_after(file, mid, len)?;
        match line {
            Some(line) if line.nanos < since => lo = start.max(mid) + 1,
            _ => hi = mid,
        }
    }
    // `lo` may sit inside a line: move to the next line start.
    Ok(line_at_or_after(file, lo, len)?.0.min(len))
}

/// The first line that starts at or after `pos`, and where it starts.
fn line_at_or_after(file: &mut File, pos: u64, len: u64) -> io::Result<(u64, Option<Line>)> {
    let mut start = pos;
    if pos > 0 {
        file.seek(SeekFrom::Start(pos - 1))?;
        let mut reader = BufReader::new(&mut *file);
        let mut skipped = Vec::new();
        start = pos - 1 + reader.read_until(b'\n', &mut skipped)? as u64;
    }
    if start >= len {
        return Ok((len, None));
    }
    file.seek(SeekFrom::Start(start))?;
    let mut raw = Vec::new();
    BufReader::new(&mut *file).read_until(b'\n', &mut raw)?;
    Ok((start, Some(parse_line(&String::from_utf8_lossy(&raw)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(lines: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for i in 0..lines {
            writeln!(
                f,
                "2026-11-24T12:00:{:02}.{:06}Z line {i}",
                i / 1000,
                i % 1000 * 1000
            )
            .unwrap();
        }
        f
    }

    use std::io::Write;

    fn read(path: &Path, filter: Filter) -> Vec<String> {
        let mut out = vec![];
        for_each_line(path, filter, |l| {
            out.push(l.text);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let f = write_log(5000);
        let last = read(
            f.path(),
            Filter {
                tail: Some(10),
                since: None,
            },
        );
        assert_eq!(
            last,
            (4990..5000)
                .map(|i| format!("line {i}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            read(
                f.path(),
                Filter {
                    tail: Some(0),
                    since: None
                }
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            read(
                f.path(),
                Filter {
                    tail: Some(9999),
                    since: None
                }
            )
            .len(),
            5000
        );
        assert_eq!(read(f.path(), Filter::default()).len(), 5000);
    }

    #[test]
    fn since_is_at_or_after_to_the_nanosecond() {
        let f = write_log(3000);
        // line 1500 is at 12:00:01.500000
        let t = OffsetDateTime::parse("2026-11-24T12:00:01.5Z", &Rfc3339).unwrap();
        let since = t.unix_timestamp_nanos() as i64;
        let from = |since: i64, tail: Option<usize>| {
            read(
                f.path(),
                Filter {
                    since: Some(since),
                    tail,
                },
            )
        };
        let after = from(since, None);
        assert_eq!(after.first().unwrap(), "line 1500");
        assert_eq!(after.len(), 1500);
        assert_eq!(from(since, Some(5000)).len(), 1500);
        assert_eq!(
            from(since, Some(3)),
            vec!["line 2997", "line 2998", "line 2999"]
        );
        // One nanosecond later, line 1500 is left out.
        assert_eq!(from(since + 1, None).first().unwrap(), "line 1501");
        assert_eq!(from(since - 1, None).first().unwrap(), "line 1500");
    }

    #[test]
    fn lines_nanoseconds_apart_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.txt");
        let stamps = [
            "2026-11-24T12:00:01.123456789Z",
            "2026-11-24T12:00:01.12345679Z",
            "2026-11-24T12:00:01.123456791Z",
            "2026-11-24T12:00:01.123457Z",
        ];
        let text: String = stamps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s} line {i}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        for (i, stamp) in stamps.iter().enumerate() {
            let t = OffsetDateTime::parse(stamp, &Rfc3339).unwrap();
            let unix = seconds_text(t.unix_timestamp_nanos() as i64);
            for since in [stamp.to_string(), unix] {
                let since = parse_since(&since).unwrap();
                for tail in [None, Some(100)] {
                    let got = read(
                        &path,
                        Filter {
                            since: Some(since),
                            tail,
                        },
                    );
                    let want: Vec<String> =
                        (i..stamps.len()).map(|j| format!("line {j}")).collect();
                    assert_eq!(got, want, "since {since} tail {tail:?}");
                }
            }
        }
    }

    #[test]
    fn since_is_read_exactly() {
        assert_eq!(
            parse_since("1795523829.123456789"),
            Some(1_795_523_829_123_456_789)
        );
        assert_eq!(parse_since("1795523829.1"), Some(1_795_523_829_100_000_000));
        assert_eq!(parse_since("1795523829"), Some(1_795_523_829_000_000_000));
        assert_eq!(parse_since("0"), Some(0));
        assert_eq!(parse_since("1e9"), Some(1_000_000_000_000_000_000));
        assert_eq!(
            parse_since("2026-11-24T12:00:01.123456789Z"),
            parse_since("1795521601.123456789")
        );
        for bad in [
            "",
            "x",
            "-1",
            "-0.5",
            "1.1234567891",
            "inf",
            "NaN",
            "1e30",
            "1,5",
        ] {
            assert_eq!(parse_since(bad), None, "{bad:?}");
        }
        assert_eq!(
            seconds_text(1_795_523_829_123_456_789),
            "1795523829.123456789"
        );
        assert_eq!(seconds_text(1_795_523_829_120_000_000), "1795523829.12");
        assert_eq!(seconds_text(1_795_523_829_000_000_000), "1795523829");
    }

    #[test]
    fn odd_lines_survive() {
        let line = parse_line("no timestamp here\n");
        assert_eq!(line.text, "no timestamp here");
        assert_eq!(line.nanos, 0);
        let line = parse_line("2026-11-24T12:00:00.000000001Z  indented\r\n");
        assert_eq!(line.text, " indented");
        assert!(read(Path::new("/nonexistent/logs.txt"), Filter::default()).is_empty());
    }

    #[test]
    fn last_lines_reads_a_bounded_tail() {
        let f = write_log(5000);
        let texts = |n, bytes| last_lines(f.path(), n, bytes).unwrap();
        assert_eq!(texts(2, 1 << 20), ["line 4998", "line 4999"]);
        assert_eq!(texts(9999, 1 << 20).len(), 5000);
        // Each line is 38 bytes: a window of 100 bytes holds two whole lines and part of one.
        assert_eq!(texts(10, 100), ["line 4998", "line 4999"]);
        assert_eq!(texts(10, 76), ["line 4998", "line 4999"]);
        assert_eq!(texts(10, 75), ["line 4999"]);
        assert!(texts(10, 0).is_empty());
        assert!(
            last_lines(Path::new("/nonexistent/logs.txt"), 5, 100)
                .unwrap()
                .is_empty()
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.txt");
        std::fs::write(
            &path,
            "2026-11-24T12:00:00Z a\n2026-11-24T12:00:01Z still writi",
        )
        .unwrap();
        assert_eq!(last_lines(&path, 5, 1000).unwrap(), ["a"]);
    }

    #[test]
    fn complete_lines_cuts_a_partial_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.txt");
        assert_eq!(complete_lines(&path).unwrap(), (0, 0));
        std::fs::write(&path, "a\nbb\nccc").unwrap();
        assert_eq!(complete_lines(&path).unwrap(), (2, 5));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nbb\n");
        assert_eq!(complete_lines(&path).unwrap(), (2, 5));
    }
}
