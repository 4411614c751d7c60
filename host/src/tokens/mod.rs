//! Token formats.
//!
//! - Random: `tok_` and 26 base32 characters carrying 128 bits from a CSPRNG (`rand::thread_rng`).
//! - Deterministic: `tok_` and the base32 of 128 bits of HMAC-SHA256 under a per-scope key, so
//!   equal values give equal tokens (joins keep working) and nobody without the key can compute one.
//! - Format-preserving ([`fpe`]): a card token is still a Luhn-valid card with the same length and
//!   last four, a phone token an E.164 number with the same country code, and so on. The random
//!   variant draws fresh digits; the deterministic one is NIST SP 800-38G FF1 under a per-scope key.
//!
//! Storage, collision handling and scoping live in `vault`; this module only makes tokens.

mod fpe;

pub use fpe::{FpeFormat, format_preserving_deterministic, format_preserving_random};

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How a column's values become tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenization {
    Random,
    Deterministic,
    FormatPreserving,
    DeterministicFormatPreserving,
    None,
}

impl Tokenization {
    /// Equal values get equal tokens.
    pub fn is_deterministic(self) -> bool {
        matches!(
            self,
            Tokenization::Deterministic | Tokenization::DeterministicFormatPreserving
        )
    }

    /// Tokens keep the value's format.
    pub fn is_format_preserving(self) -> bool {
        matches!(
            self,
            Tokenization::FormatPreserving | Tokenization::DeterministicFormatPreserving
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tokenization::Random => "random",
            Tokenization::Deterministic => "deterministic",
            Tokenization::FormatPreserving => "format_preserving",
            Tokenization::DeterministicFormatPreserving => "deterministic_format_preserving",
            Tokenization::None => "none",
        }
    }
}

/// A value that cannot be tokenized in the requested format. Never carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("value cannot be format-preserved: {0}")]
    Unsupported(&'static str),
}

const TOKEN_PREFIX: &str = "tok_";

/// A random opaque token: 128 bits from the thread's CSPRNG (see `crate::crypto::seal`).
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", base32(&bytes))
}

/// A deterministic opaque token of `canonical` under `key`.
///
/// INVARIANT: `key` is a per-scope HKDF sub-key of the vault's index key; without it a token
/// reveals nothing of its value and cannot be computed from a guess.
pub fn deterministic_token(key: &[u8; 32], canonical: &str) -> String {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return random_token(), // unreachable: HMAC takes keys of any length
    };
    mac.update(b"strongroom/deterministic-token/v1\0");
    mac.update(canonical.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("{TOKEN_PREFIX}{}", base32(&digest[..16]))
}

/// Lowercase RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn random_tokens_have_128_bits() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let t = random_token();
            assert_eq!(t.len(), 4 + 26);
            assert!(
                t[4..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
                "{t}"
            );
            assert!(seen.insert(t));
        }
    }

    #[test]
    fn deterministic_tokens_are_stable_and_key_bound() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        assert_eq!(
            deterministic_token(&k1, "ada@example.com"),
            deterministic_token(&k1, "ada@example.com")
        );
        assert_ne!(
            deterministic_token(&k1, "ada@example.com"),
            deterministic_token(&k2, "ada@example.com")
        );
        assert_ne!(
            deterministic_token(&k1, "ada@example.com"),
            deterministic_token(&k1, "bob@example.com")
        );
        assert_eq!(deterministic_token(&k1, "x").len(), 30);
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b"f"), "my");
    }
}
