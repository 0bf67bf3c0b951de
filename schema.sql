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
, email_verified_at INTEGER, disabled_at INTEGER, mfa_enabled_at INTEGER);
-- Added by later migrations, in the form ALTER TABLE leaves: email_verified_at (3), unix seconds,
-- NULL until verified; disabled_at (4), unix seconds, NULL while the account is enabled;
-- mfa_enabled_at (5), unix seconds, NULL while MFA is off.

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
, last_used_at INTEGER, user_agent TEXT, ip TEXT);
-- Added by migration 4: last_used_at (unix seconds of the login or the last refresh), user_agent
-- (at most 256 characters) and ip (the client's address then).
CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_user_created ON sessions (user_id, created_at);
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

-- One-time tokens of the mailed links, stored only as SHA-256. Only the newest of each kind per
-- user lives (a new one replaces the row), and using one deletes it.
CREATE TABLE IF NOT EXISTS mail_tokens (
    hash       BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL CHECK (kind IN ('verify_email', 'reset_password')),
    created_at INTEGER NOT NULL,                   -- unix seconds
    expires_at INTEGER NOT NULL,                   -- unix seconds
    UNIQUE (user_id, kind)
) WITHOUT ROWID;

-- The outbox: a mail is queued in the transaction that asks for it (a registration, a resend, a
-- forgot-password request), and a background worker sends it. Its token is made when it is sent
-- (only the hash is kept, in mail_tokens), so no table ever holds a usable link. Sent and dropped
-- rows stay a day, for the per-email hourly limit.
CREATE TABLE IF NOT EXISTS mail_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('verify_email', 'reset_password')),
    recipient       TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0,    -- also the owner of a claim: each claim adds one
    next_attempt_at INTEGER NOT NULL,              -- unix seconds
    last_error      TEXT,
    created_at      INTEGER NOT NULL,              -- unix seconds
    done_at         INTEGER                        -- unix seconds: sent or dropped
);
CREATE INDEX IF NOT EXISTS mail_outbox_due ON mail_outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS mail_outbox_user ON mail_outbox (user_id, kind, created_at);

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

-- The audit log (migration 6).
-- What happened to accounts, sessions, second factors and keys, by whom and from where. Each
-- event is written in the transaction of the change it records (no change, no event). No
-- foreign keys: the events outlive the users they name. Housekeeping removes events older
-- than AUDIT_RETENTION_DAYS.
CREATE TABLE IF NOT EXISTS audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: `before_id` pages stay put
    at         INTEGER NOT NULL,                   -- unix seconds
    type       TEXT    NOT NULL,                   -- e.g. login.failed
    user_id    INTEGER,                            -- the user it is about; NULL: none (or unknown)
    actor_id   INTEGER,                            -- who acted, when not the user itself or nobody
    ip         TEXT,
    user_agent TEXT,
    request_id TEXT,
    detail     TEXT    NOT NULL DEFAULT '{}'       -- a JSON object; never a secret
);
CREATE INDEX IF NOT EXISTS audit_events_user ON audit_events (user_id, id);
CREATE INDEX IF NOT EXISTS audit_events_type ON audit_events (type, id);
CREATE INDEX IF NOT EXISTS audit_events_at ON audit_events (at);

-- The number of users (migration 7).
-- The admin list's `total` reads it instead of counting every user on every call (a count that
-- grows with the table); the triggers keep it exact through every insert and delete, the
-- service's own and any other.
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) SELECT 'users', count(*) FROM users;
CREATE TRIGGER IF NOT EXISTS users_counted_in AFTER INSERT ON users
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'users';
END;
CREATE TRIGGER IF NOT EXISTS users_counted_out AFTER DELETE ON users
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'users';
END;
