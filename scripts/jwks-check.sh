#!/usr/bin/env bash
# Other services verify our access tokens offline with standard libraries: this checks that they
# can, on the real binary, with the two examples a user would copy (scripts/verify_jwks.py, PyJWT;
# scripts/verify_jwks.mjs, jose). For each of EdDSA, ES256 and RS256: a token verifies with both,
# a tampered one and ones signed with the right key but of the wrong typ, expired, or for another
# audience or issuer are refused by both; after `keys rotate` the server signs with a new key (by
# itself within a minute: EdDSA; at once on meeting a token of it from a second replica: ES256,
# RS256), whose tokens verify, and tokens of the old key still verify and still work on /me. With
# HS256 the JWK Set is empty and `keys rotate` refuses. Used by .ci/run.
#
# usage: scripts/jwks-check.sh BINARY
#   BINARY  the warp-auth-api binary (the release build)
#
# Installs what it needs, once, under ${XDG_CACHE_HOME:-$HOME/.cache}/warp-auth-api/: a Python
# virtual environment with PyJWT, and jose from the npm registry (Node.js and npm from apt when
# there is no node).
set -euo pipefail
BIN=$(realpath "${1:?usage: scripts/jwks-check.sh BINARY}")
here=$(cd "$(dirname "$0")" && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/warp-auth-api"
PYJWT_VERSION=2.15.1
work=$(mktemp -d)
servers=()
cleanup() {
  local pid
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
started=$SECONDS

echo "== tools: PyJWT $PYJWT_VERSION"
venv="$cache/jwks-venv"
PY="$venv/bin/python"
[ -x "$PY" ] || python3 -m venv "$venv"
if ! "$PY" -c "import jwt, cryptography; assert jwt.__version__ == '$PYJWT_VERSION'" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check "pyjwt[crypto]==$PYJWT_VERSION"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# jose 6 needs the Web Crypto and fetch globals of Node.js 20 and later; jose 5 runs on Node.js 18
# (Debian 12's). Their createRemoteJWKSet and jwtVerify are the same.
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -ge 20 ]; then JOSE_VERSION=6.2.18; else JOSE_VERSION=5.9.5; fi
echo "== tools: Node.js $(node --version), jose $JOSE_VERSION"
jsdir="$cache/jwks-node-jose$JOSE_VERSION"
if [ "$(node -p "try { require('$jsdir/node_modules/jose/package.json').version } catch { '' }")" != "$JOSE_VERSION" ]; then
  mkdir -p "$jsdir"
  npm install --prefix "$jsdir" --no-audit --no-fund --silent "jose@$JOSE_VERSION"
fi
# An ES module finds its imports from where it lies (NODE_PATH does not apply): run a copy of the
# example beside the node_modules it was installed into.
cp "$here/verify_jwks.mjs" "$jsdir/verify_jwks.mjs"

verify_py() { "$PY" "$here/verify_jwks.py" "$@"; }
verify_js() { node "$jsdir/verify_jwks.mjs" "$@"; }

# Both examples accept the token: the claims each printed are the ones expected.
verify_both() { # label jwks_url token
  local label=$1 url=$2 token=$3 out
  for v in verify_py verify_js; do
    out=$("$v" "$url" "$token" 2>"$work/verify.err") ||
      fail "$v refused the $label token: $(cat "$work/verify.err")"
    CLAIMS="$out" "$PY" - <<'EOF' || fail "$v: the claims of the $label token are not as expected: $out"
import json, os
claims = json.loads(os.environ["CLAIMS"])
expected = {"sub", "exp", "iat", "jti", "sid", "role"}
expected |= {k for k, v in (("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")) if os.environ.get(v)}
missing = expected - claims.keys()
assert not missing, f"missing {sorted(missing)}"
for k, v in (("iss", "JWT_ISSUER"), ("aud", "JWT_AUDIENCE")):
    if os.environ.get(v):
        assert claims[k] == os.environ[v], f"{k} is {claims[k]!r}"
EOF
  done
  echo "   $label token: verified by PyJWT and jose"
}

# Both examples refuse the token (and say so: a crash is not a refusal).
refuse_both() { # label jwks_url token
  local label=$1 url=$2 token=$3 why=""
  for v in verify_py verify_js; do
    if "$v" "$url" "$token" >/dev/null 2>"$work/verify.err"; then
      fail "$v accepted the $label token"
    fi
    grep -q 'token refused' "$work/verify.err" ||
      fail "$v did not refuse the $label token, it failed: $(cat "$work/verify.err")"
    why+="; $(sed 's/^token refused: //' "$work/verify.err" | tr -d '\n')"
  done
  echo "   $label token: refused by PyJWT and jose (${why#; })"
}

# The token with its payload changed (role admin, another user) and its signature kept.
tamper() {
  "$PY" -c '
import base64, json, sys
h, p, s = sys.argv[1].split(".")
claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
claims.update(role="admin", sub=str(int(claims["sub"]) + 1))
p = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
print(f"{h}.{p}.{s}")' "$1"
}
header() { # token field
  "$PY" -c '
import json, sys, jwt
print(jwt.get_unverified_header(sys.argv[1]).get(sys.argv[2], ""))' "$1" "$2"
}

# A token signed with the server's own private key (read from its database), the same as the
# given one but for the changes: the examples must check more than the signature.
forge() { # database token header-changes claim-changes (JSON objects)
  "$PY" - "$@" <<'EOF'
import json, sqlite3, sys, jwt
from cryptography.hazmat.primitives.serialization import load_der_private_key
db, token, header_changes, claim_changes = sys.argv[1:]
header = jwt.get_unverified_header(token)
claims = jwt.decode(token, options={"verify_signature": False})
(der,) = sqlite3.connect(db).execute(
    "SELECT private_der FROM signing_keys WHERE kid = ?", (header["kid"],)).fetchone()
header.update(json.loads(header_changes))
claims.update(json.loads(claim_changes))
key = load_der_private_key(der, None)
print(jwt.encode(claims, key, algorithm=header.pop("alg"), headers=header))
EOF
}

# Starts the server with the environment in the array cfg; sets base.
start_server() { # name
  local log="$work/$1.log"
  (cd "$work" && exec env "${cfg[@]}" HOST=127.0.0.1 PORT=0 RUST_LOG=info "$BIN") >"$log" 2>&1 &
  servers+=("$!")
  base=""
  for _ in $(seq 100); do
    base=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -n1 | sed 's/listening on //') || true
    [ -n "$base" ] && break
    sleep 0.1
  done
  [ -n "$base" ] || fail "the $1 server did not start: $(cat "$log")"
}
stop_servers() { # those started; none may have logged errors
  local pid
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  servers=()
  if grep -q '"level":"ERROR"' "$work"/*.log; then
    fail "a server logged errors: $(grep -h '"level":"ERROR"' "$work"/*.log | head -5)"
  fi
}

EMAIL=jwks-check@example.com PASSWORD=MyStrongPass123
register() {
  curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" "$base/api/v1/users/register" ||
    fail "register at $base"
}
login() { # -> access token
  curl -sf -X POST -H 'Content-Type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" "$base/api/v1/users/login" |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' || fail "login at $base"
}
me_status() { # token -> HTTP status of GET /api/v1/users/me
  curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$base/api/v1/users/me"
}
jwks_kids() { # -> the kids in the served JWK Set, one a line
  curl -sf "$base/.well-known/jwks.json" | "$PY" -c '
import json, sys
for k in json.load(sys.stdin)["keys"]: print(k["kid"])'
}

for alg in EdDSA ES256 RS256; do
  cfg=(JWT_ALGORITHM="$alg" DATABASE_URL="$work/$alg.db" BCRYPT_COST=4 LOG_FORMAT=json)
  # iss and aud are checked on two of the three.
  unset JWT_ISSUER JWT_AUDIENCE
  if [ "$alg" != EdDSA ]; then
    export JWT_ISSUER="https://auth.example.com" JWT_AUDIENCE="orders-service"
    cfg+=(JWT_ISSUER="$JWT_ISSUER" JWT_AUDIENCE="$JWT_AUDIENCE")
  fi
  export JWT_ALGORITHM="$alg" # read by both examples: the one algorithm they accept
  start_server "$alg"
  url="$base/.well-known/jwks.json"
  echo "== $alg: server at $base${JWT_ISSUER:+ (iss, aud set)}"

  headers=$(curl -sf -D - -o /dev/null "$url") || fail "GET $url"
  grep -qi '^cache-control: public, max-age=300' <<<"$headers" || fail "$url: no Cache-Control: public, max-age=300"
  register
  old=$(login)
  old_kid=$(header "$old" kid)
  [ "$(header "$old" alg)" = "$alg" ] || fail "the token's alg is $(header "$old" alg), not $alg"
  [ "$(header "$old" typ)" = "at+jwt" ] || fail "the token's typ is $(header "$old" typ), not at+jwt"
  jwks_kids | grep -qxF -e "$old_kid" || fail "the token's kid $old_kid is not in the JWK Set"
  verify_both "$alg" "$url" "$old"
  refuse_both "tampered $alg" "$url" "$(tamper "$old")"
  db="$work/$alg.db"
  refuse_both "typ JWT $alg" "$url" "$(forge "$db" "$old" '{"typ": "JWT"}' '{}')"
  refuse_both "expired $alg" "$url" "$(forge "$db" "$old" '{}' "{\"exp\": $(($(date +%s) - 60))}")"
  if [ -n "${JWT_AUDIENCE:-}" ]; then
    refuse_both "other audience $alg" "$url" "$(forge "$db" "$old" '{}' '{"aud": "another-service"}')"
    refuse_both "other issuer $alg" "$url" "$(forge "$db" "$old" '{}' '{"iss": "https://evil.example.com"}')"
  fi

  (cd "$work" && env "${cfg[@]}" "$BIN" keys rotate) || fail "$alg: keys rotate"
  t0=$SECONDS
  if [ "$alg" != EdDSA ]; then
    # A second replica on the same database, started after the rotation, signs with the new key
    # at once; its token makes the first server reload at once (it names a key it does not know).
    first=$base
    start_server "$alg-replica"
    new=$(login)
    [ "$(header "$new" kid)" != "$old_kid" ] || fail "$alg: a server started after keys rotate signs with the old key"
    base=$first
    [ "$(me_status "$new")" = 200 ] ||
      fail "$alg: the first server refused the replica's token of the new key: $(me_status "$new")"
  fi
  # Here (EdDSA) the server picks the rotation up by itself, within a minute.
  new=$(login)
  while [ "$(header "$new" kid)" = "$old_kid" ]; do
    [ $((SECONDS - t0)) -lt 70 ] || fail "$alg: 70 s after keys rotate the server still signs with $old_kid"
    sleep 1
    new=$(login)
  done
  new_kid=$(header "$new" kid)
  echo "   new key $new_kid signs $((SECONDS - t0)) s after keys rotate$([ "$alg" = EdDSA ] || echo ' (a token of it met)')"
  kids=$(jwks_kids)
  grep -qxF -e "$new_kid" <<<"$kids" || fail "the new kid is not in the JWK Set"
  grep -qxF -e "$old_kid" <<<"$kids" || fail "the old kid left the JWK Set while its tokens live"
  verify_both "new $alg" "$url" "$new"
  verify_both "old $alg" "$url" "$old"
  refuse_both "tampered new $alg" "$url" "$(tamper "$new")"
  [ "$(me_status "$new")" = 200 ] || fail "GET /api/v1/users/me with the new token: $(me_status "$new")"
  [ "$(me_status "$old")" = 200 ] || fail "GET /api/v1/users/me with the old token: $(me_status "$old")"
  echo "   GET /api/v1/users/me: 200 with the old token and the new"
  stop_servers
done

echo "== HS256"
unset JWT_ISSUER JWT_AUDIENCE
export JWT_ALGORITHM=HS256
cfg=(JWT_ALGORITHM=HS256 DATABASE_URL="$work/hs256.db" BCRYPT_COST=4 LOG_FORMAT=json
  JWT_SECRET="jwks-check-$(head -c 32 /dev/urandom | base64 | tr -d '/+=')")
start_server HS256
url="$base/.well-known/jwks.json"
body=$(curl -sf "$url") || fail "GET $url"
"$PY" -c 'import json, sys; assert json.loads(sys.argv[1]) == {"keys": []}' "$body" ||
  fail "with HS256 the JWK Set is not {\"keys\": []}: $body"
echo "   JWK Set: $body"
register
refuse_both "HS256" "$url" "$(login)"
if (cd "$work" && env "${cfg[@]}" "$BIN" keys rotate) >"$work/rotate.out" 2>&1; then
  fail "keys rotate accepted HS256"
fi
echo "   keys rotate refuses: $(head -c 200 "$work/rotate.out")"
stop_servers

echo "== jwks check passed in $((SECONDS - started)) s"
