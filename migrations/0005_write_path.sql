-- Write path: the hot tables keep their integrity in the vault service instead of per-row
-- foreign-key triggers. A batch of 1000 five-column records used to fire about 12,000 trigger
-- queries (each value checked its record, each record its vault and table, each token its
-- vault), a third of PostgreSQL's time on bulk insert.
--
-- The rules that replace them (host/src/vault):
--   * every transaction that writes records, values or tokens first takes the vault row
--     FOR KEY SHARE (`lock_vault`), once, and fails if the vault is gone;
--   * deleting a vault takes its row FOR UPDATE first (so it waits for those writers, and later
--     ones find no vault), then deletes its values, records and tokens, then the vault;
--   * updating or deleting a record takes the record row FOR UPDATE first, as before.
ALTER TABLE records DROP CONSTRAINT records_vault_id_fkey;
ALTER TABLE records DROP CONSTRAINT records_table_id_fkey;
ALTER TABLE record_values DROP CONSTRAINT record_values_record_id_fkey;
ALTER TABLE tokens DROP CONSTRAINT tokens_vault_id_fkey;

-- `tokens` now reserves only the tokens that can collide in practice (format-preserving) or are
-- shared between records (deterministic). Random opaque tokens (128 random bits) are not
-- reserved: they live exactly as long as their `record_values` row (host/src/vault/records.rs,
-- `allocate_tokens`). Rows written for them before this migration are released as before.
