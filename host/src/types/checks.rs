//! Validators for the structured privacy types. Each returns the canonical text or a fixed reason.

use super::{InvalidValue, invalid};

/// Digits of `s` once the separators in `allowed` are removed; `None` if anything else appears.
fn digits_only(s: &str, allowed: &[char]) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            out.push(c);
        } else if !allowed.contains(&c) {
            return None;
        }
    }
    Some(out)
}

/// The Luhn (mod 10) check used by card numbers.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

pub fn card_number(s: &str) -> Result<String, InvalidValue> {
    let Some(d) = digits_only(s, &[' ', '-']) else {
        return invalid("a card number has only digits, spaces and dashes");
    };
    if !(12..=19).contains(&d.len()) {
        return invalid("a card number has 12 to 19 digits");
    }
    if !luhn_valid(&d) {
        return invalid("fails the Luhn check");
    }
    Ok(d)
}

pub fn card_expiry(s: &str) -> Result<String, InvalidValue> {
    const REASON: &str = "expected a card expiry as MM/YY or MM/YYYY";
    let Some((m, y)) = s.trim().split_once(['/', '-']) else {
        return invalid(REASON);
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(m) || !all_digits(y) || m.len() > 2 {
        return invalid(REASON);
    }
    let month: u32 = m.parse().or_else(|_| invalid(REASON))?;
    let year: u32 = match y.len() {
        2 => 2000 + y.parse::<u32>().or_else(|_| invalid(REASON))?,
        4 => y.parse().or_else(|_| invalid(REASON))?,
        _ => return invalid(REASON),
    };
    if !(1..=12).contains(&month) {
        return invalid("the expiry month must be 01 to 12");
    }
    if !(2000..=2099).contains(&year) {
        return invalid("the expiry year must be 2000 to 2099");
    }
    Ok(format!("{month:02}/{year}"))
}

pub fn ssn(s: &str) -> Result<String, InvalidValue> {
    let t = s.trim();
    let shaped = t.len() == 9
        || (t.len() == 11 && t.as_bytes()[3] == b'-' && t.as_bytes()[6] == b'-')
        || (t.len() == 11 && t.as_bytes()[3] == b' ' && t.as_bytes()[6] == b' ');
    let Some(d) = digits_only(t, &['-', ' ']).filter(|d| shaped && d.len() == 9) else {
        return invalid("expected an SSN as NNN-NN-NNNN");
    };
    let (area, group, serial) = (&d[0..3], &d[3..5], &d[5..9]);
    if area == "000" || area == "666" || area.starts_with('9') {
        return invalid("an SSN area cannot be 000, 666 or 900-999");
    }
    if group == "00" {
        return invalid("an SSN group cannot be 00");
    }
    if serial == "0000" {
        return invalid("an SSN serial cannot be 0000");
    }
    // Numbers the SSA voided after they were published.
    if d == "078051120" || d == "219099999" {
        return invalid("is a published, voided SSN");
    }
    Ok(format!("{area}-{group}-{serial}"))
}

pub fn phone(s: &str) -> Result<String, InvalidValue> {
    let t = s.trim();
    let Some(rest) = t.strip_prefix('+') else {
        return invalid("expected an E.164 phone number with its country code, e.g. +14155550123");
    };
    let Some(d) = digits_only(rest, &[' ', '-', '.', '(', ')']) else {
        return invalid("a phone number has only digits, spaces, dashes, dots and parentheses");
    };
    if !(7..=15).contains(&d.len()) {
        return invalid("an E.164 phone number has 7 to 15 digits");
    }
    if d.starts_with('0') {
        return invalid("a country code cannot start with 0");
    }
    Ok(format!("+{d}"))
}

pub fn email(s: &str) -> Result<String, InvalidValue> {
    let e = s.trim().to_ascii_lowercase();
    if e.len() > 254 {
        return invalid("an email address is at most 254 characters");
    }
    let Some((local, domain)) = e.rsplit_once('@') else {
        return invalid("an email address needs an @");
    };
    if local.is_empty() || local.len() > 64 {
        return invalid("the part before @ must have 1 to 64 characters");
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    if !local
        .split('.')
        .all(|p| !p.is_empty() && p.chars().all(atext))
    {
        return invalid("the part before @ has a character or dot that is not allowed");
    }
    if !valid_domain(domain) {
        return invalid("the domain is not a valid host name");
    }
    Ok(e)
}

/// A DNS host name with at least two labels and an alphabetic top-level domain.
fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld_ok = labels.last().is_some_and(|t| {
        t.len() >= 2 && (t.bytes().all(|b| b.is_ascii_alphabetic()) || t.starts_with("xn--"))
    });
    domain.len() <= 253 && labels.len() >= 2 && labels.iter().all(label_ok) && tld_ok
}

/// IBAN lengths by country (the SWIFT registry, release 100). An IBAN of a country not listed
/// is refused: its length could not be checked.
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

pub fn iban(s: &str) -> Result<String, InvalidValue> {
    let i: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !i.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return invalid("an IBAN has only letters, digits and spaces");
    }
    if !(15..=34).contains(&i.len())
        || !i.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic)
        || !i.as_bytes()[2..4].iter().all(u8::is_ascii_digit)
    {
        return invalid("expected an IBAN: country code, two check digits, account number");
    }
    match IBAN_LENGTHS.iter().find(|(cc, _)| *cc == &i[..2]) {
        None => return invalid("has a country code that issues no IBANs"),
        Some((_, len)) if *len != i.len() => {
            return invalid("has the wrong length for its country");
        }
        Some(_) => {}
    }
    // ISO 13616 check digits are 02 to 98: 00, 01 and 99 pass mod 97 as well as 97, 98 and 02
    // do, and would give one account a second canonical form (past unique columns and
    // deterministic tokens).
    // (Two ASCII digits, checked above.)
    if !(2..=98).contains(&i[2..4].parse::<u8>().unwrap_or(0)) {
        return invalid("has check digits outside 02 to 98");
    }
    // Move the first four characters to the end, letters become 10..35, then mod 97.
    let mut rem = 0u32;
    for b in i.bytes().skip(4).chain(i.bytes().take(4)) {
        let v = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    if rem != 1 {
        return invalid("fails the IBAN mod-97 check");
    }
    Ok(i)
}

pub fn routing_number(s: &str) -> Result<String, InvalidValue> {
    let Some(d) = digits_only(s, &[]).filter(|d| d.len() == 9) else {
        return invalid("an ABA routing number has 9 digits");
    };
    let prefix: u32 = d[..2].parse().unwrap_or(99);
    if !matches!(prefix, 0..=12 | 21..=32 | 61..=72 | 80) {
        return invalid("is not an assigned ABA routing prefix");
    }
    let n: Vec<u32> = d.bytes().map(|b| u32::from(b - b'0')).collect();
    let sum = 3 * (n[0] + n[3] + n[6]) + 7 * (n[1] + n[4] + n[7]) + (n[2] + n[5] + n[8]);
    if !sum.is_multiple_of(10) {
        return invalid("fails the ABA checksum");
    }
    Ok(d)
}

pub fn bank_account(s: &str) -> Result<String, InvalidValue> {
    let Some(d) = digits_only(s, &[' ', '-']) else {
        return invalid("a bank account number has only digits, spaces and dashes");
    };
    if !(4..=17).contains(&d.len()) {
        return invalid("a bank account number has 4 to 17 digits");
    }
    Ok(d)
}

pub fn postal_code(s: &str) -> Result<String, InvalidValue> {
    let p = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    let alnum = p.bytes().filter(u8::is_ascii_alphanumeric).count();
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-')
    {
        return invalid("a postal code has only letters, digits, spaces and dashes");
    }
    if !(3..=10).contains(&alnum) || p.len() > 12 {
        return invalid("a postal code has 3 to 10 letters or digits");
    }
    Ok(p)
}

pub fn passport(s: &str) -> Result<String, InvalidValue> {
    let p: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return invalid("a passport number has only letters and digits");
    }
    if !(6..=9).contains(&p.len()) {
        return invalid("a passport number has 6 to 9 letters or digits");
    }
    Ok(p)
}
