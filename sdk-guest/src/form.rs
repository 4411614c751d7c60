//! `application/x-www-form-urlencoded` encoding and decoding.
//!
//! Pure functions, usable and testable on any target.

use std::fmt::Write as _;

/// Encodes pairs as an `application/x-www-form-urlencoded` string.
///
/// Follows the WHATWG serializer (space becomes `+`; everything but ASCII
/// alphanumerics and `*-._` is percent-encoded as UTF-8), except that `[` and
/// `]` are kept as-is in *keys* so nested keys read `card[number]=...`, the
/// way payment APIs document them. Decoders treat both spellings alike.
///
/// ```
/// use strongroom_guest::form_encode;
/// assert_eq!(
///     form_encode(&[("card[number]", "4242 4242"), ("note", "a&b=c")]),
///     "card[number]=4242+4242&note=a%26b%3Dc"
/// );
/// ```
pub fn form_encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(&mut out, key.as_ref(), true);
        out.push('=');
        encode_component(&mut out, value.as_ref(), false);
    }
    out
}

fn encode_component(out: &mut String, input: &str, keep_brackets: bool) {
    for byte in input.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b'[' | b']' if keep_brackets => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
}

/// Decodes an `application/x-www-form-urlencoded` string into pairs, in order.
///
/// Lenient like the WHATWG parser: empty segments are skipped, a segment
/// without `=` has an empty value, `+` means space, malformed `%` escapes are
/// kept literally and invalid UTF-8 is replaced with U+FFFD.
///
/// ```
/// use strongroom_guest::form_decode;
/// assert_eq!(
///     form_decode("a=1&card%5Bnumber%5D=4242+4242&flag"),
///     vec![
///         ("a".to_owned(), "1".to_owned()),
///         ("card[number]".to_owned(), "4242 4242".to_owned()),
///         ("flag".to_owned(), String::new()),
///     ]
/// );
/// ```
pub fn form_decode(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
            (decode_component(key), decode_component(value))
        })
        .collect()
}

fn decode_component(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?));
                if let Some(byte) = escaped {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_and_unicode() {
        assert_eq!(form_encode(&[("k", "é ~/")]), "k=%C3%A9+%7E%2F");
        assert_eq!(form_encode(&[("a[b]", "[x]")]), "a[b]=%5Bx%5D");
        assert_eq!(form_encode::<&str, &str>(&[]), "");
    }

    #[test]
    fn round_trips() {
        let pairs = vec![
            ("card[number]".to_owned(), "4242 4242 4242 4242".to_owned()),
            ("description".to_owned(), "50% off & more = ✓".to_owned()),
            ("empty".to_owned(), String::new()),
        ];
        assert_eq!(form_decode(&form_encode(&pairs)), pairs);
    }

    #[test]
    fn decodes_leniently() {
        assert_eq!(
            form_decode("a=%zz&&b=%4&c=%41%42"),
            vec![
                ("a".to_owned(), "%zz".to_owned()),
                ("b".to_owned(), "%4".to_owned()),
                ("c".to_owned(), "AB".to_owned()),
            ]
        );
        assert_eq!(form_decode("x=%FF")[0].1, "\u{FFFD}");
    }
}
