//! Reading a daemon's log: the `tracing` fmt lines that `halo run` writes,
//! `2026-05-20T09:14:03.512034Z  INFO peer down on every heartbeat network peer="b"`,
//! possibly coloured with ANSI escapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halo_tests::cluster::strip_ansi;

/// What the heartbeat thread logs when every network lost a peer.
pub const PEER_DOWN: &str = "peer down on every heartbeat network";
/// What the heartbeat thread logs when its own tick came late.
pub const TICK_LATE: &str = "heartbeat tick late";
/// What the heartbeat thread logs when it could not get SCHED_FIFO.
pub const NO_REALTIME: &str = "cannot raise the heartbeat thread to SCHED_FIFO";

/// One event of a daemon's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The event's UTC timestamp, as the daemon's clock read it.
    pub at: SystemTime,
    /// `INFO`, `WARN`…
    pub level: String,
    /// The message followed by the `key=value` fields.
    pub text: String,
}

impl LogLine {
    /// Parses one line; `None` for anything that is not a timestamped event
    /// (a panic message, a continuation line).
    pub fn parse(line: &str) -> Option<Self> {
        let line = strip_ansi(line);
        let mut words = line.splitn(2, char::is_whitespace);
        let at = parse_rfc3339_utc(words.next()?)?;
        let rest = words.next()?.trim_start();
        let (level, text) = rest.split_once(char::is_whitespace)?;
        Some(LogLine {
            at,
            level: level.to_owned(),
            text: text.trim().to_owned(),
        })
    }

    /// Whether the message starts with `message`.
    pub fn is(&self, message: &str) -> bool {
        self.text.starts_with(message)
    }

    /// The value of field `name`, without the quotes of a string value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.text.split_whitespace().find_map(|word| {
            let value = word.strip_prefix(name)?.strip_prefix('=')?;
            Some(value.trim_matches('"'))
        })
    }
}

/// Every event of `log`, in order.
pub fn events(log: &str) -> impl Iterator<Item = LogLine> + '_ {
    log.lines().filter_map(LogLine::parse)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form tracing's default
/// timer writes.
fn parse_rfc3339_utc(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':').map(str::parse::<u64>);
    let (hour, minute, second) = (
        clock.next()?.ok()?,
        clock.next()?.ok()?,
        clock.next()?.ok()?,
    );
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return None;
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32)
    };
    let days = u64::try_from(days_since_epoch(year, month, day)).ok()?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date: count the
/// years from March, so that the leap day ends a year, in 400-year eras of
/// 146,097 days.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    // Months counted from March; 153 days per 5 months (31+30+31+30+31).
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_count_from_the_epoch() {
        assert_eq!(days_since_epoch(1970, 1, 1), 0);
        assert_eq!(days_since_epoch(2000, 3, 1), 11_017);
        assert_eq!(days_since_epoch(2024, 2, 29), 19_782);
        assert_eq!(days_since_epoch(1969, 12, 31), -1);
    }

    #[test]
    fn a_coloured_peer_down_line_is_read() {
        let line = "\u{1b}[2m2026-05-20T09:14:03.512034Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    peer down on every heartbeat network \u{1b}[3mpeer\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"b\"";
        let event = LogLine::parse(line).unwrap();
        assert!(event.is(PEER_DOWN));
        assert_eq!(event.level, "INFO");
        assert_eq!(event.field("peer"), Some("b"));
        let at = event.at.duration_since(UNIX_EPOCH).unwrap();
        // 2026-05-20 is day 20593.
        assert_eq!(
            at,
            Duration::new(20_593 * 86_400 + 9 * 3600 + 14 * 60 + 3, 512_034_000)
        );
    }

    #[test]
    fn a_plain_late_tick_line_gives_its_lateness() {
        let line = "2026-05-20T09:14:03Z  WARN heartbeat tick late: this node was starved \
                    of CPU or paused; not counted against peers late_ms=137";
        let event = LogLine::parse(line).unwrap();
        assert!(event.is(TICK_LATE));
        assert_eq!(event.field("late_ms"), Some("137"));
        assert_eq!(event.field("late"), None);
    }

    #[test]
    fn lines_without_a_timestamp_are_skipped() {
        assert_eq!(
            LogLine::parse("thread 'main' panicked at src/main.rs"),
            None
        );
        assert_eq!(LogLine::parse(""), None);
        assert_eq!(LogLine::parse("2026-13-01T00:00:00Z  INFO x"), None);
    }
}
