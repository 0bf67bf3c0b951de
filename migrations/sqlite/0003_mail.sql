-- warp-auth-api on SQLite, migration 3: email verification and password reset by mail.
ALTER TABLE users ADD COLUMN email_verified_at INTEGER;   -- unix seconds; NULL until verified

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
