#!/usr/bin/env bash
# The API as its users meet it, on the real binary: Swagger UI and ReDoc in a real browser, the
# mails and the account pages they link to (a server of their own, sending to an SMTP catcher),
# the refresh cookie from an SPA on another port (a server of its own, in cookie mode),
# then schemathesis against the served /openapi.json. Used by .ci/run.
#
# usage: scripts/api-checks.sh BINARY VENV
#   BINARY  the warp-auth-api binary (the release build)
#   VENV    a Python virtual environment with schemathesis, playwright and aiosmtpd (see .ci/run)
set -euo pipefail
BIN=$(realpath "${1:?the warp-auth-api binary}")
VENV=${2:?a virtual environment with schemathesis, playwright and aiosmtpd}
PY="$VENV/bin/python"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

export DATABASE_URL="$work/app.db" BCRYPT_COST=4 LOG_FORMAT=json RUST_LOG=warn
export JWT_SECRET="api-checks-$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
(cd "$work" && HOST=127.0.0.1 PORT=0 RUST_LOG=info exec "$BIN") >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  base=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -n1 | sed 's/listening on //') || true
  [ -n "$base" ] && break
  sleep 0.1
done
[ -n "${base:-}" ] || { echo "the server did not start:"; cat "$work/server.log"; exit 1; }
echo "== server at $base"

token() { # email password -> access token
  curl -sf -X POST -H 'Content-Type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" "$base/api/v1/users/login" |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
ADMIN_PASSWORD=Checks-Pass-Word1 "$BIN" create-admin --email admin@example.com
admin=$(token admin@example.com Checks-Pass-Word1)
member() { # a fresh member's access token (its password is the documented example)
  local email="member$RANDOM$RANDOM@example.com"
  curl -sf -X POST -H 'Content-Type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"MyStrongPass123\"}" "$base/api/v1/users/register" >/dev/null
  token "$email" MyStrongPass123
}

echo "== browser: /docs and /redoc in Chromium"
"$PY" "$here/browser_check.py" "$base"

echo "== browser: the verification and reset mails, their links opened in Chromium"
"$PY" "$here/mail_browser_check.py" "$BIN"

echo "== browser: the refresh cookie (REFRESH_TOKEN_COOKIE=true) from an SPA origin, and refused elsewhere"
"$PY" "$here/cookie_browser_check.py" "$BIN"

# Every check but positive_data_acceptance: three registration rules cannot be written in JSON
# Schema (the 72-byte limit, where JSON Schema counts characters, the common-password list, and a
# password holding the account's email or the service's name),
# so some schema-valid passwords are rightly refused. Responses must still all conform.
st() {
  "$VENV/bin/schemathesis" run "$base/openapi.json" --checks all --exclude-checks positive_data_acceptance \
    --seed 20261129 --max-examples 30 --workers 1 --no-color "$@"
}
echo "== schemathesis: every operation that leaves the session alive, as an admin"
st -H "Authorization: Bearer $admin" \
  --exclude-operation-id logout --exclude-operation-id change_password --exclude-operation-id delete_account
# Each of these ends the session (or the user) the first time it succeeds, after which the rest
# of its cases can only get 401: each runs with a member of its own.
for op in logout change_password delete_account; do
  echo "== schemathesis: $op, as a member of its own"
  st -H "Authorization: Bearer $(member)" --include-operation-id "$op"
done

if grep -q '"level":"ERROR"' "$work/server.log"; then
  echo "the server logged errors:"; grep '"level":"ERROR"' "$work/server.log" | head -20; exit 1
fi
echo "== api checks passed"
