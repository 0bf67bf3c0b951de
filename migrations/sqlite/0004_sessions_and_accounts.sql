-- warp-auth-api on SQLite, migration 4: sessions a user can see (device, address, last use), and
-- accounts an admin can disable.
ALTER TABLE users ADD COLUMN disabled_at INTEGER;         -- unix seconds; NULL while enabled
ALTER TABLE sessions ADD COLUMN last_used_at INTEGER;     -- unix seconds: the login or last refresh
ALTER TABLE sessions ADD COLUMN user_agent TEXT;          -- at most 256 characters
ALTER TABLE sessions ADD COLUMN ip TEXT;                  -- the client's address then
CREATE INDEX IF NOT EXISTS sessions_user_created ON sessions (user_id, created_at);
