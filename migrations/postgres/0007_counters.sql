-- warp-auth-api on PostgreSQL, migration 7: the number of users, kept by the database itself.
-- The admin list's `total` reads it instead of counting every user on every call (a count that
-- grows with the table); the triggers keep it exact through every insert and delete, on every
-- replica, the service's own and any other. They fire once per statement, with the rows it
-- inserted or deleted: a bulk import of a million users updates the count once, not a million
-- times (one row updated over and over in one transaction grows a version chain that each
-- update walks). The row's lock orders racing registrations' counts (registrations are
-- bcrypt-bound, far from where that would matter).
-- Writers of users wait until the triggers are in place, so none is left out of the count (a
-- replica of the previous release may be serving while this one migrates).
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO counters (name, value) SELECT 'users', count(*) FROM users;
CREATE FUNCTION count_inserted_users() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE counters SET value = value + (SELECT count(*) FROM inserted) WHERE name = 'users';
    RETURN NULL;
END
$$;
CREATE FUNCTION count_deleted_users() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE counters SET value = value - (SELECT count(*) FROM deleted) WHERE name = 'users';
    RETURN NULL;
END
$$;
CREATE TRIGGER users_counted_in AFTER INSERT ON users
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_users();
CREATE TRIGGER users_counted_out AFTER DELETE ON users
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_users();
