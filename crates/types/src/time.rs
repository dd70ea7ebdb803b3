//! RFC 3339 timestamps as Kubernetes and KFP write them (`2006-01-02T15:04:05Z`: whole seconds,
//! UTC) and the parser for what clients send (fractions and offsets accepted).
//!
//! Invariants: pure functions (one per-thread memo of the last second spelled, which changes no
//! result); out-of-range input yields `None`, never a panic.

/// Seconds since the epoch → `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: i64) -> String {
    let mut out = String::with_capacity(20);
    push_rfc3339_seconds(&mut out, secs);
    out.push('Z');
    out
}

/// Seconds and microseconds since the epoch → `YYYY-MM-DDTHH:MM:SS.ffffffZ` (Kubernetes'
/// MicroTime, as audit events carry it).
pub fn format_rfc3339_micros(secs: i64, micros: u32) -> String {
    MicroTime::new(secs, micros).as_str().to_owned()
}

/// A [`format_rfc3339_micros`] timestamp held on the stack (no allocation: the audit path
/// writes two per request).
#[derive(Clone, Copy)]
pub struct MicroTime {
    buf: [u8; 40],
    len: u8,
}

impl MicroTime {
    /// `secs` and `micros` (capped at 999,999) since the epoch.
    pub fn new(secs: i64, micros: u32) -> Self {
        thread_local! {
            /// The last second spelled on this thread (requests come many to a second).
            static LAST: std::cell::Cell<Option<(i64, MicroTime)>> = const { std::cell::Cell::new(None) };
        }
        let mut t = LAST.with(|last| match last.get() {
            Some((s, t)) if s == secs => t,
            _ => {
                let t = Self::seconds(secs);
                last.set(Some((secs, t)));
                t
            }
        });
        t.push(b'.');
        t.digits(i64::from(micros.min(999_999)), 6);
        t.push(b'Z');
        t
    }

    /// `YYYY-MM-DDTHH:MM:SS` of `secs`.
    fn seconds(secs: i64) -> Self {
        let mut t = Self { buf: [0; 40], len: 0 };
        let days = secs.div_euclid(86_400);
        let s = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if (0..=9999).contains(&y) {
            t.digits(y, 4);
        } else {
            // (as `format!` spells such years; at most 14 bytes for an i64's seconds)
            use std::io::Write;
            let mut rest = &mut t.buf[..];
            let _ = write!(rest, "{y:04}");
            let left = rest.len();
            t.len = u8::try_from(40 - left).unwrap_or(0);
        }
        for (sep, v) in [
            (b'-', m),
            (b'-', d),
            (b'T', s / 3600),
            (b':', (s / 60) % 60),
            (b':', s % 60),
        ] {
            t.push(sep);
            t.digits(v, 2);
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }

    /// `v` (0 ≤ v < 10^width) zero-padded to `width` digits.
    fn digits(&mut self, mut v: i64, width: u8) {
        let start = usize::from(self.len);
        for i in (0..usize::from(width)).rev() {
            self.buf[start + i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
        self.len += width;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for MicroTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds since the epoch → an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110
/// §5.6.7: HTTP's `Date`, `Expires`, `Last-Modified`). Years outside 0..=9999 are clamped.
pub fn format_http_date(secs: i64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = secs.clamp(-62_167_219_200, 253_402_300_799);
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(29);
    out.push_str(WEEKDAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)]);
    out.push_str(", ");
    push_digits(&mut out, d, 2);
    out.push(' ');
    out.push_str(MONTHS[usize::try_from(m - 1).unwrap_or(0)]);
    out.push(' ');
    push_digits(&mut out, y, 4);
    for (sep, v) in [(' ', s / 3600), (':', (s / 60) % 60), (':', s % 60)] {
        out.push(sep);
        push_digits(&mut out, v, 2);
    }
    out.push_str(" GMT");
    out
}

/// `YYYY-MM-DDTHH:MM:SS` without formatting machinery (audit timestamps are written twice per
/// request); years outside 0..=9999 as `format!` would spell them.
fn push_rfc3339_seconds(out: &mut String, secs: i64) {
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        push_digits(out, y, 4);
    } else {
        out.push_str(&format!("{y:04}"));
    }
    for (sep, v) in [('-', m), ('-', d), ('T', s / 3600), (':', (s / 60) % 60), (':', s % 60)] {
        out.push(sep);
        push_digits(out, v, 2);
    }
}

/// `v` (0 ≤ v < 10^width) zero-padded to `width` digits.
fn push_digits(out: &mut String, v: i64, width: u32) {
    let mut div = 10_i64.pow(width.saturating_sub(1));
    while div > 0 {
        let digit = u8::try_from((v / div) % 10).unwrap_or(0);
        out.push(char::from(b'0' + digit));
        div /= 10;
    }
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(13) != Some(&b':') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse::<i64>().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = r.get(n..)?;
    }
    let offset = if rest == "Z" || rest == "z" {
        0
    } else {
        let sign = match rest.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        if rest.len() != 6 {
            return None;
        }
        let oh = num_in(rest, 1..3)?;
        let om = num_in(rest, 4..6)?;
        sign * (oh * 3600 + om * 60)
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

fn num_in(s: &str, r: std::ops::Range<usize>) -> Option<i64> {
    let t = s.get(r)?;
    if !t.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_spelled_as_format_spells_them() {
        for t in [
            0_i64,
            59,
            86_399,
            951_782_400,
            1_796_504_400,
            253_402_300_799,
            -1,
            253_402_300_800,
            i64::MAX,
            i64::MIN,
        ] {
            let days = t.div_euclid(86_400);
            let s = t.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            let want = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                s / 3600,
                (s / 60) % 60,
                s % 60
            );
            assert_eq!(format_rfc3339(t), format!("{want}Z"));
            assert_eq!(format_rfc3339_micros(t, 7), format!("{want}.000007Z"));
            assert_eq!(format_rfc3339_micros(t, 999_999), format!("{want}.999999Z"));
        }
        assert_eq!(
            format_rfc3339_micros(1_796_504_400, 123_456),
            "2026-12-05T21:00:00.123456Z"
        );
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format_http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format_http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(format_http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(format_http_date(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
        assert_eq!(format_http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(format_http_date(i64::MAX).len(), 29);
    }

    #[test]
    fn round_trip() {
        for t in [0_i64, 1, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.5+01:00"), Some(1_700_000_000));
        for bad in [
            "",
            "2023",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
            "x023-11-14T22:13:20Z",
            "2023-11-14T22:13:20+1",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
