-- warp-auth-api on SQLite, migration 2: asymmetric signing keys, shared by every process that
-- opens the database and kept across restarts. The private key never leaves the service.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid         TEXT    PRIMARY KEY,               -- RFC 7638 thumbprint of the public key
    algorithm   TEXT    NOT NULL,                  -- EdDSA, ES256 or RS256
    private_der BLOB    NOT NULL,                  -- PKCS#8 (EdDSA, ES256) or PKCS#1 (RS256) DER
    created_at  INTEGER NOT NULL,                  -- unix seconds
    retired_at  INTEGER                            -- unix seconds; NULL while it signs
);
