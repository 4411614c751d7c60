-- The sha256 of each compiled function artifact in `<data dir>/functions-cache`, by component
-- version and engine: the server loads a cached artifact (native code it runs unchecked) only
-- if its bytes hash to what the server itself recorded when it wrote it.
CREATE TABLE function_artifacts (
    version    text NOT NULL,
    engine     text NOT NULL,
    sha256     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, engine)
);
