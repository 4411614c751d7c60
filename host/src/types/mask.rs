//! Masks: what `redaction=masked` shows of a value.
//!
//! A mask keeps separators (`-`, `/`, `@`, spaces, `+`) and replaces letters and digits with `X`,
//! except the few it is asked to keep. Whatever it is asked, a mask never shows more than half of
//! a value's letters and digits, so a short value is never revealed in full.

use std::fmt;

/// A column's mask, written in schemas as `full`, `keep_last:N`, `keep_first:N`, `email` or
/// `initials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every letter and digit hidden.
    Full,
    /// The last N letters or digits shown (`XXXXXXXXXXXX1111`).
    KeepLast(u8),
    /// The first N letters or digits shown (`94XXX`).
    KeepFirst(u8),
    /// The first character of the local part and the domain (`j***@example.com`).
    Email,
    /// The first letter of each word (`A*** L***`).
    Initials,
}

/// The most a keep mask may ask for; more would defeat the purpose.
const MAX_KEEP: u8 = 8;

impl Mask {
    pub fn parse(s: &str) -> Option<Mask> {
        match s {
            "full" => return Some(Mask::Full),
            "email" => return Some(Mask::Email),
            "initials" => return Some(Mask::Initials),
            _ => {}
        }
        let (kind, n) = s.split_once(':')?;
        if n.is_empty() || n.len() > 1 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u8 = n.parse().ok().filter(|n| *n <= MAX_KEEP)?;
        match kind {
            "keep_last" => Some(Mask::KeepLast(n)),
            "keep_first" => Some(Mask::KeepFirst(n)),
            _ => None,
        }
    }

    /// Masks a canonical value.
    pub fn apply(self, canonical: &str) -> String {
        match self {
            Mask::Full => keep(canonical, 0, false),
            Mask::KeepLast(n) => keep(canonical, n.into(), false),
            Mask::KeepFirst(n) => keep(canonical, n.into(), true),
            Mask::Email => match canonical.rsplit_once('@') {
                Some((local, domain)) if local.chars().count() >= 2 => {
                    let first: String = local.chars().take(1).collect();
                    format!("{first}***@{domain}")
                }
                Some((_, domain)) => format!("***@{domain}"),
                None => keep(canonical, 0, false),
            },
            Mask::Initials => canonical
                .split_whitespace()
                .map(|word| match word.chars().next() {
                    Some(c) if word.chars().count() >= 2 => format!("{c}***"),
                    _ => "***".to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Hides letters and digits except `n` of them at the start (`from_start`) or the end, capped
/// at half of them.
fn keep(value: &str, n: usize, from_start: bool) -> String {
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let shown = n.min(total / 2);
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_alphanumeric() {
                return c;
            }
            seen += 1;
            let visible = if from_start {
                seen <= shown
            } else {
                seen > total - shown
            };
            if visible { c } else { 'X' }
        })
        .collect()
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Full => f.write_str("full"),
            Mask::KeepLast(n) => write!(f, "keep_last:{n}"),
            Mask::KeepFirst(n) => write!(f, "keep_first:{n}"),
            Mask::Email => f.write_str("email"),
            Mask::Initials => f.write_str("initials"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for text in [
            "full",
            "keep_last:4",
            "keep_first:2",
            "email",
            "initials",
            "keep_last:0",
        ] {
            let m = Mask::parse(text);
            assert_eq!(m.map(|m| m.to_string()).as_deref(), Some(text));
        }
        for text in [
            "",
            "keep_last",
            "keep_last:",
            "keep_last:9",
            "keep_last:04",
            "keep_last:-1",
            "show_all",
        ] {
            assert_eq!(Mask::parse(text), None, "{text}");
        }
    }

    #[test]
    fn keeps_separators_and_the_asked_characters() {
        assert_eq!(
            Mask::KeepLast(4).apply("4111111111111111"),
            "XXXXXXXXXXXX1111"
        );
        assert_eq!(Mask::KeepLast(4).apply("123-45-6789"), "XXX-XX-6789");
        assert_eq!(Mask::KeepFirst(2).apply("SW1A 1AA"), "SWXX XXX");
        assert_eq!(Mask::Full.apply("1990-01-31"), "XXXX-XX-XX");
        assert_eq!(Mask::Email.apply("jane@example.com"), "j***@example.com");
        assert_eq!(Mask::Initials.apply("Ada King Lovelace"), "A*** K*** L***");
    }

    #[test]
    fn short_values_are_never_shown_in_full() {
        assert_eq!(Mask::KeepLast(4).apply("1234"), "XX34");
        assert_eq!(Mask::KeepLast(4).apply("7"), "X");
        assert_eq!(Mask::KeepFirst(8).apply("abc"), "aXX");
        assert_eq!(Mask::Email.apply("j@example.com"), "***@example.com");
        assert_eq!(Mask::Initials.apply("J Smith"), "*** S***");
        assert_eq!(Mask::KeepLast(4).apply(""), "");
    }
}
