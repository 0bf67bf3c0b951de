-- warp-auth-api on PostgreSQL, migration 1. Applied at start in one transaction, under an
-- advisory lock, so replicas starting together apply it once (src/store/postgres/mod.rs); the
-- versions applied are rows of schema_migrations. A later change is a new file, never an edit.

CREATE TABLE users (
    -- An identity column: ids are never reused, so a deleted user's token can never name a newer user.
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stored lower-cased; the unique index on lower(email) decides racing registrations.
    email         text        NOT NULL,
    full_name     text,
    password_hash text        NOT NULL,
    role          text        NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
CREATE INDEX users_admins ON users (id) WHERE role = 'admin';

-- One row per login. An access token is accepted only while its session row exists, so logout,
-- password change, account deletion and refresh-token reuse all revoke by deleting rows.
CREATE TABLE sessions (
    id             text   PRIMARY KEY,            -- the `sid` claim
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_hash   bytea  NOT NULL UNIQUE,        -- SHA-256 of the live refresh token
    prev_hash      bytea  UNIQUE,                 -- SHA-256 of the token it replaced
    prev_successor bytea,                         -- the live token, sealed under the previous one
    rotated_at     bigint,                        -- unix seconds of the last rotation
    created_at     bigint NOT NULL,               -- unix seconds
    expires_at     bigint NOT NULL                -- unix seconds
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- Refresh tokens already exchanged (the last 64 of a session): presenting one again revokes it.
CREATE TABLE spent_refresh_tokens (
    hash       bytea  PRIMARY KEY,
    session_id text   NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spent_at   bigint NOT NULL                    -- unix seconds
);
CREATE INDEX spent_refresh_tokens_session_id ON spent_refresh_tokens (session_id, spent_at);

-- The login throttle, shared by every replica: failed attempts per key (an account's email, or a
-- client address), counted up front and refunded when the password was right.
CREATE TABLE login_throttle (
    key           text    PRIMARY KEY,
    failures      integer NOT NULL,
    last_failure  bigint  NOT NULL,               -- unix seconds
    blocked_until bigint                          -- unix seconds
);
CREATE INDEX login_throttle_last_failure ON login_throttle (last_failure);
