//! Format-preserving tokens.
//!
//! | format | kept | transformed |
//! | --- | --- | --- |
//! | card | length, first digit, last four, Luhn validity | the digits between (the digit before the last four is the Luhn digit) |
//! | phone | `+`, country calling code, length, first national digit | the rest of the national number |
//! | ssn | `NNN-NN-NNNN` shape | all nine digits (random tokens use area 900-999, which is never issued) |
//! | email | domain, length, punctuation positions | letters and digits of the local part |
//! | digits | length | all digits |
//!
//! The deterministic variant is NIST SP 800-38G FF1 (AES-256) over the transformed digits
//! (radix 10) or characters (radix 36), with the caller's tweak. FF1 is a permutation for a
//! given key and tweak, so distinct values give distinct tokens; it needs a domain of at least
//! 10^6, which is why short inputs are refused.
//!
//! INVARIANT: a random variant never returns its own value; the deterministic variant cannot
//! avoid a fixed point, so the vault retries with the next tweak when `token == value`.

use super::TokenError;
use aes_gcm::aes::Aes256;
use fpe::ff1::{FF1, FlexibleNumeralString};
use rand::Rng;

/// The formats that can be format-preserved. Inputs are already normalised by `types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpeFormat {
    /// 12 to 19 digits, Luhn-valid.
    Card,
    /// E.164: `+` and 8 to 15 digits.
    Phone,
    /// `NNN-NN-NNNN`.
    Ssn,
    /// lowercase `local@domain`.
    Email,
    /// 6 or more digits (bank account numbers).
    Digits,
}

const ALNUM: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// How one transformation is applied: which radix, and how to draw a random numeral.
#[derive(Clone, Copy)]
enum Mode<'a> {
    Random,
    Ff1 { key: &'a [u8; 32], tweak: &'a [u8] },
}

/// A random format-preserving token (fresh randomness each call; never equal to the value).
pub fn format_preserving_random(format: FpeFormat, canonical: &str) -> Result<String, TokenError> {
    for _ in 0..64 {
        let token = transform(format, canonical, Mode::Random)?;
        if token != canonical {
            return Ok(token);
        }
    }
    Err(TokenError::Unsupported(
        "the format leaves too little room for a token",
    ))
}

/// A deterministic format-preserving token: FF1 under `key` with `tweak`.
pub fn format_preserving_deterministic(
    format: FpeFormat,
    key: &[u8; 32],
    tweak: &[u8],
    canonical: &str,
) -> Result<String, TokenError> {
    transform(format, canonical, Mode::Ff1 { key, tweak })
}

fn transform(format: FpeFormat, canonical: &str, mode: Mode) -> Result<String, TokenError> {
    match format {
        FpeFormat::Card => card(canonical, mode),
        FpeFormat::Phone => phone(canonical, mode),
        FpeFormat::Ssn => ssn(canonical, mode),
        FpeFormat::Email => email(canonical, mode),
        FpeFormat::Digits => {
            let d = digits_of(canonical).ok_or(TokenError::Unsupported("expected digits only"))?;
            if d.len() < 6 {
                return Err(TokenError::Unsupported("needs at least 6 digits"));
            }
            Ok(to_text(&numerals(&d, 10, mode)?, 10))
        }
    }
}

fn digits_of(s: &str) -> Option<Vec<u16>> {
    s.bytes()
        .map(|b| b.is_ascii_digit().then(|| u16::from(b - b'0')))
        .collect()
}

fn to_text(ns: &[u16], radix: u32) -> String {
    ns.iter()
        .map(|&n| {
            if radix == 10 {
                (b'0' + n as u8) as char
            } else {
                ALNUM[n as usize] as char
            }
        })
        .collect()
}

/// Transforms numerals in `radix`: FF1, or uniform random numerals.
fn numerals(input: &[u16], radix: u32, mode: Mode) -> Result<Vec<u16>, TokenError> {
    match mode {
        Mode::Random => {
            let mut rng = rand::thread_rng();
            Ok(input
                .iter()
                .map(|_| rng.gen_range(0..radix) as u16)
                .collect())
        }
        Mode::Ff1 { key, tweak } => ff1(key, radix, tweak, input),
    }
}

/// NIST FF1 encryption of `input` (numerals in `radix`).
pub(crate) fn ff1(
    key: &[u8; 32],
    radix: u32,
    tweak: &[u8],
    input: &[u16],
) -> Result<Vec<u16>, TokenError> {
    let cipher =
        FF1::<Aes256>::new(key, radix).map_err(|_| TokenError::Unsupported("unsupported radix"))?;
    let ns = FlexibleNumeralString::from(input.to_vec());
    cipher
        .encrypt(tweak, &ns)
        .map(Vec::from)
        .map_err(|_| TokenError::Unsupported("too short to be format-preserved"))
}

/// The Luhn digit for position `len - 5` (index 4 from the right, which Luhn does not double).
fn luhn_fix(digits: &mut [u16]) {
    let p = digits.len() - 5;
    let mut sum = 0u16;
    for (i, d) in digits.iter().rev().enumerate() {
        if digits.len() - 1 - i == p {
            continue;
        }
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            *d
        };
    }
    digits[p] = (10 - sum % 10) % 10;
}

fn card(canonical: &str, mode: Mode) -> Result<String, TokenError> {
    let mut d = digits_of(canonical).ok_or(TokenError::Unsupported("expected digits only"))?;
    if !(12..=19).contains(&d.len()) {
        return Err(TokenError::Unsupported("a card number has 12 to 19 digits"));
    }
    let n = d.len();
    // keep d[0] and the last four; transform d[1..n-5]; d[n-5] becomes the Luhn digit.
    let middle = numerals(&d[1..n - 5], 10, mode)?;
    d[1..n - 5].copy_from_slice(&middle);
    luhn_fix(&mut d);
    Ok(to_text(&d, 10))
}

/// Length of the ITU country calling code at the start of `digits` (E.164 without `+`).
fn country_code_len(digits: &[u16]) -> usize {
    let two = digits.first().map_or(0, |a| a * 10) + digits.get(1).copied().unwrap_or(0);
    match digits.first() {
        Some(1) | Some(7) => 1,
        _ => match two {
            20
            | 27
            | 30..=34
            | 36
            | 39
            | 40
            | 41
            | 43..=49
            | 51..=58
            | 60..=66
            | 81
            | 82
            | 84
            | 86
            | 90..=95
            | 98 => 2,
            _ => 3,
        },
    }
}

fn phone(canonical: &str, mode: Mode) -> Result<String, TokenError> {
    let rest = canonical
        .strip_prefix('+')
        .ok_or(TokenError::Unsupported("expected an E.164 number"))?;
    let mut d = digits_of(rest).ok_or(TokenError::Unsupported("expected an E.164 number"))?;
    let cc = country_code_len(&d);
    let national = d.len().saturating_sub(cc);
    // Keep the first national digit (area/mobile prefix, never 0) when the rest is big enough.
    let start = if national >= 7 { cc + 1 } else { cc };
    if d.len() - start < 6 {
        return Err(TokenError::Unsupported("the national number is too short"));
    }
    let out = numerals(&d[start..], 10, mode)?;
    d[start..].copy_from_slice(&out);
    Ok(format!("+{}", to_text(&d, 10)))
}

fn ssn(canonical: &str, mode: Mode) -> Result<String, TokenError> {
    let d = digits_of(&canonical.replace('-', ""))
        .ok_or(TokenError::Unsupported("expected NNN-NN-NNNN"))?;
    if d.len() != 9 {
        return Err(TokenError::Unsupported("expected NNN-NN-NNNN"));
    }
    let t: Vec<u16> = match mode {
        Mode::Random => {
            let mut rng = rand::thread_rng();
            let mut t = vec![9];
            t.extend((0..8).map(|_| rng.gen_range(0..10u16)));
            t
        }
        Mode::Ff1 { .. } => numerals(&d, 10, mode)?,
    };
    let s = to_text(&t, 10);
    Ok(format!("{}-{}-{}", &s[0..3], &s[3..5], &s[5..9]))
}

fn email(canonical: &str, mode: Mode) -> Result<String, TokenError> {
    let (local, domain) = canonical
        .rsplit_once('@')
        .ok_or(TokenError::Unsupported("expected an email address"))?;
    let positions: Vec<usize> = local
        .bytes()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_lowercase() || b.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let values: Vec<u16> = positions
        .iter()
        .filter_map(|&i| {
            ALNUM
                .iter()
                .position(|&c| c == local.as_bytes()[i])
                .map(|p| p as u16)
        })
        .collect();
    if positions.len() < 4 {
        return match mode {
            Mode::Random => {
                let fresh = numerals(&[0; 8], 36, mode)?;
                Ok(format!("{}@{domain}", to_text(&fresh, 36)))
            }
            Mode::Ff1 { .. } => Err(TokenError::Unsupported(
                "the local part needs at least 4 letters or digits",
            )),
        };
    }
    let out = numerals(&values, 36, mode)?;
    let mut bytes = local.as_bytes().to_vec();
    for (&i, &v) in positions.iter().zip(&out) {
        bytes[i] = ALNUM[v as usize];
    }
    let local = String::from_utf8(bytes)
        .map_err(|_| TokenError::Unsupported("expected an email address"))?;
    Ok(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const NIST_KEY: [u8; 32] = [
        0x2B, 0x7E, 0x15, 0x16, 0x28, 0xAE, 0xD2, 0xA6, 0xAB, 0xF7, 0x15, 0x88, 0x09, 0xCF, 0x4F,
        0x3C, 0xEF, 0x43, 0x59, 0xD8, 0xD5, 0x80, 0xAA, 0x4F, 0x7F, 0x03, 0x6D, 0x6F, 0x04, 0xFC,
        0x6A, 0x94,
    ];

    fn radix_numerals(s: &str) -> Vec<u16> {
        s.bytes()
            .map(|b| ALNUM.iter().position(|&c| c == b).unwrap() as u16)
            .collect()
    }

    #[test]
    fn nist_sp800_38g_ff1_aes256_samples() {
        // Samples 7, 8 and 9 of NIST's FF1 examples (AES-256).
        let cases: [(&str, u32, &[u8], &str); 3] = [
            ("0123456789", 10, &[], "6657667009"),
            (
                "0123456789",
                10,
                &[0x39, 0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31, 0x30],
                "1001623463",
            ),
            (
                "0123456789abcdefghi",
                36,
                &[
                    0x37, 0x37, 0x37, 0x37, 0x70, 0x71, 0x72, 0x73, 0x37, 0x37, 0x37,
                ],
                "xs8a0azh2avyalyzuwd",
            ),
        ];
        for (pt, radix, tweak, ct) in cases {
            let out = ff1(&NIST_KEY, radix, tweak, &radix_numerals(pt)).unwrap();
            assert_eq!(to_text(&out, 36), ct, "radix {radix}");
        }
    }

    fn luhn(s: &str) -> bool {
        let mut d: Vec<u16> = digits_of(s).unwrap();
        let want = d[d.len() - 5];
        luhn_fix(&mut d);
        d[d.len() - 5] == want
    }

    fn random_card(len: usize) -> String {
        let mut rng = rand::thread_rng();
        let mut d: Vec<u16> = (0..len).map(|_| rng.gen_range(0..10)).collect();
        d[0] = 4;
        luhn_fix(&mut d);
        to_text(&d, 10)
    }

    #[test]
    fn cards_keep_length_first_digit_last_four_and_luhn() {
        let key = [7u8; 32];
        for len in 12..=19 {
            for _ in 0..200 {
                let card_no = random_card(len);
                assert!(luhn(&card_no));
                for token in [
                    format_preserving_random(FpeFormat::Card, &card_no).unwrap(),
                    format_preserving_deterministic(FpeFormat::Card, &key, b"t", &card_no).unwrap(),
                ] {
                    assert_eq!(token.len(), len);
                    assert_eq!(&token[len - 4..], &card_no[len - 4..]);
                    assert_eq!(&token[..1], &card_no[..1]);
                    assert!(luhn(&token), "{token}");
                }
            }
        }
        assert!(luhn("4111111111111111"));
    }

    #[test]
    fn deterministic_is_stable_tweak_bound_and_injective() {
        let key = [3u8; 32];
        let a = format_preserving_deterministic(FpeFormat::Card, &key, b"col", "4111111111111111")
            .unwrap();
        assert_eq!(
            a,
            format_preserving_deterministic(FpeFormat::Card, &key, b"col", "4111111111111111")
                .unwrap()
        );
        assert_ne!(
            a,
            format_preserving_deterministic(FpeFormat::Card, &key, b"col2", "4111111111111111")
                .unwrap()
        );
        assert_ne!(
            a,
            format_preserving_deterministic(
                FpeFormat::Card,
                &[4u8; 32],
                b"col",
                "4111111111111111"
            )
            .unwrap()
        );
        let mut seen = HashSet::new();
        let mut inputs = HashSet::new();
        while inputs.len() < 10_000 {
            inputs.insert(random_card(16));
        }
        for c in &inputs {
            assert!(seen.insert(
                format_preserving_deterministic(FpeFormat::Card, &key, b"col", c).unwrap()
            ));
        }
    }

    #[test]
    fn phones_keep_country_code_and_length() {
        let key = [5u8; 32];
        for (phone, cc) in [
            ("+14155552671", "+14"),
            ("+442079460958", "+442"),
            ("+3531234567", "+3531"),
            ("+8613800138000", "+861"),
        ] {
            for token in [
                format_preserving_random(FpeFormat::Phone, phone).unwrap(),
                format_preserving_deterministic(FpeFormat::Phone, &key, b"p", phone).unwrap(),
            ] {
                assert_eq!(token.len(), phone.len(), "{token}");
                assert!(token.starts_with(cc), "{phone} -> {token}");
                assert!(token[1..].bytes().all(|b| b.is_ascii_digit()));
            }
        }
        assert_eq!(country_code_len(&[1, 4, 1]), 1);
        assert_eq!(country_code_len(&[4, 4, 2]), 2);
        assert_eq!(country_code_len(&[3, 5, 3]), 3);
        assert!(format_preserving_random(FpeFormat::Phone, "+3531234").is_err());
    }

    #[test]
    fn ssns_keep_shape_and_random_ones_are_never_issued() {
        let key = [9u8; 32];
        for _ in 0..500 {
            let r = format_preserving_random(FpeFormat::Ssn, "123-45-6789").unwrap();
            assert!(
                r.starts_with('9') && r.len() == 11 && &r[3..4] == "-" && &r[6..7] == "-",
                "{r}"
            );
        }
        let d = format_preserving_deterministic(FpeFormat::Ssn, &key, b"s", "123-45-6789").unwrap();
        assert!(
            d.len() == 11 && &d[3..4] == "-" && &d[6..7] == "-" && d != "123-45-6789",
            "{d}"
        );
    }

    #[test]
    fn emails_keep_domain_and_punctuation() {
        let key = [1u8; 32];
        for token in [
            format_preserving_random(FpeFormat::Email, "jane.doe+news@example.org").unwrap(),
            format_preserving_deterministic(
                FpeFormat::Email,
                &key,
                b"e",
                "jane.doe+news@example.org",
            )
            .unwrap(),
        ] {
            assert!(token.ends_with("@example.org"), "{token}");
            assert_eq!(token.len(), "jane.doe+news@example.org".len());
            assert_eq!(&token[4..5], ".");
            assert_eq!(&token[8..9], "+");
        }
        let short = format_preserving_random(FpeFormat::Email, "al@x.io").unwrap();
        assert!(short.ends_with("@x.io") && short.len() == 8 + 5, "{short}");
        assert!(format_preserving_deterministic(FpeFormat::Email, &key, b"e", "al@x.io").is_err());
    }

    #[test]
    fn digits_and_errors() {
        let t = format_preserving_random(FpeFormat::Digits, "000123456789").unwrap();
        assert_eq!(t.len(), 12);
        assert!(format_preserving_random(FpeFormat::Digits, "12345").is_err());
        let err = format_preserving_random(FpeFormat::Card, "4111-1111")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("4111"));
    }
}
