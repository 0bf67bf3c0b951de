-- warp-auth-api on PostgreSQL, migration 6: the audit log.
-- What happened to accounts, sessions, second factors and keys, by whom and from where. Each
-- event is written in the transaction of the change it records (no change, no event). No
-- foreign keys: the events outlive the users they name. Housekeeping removes events older
-- than AUDIT_RETENTION_DAYS.
CREATE TABLE audit_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         bigint NOT NULL,                    -- unix seconds
    type       text   NOT NULL,                    -- e.g. login.failed
    user_id    bigint,                             -- the user it is about; NULL: none (or unknown)
    actor_id   bigint,                             -- who acted, when not the user itself or nobody
    ip         text,
    user_agent text,
    request_id text,
    detail     jsonb  NOT NULL DEFAULT '{}'        -- never a secret
);
CREATE INDEX audit_events_user ON audit_events (user_id, id);
CREATE INDEX audit_events_type ON audit_events (type, id);
CREATE INDEX audit_events_at ON audit_events (at);
