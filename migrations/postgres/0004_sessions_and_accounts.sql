-- warp-auth-api on PostgreSQL, migration 4: sessions a user can see (device, address, last use),
-- and accounts an admin can disable.
ALTER TABLE users ADD COLUMN disabled_at bigint;          -- unix seconds; NULL while enabled
ALTER TABLE sessions ADD COLUMN last_used_at bigint;      -- unix seconds: the login or last refresh
ALTER TABLE sessions ADD COLUMN user_agent text;          -- at most 256 characters
ALTER TABLE sessions ADD COLUMN ip text;                  -- the client's address then
CREATE INDEX sessions_user_created ON sessions (user_id, created_at);
DROP INDEX users_admins;
CREATE INDEX users_admins ON users (id) WHERE role = 'admin' AND disabled_at IS NULL;
