-- warp-auth-api database schema on SQLite, as the migrations under migrations/sqlite/ leave it
-- (a test checks that the two agree). The database is made by the migrations, not by this file;
-- it is here to be read. PostgreSQL's schema: migrations/postgres/.

CREATE TABLE IF NOT EXISTS users (
    -- AUTOINCREMENT: ids are never reused, so a deleted user's token can never name a newer user.
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Stored lower-cased; NOCASE keeps the uniqueness case-insensitive in the database itself.
    email         TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    full_name     TEXT,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

-- One row per login. An access token is accepted only while its session row exists, so logout,
-- password change, account deletion and refresh-token reuse all revoke by deleting rows.
CREATE TABLE IF NOT EXISTS sessions (
    id             TEXT    PRIMARY KEY,            -- the `sid` claim
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_hash   BLOB    NOT NULL UNIQUE,        -- SHA-256 of the live refresh token
    prev_hash      BLOB    UNIQUE,                 -- SHA-256 of the token it replaced
    prev_successor BLOB,                           -- the live token, sealed under the previous one
                                                   -- (cleared once the grace window is over)
    rotated_at     INTEGER,                        -- unix seconds of the last rotation
    created_at     INTEGER NOT NULL,               -- unix seconds
    expires_at     INTEGER NOT NULL                -- unix seconds
);
CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);

-- Refresh tokens already exchanged: presenting one again (after the grace window) revokes the
-- session it belongs to. Only the last 64 of a session are kept, so refreshing in a loop cannot
-- grow the database without limit.
CREATE TABLE IF NOT EXISTS spent_refresh_tokens (
    hash       BLOB    PRIMARY KEY,
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spent_at   INTEGER NOT NULL                -- unix seconds
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spent_refresh_tokens_session_id ON spent_refresh_tokens (session_id, spent_at);

-- Asymmetric signing keys (EdDSA, ES256, RS256), shared by every process on the database.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid         TEXT    PRIMARY KEY,               -- RFC 7638 thumbprint of the public key
    algorithm   TEXT    NOT NULL,                  -- EdDSA, ES256 or RS256
    private_der BLOB    NOT NULL,                  -- PKCS#8 (EdDSA, ES256) or PKCS#1 (RS256) DER
    created_at  INTEGER NOT NULL,                  -- unix seconds
    retired_at  INTEGER                            -- unix seconds; NULL while it signs
);
