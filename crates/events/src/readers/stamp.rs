//! Timestamps as logs write them: classic syslog (`Nov 23 10:00:01`, no year),
//! RFC 3339 (`2026-11-23T10:00:01.123456+00:00`), `YYYY-MM-DD hh:mm:ss[ ±hhmm]`
//! (Exim, PowerMTA) and Unix seconds.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A parsed timestamp; classic syslog ones lack the year until a [`YearTracker`] adds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Complete instant.
    Full(OffsetDateTime),
    /// Month, day and seconds of day (classic syslog).
    Yearless { month: Month, day: u8, secs: u32 },
}

/// Gives year-less syslog stamps a year, moving to the next year when the month goes
/// back (December → January). Logs are assumed to be local time written as UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YearTracker {
    year: i32,
    last_month: Option<Month>,
    /// Month in which the log ends (e.g. the file's modification time): a first line in a
    /// later month must belong to the year before.
    end_month: Option<Month>,
}

impl YearTracker {
    /// Start at `year`.
    pub fn new(year: i32) -> Self {
        YearTracker {
            year,
            last_month: None,
            end_month: None,
        }
    }

    /// Start at `year`, for a log known to end in `end_month` of that year.
    pub fn ending(year: i32, end_month: Month) -> Self {
        YearTracker {
            end_month: Some(end_month),
            ..YearTracker::new(year)
        }
    }

    /// The instant of `stamp`, or `None` for an impossible date (e.g. Feb 30).
    pub fn resolve(&mut self, stamp: Stamp) -> Option<OffsetDateTime> {
        match stamp {
            Stamp::Full(t) => Some(t),
            Stamp::Yearless { month, day, secs } => {
                if self.last_month.is_none()
                    && let Some(end) = self.end_month
                    && month as u8 > end as u8
                {
                    self.year -= 1;
                }
                let mut year = self.year;
                match self.last_month {
                    // A jump back of more than six months is a new year; smaller steps
                    // back are out-of-order lines, not a rollover.
                    Some(last) if (month as i32) + 6 < last as i32 => {
                        self.year += 1;
                        year = self.year;
                        self.last_month = Some(month);
                    }
                    // A jump forward of more than six months (December after January) is
                    // a late line of the year before: it leaves the state as it was.
                    Some(last) if (month as i32) > last as i32 + 6 => year -= 1,
                    _ => self.last_month = Some(month),
                }
                let date = Date::from_calendar_date(year, month, day).ok()?;
                let time = Time::from_hms(
                    (secs / 3600) as u8,
                    (secs / 60 % 60) as u8,
                    (secs % 60) as u8,
                )
                .ok()?;
                Some(PrimitiveDateTime::new(date, time).assume_utc())
            }
        }
    }
}

/// Parse a classic syslog stamp at the start of `s`; returns it and the rest after the space.
pub fn classic(s: &str) -> Option<(Stamp, &str)> {
    let b = s.as_bytes();
    if b.len() < 16 || b[3] != b' ' || b[6] != b' ' || b[9] != b':' || b[12] != b':' {
        return None;
    }
    // By bytes: a `&str` match compares the text with each name in turn (a `memcmp`
    // call each), and this runs on every line of a classic syslog log.
    let month = match [b[0], b[1], b[2]] {
        [b'J', b'a', b'n'] => Month::January,
        [b'F', b'e', b'b'] => Month::February,
        [b'M', b'a', b'r'] => Month::March,
        [b'A', b'p', b'r'] => Month::April,
        [b'M', b'a', b'y'] => Month::May,
        [b'J', b'u', b'n'] => Month::June,
        [b'J', b'u', b'l'] => Month::July,
        [b'A', b'u', b'g'] => Month::August,
        [b'S', b'e', b'p'] => Month::September,
        [b'O', b'c', b't'] => Month::October,
        [b'N', b'o', b'v'] => Month::November,
        [b'D', b'e', b'c'] => Month::December,
        _ => return None,
    };
    // `Nov  5` or `Nov 05` (or, rarely, what `u8`'s parser accepts after the blanks).
    let day = match (b[4], b[5]) {
        (b' ', d) if d.is_ascii_digit() => d - b'0',
        _ => match num2(&b[4..6]) {
            Some(day) => day,
            None => s[4..6].trim_start().parse::<u8>().ok()?,
        },
    };
    let h = num2(&b[7..9])?;
    let m = num2(&b[10..12])?;
    let sec = num2(&b[13..15])?;
    if h > 23 || m > 59 || sec > 60 || day == 0 || day > 31 {
        return None;
    }
    let rest = s[15..].strip_prefix(' ')?;
    Some((
        Stamp::Yearless {
            month,
            day,
            secs: h as u32 * 3600 + m as u32 * 60 + sec.min(59) as u32,
        },
        rest,
    ))
}

/// Parse `YYYY-MM-DD?hh:mm:ss[.frac][Z|±hh:mm|±hhmm| ±hhmm]` at the start of `s`
/// (`?` is `T` or a space); returns the instant and the rest after the following space.
pub fn iso(s: &str) -> Option<(OffsetDateTime, &str)> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = num4(&b[0..4])?;
    let month = Month::try_from(num2(&b[5..7])?).ok()?;
    let day = num2(&b[8..10])?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let (h, m, sec) = (num2(&b[11..13])?, num2(&b[14..16])?, num2(&b[17..19])?);
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + (b[i] - b'0') as u32;
            }
            i += 1;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let time = Time::from_hms_nano(h, m, sec.min(59), nanos).ok()?;
    let mut offset = UtcOffset::UTC;
    // The offset may follow directly (RFC 3339) or after one space (Exim, PowerMTA).
    let mut j = i;
    if b.get(j) == Some(&b' ') && matches!(b.get(j + 1), Some(b'+' | b'-')) {
        j += 1;
    }
    match b.get(j) {
        Some(b'Z') => i = j + 1,
        Some(&sign @ (b'+' | b'-')) => {
            let oh = num2(b.get(j + 1..j + 3)?)? as i8;
            let k = if b.get(j + 3) == Some(&b':') {
                j + 4
            } else {
                j + 3
            };
            let om = num2(b.get(k..k + 2)?)? as i8;
            let sign = if sign == b'-' { -1 } else { 1 };
            offset = UtcOffset::from_hms(sign * oh, sign * om, 0).ok()?;
            i = k + 2;
        }
        _ => {}
    }
    let at = PrimitiveDateTime::new(date, time)
        .assume_offset(offset)
        .to_offset(UtcOffset::UTC);
    let rest = &s[i..];
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    Some((at, rest))
}

/// Unix seconds (optionally fractional) as an instant.
pub fn unix(s: &str) -> Option<OffsetDateTime> {
    let secs: f64 = s.trim().parse().ok()?;
    if !secs.is_finite() || !(0.0..1e11).contains(&secs) {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128).ok()
}

fn num2(b: &[u8]) -> Option<u8> {
    if b.len() != 2 || !b[0].is_ascii_digit() || !b[1].is_ascii_digit() {
        return None;
    }
    Some((b[0] - b'0') * 10 + (b[1] - b'0'))
}

fn num4(b: &[u8]) -> Option<i32> {
    if !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i32, |n, d| n * 10 + (d - b'0') as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn classic_stamps_parse_as_the_str_matching_parser_did() {
        fn reference(s: &str) -> Option<(Stamp, &str)> {
            let b = s.as_bytes();
            if b.len() < 16 || b[3] != b' ' || b[6] != b' ' || b[9] != b':' || b[12] != b':' {
                return None;
            }
            let months = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let i = months.iter().position(|m| *m == &s[..3])?;
            let month = Month::try_from(i as u8 + 1).ok()?;
            let day = s[4..6].trim_start().parse::<u8>().ok()?;
            let h = num2(&b[7..9])?;
            let m = num2(&b[10..12])?;
            let sec = num2(&b[13..15])?;
            if h > 23 || m > 59 || sec > 60 || day == 0 || day > 31 {
                return None;
            }
            let rest = s[15..].strip_prefix(' ')?;
            let secs = h as u32 * 3600 + m as u32 * 60 + sec.min(59) as u32;
            Some((Stamp::Yearless { month, day, secs }, rest))
        }
        let mut cases = vec![
            "Nov 23 08:00:00 mx1 x".to_string(),
            "Jan  1 00:00:05 mx1 x".into(),
            "Feb 05 23:59:60 h x".into(),
            "Mar +5 10:00:00 h x".into(),
            "Apr  0 10:00:00 h x".into(),
            "May 32 10:00:00 h x".into(),
            "Jun 5  10:00:00 h x".into(),
            "jul 14 10:00:00 h x".into(),
            "Xyz 14 10:00:00 h x".into(),
            "Aug 14 24:00:00 h x".into(),
            "Sep 14 10:60:00 h x".into(),
            "Oct 14 10:00:00x".into(),
            "Dec 31 23:59:59".into(),
            "Dec 3a 23:59:59 h".into(),
            "Déc 31 23:59:59 h".into(),
        ];
        for m in [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ] {
            for d in [" 1", " 9", "01", "10", "31", "00", " 0", "1 ", "ab"] {
                cases.push(format!("{m} {d} 12:34:56 mx1 postfix/smtp[1]: x"));
            }
        }
        for case in &cases {
            assert_eq!(
                format!("{:?}", classic(case)),
                format!("{:?}", reference(case)),
                "{case:?}"
            );
        }
    }

    #[test]
    fn classic_stamp_gets_the_year_and_rolls_over() {
        let mut years = YearTracker::new(2025);
        let (dec, rest) = classic("Dec 31 23:59:59 mx1 postfix/smtp[1]: x").unwrap();
        assert_eq!(rest, "mx1 postfix/smtp[1]: x");
        assert_eq!(years.resolve(dec), Some(datetime!(2025-12-31 23:59:59 UTC)));
        let (jan, _) = classic("Jan  1 00:00:05 mx1 x").unwrap();
        assert_eq!(years.resolve(jan), Some(datetime!(2026-01-01 00:00:05 UTC)));
        // A late December line after the rollover is of the old year, and the next
        // January line is not a second new year.
        assert_eq!(years.resolve(dec), Some(datetime!(2025-12-31 23:59:59 UTC)));
        assert_eq!(years.resolve(jan), Some(datetime!(2026-01-01 00:00:05 UTC)));
    }

    #[test]
    fn a_log_ending_in_january_starts_in_the_year_before() {
        let mut years = YearTracker::ending(2027, Month::January);
        let (dec, _) = classic("Dec 30 10:00:00 h x").unwrap();
        let (jan, _) = classic("Jan  2 10:00:00 h x").unwrap();
        assert_eq!(years.resolve(dec), Some(datetime!(2026-12-30 10:00:00 UTC)));
        assert_eq!(years.resolve(jan), Some(datetime!(2027-01-02 10:00:00 UTC)));
    }

    #[test]
    fn small_step_back_is_not_a_new_year() {
        let mut years = YearTracker::new(2026);
        let (nov, _) = classic("Nov 23 10:00:00 h x").unwrap();
        let (oct, _) = classic("Oct 30 10:00:00 h x").unwrap();
        years.resolve(nov);
        assert_eq!(years.resolve(oct), Some(datetime!(2026-10-30 10:00:00 UTC)));
    }

    #[test]
    fn iso_variants() {
        let (t, rest) = iso("2026-11-23T10:00:01.5+01:00 host x").unwrap();
        assert_eq!(t, datetime!(2026-11-23 09:00:01.5 UTC));
        assert_eq!(rest, "host x");
        let (t, rest) = iso("2026-11-23 10:00:01 -0500 1abc").unwrap();
        assert_eq!(t, datetime!(2026-11-23 15:00:01 UTC));
        assert_eq!(rest, "1abc");
        let (t, _) = iso("2026-11-23 10:00:01+0000,").unwrap();
        assert_eq!(t, datetime!(2026-11-23 10:00:01 UTC));
        assert!(iso("2026-13-23T10:00:01Z").is_none());
        assert!(iso("2026-11-2").is_none());
    }

    #[test]
    fn garbage_is_none() {
        assert!(classic("Foo 23 10:00:00 h").is_none());
        assert!(classic("Nov 23 1x:00:00 h").is_none());
        assert_eq!(
            unix("1795600000").map(|t| t.unix_timestamp()),
            Some(1_795_600_000)
        );
        assert!(unix("nan").is_none());
    }
}
