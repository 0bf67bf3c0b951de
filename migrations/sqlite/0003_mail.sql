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

-- The outbox: each mail is written in the transaction that makes its token, and a background
-- worker sends it. The link's token is held only until the mail is handed to the SMTP server;
-- sent and dropped rows stay a day, without it, for the per-email hourly limit.
CREATE TABLE IF NOT EXISTS mail_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('verify_email', 'reset_password')),
    recipient       TEXT    NOT NULL,
    token           TEXT,                          -- NULL once sent or dropped
    token_hash      BLOB    NOT NULL,              -- the mail is dropped once this token is dead
    status          TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'dropped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,              -- unix seconds
    last_error      TEXT,
    created_at      INTEGER NOT NULL,              -- unix seconds
    done_at         INTEGER                        -- unix seconds: sent or dropped
);
CREATE INDEX IF NOT EXISTS mail_outbox_due ON mail_outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS mail_outbox_user ON mail_outbox (user_id, kind, created_at);
