#!/usr/bin/env bash
# The metrics as Prometheus reads them, on the real binary: the server runs with METRICS_ADDR on a
# free loopback port; a user registers, logs in (and fails once), refreshes (and presents a token
# that is none) and reads /me; then /metrics must pass `promtool check metrics`, hold the
# contract's families with those counts moved and path templates as route labels, and the API's
# own port must answer /metrics with 404. Used by .ci/run.
#
# usage: scripts/metrics-check.sh BINARY
#   BINARY  the warp-auth-api binary (the release build)
#
# Installs nothing: it needs promtool (Debian's package `prometheus`; .ci/run installs it) and
# python3 (the HTTP client: a fresh machine need not have curl).
set -euo pipefail
BIN=$(realpath "${1:?usage: scripts/metrics-check.sh BINARY}")
command -v promtool >/dev/null || { echo "promtool is needed: apt-get install prometheus" >&2; exit 1; }
work=$(mktemp -d)
server=""
cleanup() {
  # bash's own kill: a minimal machine has no kill program (procps).
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

export DATABASE_URL="$work/app.db" BCRYPT_COST=4 LOG_FORMAT=json RUST_LOG=info
export JWT_SECRET="metrics-check-$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
(cd "$work" && HOST=127.0.0.1 PORT=0 METRICS_ADDR=127.0.0.1:0 exec "$BIN") >"$work/server.log" 2>&1 &
server=$!
base="" metrics=""
for _ in $(seq 100); do
  base=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -n1 | sed 's/listening on //') || true
  metrics=$(grep -o 'metrics on http://[0-9.:]*/metrics' "$work/server.log" | head -n1 | sed 's/metrics on //') || true
  [ -n "$base" ] && [ -n "$metrics" ] && break
  sleep 0.1
done
if [ -z "$base" ] || [ -z "$metrics" ]; then
  echo "the server did not start with its metrics listener:"; cat "$work/server.log"; exit 1
fi
echo "== server at $base, metrics at $metrics"

echo "== traffic: register, logins, refreshes, /me, an unknown path"
python3 - "$base" "$metrics" "$work/metrics.txt" <<'PY'
import json
import sys
import urllib.error
import urllib.request

base, metrics, out = sys.argv[1:4]


def call(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def expect(status, answer, what):
    if answer[0] != status:
        sys.exit(f"{what}: {answer[0]} instead of {status}: {answer[2][:300]!r}")
    return answer


user = {"email": "metrics@example.com", "password": "MyStrongPass123"}
expect(201, call("POST", f"{base}/api/v1/users/register", user), "register")
pair = json.loads(expect(200, call("POST", f"{base}/api/v1/users/login", user), "login")[2])
wrong = dict(user, password="Wrong-password-9")
expect(401, call("POST", f"{base}/api/v1/users/login", wrong), "a wrong password")
new = json.loads(
    expect(200, call("POST", f"{base}/api/v1/users/refresh", {"refresh_token": pair["refresh_token"]}), "refresh")[2]
)
expect(401, call("POST", f"{base}/api/v1/users/refresh", {"refresh_token": "none"}), "a bad refresh token")
expect(200, call("GET", f"{base}/api/v1/users/me", token=new["access_token"]), "/me")
expect(404, call("GET", f"{base}/api/v1/admin/users/1/nothing"), "an unknown path")
# /metrics is not on the API's port.
expect(404, call("GET", f"{base}/metrics"), "/metrics on the API port")

status, headers, body = expect(200, call("GET", metrics), "/metrics")
kind = headers.get("Content-Type", "")
if not kind.startswith("text/plain; version=0.0.4"):
    sys.exit(f"/metrics content type: {kind!r}")
with open(out, "wb") as f:
    f.write(body)
PY

echo "== promtool check metrics"
promtool check metrics <"$work/metrics.txt" || fail "promtool check metrics (above)"

echo "== the contract's families"
have() { # a regular expression a line must match; on failure, the lines of that family
  grep -qE "^$1" "$work/metrics.txt" && return
  grep -E "^${1%%[^a-z_]*}" "$work/metrics.txt" | head -n 40 >&2 || true
  fail "no line matches ^$1"
}
have 'http_requests_total\{method="POST",route="/api/v1/users/login",status="200"\} 1$'
have 'http_requests_total\{method="GET",route="/api/v1/users/me",status="200"\} 1$'
# The unknown path, and /metrics asked of the API's port.
have 'http_requests_total\{method="GET",route="unmatched",status="404"\} 2$'
have 'http_request_duration_seconds_bucket\{route="/api/v1/users/me",le="0.001"\} '
have 'http_request_duration_seconds_count\{route="/api/v1/users/refresh"\} 2$'
have 'auth_logins_total\{outcome="success"\} 1$'
have 'auth_logins_total\{outcome="invalid"\} 1$'
for outcome in throttled mfa_required forbidden; do have "auth_logins_total\\{outcome=\"$outcome\"\\} 0$"; done
have 'auth_registrations_total 1$'
have 'auth_refreshes_total\{outcome="rotated"\} 1$'
have 'auth_refreshes_total\{outcome="invalid"\} 1$'
have 'auth_refreshes_total\{outcome="grace"\} 0$'
have 'auth_refreshes_total\{outcome="reused"\} 0$'
have 'auth_password_hash_queue_depth 0$'
have 'auth_password_hash_seconds_count 3$'
have 'auth_mail_outbox_pending [0-9]+$'
have 'auth_mail_sent_total\{outcome="sent"\} 0$'
have 'auth_mail_sent_total\{outcome="failed"\} 0$'
for family in process_cpu_seconds_total process_resident_memory_bytes process_open_fds process_max_fds \
  process_start_time_seconds process_threads process_virtual_memory_bytes; do
  have "$family "
done
# Raw paths never become labels.
if grep -E 'route="[^"]*/1/nothing"' "$work/metrics.txt"; then fail "a raw path as a route label"; fi

if grep -q '"level":"ERROR"' "$work/server.log"; then
  echo "the server logged errors:"; grep '"level":"ERROR"' "$work/server.log" | head -20; exit 1
fi
echo "== metrics check passed ($(grep -c '^[a-z]' "$work/metrics.txt") samples)"
