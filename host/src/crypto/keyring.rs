//! The master-key ring: named 256-bit keys from the operator, the first one active.
//!
//! Master keys never encrypt values. They wrap each vault's keys (envelope encryption), so that
//! rotating a master key re-wraps a handful of small keys instead of re-encrypting every value.

use super::{Key, open, seal};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::collections::HashMap;
use std::path::Path;

/// The operator's master keys, by id.
pub struct MasterKeyRing {
    active: String,
    keys: HashMap<String, Key>,
}

/// Why the master-key setting was refused.
///
/// INVARIANT: errors about the setting name an entry by its position (1 for the first), never
/// any part of its text: with id and key swapped (`base64:id`), or a stray separator, the part
/// read as the id is key material. Ids named here come from the database, not the setting.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("STRONGROOM_MASTER_KEYS is empty")]
    Empty,
    #[error("master key entry {0} is not of the form `id:base64-32-bytes`")]
    Malformed(usize),
    #[error(
        "master key entry {0}: the id (before the `:`) must be 1 to 64 letters, digits, `_`, `-` or `.`; is the entry `id:key`, in that order?"
    )]
    BadId(usize),
    #[error(
        "master key entry {0}: the key (after the `:`) is not 32 bytes of base64; is the entry `id:key`, in that order?"
    )]
    BadKey(usize),
    #[error("master key entry {0} has the same id as an earlier entry")]
    Duplicate(usize),
    #[error("data is wrapped under master key `{0}`, which is not in STRONGROOM_MASTER_KEYS")]
    Unknown(String),
    #[error("a wrapped key failed to open under master key `{0}`: wrong key material for that id?")]
    Unwrap(String),
    #[error("could not use the development master key file: {0}")]
    Io(#[from] std::io::Error),
}

impl std::fmt::Debug for MasterKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("MasterKeyRing")
            .field("active", &self.active)
            .field("ids", &ids)
            .finish()
    }
}

impl MasterKeyRing {
    /// Parses `id1:base64,id0:base64` (the first entry is the active key).
    pub fn parse(spec: &str) -> Result<MasterKeyRing, KeyRingError> {
        let mut keys = HashMap::new();
        let mut active = None;
        for (index, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let position = index + 1;
            let (id, b64) = entry
                .split_once(':')
                .ok_or(KeyRingError::Malformed(position))?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(KeyRingError::BadId(position));
            }
            let bytes = zeroize::Zeroizing::new(
                STANDARD
                    .decode(b64.trim())
                    .map_err(|_| KeyRingError::BadKey(position))?,
            );
            let key = Key::from_slice(&bytes).ok_or(KeyRingError::BadKey(position))?;
            if keys.insert(id.to_string(), key).is_some() {
                return Err(KeyRingError::Duplicate(position));
            }
            active.get_or_insert_with(|| id.to_string());
        }
        let active = active.ok_or(KeyRingError::Empty)?;
        Ok(MasterKeyRing { active, keys })
    }

    /// Loads the development key from `path`, generating it (mode 0600) on first use.
    /// Returns the ring and whether the key was generated now.
    pub fn load_or_generate_dev(path: &Path) -> Result<(MasterKeyRing, bool), KeyRingError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if path.exists() {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
            return Ok((MasterKeyRing::parse(text.trim())?, false));
        }
        let key = Key::generate();
        let line = zeroize::Zeroizing::new(format!("dev0:{}\n", STANDARD.encode(key.expose())));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        Ok((MasterKeyRing::parse(line.trim())?, true))
    }

    /// The id of the key new wraps use.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Every id in the ring.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Wraps `key` under the active master key. Returns (master key id, wrapped bytes).
    /// `context` is bound as associated data (e.g. the vault id and the key's role and version).
    pub fn wrap(&self, key: &Key, context: &[u8]) -> (String, Vec<u8>) {
        let master = &self.keys[&self.active];
        (self.active.clone(), seal(master, key.expose(), context))
    }

    /// Unwraps a key wrapped by [`MasterKeyRing::wrap`] under master key `master_id`.
    pub fn unwrap_key(
        &self,
        master_id: &str,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Key, KeyRingError> {
        let master = self
            .keys
            .get(master_id)
            .ok_or_else(|| KeyRingError::Unknown(master_id.to_string()))?;
        let bytes = open(master, wrapped, context)
            .map_err(|_| KeyRingError::Unwrap(master_id.to_string()))?;
        Key::from_slice(&bytes).ok_or_else(|| KeyRingError::Unwrap(master_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn parses_and_first_is_active() {
        let ring = MasterKeyRing::parse(&format!("k2:{},k1:{}", b64(2), b64(1))).unwrap();
        assert_eq!(ring.active_id(), "k2");
        assert_eq!(ring.ids().count(), 2);
    }

    #[test]
    fn refuses_bad_specs_without_echoing_key_material() {
        for bad in ["", "nocolon", "k:notbase64!!", "k:AAAA", "bad id:AAAA"] {
            let err = MasterKeyRing::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("AAAA") && !err.contains("notbase64"), "{err}");
        }
        let dup = format!("k:{},k:{}", b64(1), b64(2));
        assert!(matches!(
            MasterKeyRing::parse(&dup),
            Err(KeyRingError::Duplicate(2))
        ));
    }

    /// With id and key swapped, the part before the `:` is the key: no part of the setting is
    /// echoed, whether that part passes for an id or not.
    #[test]
    fn a_swapped_entry_echoes_nothing_of_the_setting() {
        let padded = b64(7);
        let unpadded = padded.trim_end_matches('=').to_string();
        // 30 bytes encode to 40 characters without padding or `+`/`/` for these bytes.
        let plain = STANDARD.encode([0x41u8; 30]);
        for spec in [
            format!("{padded}:k1"),
            format!("{unpadded}:k1"),
            format!("{plain}:k1"),
            format!("k0:{},{plain}:k1", b64(1)),
            format!("k1:{padded}x"),
            format!("{}:{}", &plain[..20], &plain[20..]),
        ] {
            let err = MasterKeyRing::parse(&spec).unwrap_err().to_string();
            for part in spec.split([',', ':']) {
                let part = part.trim();
                assert!(part.len() < 4 || !err.contains(part), "{err} echoes {part}");
            }
            // not even a fragment of the key material
            for window in [&padded, &unpadded, &plain] {
                for start in (0..window.len().saturating_sub(8)).step_by(4) {
                    assert!(!err.contains(&window[start..start + 8]), "{err}");
                }
            }
        }
    }

    #[test]
    fn wrap_unwrap_across_rotation() {
        let old = MasterKeyRing::parse(&format!("k1:{}", b64(1))).unwrap();
        let data_key = Key::generate();
        let (id, wrapped) = old.wrap(&data_key, b"vault-1/data/1");
        let rotated = MasterKeyRing::parse(&format!("k2:{},k1:{}", b64(2), b64(1))).unwrap();
        let back = rotated
            .unwrap_key(&id, &wrapped, b"vault-1/data/1")
            .unwrap();
        assert_eq!(back.expose(), data_key.expose());
        assert!(
            rotated
                .unwrap_key(&id, &wrapped, b"vault-2/data/1")
                .is_err()
        );
        let (id2, _) = rotated.wrap(&back, b"ctx");
        assert_eq!(id2, "k2");
        let without = MasterKeyRing::parse(&format!("k2:{}", b64(2))).unwrap();
        assert!(matches!(
            without.unwrap_key(&id, &wrapped, b"vault-1/data/1"),
            Err(KeyRingError::Unknown(_))
        ));
    }

    #[test]
    fn debug_lists_ids_only() {
        let ring = MasterKeyRing::parse(&format!("k1:{}", b64(9))).unwrap();
        let shown = format!("{ring:?}");
        assert!(shown.contains("k1") && !shown.contains(&b64(9)));
    }
}
