-- warp-auth-api on SQLite, migration 7: the number of users, kept by the database itself.
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
