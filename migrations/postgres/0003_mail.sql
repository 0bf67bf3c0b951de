-- warp-auth-api on PostgreSQL, migration 3: email verification and password reset by mail.
ALTER TABLE users ADD COLUMN email_verified_at bigint;    -- unix seconds; NULL until verified

-- One-time tokens of the mailed links, stored only as SHA-256. Only the newest of each kind per
-- user lives (a new one replaces the row), and using one deletes it.
CREATE TABLE mail_tokens (
    hash       bytea  PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text   NOT NULL CHECK (kind IN ('verify_email', 'reset_password')),
    created_at bigint NOT NULL,                    -- unix seconds
    expires_at bigint NOT NULL,                    -- unix seconds
    UNIQUE (user_id, kind)
);

-- The outbox: a mail is queued in the transaction that asks for it (a registration, a resend, a
-- forgot-password request); the replicas' workers claim due rows with FOR UPDATE SKIP LOCKED, so
-- each mail is sent once. Its token is made when it is sent (only the hash is kept, in
-- mail_tokens), so no table ever holds a usable link. Sent and dropped rows stay a day, for the
-- per-email hourly limit.
CREATE TABLE mail_outbox (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            text    NOT NULL CHECK (kind IN ('verify_email', 'reset_password')),
    recipient       text    NOT NULL,
    status          text    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'dropped')),
    attempts        integer NOT NULL DEFAULT 0,    -- also the owner of a claim: each claim adds one
    next_attempt_at bigint  NOT NULL,              -- unix seconds
    last_error      text,
    created_at      bigint  NOT NULL,              -- unix seconds
    done_at         bigint                         -- unix seconds: sent or dropped
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX mail_outbox_user ON mail_outbox (user_id, kind, created_at);
