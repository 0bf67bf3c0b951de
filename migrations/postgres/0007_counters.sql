-- warp-auth-api on PostgreSQL, migration 7: the number of users, kept by the database itself.
-- The admin list's `total` reads it instead of counting every user on every call (a count that
-- grows with the table); the trigger keeps it exact through every insert and delete, on every
-- replica, the service's own and any other. The row's lock orders racing registrations' counts
-- (registrations are bcrypt-bound, far from where that would matter).
-- Writers of users wait until the trigger is in place, so none is left out of the count (a
-- replica of the previous release may be serving while this one migrates).
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO counters (name, value) SELECT 'users', count(*) FROM users;
CREATE FUNCTION count_users() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE counters SET value = value + 1 WHERE name = 'users';
    ELSE
        UPDATE counters SET value = value - 1 WHERE name = 'users';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER users_counted AFTER INSERT OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION count_users();
