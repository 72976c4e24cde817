//! The timestamps saved kernel logs carry: printk's `[ secs.micros]` since boot, and the wall
//! clock of `dmesg -T`, journalctl and syslog, turned into one [`Stamp`] (UTC, no time zones
//! database: an explicit offset is applied, a missing one is taken as UTC).

use std::time::Duration;

/// When a line was logged, on the clock its format carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stamp {
    /// printk time: since boot.
    Boot(Duration),
    /// Seconds since the Unix epoch (UTC).
    Wall(i64),
}

impl Stamp {
    /// The stamp as the `Record` timestamp: boot time, or wall seconds since the epoch.
    pub fn as_duration(self) -> Duration {
        match self {
            Stamp::Boot(d) => d,
            Stamp::Wall(s) => Duration::from_secs(u64::try_from(s).unwrap_or(0)),
        }
    }
}

/// `secs.micros` as printk prints it (`[ 5425.403086]` without brackets), digit by digit so
/// no float rounding moves a record.
pub(super) fn parse_boot(s: &str) -> Option<Duration> {
    let (secs, frac) = s.trim().split_once('.')?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
    Some(Duration::new(secs, nanos))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn month(name: &str) -> Option<u32> {
    let i = MONTHS.iter().position(|m| *m == name)?;
    u32::try_from(i).ok().map(|i| i + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn hms(s: &str) -> Option<i64> {
    let mut it = s.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
    ((0..24).contains(&h) && (0..60).contains(&m) && (0..=60).contains(&sec) && it.next().is_none())
        .then_some(h * 3600 + m * 60 + sec)
}

fn civil(year: i64, mon: u32, day: u32, secs_of_day: i64) -> Option<i64> {
    ((1..=12).contains(&mon) && (1..=31).contains(&day))
        .then(|| days_from_civil(year, mon, day) * 86_400 + secs_of_day)
}

/// `Tue Dec  1 23:24:42 2026` (`dmesg -T`, ctime without the newline).
pub(super) fn parse_ctime(s: &str) -> Option<i64> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [_wday, mon, day, time, year] = f.as_slice() else {
        return None;
    };
    civil(
        year.parse().ok()?,
        month(mon)?,
        day.parse().ok()?,
        hms(time)?,
    )
}

/// `Dec 01 23:24:42` / `Dec  1 23:24:42` (journalctl's short format, traditional syslog): the
/// year is not written; `year` is the one to assume.
pub(super) fn parse_short(mon: &str, day: &str, time: &str, year: i64) -> Option<i64> {
    civil(year, month(mon)?, day.parse().ok()?, hms(time)?)
}

/// `2026-12-01T23:24:42+00:00`, `…+0000`, `…Z`, with optional fractional seconds (journalctl
/// short-iso and short-iso-precise, rsyslog's RFC 3339 files). Fractions are dropped.
pub(super) fn parse_iso(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?, d.next()?, d.next()?);
    if d.next().is_some() || y.len() != 4 {
        return None;
    }
    let zone_at = rest.find(['+', '-', 'Z']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let time = time.split_once('.').map_or(time, |(t, _)| t);
    let offset = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(char::is_ascii_digit).collect();
            if digits.len() != 4 {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let mi: i64 = digits[2..].parse().ok()?;
            sign * (h * 3600 + mi * 60)
        }
    };
    let at = civil(
        y.parse().ok()?,
        m.parse().ok()?,
        day.parse().ok()?,
        hms(time)?,
    )?;
    Some(at - offset)
}

/// The year now (for journalctl's short format, which leaves it out).
pub fn this_year() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    // 146097 days per 400 years: close enough for a year number, corrected below.
    let mut year = 1970 + now / 31_556_952;
    while days_from_civil(year, 1, 1) * 86_400 > now {
        year -= 1;
    }
    while days_from_civil(year + 1, 1, 1) * 86_400 <= now {
        year += 1;
    }
    year
}

/// `--since`: seconds since boot (`5425.4`) or a UTC date and time (`2026-12-01 23:24:00`,
/// RFC 3339 with an offset).
pub fn parse_since(s: &str) -> Result<Stamp, String> {
    if let Some(d) = parse_boot(s).or_else(|| s.trim().parse::<u64>().ok().map(Duration::from_secs))
    {
        return Ok(Stamp::Boot(d));
    }
    parse_iso(s.trim()).map(Stamp::Wall).ok_or_else(|| {
        format!("{s:?}: give seconds since boot (5425.4) or a UTC time (2026-12-01 23:24:00)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks() {
        assert_eq!(
            parse_boot(" 5425.403086"),
            Some(Duration::new(5425, 403_086_000))
        );
        assert_eq!(parse_boot("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_boot("12"), None);
        assert_eq!(parse_boot("1.x"), None);
        // 2026-12-01 23:24:42 UTC.
        let t = 1_796_167_482;
        assert_eq!(parse_ctime("Tue Dec  1 23:24:42 2026"), Some(t));
        assert_eq!(parse_short("Dec", "01", "23:24:42", 2026), Some(t));
        assert_eq!(parse_iso("2026-12-01T23:24:42+00:00"), Some(t));
        assert_eq!(parse_iso("2026-12-02T00:24:42.123456+0100"), Some(t));
        assert_eq!(parse_iso("2026-12-01 23:24:42"), Some(t));
        assert_eq!(parse_iso("2026-12-01T25:24:42Z"), None);
        assert_eq!(parse_ctime("Tue Foo  1 23:24:42 2026"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert!(this_year() >= 2024);
        assert_eq!(
            parse_since("5425.4"),
            Ok(Stamp::Boot(Duration::from_millis(5_425_400)))
        );
        assert_eq!(parse_since("2026-12-01 23:24:42"), Ok(Stamp::Wall(t)));
        assert!(parse_since("yesterday").is_err());
    }
}
