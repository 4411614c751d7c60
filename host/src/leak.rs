//! The one rule behind every egress check: whether something about to leave the server (a
//! connection's reply to its caller, a function's test-run output or log, an error message)
//! holds a value revealed while serving the call, as it is or in an encoding that an echo
//! hands it back in.
//!
//! INVARIANT: every path that returns data after plaintext was revealed for it checks that
//! data with [`reveals`], so a function or an upstream cannot send a revealed value back to a
//! caller by escaping, percent-encoding or base64-encoding it.

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
/// in:
/// - JSON-escaped (`\"`, `\/`, `\u00e9`, `\u0020`, surrogate pairs) and percent-encoded (the
///   gateway's own `%20` and `%40` in query and form values, `+` for spaces, either hex case),
///   also one inside the other (a URL in a JSON string). The text is decoded, not the values
///   encoded, so any mix of escaped and literal characters is found. Only values with a
///   character that an encoder rewrites can hide this way, so for the others (digits, tokens)
///   and for text without `\`, `%` or `+` this step does nothing;
/// - base64 (standard or URL-safe alphabet, padded or not), alone or anywhere inside a longer
///   base64 text, for values of at least [`MIN_BASE64_LEN`] bytes: how a file or a document
///   travels in JSON, and so how an upstream that echoes a request hands it back.
///
/// Other derived forms (re-cased, reversed, split, reformatted, base64 with line breaks) are
/// out of scope.
pub fn reveals<V: AsRef<[u8]>>(haystack: impl AsRef<[u8]>, revealed: &[V]) -> bool {
    let haystack = haystack.as_ref();
    // None of these encodings makes a value shorter, so a value longer than the haystack is not
    // in it. This bounds the work for short texts (log lines, error messages) whatever was
    // revealed.
    let candidates: Vec<&[u8]> = revealed
        .iter()
        .map(AsRef::as_ref)
        .filter(|v| v.len() <= haystack.len())
        .collect();
    if candidates.is_empty() {
        return false;
    }
    let revealed = candidates.as_slice();
    if holds_revealed(haystack, revealed) {
        return true;
    }
    // Every decoded copy may hold a revealed value: each is zeroed when dropped.
    let lossy = std::str::from_utf8(haystack)
        .is_err()
        .then(|| Zeroizing::new(String::from_utf8_lossy(haystack).into_owned()));
    let text = match &lossy {
        Some(t) => t.as_str(),
        None => std::str::from_utf8(haystack).unwrap_or_default(),
    };
    let unescaped = text
        .contains('\\')
        .then(|| Zeroizing::new(json_unescape(text)));
    let text = unescaped.as_ref().map_or(text, |u| u.as_str());
    if in_base64(text, revealed) {
        return true;
    }
    let percent = text.contains(['%', '+']);
    if unescaped.is_none() && !percent {
        return false;
    }
    let encodable = |b: u8| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
    if !revealed.iter().any(|v| v.iter().copied().any(encodable)) {
        return false;
    }
    if unescaped.is_some() && holds_revealed(text, revealed) {
        return true;
    }
    if !percent {
        return false;
    }
    let spaced = Zeroizing::new(text.replace('+', " "));
    let decoded: Zeroizing<Vec<u8>> =
        Zeroizing::new(percent_encoding::percent_decode_str(&spaced).collect());
    holds_revealed(decoded.as_slice(), revealed)
}

/// Values shorter than this are not looked for in base64: their few characters of base64
/// would match by chance.
const MIN_BASE64_LEN: usize = 12;

/// Whether `text` holds a revealed value base64-encoded, at any alignment.
///
/// Inside a longer base64 text a value may start at any byte, so its encoding is one of three
/// (it starts 0, 1 or 2 bytes into a 3-byte group). For each, the characters that depend only
/// on the value are sought: the first 0, 2 or 3 characters carry bits of the bytes before it,
/// and the last partial character bits of the bytes after it (or the padding).
fn in_base64<V: AsRef<[u8]>>(text: &str, revealed: &[V]) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let long: Vec<&[u8]> = revealed
        .iter()
        .map(AsRef::as_ref)
        .filter(|v| v.len() >= MIN_BASE64_LEN)
        .collect();
    if long.is_empty() || !text.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    long.into_iter().any(|v| {
        (0..3usize).any(|shift| {
            let mut shifted = Zeroizing::new(vec![0u8; shift]);
            shifted.extend_from_slice(v);
            let skip = [0, 2, 3][shift];
            let keep = shifted.len() * 8 / 6;
            [STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().any(|engine| {
                let encoded = Zeroizing::new(engine.encode(shifted.as_slice()));
                encoded
                    .get(skip..keep)
                    .is_some_and(|stable| text.contains(stable))
            })
        })
    })
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
    fn base64_is_seen_at_every_alignment_and_in_both_alphabets() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let file: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let values = vec![Zeroizing::new(file.clone())];
        assert!(reveals(STANDARD.encode(&file), &values));
        assert!(reveals(URL_SAFE_NO_PAD.encode(&file), &values));
        for before in 0..6usize {
            for after in 0..4usize {
                let mut blob = vec![0x42u8; before];
                blob.extend_from_slice(&file);
                blob.extend(std::iter::repeat_n(0x17u8, after));
                let json = format!(r#"{{"document_base64":"{}"}}"#, STANDARD.encode(&blob));
                assert!(reveals(&json, &values), "{before} {after}: {json}");
                // JSON may escape the alphabet's `/`
                assert!(
                    reveals(json.replace('/', "\\/"), &values),
                    "{before} {after}"
                );
            }
        }
        // a different file, or one byte changed, is not a match
        let mut other = file.clone();
        other[20] ^= 1;
        assert!(!reveals(STANDARD.encode(&other), &values));
        // short values are not looked for in base64 (their encoding is too short to tell)
        let short = revealed(&["4242 4242"]);
        assert!(!reveals(STANDARD.encode("xx4242 4242xx"), &short));
        // text values too: an e-mail address in a base64 blob
        let email = revealed(&["grace.hopper@navy.example"]);
        assert!(reveals(
            STANDARD.encode("to: grace.hopper@navy.example\n"),
            &email
        ));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_matched_too() {
        let secret: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(vec![0xff, 0x00, 0xfe, 0x41])];
        assert!(reveals([1, 0xff, 0x00, 0xfe, 0x41, 2], &secret));
        assert!(!reveals([0xff, 0x00, 0xfe], &secret));
    }
}
