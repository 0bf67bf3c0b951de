-- warp-auth-api on SQLite, migration 6: the audit log.
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
