-- Governance: service accounts and their keys, Cedar policy versions, time-bound grants,
-- record consents, and the tamper-evident audit log.
-- INVARIANT: no plaintext value, token or key secret is stored here. API keys are kept as keyed
-- hashes; audit events name ids, columns and counts only.

-- Server-wide secrets (the API-key hashing key, the audit chain key), wrapped under a master key.
CREATE TABLE server_keys (
    name          text PRIMARY KEY,
    wrapped       bytea NOT NULL,
    master_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE service_accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    roles       text[] NOT NULL,
    -- string attributes policies see as the principal's tags (no personal data)
    attributes  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE TABLE api_keys (
    -- the public part of the key, visible in the key itself (`sr_<id>_<secret>`)
    id          text PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES service_accounts (id) ON DELETE CASCADE,
    -- HMAC-SHA256 of the secret under the server's key-hashing key
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

-- Every version of the policy set; the highest version is active.
CREATE TABLE policy_sets (
    version    bigserial PRIMARY KEY,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL
);

-- Consented purposes of a record (purpose names only).
ALTER TABLE records ADD COLUMN consents text[] NOT NULL DEFAULT '{}';

CREATE TABLE grants (
    id          uuid PRIMARY KEY,
    principal   text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE TABLE grant_records (
    grant_id  uuid NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    record_id uuid NOT NULL,
    PRIMARY KEY (grant_id, record_id)
);
CREATE INDEX grant_records_record ON grant_records (record_id);

-- The audit log. `event` is the canonical JSON the chain hashes; the other columns are derived
-- from it for filtering, so editing one without the event breaks nothing but the filter, and
-- editing the event breaks the chain: hash = HMAC(chain key, prev_hash || event).
CREATE TABLE audit_events (
    seq        bigint PRIMARY KEY,
    event      text NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL,
    at         timestamptz NOT NULL,
    principal  text,
    action     text NOT NULL,
    vault      text
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_principal ON audit_events (principal, seq);
