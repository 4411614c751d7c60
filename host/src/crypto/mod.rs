//! Keys and encryption.
//!
//! - [`Key`]: 32 bytes of key material that zeroizes on drop and never prints.
//! - [`MasterKeyRing`]: the operator's master keys (`STRONGROOM_MASTER_KEYS`); they only wrap data keys.
//! - [`seal`]/[`open`]: AES-256-GCM with a fresh random 96-bit nonce and associated data.
//! - [`keyed_hash`] and [`derive`]: HMAC-SHA256 blind indexes and HKDF sub-keys.

mod keyring;

pub use keyring::{KeyRingError, MasterKeyRing};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of the random nonce that prefixes every sealed value.
pub const NONCE_LEN: usize = 12;

/// A 256-bit secret key. Zeroized on drop; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Key {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Key(bytes)
    }

    /// Takes key material from a slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Key> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(Key(Zeroizing::new(array)))
    }

    /// The raw bytes, for the cipher and MAC constructors only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Sealing or opening failed. Deliberately carries no detail: an attacker learns nothing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext could not be opened")]
pub struct CryptoError;

/// Encrypts `plaintext` under `key` with AES-256-GCM; the result is `nonce || ciphertext || tag`.
///
/// INVARIANT: the nonce is 96 random bits, fresh for every call, from `rand::thread_rng()`: a
/// ChaCha12 CSPRNG per thread, seeded and periodically reseeded from the OS. (Asking the OS for
/// every nonce, token and FPE digit was a system call each, a fifth of the server's CPU on bulk
/// insert.) Keys still come from the OS directly (`Key::generate`). With random nonces a single
/// key stays safe for about 2^32 messages; data keys rotate well before that.
/// `aad` binds the ciphertext to where it belongs (vault, table, column, record, key version):
/// a ciphertext copied anywhere else fails to open.
pub fn seal(key: &Key, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.expose().into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    // Encryption with a valid key and nonce length cannot fail for inputs under 64 GiB.
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens a value sealed by [`seal`] with the same key and associated data.
pub fn open(key: &Key, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(key.expose().into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError)
}

/// HMAC-SHA256 of `parts` under `key`, each part length-prefixed so that no two different
/// sequences of parts hash alike. Used for blind indexes, token look-up hashes and key ids.
pub fn keyed_hash(key: &Key, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key.expose()) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length; this arm is unreachable.
        Err(_) => return [0u8; 32],
    };
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A sub-key of `key` for one purpose (HKDF-SHA256 with `label` as info).
pub fn derive(key: &Key, label: &[u8]) -> Key {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"strongroom/v1"), key.expose());
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's output limit; expand cannot fail.
    let _ = hk.expand(label, out.as_mut());
    Key(out)
}

/// Compares two secrets in constant time (for equal lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let key = Key::generate();
        let sealed = seal(&key, b"4111111111111111", b"aad");
        assert_eq!(
            open(&key, &sealed, b"aad").unwrap().as_slice(),
            b"4111111111111111"
        );
        assert!(!sealed.windows(16).any(|w| w == b"4111111111111111"));
    }

    #[test]
    fn nonces_are_fresh() {
        let key = Key::generate();
        let a = seal(&key, b"same", b"aad");
        let b = seal(&key, b"same", b"aad");
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_aad_key_or_tampering_fails() {
        let key = Key::generate();
        let sealed = seal(&key, b"secret", b"vault/table/col/rec/1");
        assert!(open(&key, &sealed, b"vault/table/col/other/1").is_err());
        assert!(open(&Key::generate(), &sealed, b"vault/table/col/rec/1").is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open(&key, &tampered, b"vault/table/col/rec/1").is_err());
        assert!(open(&key, &sealed[..10], b"vault/table/col/rec/1").is_err());
    }

    #[test]
    fn keyed_hash_separates_parts_and_keys() {
        let key = Key::generate();
        assert_ne!(
            keyed_hash(&key, &[b"ab", b"c"]),
            keyed_hash(&key, &[b"a", b"bc"])
        );
        assert_eq!(keyed_hash(&key, &[b"x"]), keyed_hash(&key, &[b"x"]));
        assert_ne!(
            keyed_hash(&key, &[b"x"]),
            keyed_hash(&Key::generate(), &[b"x"])
        );
    }

    #[test]
    fn derive_is_stable_and_label_bound() {
        let key = Key::generate();
        assert_eq!(derive(&key, b"a").expose(), derive(&key, b"a").expose());
        assert_ne!(derive(&key, b"a").expose(), derive(&key, b"b").expose());
    }

    #[test]
    fn debug_does_not_print_key() {
        let key = Key::from_slice(&[7u8; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
