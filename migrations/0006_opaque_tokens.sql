-- Deterministic opaque tokens are no longer reserved in `tokens` (host/src/vault/records.rs,
-- `allocate_tokens`). Like random opaque tokens they are 128-bit values, here a keyed hash of
-- the value, found through `record_values.token_hash` and alive while some value holds them.
-- Rows written for them before this migration are released as before, when the last value
-- holding them is deleted.
COMMENT ON TABLE tokens IS
    'Reserved format-preserving tokens: one row per live token, so two different values never share one in a vault. Opaque (tok_) tokens are not reserved here; they live in record_values.token_hash.';
