// Verify a warp-auth-api access token offline, with the service's published keys (JWK Set).
//
// usage: node verify_jwks.mjs JWKS_URL TOKEN      (or JWKS_URL and TOKEN in the environment)
//
//   JWT_ALGORITHM   the service's: EdDSA, ES256 or RS256 (default EdDSA); only it is accepted
//   JWT_ISSUER      the service's, when it sets one: then required in the token
//   JWT_AUDIENCE    the service's, when it sets one: then required in the token
//
// Prints the claims (JSON) and exits 0 when the token verifies; says why and exits 1 when not.
// Needs jose (npm install jose): v6 on Node.js 20 or later, v5 on Node.js 18.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl = process.env.JWKS_URL, token = process.env.TOKEN] = process.argv.slice(2);
if (!jwksUrl || !token) {
  console.error('usage: node verify_jwks.mjs JWKS_URL TOKEN');
  process.exit(2);
}

// Make one per process and keep it: it caches the keys, and fetches the set again when a token
// names a key it does not have (the service rotated its key; at most once per 30 s).
const JWKS = createRemoteJWKSet(new URL(jwksUrl));

try {
  const { payload } = await jwtVerify(token, JWKS, {
    algorithms: [process.env.JWT_ALGORITHM || 'EdDSA'], // pinned: never take it from the token
    typ: 'at+jwt', // an access token, not some other JWT signed by the same key (RFC 9068)
    issuer: process.env.JWT_ISSUER || undefined,
    audience: process.env.JWT_AUDIENCE || undefined,
    requiredClaims: ['exp', 'iat', 'sub'],
  });
  console.log(JSON.stringify(payload, null, 2));
} catch (e) {
  console.error(`token refused: ${e.code ?? e.name}: ${e.message}`);
  process.exit(1);
}
