-- Connections: outbound (detokenizing) and inbound (tokenizing) proxies, versioned; the secret
-- store their headers draw on; the inbound connections' own API keys.
CREATE TABLE secrets (
    name           text PRIMARY KEY,
    -- AES-256-GCM under the server's `secrets` key, bound to the name
    sealed         bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connections (
    name           text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('outbound', 'inbound')),
    active_version integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connection_versions (
    name        text NOT NULL REFERENCES connections (name) ON DELETE CASCADE,
    version     integer NOT NULL,
    -- the configuration as validated (secrets are referenced by name, never inlined)
    config      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE connection_keys (
    key_id      text PRIMARY KEY,
    connection  text NOT NULL REFERENCES connections (name) ON DELETE CASCADE,
    -- keyed hash of the secret part (the same scheme as service-account keys)
    hash        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
