-- warp-auth-api on PostgreSQL, migration 2: asymmetric signing keys, shared by every replica (so
-- they all sign with the same key) and kept across restarts. The private key never leaves the
-- service.
CREATE TABLE signing_keys (
    kid         text   PRIMARY KEY,                -- RFC 7638 thumbprint of the public key
    algorithm   text   NOT NULL,                   -- EdDSA, ES256 or RS256
    private_der bytea  NOT NULL,                   -- PKCS#8 (EdDSA, ES256) or PKCS#1 (RS256) DER
    created_at  bigint NOT NULL,                   -- unix seconds
    retired_at  bigint                             -- unix seconds; NULL while it signs
);
