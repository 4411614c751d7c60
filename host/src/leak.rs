//! The one rule behind every egress check: whether something about to leave the server (a
//! connection's reply to its caller, a function's test-run output or log, an error message)
//! holds a value revealed while serving the call, as it is or in an encoding that an echo
//! hands it back in.
//!
//! INVARIANT: every path that returns data after plaintext was revealed for it checks that
//! data with [`reveals`], so a function or an upstream cannot send a revealed value back to a
//! caller by escaping or percent-encoding it.

use zeroize::Zeroizing;

/// Shorter values (a 3-digit CVC, `CA`) would match by chance too often to be told apart.
const MIN_MATCHED_LEN: usize = 4;

/// Whether `haystack` contains any of the values revealed during a call, byte for byte.
fn holds_revealed<V: AsRef<[u8]>>(haystack: impl AsRef<[u8]>, revealed: &[V]) -> bool {
    let haystack = haystack.as_ref();
    let text = std::str::from_utf8(haystack).ok();
    // Bytes that are not UTF-8 are searched as Latin-1 text (one char per byte, so a byte
    // string holds another exactly when their Latin-1 texts do), keeping `str`'s linear search.
    let mut latin: Option<Zeroizing<String>> = None;
    revealed.iter().map(AsRef::as_ref).any(|v| {
        if v.len() < MIN_MATCHED_LEN {
            return false;
        }
        match (text, std::str::from_utf8(v)) {
            (Some(h), Ok(n)) => h.contains(n),
            _ => latin
                .get_or_insert_with(|| latin1(haystack))
                .contains(latin1(v).as_str()),
        }
    })
}

fn latin1(bytes: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(bytes.iter().map(|&b| char::from(b)).collect())
}

/// Whether `haystack` holds a revealed value as it is, or in the encodings an echo hands it back
/// in: JSON-escaped (`\"`, `\/`, `\u00e9`, `\u0020`, surrogate pairs) and percent-encoded (the
/// gateway's own `%20` and `%40` in query and form values, `+` for spaces, either hex case),
/// also one inside the other (a URL in a JSON string). The text is decoded, not the values
/// encoded, so any mix of escaped and literal characters is found. Only values with a
/// character that an encoder rewrites can hide this way, so for the others (digits, tokens)
/// and for text without `\`, `%` or `+` nothing more is done. Derived forms (base64,
/// re-cased, reversed, split, reformatted) are out of scope.
pub fn reveals<V: AsRef<[u8]>>(haystack: impl AsRef<[u8]>, revealed: &[V]) -> bool {
    let haystack = haystack.as_ref();
    if holds_revealed(haystack, revealed) {
        return true;
    }
    let encodable = |b: u8| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
    if !revealed
        .iter()
        .any(|v| v.as_ref().iter().copied().any(encodable))
    {
        return false;
    }
    let text = String::from_utf8_lossy(haystack);
    let text = text.as_ref();
    let unescaped = text.contains('\\').then(|| json_unescape(text));
    if let Some(u) = &unescaped
        && holds_revealed(u, revealed)
    {
        return true;
    }
    let text = unescaped.as_deref().unwrap_or(text);
    if !text.contains(['%', '+']) {
        return false;
    }
    let spaced = text.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy();
    holds_revealed(decoded.as_bytes(), revealed)
}

/// `text` with its JSON string escapes decoded; anything that is not a valid escape is kept.
fn json_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (decoded, used) = match after.as_bytes().first() {
            Some(b'"') => (Some('"'), 1),
            Some(b'\\') => (Some('\\'), 1),
            Some(b'/') => (Some('/'), 1),
            Some(b'b') => (Some('\u{8}'), 1),
            Some(b'f') => (Some('\u{c}'), 1),
            Some(b'n') => (Some('\n'), 1),
            Some(b'r') => (Some('\r'), 1),
            Some(b't') => (Some('\t'), 1),
            Some(b'u') => match hex4(&after[1..]) {
                Some(high @ 0xD800..=0xDBFF) => match after[5..]
                    .strip_prefix("\\u")
                    .and_then(hex4)
                    .filter(|low| (0xDC00..=0xDFFF).contains(low))
                {
                    Some(low) => (
                        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)),
                        11,
                    ),
                    None => (Some(char::REPLACEMENT_CHARACTER), 5),
                },
                Some(unit) => (
                    Some(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER)),
                    5,
                ),
                None => (None, 0),
            },
            _ => (None, 0),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The value of four hex digits at the start of `s`.
fn hex4(s: &str) -> Option<u32> {
    let digits = s.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revealed(values: &[&str]) -> Vec<Zeroizing<String>> {
        values
            .iter()
            .map(|v| Zeroizing::new(v.to_string()))
            .collect()
    }

    #[test]
    fn leak_check_sees_the_encodings_an_echo_uses() {
        let values = revealed(&[
            "Grace Hopper",
            "ada@example.test",
            "José/Ñ",
            "4242424242424242",
        ]);
        for text in [
            "Grace Hopper",
            "?customer=Grace%20Hopper",
            "?customer=Grace+Hopper",
            r#"{"c":"Grace\u0020Hopper"}"#,
            r#"{"c":"\u0047race Hopper"}"#,
            "ada%40example.test",
            "ada%40example%2Etest",
            r#"{"next":"\/x?e=ada%40example.test"}"#,
            "Jos%C3%A9%2F%C3%91",
            "Jos%c3%a9%2f%c3%91",
            r#""Jos\u00e9\/\u00d1""#,
            r#""Jos\u00E9/\u00D1""#,
            "4242424242424242",
        ] {
            assert!(reveals(text, &values), "{text}");
        }
        for text in [
            "Grace Hoppe",
            "Grace%2BHopper",
            "GRACE%20HOPPER",
            "ada%41example.test",
            r#""Grace\u00"#,
            "%",
            "\\",
        ] {
            assert!(!reveals(text, &values), "{text}");
        }
        // values no encoder rewrites are only looked for as they are
        let digits = revealed(&["4242424242424242"]);
        assert!(!reveals("%34%32".repeat(8), &digits));
    }

    #[test]
    fn json_unescape_decodes_escapes_and_keeps_the_rest() {
        assert_eq!(
            json_unescape(r#"a\"b\\c\/d\n\u00e9\ud83d\ude00\x\u12"#),
            "a\"b\\c/d\né\u{1F600}\\x\\u12"
        );
        assert_eq!(json_unescape(r"\ud83d lone"), "\u{FFFD} lone");
        assert_eq!(json_unescape("end\\"), "end\\");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_matched_too() {
        let secret: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(vec![0xff, 0x00, 0xfe, 0x41])];
        assert!(reveals([1, 0xff, 0x00, 0xfe, 0x41, 2], &secret));
        assert!(!reveals([0xff, 0x00, 0xfe], &secret));
    }
}
