//! The keyset cursor in a query string: `after=<RFC 3339, microseconds, Z>_<id>`.

use chrono::{DateTime, SecondsFormat, Utc};
use ralph_core::{Id, JobCursor};

/// `2026-11-30T15:59:58.123456Z_42`.
pub(crate) fn encode(cursor: &JobCursor) -> String {
    format!("{}_{}", cursor.due_at.to_rfc3339_opts(SecondsFormat::Micros, true), cursor.id)
}

/// Reads [`encode`]'s form back.
///
/// # Errors
/// What is wrong with it, in words.
pub(crate) fn parse(text: &str) -> Result<JobCursor, String> {
    let Some((at, id)) = text.rsplit_once('_') else {
        return Err(format!("cursor {text:?} is not <RFC 3339 time>_<job id>"));
    };
    let due_at = DateTime::parse_from_rfc3339(at)
        .map_err(|e| format!("cursor time {at:?} is not an RFC 3339 time ({e})"))?
        .with_timezone(&Utc);
    let id = id.parse::<i64>().map_err(|_| format!("cursor job id {id:?} is not a number"))?;
    Ok(JobCursor { due_at, id: Id::new(id) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses() {
        let due_at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap_or_default();
        let cursor = JobCursor { due_at, id: Id::new(42) };
        let text = encode(&cursor);
        assert_eq!(text, "2026-11-18T11:06:40.123456Z_42");
        assert_eq!(parse(&text), Ok(cursor));
        assert_eq!(parse("2026-11-18T12:06:40.123456+01:00_42"), Ok(cursor), "offsets are read");
        for bad in [
            "",
            "_",
            "x_1",
            "2026-11-18T09:46:40Z",
            "2026-11-18T09:46:40Z_",
            "2026-11-18T09:46:40Z_x",
            "2026-13-18T09:46:40Z_1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
