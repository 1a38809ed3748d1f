-- The web UI's sign-in sessions (issue 11), shared by every instance: a session made on one
-- is known to all, and a sign-out on one ends it everywhere. Found by the SHA-256 of the
-- session id (the cookie is never stored); the key signed in with is kept sealed under a key
-- derived from the id, and its digest finds a revoked key's sessions.
CREATE TABLE ui_sessions (
    id_digest text PRIMARY KEY,
    key_digest text NOT NULL,
    sealed_key bytea NOT NULL,
    tenant text NOT NULL,
    admin text,
    csrf text NOT NULL,
    created_ms bigint NOT NULL,
    expires_ms bigint NOT NULL
);
CREATE INDEX ui_sessions_by_key ON ui_sessions (key_digest);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_ms);

-- An agent's versions newest first, a page at a time (an agent whose prompts are written per
-- request has a version per run). `created_at` is RFC 3339 in UTC with milliseconds, so its
-- text order is time order.
CREATE INDEX versions_by_time ON versions (tenant, agent, (record->>'created_at') DESC, id DESC);
