//! UTC timestamps without a date crate: RFC 3339 formatting and parsing of
//! the forms airlock writes and accepts.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Civil date (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Length of [`rfc3339_micros`]' text.
pub const STAMP_LEN: usize = 27;

/// `2026-11-24T09:41:26.123456Z`. Written digit by digit: every audit
/// record carries one, so this is on the host-call path.
pub fn rfc3339_micros(micros: u64) -> String {
    let stamp = stamp(micros);
    stamp.iter().map(|&b| char::from(b)).collect()
}

/// [`rfc3339_micros`] as bytes, without allocating.
pub fn stamp(micros: u64) -> [u8; STAMP_LEN] {
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    write_date_time(&mut out, micros / 1_000_000);
    write_micros(&mut out, micros);
    out
}

/// Formats stamps, reusing the date and time of day while the second stays
/// the same (consecutive audit records almost always share it).
#[derive(Debug, Clone)]
pub struct StampCache {
    secs: u64,
    text: [u8; STAMP_LEN],
}

impl Default for StampCache {
    fn default() -> StampCache {
        StampCache {
            secs: 0,
            text: stamp(0),
        }
    }
}

impl StampCache {
    /// [`stamp`] of `micros`.
    pub fn format(&mut self, micros: u64) -> &[u8; STAMP_LEN] {
        let secs = micros / 1_000_000;
        if secs != self.secs {
            write_date_time(&mut self.text, secs);
            self.secs = secs;
        }
        write_micros(&mut self.text, micros);
        &self.text
    }
}

fn put(out: &mut [u8; STAMP_LEN], at: usize, width: usize, value: u64) {
    let mut v = value;
    for i in (at..at + width).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn write_date_time(out: &mut [u8; STAMP_LEN], secs: u64) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    // Years past 9999 (or before 0) do not occur in a clock reading; clamp
    // rather than print a malformed stamp.
    put(out, 0, 4, y.clamp(0, 9999) as u64);
    put(out, 5, 2, m as u64);
    put(out, 8, 2, d as u64);
    put(out, 11, 2, rem / 3600);
    put(out, 14, 2, rem / 60 % 60);
    put(out, 17, 2, rem % 60);
}

fn write_micros(out: &mut [u8; STAMP_LEN], micros: u64) {
    put(out, 20, 6, micros % 1_000_000);
}

/// Serde for a time kept as Unix microseconds and written as
/// [`rfc3339_micros`] text; 0 is written (and read back) as empty text,
/// for records from before a field existed.
pub mod rfc3339_text {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(micros: &u64, s: S) -> Result<S::Ok, S::Error> {
        if *micros == 0 {
            return s.serialize_str("");
        }
        let stamp = super::stamp(*micros);
        // Digits and ASCII punctuation only.
        s.serialize_str(std::str::from_utf8(&stamp).unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        if text.is_empty() {
            return Ok(0);
        }
        super::parse_utc(&text).map_err(serde::de::Error::custom)
    }
}

/// `2026-11-24 09:41:26` (seconds precision, for tables).
pub fn display_secs(secs: u64) -> String {
    let mut s = rfc3339_micros(secs * 1_000_000);
    s.truncate(19);
    s.replace('T', " ")
}

/// Parse `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.frac]][Z]` (UTC; a space may
/// replace the `T`) or plain Unix seconds, into Unix microseconds.
pub fn parse_utc(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a time: use Unix seconds or YYYY-MM-DD[THH:MM[:SS]][Z] (UTC)");
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(|s| s.saturating_mul(1_000_000)).map_err(|_| bad());
    }
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, tm),
        None => (t, "00:00:00"),
    };
    let num = |s: &str, lo: i64, hi: i64| -> Result<i64, String> {
        let v: i64 = s.parse().map_err(|_| bad())?;
        if (lo..=hi).contains(&v) && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(v)
        } else {
            Err(bad())
        }
    };
    let mut d = date.split('-');
    let (y, mo, da) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(dd), None) => (num(y, 1970, 9999)?, num(m, 1, 12)?, num(dd, 1, 31)?),
        _ => return Err(bad()),
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut tp = hms.split(':');
    let (h, mi, s) = match (tp.next(), tp.next(), tp.next(), tp.next()) {
        (Some(h), Some(m), None, None) => (num(h, 0, 23)?, num(m, 0, 59)?, 0),
        (Some(h), Some(m), Some(s), None) => (num(h, 0, 23)?, num(m, 0, 59)?, num(s, 0, 60)?),
        _ => return Err(bad()),
    };
    let micros_frac: i64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(6).collect();
        num(&format!("{digits:0<6}"), 0, 999_999)?
    };
    let days = days_from_civil(y, mo, da);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs * 1_000_000 + micros_frac).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = 1_795_510_709_123_456;
        let text = rfc3339_micros(t);
        assert_eq!(text, "2026-11-24T08:58:29.123456Z");
        assert_eq!(parse_utc(&text), Ok(t));
        assert_eq!(parse_utc("2026-11-24"), Ok(1_795_478_400_000_000));
        assert_eq!(parse_utc("1795510709"), Ok(1_795_510_709_000_000));
        assert_eq!(parse_utc("2026-11-24 08:58"), Ok(1_795_510_680_000_000));
        for bad in ["", "yesterday", "2026-13-01", "2026-11-24T25:00", "2026-11"] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339_micros(253_402_300_799_999_999), "9999-12-31T23:59:59.999999Z");
        // Every day across four years (a leap year included), one odd time.
        for day in 20_000..21_500u64 {
            let t = day * 86_400_000_000 + 45_296_789_012;
            assert_eq!(parse_utc(&rfc3339_micros(t)), Ok(t));
        }
    }
}
