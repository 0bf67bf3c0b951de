"""The refresh cookie (REFRESH_TOKEN_COOKIE=true) end to end: the real binary, a real Chromium.

usage: python scripts/cookie_browser_check.py BINARY

Starts the binary in cookie mode on a fresh SQLite database, with one SPA origin listed in
CORS_ORIGINS (http://127.0.0.1:<another port>: cross-origin to the API, but the same site, so the
SameSite=Strict cookie goes along), and serves a tiny SPA there. Then, in headless Chromium:
  * login from the SPA with `credentials: "include"`: 200, an access token and no refresh_token
    in the body, CORS with credentials for the SPA's origin, and in the browser's cookie jar a
    refresh_token cookie for 127.0.0.1: HttpOnly, Secure, SameSite=Strict, Path=/api/v1/users,
    living as long as the session; the page's script cannot read it (document.cookie, even on a
    page under /api/v1/users);
  * /refresh from the SPA with no body: the browser sends the cookie, 200, a new access token,
    no refresh_token in the body, the cookie rotated; /me and /me/sessions with the new token
    (one session, current, the browser's user agent and 127.0.0.1);
  * /logout: 204, the cookie leaves the jar, /refresh then gets 401;
  * logged in again: a page on an unlisted same-site origin (127.0.0.1, another port) sends the
    cookie to /refresh and the server answers 403 (seen in the server's log and on the wire;
    the page itself gets nothing, CORS does not list it); a cross-site page (localhost) does not
    even send the cookie; outside a browser, the cookie with an Origin of http://evil.example or
    with no Origin gets 403; none of these spends the cookie: past the 10 s grace window (when a
    spent one would end the session) the SPA and then the service's own origin refresh with it;
  * the SPA's page has no script error and no console error but the expected 401 (a CORS
    error there would mean the credentials handshake failed); the server logs no error.
Prints one line per check; exits non-zero at the first failure, saying what failed.
"""

import http.server
import json
import os
import re
import secrets
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from playwright.sync_api import Error as BrowserError
from playwright.sync_api import sync_playwright

# The same browser, started the same way, as the Swagger UI check.
from browser_check import CHROMIUM_ARGS

PASSWORD = "MyStrongPass123"
COOKIE = "refresh_token"
COOKIE_PATH = "/api/v1/users"
LOGIN = "/api/v1/users/login"
REFRESH = "/api/v1/users/refresh"
LOGOUT = "/api/v1/users/logout"
ME = "/api/v1/users/me"
SESSIONS = "/api/v1/users/me/sessions"
# Within this many seconds of a rotation the old refresh token still gets a pair (API.md); after
# it, a spent one ends the session. Waiting it out shows the refused requests spent nothing.
GRACE_SECONDS = 10
# A page of the SPA's origin inside the cookie's path: there document.cookie would show the
# cookie if it were not HttpOnly (cookies do not tell ports apart).
PROBE_PAGE = COOKIE_PATH + "/probe.html"

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cookie check SPA</title></head>
<body><p id="status">loading</p><script src="/app.js"></script></body></html>
"""

# Everything the test does in the page goes through these; each answer is
# {status, body, type} or, when the browser gives the page nothing, {error}.
APP_JS = """"use strict";
const API = %s;
async function call(method, path, opts) {
  opts = opts || {};
  const init = { method: method, credentials: "include", headers: {} };
  if (opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  if (opts.token) init.headers["Authorization"] = "Bearer " + opts.token;
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (e) {
    return { error: String(e) };
  }
  const text = await response.text();
  let body = text;
  try { body = text ? JSON.parse(text) : null; } catch (e) { /* not JSON: keep the text */ }
  return { status: response.status, body: body, type: response.type };
}
window.spa = {
  login: (email, password) => call("POST", "/api/v1/users/login", { body: { email, password } }),
  refresh: () => call("POST", "/api/v1/users/refresh"),
  me: (token) => call("GET", "/api/v1/users/me", { token }),
  sessions: (token) => call("GET", "/api/v1/users/me/sessions", { token }),
  logout: (token) => call("POST", "/api/v1/users/logout", { token }),
  cookies: () => document.cookie,
};
document.getElementById("status").textContent = "ready";
"""


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def ok(message):
    print(f"ok  {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain(base, method, path, body=None, headers=None):
    """A request outside the browser: (status, headers, JSON body or text)."""
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, answer_headers, raw = e.code, e.headers, e.read()
    try:
        answer = json.loads(raw) if raw else None
    except ValueError:
        answer = raw.decode(errors="replace")
    return status, answer_headers, answer


class Site:
    """A static origin on loopback (a thread of http.server) serving generated files."""

    def __init__(self, host, files):
        self.port = free_port()
        self.origin = f"http://{host}:{self.port}"
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                    return
                found = files.get(path)
                if found is None:
                    self.send_error(404)
                    return
                content_type, content = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def spa_files(api):
    index = ("text/html; charset=utf-8", INDEX_HTML.encode())
    return {
        "/": index,
        "/index.html": index,
        PROBE_PAGE: index,
        "/app.js": ("text/javascript; charset=utf-8", (APP_JS % json.dumps(api)).encode()),
    }


class ServerLog:
    """The server's JSON log: one "request finished" line per request."""

    def __init__(self, path):
        self.path = path

    def lines(self):
        with open(self.path, errors="replace") as f:
            return f.readlines()

    def mark(self):
        # The server writes its log out every 100 ms: wait for the lines of the requests before
        # the mark to be there, so that none of them is counted as coming after it.
        time.sleep(0.3)
        return len(self.lines())

    def requests_since(self, mark):
        """[(method, path, status)] of the requests finished after `mark`."""
        found = []
        for line in self.lines()[mark:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "request finished":
                span = entry.get("span") or {}
                found.append((span.get("method"), span.get("path"), entry.get("status")))
        return found

    def wait_for(self, mark, method, path, timeout=10):
        """The statuses of the requests `method path` after `mark`, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = [s for m, p, s in self.requests_since(mark) if m == method and p == path]
            if statuses or time.monotonic() > deadline:
                return statuses
            time.sleep(0.1)

    def errors(self):
        return [l for l in self.lines() if '"level":"ERROR"' in l]


def start_server(binary, work, spa_origin):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=f"sqlite:///{work}/app.db",
        BCRYPT_COST="4",
        JWT_SECRET="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(48)),
        REFRESH_TOKEN_COOKIE="true",
        PUBLIC_URL=base,
        CORS_ORIGINS=spa_origin,
        LOG_FORMAT="json",
        RUST_LOG="info",
    )
    log = open(os.path.join(work, "server.log"), "wb")
    proc = subprocess.Popen([binary], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        check(proc.poll() is None, f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health/ready", timeout=2) as response:
                if response.status == 200:
                    return proc, base
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise Failure(f"{base}/health/ready did not answer 200 within 30 s")


class Wire:
    """What Chromium itself sent and got for one page, through the DevTools protocol: the
    request headers as sent (cookies included) and the response status and headers as
    received, even when CORS then hides the response from the page."""

    def __init__(self, context, page):
        self.page = page
        self.sent = {}
        self.got = {}
        self.urls = {}
        cdp = context.new_cdp_session(page)
        cdp.on("Network.requestWillBeSent", self._request)
        cdp.on("Network.requestWillBeSentExtraInfo", self._sent)
        cdp.on("Network.responseReceivedExtraInfo", self._got)
        cdp.send("Network.enable")

    def _request(self, event):
        self.urls[event["requestId"]] = (event["request"]["method"], event["request"]["url"])

    def _sent(self, event):
        self.sent[event["requestId"]] = {k.lower(): v for k, v in event["headers"].items()}

    def _got(self, event):
        headers = {k.lower(): v for k, v in event["headers"].items()}
        self.got[event["requestId"]] = (event["statusCode"], headers)

    def exchanges(self, method, url, answered=False, timeout=5):
        """[(request headers, (status, response headers) or None)] for `method url`, once
        Chromium has reported the headers it sent for each, and with `answered` the headers it
        received (its events come in on their own)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [
                (self.sent.get(rid), self.got.get(rid))
                for rid, (m, u) in list(self.urls.items())
                if m == method and u == url
            ]
            complete = all(sent is not None and (got is not None or not answered) for sent, got in found)
            if (found and complete) or time.monotonic() > deadline:
                return found
            self.page.wait_for_timeout(50)  # lets Playwright deliver the events


class Spa:
    """A page of one origin in the browser, its script driven by the test."""

    def __init__(self, context, origin, path="/"):
        self.origin = origin
        self.page = context.new_page()
        self.problems = []
        self.may_fail = set()
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("console", self._console)
        self.wire = Wire(context, self.page)
        self.page.goto(origin + path)
        self.page.locator("#status", has_text="ready").wait_for(timeout=15_000)

    def _console(self, message):
        if message.type != "error":
            return
        url = message.location.get("url")
        if message.text.startswith("Failed to load resource") and url in self.may_fail:
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def may_fail_to_load(self, url):
        """A request the check expects to fail: Chromium's console error for it ("Failed to load
        resource") is no failure. It may come in after the call returns, so the URL stays allowed;
        every later call to it checks its status anyway, and a CORS error is never allowed."""
        self.may_fail.add(url)

    def call(self, what, *args):
        return self.page.evaluate(f"([args]) => window.spa.{what}(...args)", [list(args)])

    def call_watched(self, method, url, what, *args):
        """(the page's answer, what went over the wire: {request, sent, status, headers}), the
        answer one the page could read (else a failure saying what Chromium received)."""
        before = len(self.wire.exchanges(method, url, timeout=0))
        answer = self.call(what, *args)
        found = self.wire.exchanges(method, url, answered=True)[before:]
        check(len(found) == 1, f"{method} {url} from {self.origin}: {len(found)} requests on the wire: {found}")
        sent, got = found[0]
        status, headers = got if got else (None, {})
        exchange = {"request": f"{method} {url} (Origin {self.origin})", "sent": sent, "status": status, "headers": headers}
        if "error" in answer:
            preflights = self.wire.exchanges("OPTIONS", url, answered=True, timeout=0)
            preflight = f"; the preflight: {preflights[-1][1]}" if preflights else ""
            raise Failure(
                f"{exchange['request']}: the page got {answer['error']!r}; Chromium received status {status} "
                f"with headers {headers}{preflight}; console: {self.problems}"
            )
        return answer, exchange

    def assert_clean(self, what):
        check(not self.problems, f"{what}: {self.problems}")


def jar_cookie(context, api):
    found = [c for c in context.cookies(api + COOKIE_PATH) if c["name"] == COOKIE]
    check(len(found) <= 1, f"more than one {COOKIE} cookie in the jar: {found}")
    return found[0] if found else None


def check_jar_cookie(context, api, what, lifetime_ends=None):
    """The refresh cookie in Chromium's jar, with the attributes the API promises."""
    cookie = jar_cookie(context, api)
    check(cookie is not None, f"{what}: no {COOKIE} cookie in the browser's jar: {context.cookies()}")
    expected = {"domain": "127.0.0.1", "path": COOKIE_PATH, "httpOnly": True, "secure": True, "sameSite": "Strict"}
    wrong = {k: cookie.get(k) for k, v in expected.items() if cookie.get(k) != v}
    check(not wrong, f"{what}: the jar's {COOKIE} cookie has {wrong}, expected {expected}: {cookie}")
    check(cookie["expires"] > time.time() + 60, f"{what}: the cookie is a session cookie or about to expire: {cookie}")
    if lifetime_ends is not None:
        check(
            abs(cookie["expires"] - lifetime_ends) <= 10,
            f"{what}: the cookie expires at {cookie['expires']:.0f}, the session at {lifetime_ends:.0f}",
        )
    return cookie


def check_set_cookie(exchange, what, clears=False):
    """The Set-Cookie of a response the SPA got, as Chromium received it."""
    headers = exchange["headers"]
    set_cookie = headers.get("set-cookie", "")
    context = f"{what}: {exchange['request']} answered {exchange['status']} with headers {headers}"
    check(set_cookie.startswith(COOKIE + "=") and "\n" not in set_cookie, f"{context}: not one {COOKIE} Set-Cookie")
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in set_cookie.split(";")[1:]}
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", f"Path={COOKIE_PATH}"]:
        name = attribute.split("=")[0].lower()
        check(attributes.get(name, "").lower() == attribute.lower(), f"{context}: Set-Cookie lacks {attribute}")
    max_age = re.fullmatch(r"(?i)max-age=(\d+)", attributes.get("max-age", ""))
    check(max_age, f"{context}: Set-Cookie has no Max-Age")
    if clears:
        check(int(max_age.group(1)) == 0, f"{context}: Set-Cookie does not clear the cookie (Max-Age {max_age.group(1)})")
    else:
        check(int(max_age.group(1)) > 60, f"{context}: Set-Cookie Max-Age is {max_age.group(1)}")
    return context, headers


def check_cors(context, headers, origin):
    check(headers.get("access-control-allow-origin") == origin, f"{context}: Access-Control-Allow-Origin is not {origin}")
    check(headers.get("access-control-allow-credentials") == "true", f"{context}: no Access-Control-Allow-Credentials: true")


def check_token(answer, what, status=200):
    check(answer.get("status") == status, f"{what}: the page got {answer}")
    body = answer.get("body")
    check(isinstance(body, dict) and body.get("access_token"), f"{what}: no access_token in {body}")
    check("refresh_token" not in body, f"{what}: the body has a refresh_token in cookie mode: {body}")
    check(body.get("token_type") == "bearer", f"{what}: token_type is {body.get('token_type')!r}")
    return body["access_token"]


def epoch(rfc3339):
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()


def the_session(spa, token, what):
    answer = spa.call("sessions", token)
    check(answer.get("status") == 200, f"{what}: GET {SESSIONS} gave {answer}")
    sessions = answer["body"]
    check(isinstance(sessions, list) and len(sessions) == 1, f"{what}: expected one session, got {sessions}")
    session = sessions[0]
    check(session.get("current") is True, f"{what}: the session is not current: {session}")
    check("Chrome" in (session.get("user_agent") or ""), f"{what}: the session's user_agent is {session.get('user_agent')!r}")
    check(session.get("ip") == "127.0.0.1", f"{what}: the session's ip is {session.get('ip')!r}")
    return session


def browser_part(browser, api, spa_site, same_site, cross_site, log, address):
    login_url, refresh_url, logout_url = api + LOGIN, api + REFRESH, api + LOGOUT
    context = browser.new_context()
    spa = Spa(context, spa_site.origin)
    ok(f"SPA page loaded from {spa.origin} (listed in CORS_ORIGINS; the API is at {api})")

    # Login.
    answer, exchange = spa.call_watched("POST", login_url, "login", address, PASSWORD)
    first = check_token(answer, f"POST {LOGIN} from the SPA")
    where, headers = check_set_cookie(exchange, "login")
    check_cors(where, headers, spa.origin)
    check("no-store" in headers.get("cache-control", ""), f"{where}: no Cache-Control: no-store")
    ok("login from the SPA: 200, access_token, no refresh_token in the body; "
       "Set-Cookie HttpOnly; Secure; SameSite=Strict; Path=/api/v1/users; CORS with credentials")
    cookie = check_jar_cookie(context, api, "after login")
    ok(f"cookie jar: {COOKIE} for 127.0.0.1, httpOnly, secure, sameSite Strict, path {COOKIE_PATH}, "
       f"expires in {(cookie['expires'] - time.time()) / 86400:.1f} days")
    seen = spa.call("cookies")
    check(cookie["value"] not in seen and COOKIE not in seen, f"document.cookie on the SPA shows {seen!r}")
    probe = Spa(context, spa_site.origin, PROBE_PAGE)
    seen = probe.call("cookies")
    check(cookie["value"] not in seen and COOKIE not in seen, f"document.cookie on {PROBE_PAGE} shows {seen!r}")
    probe.assert_clean(PROBE_PAGE)
    probe.page.close()
    ok(f"document.cookie does not show the refresh token (on the SPA, nor on a page under {COOKIE_PATH})")

    # Refresh with the cookie, no body.
    answer, exchange = spa.call_watched("POST", refresh_url, "refresh")
    second = check_token(answer, f"POST {REFRESH} (no body) from the SPA")
    check(second != first, "the refreshed access token is the same as the first")
    where, headers = check_set_cookie(exchange, "refresh")
    check_cors(where, headers, spa.origin)
    sent = exchange["sent"]
    check(f"{COOKIE}={cookie['value']}" in sent.get("cookie", ""), f"the SPA's refresh did not carry the cookie: request headers {sent}")
    check(sent.get("origin") == spa.origin, f"the SPA's refresh had Origin {sent.get('origin')!r}")
    rotated = check_jar_cookie(context, api, "after refresh")
    check(rotated["value"] != cookie["value"], "the refresh did not rotate the cookie")
    ok("refresh from the SPA: the browser sent the cookie, 200, a new access_token, no refresh_token "
       "in the body, the cookie rotated")

    answer = spa.call("me", second)
    check(answer.get("status") == 200 and isinstance(answer["body"], dict) and answer["body"].get("email") == address, f"GET {ME} with the new token: {answer}")
    ok(f"GET {ME} with the refreshed token: 200, {address}")
    session = the_session(spa, second, "after refresh")
    check_jar_cookie(context, api, "after refresh", lifetime_ends=epoch(session["expires_at"]))
    browser_name = re.search(r"\S*Chrome/\S+", session["user_agent"]).group(0)
    ok(f"GET {SESSIONS}: one session, current, user_agent with {browser_name}, ip 127.0.0.1; "
       "the cookie lives as long as it")

    # Logout.
    answer, exchange = spa.call_watched("POST", logout_url, "logout", second)
    check(answer.get("status") == 204, f"POST {LOGOUT} from the SPA: {answer}")
    where, headers = check_set_cookie(exchange, "logout", clears=True)
    check_cors(where, headers, spa.origin)
    check(jar_cookie(context, api) is None, f"after logout the cookie is still in the jar: {jar_cookie(context, api)}")
    ok("logout from the SPA: 204, Set-Cookie Max-Age=0, the cookie is gone from the jar")
    spa.may_fail_to_load(refresh_url)
    answer = spa.call("refresh")
    check(answer.get("status") == 401, f"POST {REFRESH} after logout: the page got {answer}")
    ok("refresh after logout: 401")
    spa.assert_clean("the SPA page")

    # Logged in again: the cookie exists; other origins must not get to use it.
    answer, exchange = spa.call_watched("POST", login_url, "login", address, PASSWORD)
    third = check_token(answer, "the second login from the SPA")
    cookie = check_jar_cookie(context, api, "after the second login")
    session = the_session(spa, third, "after the second login")
    ok("logged in again from the SPA: the cookie is back in the jar")

    first_refused = time.monotonic()
    for site, sends_cookie in [(same_site, True), (cross_site, False)]:
        other = Spa(context, site.origin)
        mark = log.mark()
        answer = other.call("refresh")
        check("error" in answer, f"{site.origin} (not listed) got an answer it can read from POST {REFRESH}: {answer}")
        statuses = log.wait_for(mark, "POST", REFRESH)
        exchanges = other.wire.exchanges("POST", refresh_url)
        check(len(exchanges) == 1, f"{site.origin}: expected one refresh request on the wire, got {exchanges}")
        sent, got = exchanges[0]
        check(sent is not None, f"{site.origin}: Chromium reported no request headers for the refresh")
        carried = f"{COOKIE}={cookie['value']}" in sent.get("cookie", "")
        check(sent.get("origin") == site.origin, f"{site.origin}: the refresh went with Origin {sent.get('origin')!r}")
        if sends_cookie:
            check(carried, f"{site.origin} is the same site, yet Chromium did not send the cookie: {sent}")
            check(statuses == [403], f"{site.origin} sent the cookie; the server's log shows {REFRESH} answered {statuses}, not [403]")
            check(got is not None and got[0] == 403, f"{site.origin}: on the wire the refresh answered {got}")
            check("set-cookie" not in got[1], f"{site.origin}: the 403 sets a cookie: {got[1]}")
            check("access-control-allow-origin" not in got[1], f"{site.origin}: the 403 allows the unlisted origin: {got[1]}")
            ok(f"{site.origin} (same site, not listed): the browser sent the cookie, the server answered 403 "
               f"(log and wire), the page got only {answer['error']!r}")
        else:
            check(not carried and COOKIE not in sent.get("cookie", ""), f"{site.origin} is another site, yet Chromium sent the cookie: {sent}")
            check(statuses in ([403], [401]), f"{site.origin}: the server's log shows {REFRESH} answered {statuses}")
            check(got is None or "set-cookie" not in got[1], f"{site.origin}: the answer sets a cookie: {got}")
            ok(f"{site.origin} (another site): SameSite=Strict kept the cookie home, the server answered "
               f"{statuses[0]}, the page got only {answer['error']!r}")
        other.page.close()
    after = jar_cookie(context, api)
    check(after is not None and after["value"] == cookie["value"], f"the refused refreshes changed the cookie in the jar: {after}")

    for origin in ["http://evil.example", None]:
        headers = {"Cookie": f"{COOKIE}={cookie['value']}"}
        if origin:
            headers["Origin"] = origin
        status, answer_headers, body = plain(api, "POST", REFRESH, headers=headers)
        shown = f"POST {REFRESH} with the cookie and {'Origin: ' + origin if origin else 'no Origin'}: {status} {dict(answer_headers)} {body}"
        check(status == 403, shown)
        check((answer_headers.get("Content-Type") or "").startswith("application/problem+json"), f"{shown}: not problem+json")
        check(answer_headers.get("Set-Cookie") is None, f"{shown}: sets a cookie")
        ok(f"outside the browser, the cookie with {'Origin: ' + origin if origin else 'no Origin'}: 403 problem+json")

    # Nothing above spent the cookie: past the grace window a spent one would end the session,
    # yet the SPA, then the service's own origin, still refresh with it.
    time.sleep(max(0.0, first_refused + GRACE_SECONDS + 1 - time.monotonic()))
    answer, exchange = spa.call_watched("POST", refresh_url, "refresh")
    fourth = check_token(answer, "the SPA's refresh after the refused ones")
    check_set_cookie(exchange, "the SPA's refresh after the refused ones")
    cookie = check_jar_cookie(context, api, "after the SPA's refresh after the refused ones")
    check(the_session(spa, fourth, "after the refused refreshes")["id"] == session["id"],
          "the session changed across the refused refreshes")
    ok(f"the refused requests spent nothing: {GRACE_SECONDS} s on, the SPA still refreshes with the cookie (same session)")
    own = context.new_page()
    own_wire = Wire(context, own)
    own.goto(api + "/health")
    answer = own.evaluate(
        """async (path) => { const r = await fetch(path, {method: "POST"});
                              return {status: r.status, body: await r.json()}; }""",
        REFRESH,
    )
    check_token(answer, f"POST {REFRESH} from the service's own origin {api}")
    sent = [h for h, _ in own_wire.exchanges("POST", refresh_url)]
    check(len(sent) == 1 and sent[0] and sent[0].get("origin") == api
          and f"{COOKIE}={cookie['value']}" in sent[0].get("cookie", ""),
          f"the own-origin refresh went without Origin {api} or the cookie: {sent}")
    own.close()
    check(check_jar_cookie(context, api, "after the own-origin refresh")["value"] != cookie["value"],
          "the own-origin refresh did not rotate the cookie")
    ok(f"refresh from the service's own origin ({api}): 200, the cookie rotated again")

    answer = spa.call("logout", fourth)
    check(answer.get("status") == 204, f"the final logout: {answer}")
    check(jar_cookie(context, api) is None, "after the final logout the cookie is still in the jar")
    spa.assert_clean("the SPA page")
    ok("the SPA page: no script error, no console error but the expected 401")
    context.close()


def main(binary):
    work = tempfile.mkdtemp(prefix="cookie-check-")
    proc = None
    # The three origins' files are filled in once the API's address is known.
    files = {}
    sites = []
    try:
        spa_site = Site("127.0.0.1", files)
        sites.append(spa_site)
        same_site = Site("127.0.0.1", files)
        sites.append(same_site)
        cross_site = Site("localhost", files)
        sites.append(cross_site)
        proc, api = start_server(binary, work, spa_site.origin)
        files.update(spa_files(api))
        log = ServerLog(os.path.join(work, "server.log"))
        print(f"server at {api} (REFRESH_TOKEN_COOKIE=true, CORS_ORIGINS={spa_site.origin})")

        address = f"cookie-check-{secrets.token_hex(4)}@example.com"
        status, _, body = plain(api, "POST", "/api/v1/users/register", {"email": address, "password": PASSWORD})
        check(status == 201, f"POST /api/v1/users/register: {status} {body}")
        ok(f"registered {address} over plain HTTP")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                browser_part(browser, api, spa_site, same_site, cross_site, log, address)
            finally:
                browser.close()
        errors = log.errors()
        check(not errors, "the server logged errors:\n" + "".join(errors[:20]))
        ok("the server logged no error")
    except (Failure, BrowserError) as failure:
        print(f"FAIL {failure}")
        path = os.path.join(work, "server.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                tail = f.readlines()[-30:]
            print("the server's last log lines:\n" + "".join(tail))
        return 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for site in sites:
            site.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("refresh cookie in the browser: passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(os.path.abspath(sys.argv[1])))
