-- Governance hardening.
--
--   * `audit_head` anchors the end of the audit chain: the last sequence number and hash, with
--     an HMAC under the chain key. The writer moves it in the same statement as each batch of
--     events, so cutting events off the end of the log (`DELETE … WHERE seq > n`) leaves the
--     head ahead of the last event, which `GET /v1/audit/verify` reports. An empty `mac` is a
--     head no server has signed yet (this migration's, written without the chain key): the next
--     start adopts it, with a warning and an audit event when the log is not empty.
--   * Service-account names are unique among live accounts only: a deleted account's name may
--     be used again.
CREATE TABLE audit_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint NOT NULL,
    hash bytea NOT NULL,
    mac  bytea NOT NULL
);
INSERT INTO audit_head (seq, hash, mac)
SELECT coalesce(max(seq), 0),
       coalesce((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea),
       ''::bytea
FROM audit_events;

ALTER TABLE service_accounts DROP CONSTRAINT service_accounts_name_key;
CREATE UNIQUE INDEX service_accounts_live_name ON service_accounts (name) WHERE deleted_at IS NULL;
