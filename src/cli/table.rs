//! Text output for people: aligned columns like `docker ps`, and times as "5 minutes ago".

use time::OffsetDateTime;

/// Prints `header` and `rows` in columns three spaces apart.
pub fn print(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        outln!("{}", out.trim_end())
    };
    line(header.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// How long ago `t` was, as Docker says it: "5 minutes ago".
pub fn ago(t: OffsetDateTime, now: OffsetDateTime) -> String {
    format!("{} ago", span(now - t))
}

/// A duration for people, in Docker's words: "Less than a second", "About a minute", "3 hours".
pub fn span(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    let (minute, hour, day) = (60, 3600, 86400);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < minute => format!("{s} seconds"),
        s if s < 2 * minute => "About a minute".into(),
        s if s < hour => format!("{} minutes", s / minute),
        s if s < 2 * hour => "About an hour".into(),
        s if s < 2 * day => format!("{} hours", s / hour),
        s if s < 14 * day => format!("{} days", s / day),
        s if s < 60 * day => format!("{} weeks", s / (7 * day)),
        s if s < 730 * day => format!("{} months", s / (30 * day)),
        s => format!("{} years", s / (365 * day)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_docker() {
        let cases = [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (90, "About a minute"),
            (300, "5 minutes"),
            (5400, "About an hour"),
            (3 * 3600, "3 hours"),
            (3 * 86400, "3 days"),
            (21 * 86400, "3 weeks"),
            (90 * 86400, "3 months"),
            (3 * 365 * 86400, "3 years"),
        ];
        for (seconds, words) in cases {
            assert_eq!(span(time::Duration::seconds(seconds)), words, "{seconds} s");
        }
    }
}
