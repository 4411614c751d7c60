//! A cache of things built from the database, by name, that a change never leaves stale.

use std::collections::HashMap;
use std::sync::RwLock;

/// Entries by name, and a generation that every change bumps.
///
/// INVARIANT: what was read from the database before a change is never cached after it. A
/// miss reads the database and awaits, so a `forget` (after the change commits) can land
/// between that read and the insert; the insert then sees a newer generation and keeps
/// nothing, instead of putting the old state back until the next change (a deleted vault's
/// keys, a retired key version, an unknown new column, a deleted connection, a rotated secret).
pub(crate) struct VersionCache<T> {
    inner: RwLock<(HashMap<String, T>, u64)>,
}

impl<T: Clone> Default for VersionCache<T> {
    fn default() -> Self {
        VersionCache {
            inner: RwLock::new((HashMap::new(), 0)),
        }
    }
}

impl<T: Clone> VersionCache<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The cached entry, or the generation to hand to [`VersionCache::insert`] once the entry
    /// has been built from what the database holds now.
    pub(crate) fn get(&self, name: &str) -> Result<T, u64> {
        match self.inner.read() {
            Ok(c) => c.0.get(name).cloned().ok_or(c.1),
            Err(_) => Err(u64::MAX),
        }
    }

    /// Caches `value` unless something changed since [`VersionCache::get`] gave `generation`.
    pub(crate) fn insert(&self, name: &str, value: T, generation: u64) {
        if let Ok(mut c) = self.inner.write()
            && c.1 == generation
        {
            c.0.insert(name.to_string(), value);
        }
    }

    /// Drops `name` (after it changed).
    pub(crate) fn forget(&self, name: &str) {
        if let Ok(mut c) = self.inner.write() {
            c.0.remove(name);
            c.1 += 1;
        }
    }

    /// Drops every entry (after a change that touches them all).
    pub(crate) fn forget_all(&self) {
        if let Ok(mut c) = self.inner.write() {
            c.0.clear();
            c.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forget_during_a_compile_keeps_the_stale_version_out_of_the_cache() {
        let cache = VersionCache::new();
        // a call misses and reads version 1 from the database...
        let Err(generation) = cache.get("stripe") else {
            unreachable!("empty cache")
        };
        // ...meanwhile the connection is updated (or deleted, or a secret rotated)...
        cache.forget("stripe");
        // ...and the call's compile finishes: it is served once but not cached.
        cache.insert("stripe", 1, generation);
        let Err(next) = cache.get("stripe") else {
            unreachable!("the stale version was cached")
        };
        // the next call compiles what is current and keeps it
        cache.insert("stripe", 2, next);
        assert_eq!(cache.get("stripe"), Ok(2));
        // forget_all (a secret changed) counts as a change for every name
        let Err(generation) = cache.get("other") else {
            unreachable!("empty")
        };
        cache.forget_all();
        cache.insert("other", 7, generation);
        assert!(cache.get("other").is_err());
        assert!(cache.get("stripe").is_err());
    }
}
