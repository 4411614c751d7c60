-- Vault core: vaults, their keys, schemas, records, encrypted values and tokens.
-- INVARIANT: no column here holds a plaintext value, a token or unwrapped key material.
-- Values are AES-256-GCM ciphertexts; tokens and indexes are keyed HMAC-SHA256 hashes.

CREATE TABLE vaults (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- The vault's index key (blind indexes, token hashes, deterministic and FF1 token keys),
    -- wrapped under a master key. It never rotates: deterministic tokens stay stable.
    index_key_wrapped   bytea NOT NULL,
    index_key_master_id text NOT NULL,
    -- The data-key version new writes use.
    active_key_version  integer NOT NULL DEFAULT 1
);

-- Data keys encrypt values. Rotation adds a version; old values are re-encrypted in the background.
CREATE TABLE vault_data_keys (
    vault_id      uuid NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    version       integer NOT NULL,
    wrapped       bytea NOT NULL,
    master_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vault_id, version)
);

CREATE TABLE vault_tables (
    id         uuid PRIMARY KEY,
    vault_id   uuid NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vault_id, name)
);

CREATE TABLE vault_columns (
    id         uuid PRIMARY KEY,
    table_id   uuid NOT NULL REFERENCES vault_tables (id) ON DELETE CASCADE,
    name       text NOT NULL,
    position   integer NOT NULL,
    -- The resolved column definition (type, tokenization, mask, redaction, flags). No values.
    spec       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (table_id, name)
);

CREATE TABLE records (
    id         uuid PRIMARY KEY,
    vault_id   uuid NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    table_id   uuid NOT NULL REFERENCES vault_tables (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX records_table ON records (table_id);

CREATE TABLE record_values (
    record_id   uuid NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    column_id   uuid NOT NULL,
    vault_id    uuid NOT NULL,
    key_version integer NOT NULL,
    -- nonce || ciphertext || tag; associated data binds vault, table, column, record, key version.
    sealed      bytea NOT NULL,
    -- keyed hash of this value's token (NULL when the column is not tokenized)
    token_hash  bytea,
    -- keyed hash of the normalised value, for look-ups (deterministic and unique columns only)
    blind_index bytea,
    -- equal to blind_index on unique columns; the partial unique index enforces uniqueness
    unique_key  bytea,
    PRIMARY KEY (record_id, column_id)
);
CREATE INDEX record_values_token ON record_values (vault_id, token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX record_values_blind ON record_values (column_id, blind_index) WHERE blind_index IS NOT NULL;
CREATE UNIQUE INDEX record_values_unique ON record_values (column_id, unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX record_values_key_version ON record_values (vault_id, key_version);

-- One row per live token: a token belongs to exactly one (token group, value) binding, so two
-- different values can never share a token in a vault. A token dies when no value references it.
CREATE TABLE tokens (
    vault_id   uuid NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL,
    binding    bytea NOT NULL,
    PRIMARY KEY (vault_id, token_hash)
);
