-- warp-auth-api on SQLite, migration 5: a second factor (TOTP) with recovery codes.
ALTER TABLE users ADD COLUMN mfa_enabled_at INTEGER;      -- unix seconds; NULL while MFA is off

-- A user's TOTP secret: pending until confirmed with a code. The secret is sealed
-- (XChaCha20-Poly1305) under a key derived from JWT_SECRET, which the database does not hold.
CREATE TABLE IF NOT EXISTS mfa_totp (
    user_id       INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed BLOB    NOT NULL,                -- nonce, then the sealed secret
    key_id        TEXT    NOT NULL,                -- which key sealed it (JWT_SECRET rotation)
    confirmed_at  INTEGER,                         -- unix seconds; NULL while pending
    last_step     INTEGER,                         -- the last time step accepted (no replay)
    created_at    INTEGER NOT NULL                 -- unix seconds
);

-- Recovery codes, by SHA-256 (80 random bits each); each works once.
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BLOB    NOT NULL,
    used_at   INTEGER,                             -- unix seconds; NULL while unused
    PRIMARY KEY (user_id, code_hash)
) WITHOUT ROWID;

-- The second step of a login: an mfa_token (by SHA-256), for 5 minutes, dead after 5 wrong codes.
CREATE TABLE IF NOT EXISTS mfa_challenges (
    hash          BLOB    PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash TEXT    NOT NULL,                -- the hash the password step verified
    failures      INTEGER NOT NULL DEFAULT 0,
    expires_at    INTEGER NOT NULL                 -- unix seconds
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mfa_challenges_expires_at ON mfa_challenges (expires_at);
