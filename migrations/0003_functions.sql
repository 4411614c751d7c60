-- Functions: user-supplied Wasm components, versioned by their sha256.
CREATE TABLE functions (
    name           text PRIMARY KEY,
    active_version text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE function_versions (
    name        text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    version     text NOT NULL,
    -- the component as uploaded (code, not data)
    component   bytea NOT NULL,
    manifest    jsonb NOT NULL,
    imports     jsonb NOT NULL,
    exports     jsonb NOT NULL,
    size_bytes  integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
