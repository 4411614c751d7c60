//! Hand-written parsing of ISO 8601 dates and datetimes.
//!
//! Pure code with no host calls, so it is unit-tested natively.

use std::fmt;

/// The parts of a parsed ISO 8601 date or datetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateParts {
    /// The year, `0000` to `9999`.
    pub year: u16,
    /// The month, `1` to `12`.
    pub month: u8,
    /// The day of the month, `1` to `31` (checked against the month).
    pub day: u8,
    /// For a datetime, its time of day as written (`HH:MM[:SS[.frac]]`),
    /// followed by its UTC offset (`Z` or `±HH:MM`) if it had one.
    pub time: Option<String>,
}

/// Why a string is not an ISO 8601 date or datetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateError(&'static str);

impl fmt::Display for DateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DateError {}

/// Parses `YYYY-MM-DD`, optionally followed by `T` (or a space) and
/// `HH:MM[:SS[.fraction]]` with an optional `Z` or `±HH:MM` offset.
///
/// # Errors
///
/// [`DateError`] naming the first part that is malformed or out of range.
pub fn parse_iso(input: &str) -> Result<DateParts, DateError> {
    let input = input.trim();
    let (date, time) = match input.find(['T', 't', ' ']) {
        Some(at) => (&input[..at], Some(&input[at + 1..])),
        None => (input, None),
    };
    let (year, month, day) = parse_date(date)?;
    let time = time.map(parse_time).transpose()?;
    Ok(DateParts {
        year,
        month,
        day,
        time,
    })
}

fn parse_date(date: &str) -> Result<(u16, u8, u8), DateError> {
    let bytes = date.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return Err(DateError("date must be YYYY-MM-DD"));
    }
    let year = digits(&bytes[0..4]).ok_or(DateError("year must be four digits"))?;
    let month = digits(&bytes[5..7]).ok_or(DateError("month must be two digits"))?;
    let day = digits(&bytes[8..10]).ok_or(DateError("day must be two digits"))?;
    let year = u16::try_from(year).map_err(|_| DateError("year out of range"))?;
    let month = u8::try_from(month)
        .ok()
        .filter(|m| (1..=12).contains(m))
        .ok_or(DateError("month out of range"))?;
    let day = u8::try_from(day)
        .ok()
        .filter(|&d| d >= 1 && d <= days_in_month(year, month))
        .ok_or(DateError("day out of range"))?;
    Ok((year, month, day))
}

/// Validates a time of day with optional fraction and offset; returns it as
/// written (with a lowercase `z` normalised to `Z`).
fn parse_time(time: &str) -> Result<String, DateError> {
    let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
        Some(at) => (&time[..at], &time[at..]),
        None => (time, ""),
    };
    let (clock_main, fraction) = match clock.split_once(['.', ',']) {
        Some((main, fraction)) => (main, Some(fraction)),
        None => (clock, None),
    };
    let fields: Vec<&str> = clock_main.split(':').collect();
    if !(2..=3).contains(&fields.len()) || (fraction.is_some() && fields.len() != 3) {
        return Err(DateError("time must be HH:MM[:SS[.fraction]]"));
    }
    let limits = [23, 59, 60]; // 60 allows a leap second
    for (field, limit) in fields.iter().zip(limits) {
        let value = (field.len() == 2)
            .then(|| digits(field.as_bytes()))
            .flatten()
            .ok_or(DateError("time fields must be two digits"))?;
        if value > limit {
            return Err(DateError("time out of range"));
        }
    }
    if let Some(fraction) = fraction
        && (fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(DateError("fraction of a second must be digits"));
    }
    let offset = match offset {
        "" => "",
        "Z" | "z" => "Z",
        _ => {
            let bytes = offset.as_bytes();
            let valid = bytes.len() == 6
                && bytes[3] == b':'
                && digits(&bytes[1..3]).is_some_and(|h| h <= 23)
                && digits(&bytes[4..6]).is_some_and(|m| m <= 59);
            if !valid {
                return Err(DateError("offset must be Z or ±HH:MM"));
            }
            offset
        }
    };
    Ok(format!("{clock}{offset}"))
}

/// The decimal value of a slice of one to four ASCII digits.
fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    bytes.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn is_leap_year(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: u16, month: u8, day: u8, time: Option<&str>) -> DateParts {
        DateParts {
            year,
            month,
            day,
            time: time.map(str::to_owned),
        }
    }

    #[test]
    fn parses_dates() {
        assert_eq!(parse_iso("1990-05-17"), Ok(date(1990, 5, 17, None)));
        assert_eq!(parse_iso(" 2000-02-29 "), Ok(date(2000, 2, 29, None)));
    }

    #[test]
    fn parses_datetimes() {
        assert_eq!(
            parse_iso("1990-05-17T13:45"),
            Ok(date(1990, 5, 17, Some("13:45")))
        );
        assert_eq!(
            parse_iso("1990-05-17T13:45:07.123z"),
            Ok(date(1990, 5, 17, Some("13:45:07.123Z")))
        );
        assert_eq!(
            parse_iso("1990-05-17 23:59:60-05:30"),
            Ok(date(1990, 5, 17, Some("23:59:60-05:30")))
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "tok_abc123",
            "1990-5-17",
            "1990/05/17",
            "1990-13-01",
            "1990-00-10",
            "1900-02-29",
            "2023-04-31",
            "1990-05-17T",
            "1990-05-17T24:00",
            "1990-05-17T12:60",
            "1990-05-17T12:00:00.",
            "1990-05-17T12:00.5",
            "1990-05-17T12:00:00+5",
            "1990-05-17T12:00:00+24:00",
            "199a-05-17",
        ] {
            assert!(parse_iso(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
