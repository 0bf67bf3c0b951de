-- warp-auth-api on PostgreSQL, migration 5: a second factor (TOTP) with recovery codes.
ALTER TABLE users ADD COLUMN mfa_enabled_at bigint;       -- unix seconds; NULL while MFA is off

-- A user's TOTP secret: pending until confirmed with a code. The secret is sealed
-- (XChaCha20-Poly1305) under a key derived from JWT_SECRET, which the database does not hold.
CREATE TABLE mfa_totp (
    user_id       bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed bytea  NOT NULL,                 -- nonce, then the sealed secret
    key_id        text   NOT NULL,                 -- which key sealed it (JWT_SECRET rotation)
    confirmed_at  bigint,                          -- unix seconds; NULL while pending
    last_step     bigint,                          -- the last time step accepted (no replay)
    created_at    bigint NOT NULL                  -- unix seconds
);

-- Recovery codes, by SHA-256 (80 random bits each); each works once.
CREATE TABLE mfa_recovery_codes (
    user_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash bytea  NOT NULL,
    used_at   bigint,                              -- unix seconds; NULL while unused
    PRIMARY KEY (user_id, code_hash)
);

-- The second step of a login: an mfa_token (by SHA-256), for 5 minutes, dead after 5 wrong codes.
CREATE TABLE mfa_challenges (
    hash          bytea   PRIMARY KEY,
    user_id       bigint  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash text    NOT NULL,                -- the hash the password step verified
    failures      integer NOT NULL DEFAULT 0,
    expires_at    bigint  NOT NULL                 -- unix seconds
);
CREATE INDEX mfa_challenges_expires_at ON mfa_challenges (expires_at);
