#!/usr/bin/env python3
"""Verify a warp-auth-api access token offline, with the service's published keys (JWK Set).

usage: verify_jwks.py JWKS_URL TOKEN        (or JWKS_URL and TOKEN in the environment)

  JWT_ALGORITHM   the service's: EdDSA, ES256 or RS256 (default EdDSA); only it is accepted
  JWT_ISSUER      the service's, when it sets one: then required in the token
  JWT_AUDIENCE    the service's, when it sets one: then required in the token

Prints the claims (JSON) and exits 0 when the token verifies; says why and exits 1 when not.
Needs PyJWT with its crypto extra: pip install "pyjwt[crypto]"
"""

import json
import os
import sys

import jwt

args = sys.argv[1:]
jwks_url = args[0] if len(args) > 0 else os.environ.get("JWKS_URL")
token = args[1] if len(args) > 1 else os.environ.get("TOKEN")
if not jwks_url or not token:
    sys.exit(__doc__)
algorithm = os.environ.get("JWT_ALGORITHM", "EdDSA")

# Make one client per process and keep it: it caches the keys, and fetches the set again when a
# token names a key it does not have (the service rotated its key; at most once per 30 s).
jwks_client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300)

try:
    signing_key = jwks_client.get_signing_key_from_jwt(token)  # by the token's `kid`
    decoded = jwt.decode_complete(
        token,
        signing_key,
        algorithms=[algorithm],  # pinned: never take the algorithm from the token
        issuer=os.environ.get("JWT_ISSUER") or None,
        audience=os.environ.get("JWT_AUDIENCE") or None,
        options={"require": ["exp", "iat", "sub"]},
    )
    # An access token, not some other JWT signed by the same key (RFC 9068).
    if decoded["header"].get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
        raise jwt.InvalidTokenError("not an access token (typ is not at+jwt)")
except jwt.PyJWTError as e:
    sys.exit(f"token refused: {type(e).__name__}: {e}")

print(json.dumps(decoded["payload"], indent=2))
