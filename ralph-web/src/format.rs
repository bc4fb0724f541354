//! How numbers, durations and times read on the pages: `10k+` for a capped count, `2 m 5 s`
//! for an age.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ralph_core::CappedCount;

/// An exact count in digits; a capped one short with a plus: `10k+`, `1.5M+`.
pub(crate) fn count(count: CappedCount) -> String {
    if !count.capped {
        return count.count.to_string();
    }
    let n = count.count;
    let short = if n >= 1_000_000 {
        scaled(n, 1_000_000, "M")
    } else if n >= 1_000 {
        scaled(n, 1_000, "k")
    } else {
        n.to_string()
    };
    format!("{short}+")
}

/// `n / unit` with one decimal when it is not whole and below ten: `1.5k`, `10k`, `250k`.
fn scaled(n: u64, unit: u64, suffix: &str) -> String {
    let whole = n / unit;
    let tenth = n % unit * 10 / unit;
    if whole < 10 && tenth > 0 { format!("{whole}.{tenth}{suffix}") } else { format!("{whole}{suffix}") }
}

/// A duration in its two largest units: `850 ms`, `42 s`, `2 m 5 s`, `3 h 10 m`, `2 d 4 h`.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{} ms", d.as_millis());
    }
    let (days, hours, mins, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} m {s} s"),
        (0, h, m) => format!("{h} h {m} m"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// A time to the second, UTC: `2026-11-30 15:59:58Z`.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A time for the `datetime` attribute and for JSON readers: RFC 3339.
pub(crate) fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// At most `max` characters of `text`, with `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// How long ago `at` was, by this process's clock (zero when it is in the future).
pub(crate) fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - at).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_counts_read_short() {
        assert_eq!(count(CappedCount::exact(12_345)), "12345");
        assert_eq!(count(CappedCount::of(10_001, 10_000)), "10k+");
        assert_eq!(count(CappedCount::of(2_000, 1_500)), "1.5k+");
        assert_eq!(count(CappedCount::of(9, 5)), "5+");
        assert_eq!(count(CappedCount::of(2_000_000, 1_000_000)), "1M+");
        assert_eq!(count(CappedCount::of(0, 0)), "0");
    }

    #[test]
    fn durations_and_text() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_secs(42)), "42 s");
        assert_eq!(duration(Duration::from_secs(125)), "2 m 5 s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 600)), "3 h 10 m");
        assert_eq!(duration(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2 d 4 h");
        assert_eq!(truncate("żółw", 2), "żó…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
