-- Re-encryption walks a vault's tables in record-id order instead of looking values up by key
-- version, so the key-version index goes: it cost five index entries per record on every
-- insert, a tenth to a fifth of bulk insert's time (BENCHMARKS.md, session 7).
--
--   * `records_table` becomes (table_id, id): the walk's order, and still the table's index;
--   * `vaults.reencrypted_version` is the key version the last complete walk found every value
--     under (NULL: not known). A walk that finds nothing to do sets it; a restart resumes the
--     vaults where it differs from `active_key_version`, without scanning their values.
DROP INDEX record_values_key_version;
DROP INDEX records_table;
CREATE INDEX records_table ON records (table_id, id);
ALTER TABLE vaults ADD COLUMN reencrypted_version integer;
