//! Sizes and durations as people write them (the config file, the command line) and byte counts
//! as people read them.
//!
//! Imports nothing of the crate, so that any module may use it without an import circle: the
//! layout reader names its limits with [`human_bytes`] as much as the config and the CLI do.

use std::time::Duration;

/// Reads a byte count written with an optional unit: `1000`, `"512MiB"`, `"2 GB"`, `"1.5gib"`.
/// Decimal (`kB`, `MB`, `GB`, `TB`, or just `k`, `m`, ...) and binary (`KiB` ... `TiB`) units, in
/// any case; fractions are rounded down to a whole byte. `None` for anything else.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        _ => return None,
    };
    let number: f64 = number.parse().ok()?;
    Some((number * factor as f64) as u64)
}

/// Reads a duration written as seconds or with a unit: `90`, `90s`, `30m`, `6h`, `7d`.
pub fn duration_from_text(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(unit)?))
}

/// Formats a byte count for people: `16 GiB`, `64 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if value.fract() == 0.0 {
                format!("{value:.0} {name}")
            } else {
                format!("{value:.1} {name}")
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_unit() {
        for (text, bytes) in [
            ("0", Some(0)),
            ("1000", Some(1000)),
            (" 12 ", Some(12)),
            ("12b", Some(12)),
            ("2k", Some(2000)),
            ("2kB", Some(2000)),
            ("2KiB", Some(2048)),
            ("3m", Some(3_000_000)),
            ("3MB", Some(3_000_000)),
            ("512MiB", Some(512 << 20)),
            ("512 mib", Some(512 << 20)),
            ("2GB", Some(2_000_000_000)),
            ("24GiB", Some(24 << 30)),
            ("1.5GiB", Some(1536 << 20)),
            ("1t", Some(1_000_000_000_000)),
            ("1TiB", Some(1 << 40)),
            // A fraction of a byte is dropped.
            ("1.5", Some(1)),
            ("", None),
            ("lots", None),
            ("MiB", None),
            ("12 bytes", None),
            ("1.2.3MiB", None),
            ("-1", None),
            ("1e3", None),
            ("5PiB", None),
        ] {
            assert_eq!(parse_size(text), bytes, "{text:?}");
        }
    }

    #[test]
    fn durations_in_every_unit() {
        for (text, seconds) in [
            ("0", Some(0)),
            ("90", Some(90)),
            (" 90s ", Some(90)),
            ("30m", Some(1800)),
            ("6h", Some(6 * 3600)),
            ("7d", Some(7 * 86400)),
            ("", None),
            ("s", None),
            ("soon", None),
            ("6 hours", None),
            ("6 h", None),
            ("1.5h", None),
            ("-5s", None),
            ("5H", None),
            ("5w", None),
            // Too many seconds for a u64 is refused, not wrapped.
            ("18446744073709551615d", None),
        ] {
            assert_eq!(
                duration_from_text(text),
                seconds.map(Duration::from_secs),
                "{text:?}"
            );
        }
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(16 << 30), "16 GiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(2 << 40), "2 TiB");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(12), "12 B");
    }
}
