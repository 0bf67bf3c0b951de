"""The mails and the account pages end to end: real SMTP, the real binary, a real Chromium.

usage: python scripts/mail_browser_check.py BINARY

Starts an SMTP catcher (aiosmtpd) on loopback and the binary on a fresh SQLite database that
sends its mail there, then, the way a user does:
  * registers, takes the verification link from the mail (the text part, and the same link in
    the HTML part), opens it in Chromium: loading the page verifies nothing; the button does;
  * asks for a password reset, opens the mail's link: a repeat that does not match is caught
    before anything is sent; the new password typed twice is set, the old session and the old
    password stop working, the new password logs in; the spent link then shows the service's 400;
  * on every page: no script error, no console error but the expected failed requests, no CSP
    violation, no request to another origin; and the server logs no error.
Exits non-zero at the first failure, saying what failed.
"""

import email
import email.policy
import html
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

from aiosmtpd.controller import Controller
from playwright.sync_api import Error as BrowserError
from playwright.sync_api import sync_playwright

# The same browser, started the same way, as the Swagger UI check.
from browser_check import CHROMIUM_ARGS

PASSWORD = "MyStrongPass123"
NEW_PASSWORD = "Fresh-Reset-Pass-742"
MAIL_TIMEOUT = 20
VERIFY_PATH = "/account/verify-email"
RESET_PATH = "/account/reset-password"

# Reported in the page before any of its own scripts run; the policy cannot block this one
# (Playwright injects it through the DevTools protocol).
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
    " at " + e.sourceFile + ":" + e.lineNumber);
});
"""


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Catcher:
    """An SMTP handler that keeps every mail it is given, parsed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"

    def wait_for(self, to, path, timeout=MAIL_TIMEOUT):
        """The first mail to `to` whose text part links to `path`: (link, message)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = list(self.messages)
            for rcpts, message in found:
                if to not in [r.lower() for r in rcpts] and to not in str(message["To"]).lower():
                    continue
                text = message.get_body(preferencelist=("plain",))
                if text is None:
                    continue
                lines = [l for l in text.get_content().splitlines() if f"{path}?token=" in l]
                if lines:
                    return link_in(lines[0], path), message
            time.sleep(0.2)
        subjects = [str(m["Subject"]) for _, m in found]
        raise Failure(f"no mail to {to} with a {path} link within {timeout} s (mails caught: {subjects})")


def link_in(line, path):
    found = re.search(r"https?://[^\s<>\"']+" + re.escape(path) + r"\?token=[^\s<>\"']+", line)
    check(found, f"no link in the mail's line {line!r}")
    return found.group(0)


def check_html_part(message, link):
    part = message.get_body(preferencelist=("html",))
    check(part is not None, f"the mail {message['Subject']!r} has no HTML part")
    hrefs = [html.unescape(h) for h in re.findall(r"href=\"([^\"]*)\"", part.get_content())]
    check(link in hrefs, f"the HTML part does not link to {link}; its links: {hrefs}")


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, token=None):
        """(status, JSON body or None)."""
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def expect(self, status, method, path, body=None, token=None):
        got, answer = self.call(method, path, body, token)
        check(got == status, f"{method} {path}: expected {status}, got {got}: {answer}")
        return answer

    def login(self, email_address, password):
        return self.call("POST", "/api/v1/users/login", {"email": email_address, "password": password})

    def token(self, email_address, password):
        status, answer = self.login(email_address, password)
        check(status == 200, f"login as {email_address}: {status} {answer}")
        return answer["access_token"]


class Watched:
    """A page in its own context, with what went wrong on it recorded."""

    def __init__(self, browser, base):
        self.base = base
        self.context = browser.new_context()
        self.context.add_init_script(CSP_LISTENER)
        self.page = self.context.new_page()
        self.problems = []
        self.posts = []
        # Chromium logs a console error for every failed request: those the check expects
        # (a problem it provoked; the favicon Chromium asks for by itself) are not failures.
        self.may_fail = {base + "/favicon.ico"}
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)

    def _console(self, message):
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and message.location.get("url") in self.may_fail:
            return
        self.problems.append(f"console error: {message.text} ({message.location.get('url')})")

    def _request(self, request):
        if not request.url.startswith(self.base + "/"):
            self.problems.append(f"request to another origin: {request.method} {request.url}")
        if request.method != "GET":
            self.posts.append(request.url)

    def open(self, url):
        self.page.goto(url)
        self.page.wait_for_load_state("networkidle")

    def status_text(self):
        return " ".join(self.page.locator("#status").inner_text().split())

    def wait_status(self, kind, timeout=15_000):
        self.page.locator(f"#status.status-{kind}").wait_for(timeout=timeout)
        return self.status_text()

    def assert_clean(self, what):
        violations = self.page.evaluate("window.__cspViolations")
        check(not violations, f"{what}: CSP violations: {violations}")
        check(not self.problems, f"{what}: {self.problems}")

    def close(self):
        self.context.close()


def start_server(binary, work, smtp_port):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{work}/app.db",
        BCRYPT_COST="4",
        PORT=str(port),
        HOST="127.0.0.1",
        PUBLIC_URL=base,
        SMTP_URL=f"smtp://127.0.0.1:{smtp_port}?tls=none",
        JWT_SECRET="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(48)),
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


def verify_email(browser, api, catcher, address):
    api.expect(201, "POST", "/api/v1/users/register", {"email": address, "password": PASSWORD})
    link, message = catcher.wait_for(address, VERIFY_PATH)
    check(link.startswith(api.base + VERIFY_PATH + "?token="), f"the verification link {link} is not on {api.base}")
    check_html_part(message, link)
    print(f"verification mail: {message['Subject']!r}, the same link in its text and HTML parts")
    token = api.token(address, PASSWORD)

    w = Watched(browser, api.base)
    w.open(link)
    button = w.page.get_by_role("button", name="Verify my email address")
    check(button.is_enabled(), f"the verify button is disabled: {w.status_text()!r}")
    check(not w.posts, f"loading the page sent {w.posts}")
    me = api.expect(200, "GET", "/api/v1/users/me", token=token)
    check(me.get("email_verified") is False, f"loading the page verified the address: {me}")
    print("verify page: loading it verified nothing")

    # The keyboard alone: focus the button, press Enter.
    button.focus()
    w.page.keyboard.press("Enter")
    said = w.wait_status("success")
    expected = f"Your email address {address} is verified. You can close this page."
    check(said == expected, f"the verify page said {said!r}, not {expected!r}")
    check(w.page.locator("#account-form").is_hidden(), "the verify form is still shown after success")
    check("token=" not in w.page.url, f"the token is still in the address bar: {w.page.url}")
    me = api.expect(200, "GET", "/api/v1/users/me", token=token)
    check(me.get("email_verified") is True, f"after the click /me says {me}")
    w.assert_clean("verify page")
    w.close()
    print("verify page: the click verified the address, the token left the address bar")


def reset_password(browser, api, catcher, address):
    old_token = api.token(address, PASSWORD)
    api.expect(202, "POST", "/api/v1/users/password/forgot", {"email": address})
    link, message = catcher.wait_for(address, RESET_PATH)
    check(link.startswith(api.base + RESET_PATH + "?token="), f"the reset link {link} is not on {api.base}")
    check_html_part(message, link)
    print(f"reset mail: {message['Subject']!r}, the same link in its text and HTML parts")

    endpoint = api.base + "/api/v1/users/password/reset"
    w = Watched(browser, api.base)
    w.open(link)
    submit = w.page.get_by_role("button", name="Change my password")
    check(submit.is_enabled(), f"the reset form is disabled: {w.status_text()!r}")
    w.page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    w.page.get_by_label("Repeat the new password").fill(NEW_PASSWORD + "x")
    submit.click()
    said = w.wait_status("error")
    check("do not match" in said, f"a mismatched repeat gave {said!r}")
    check(not w.posts, f"a mismatched repeat was sent: {w.posts}")
    print(f"reset page: a mismatched repeat is caught before sending: {said!r}")

    w.page.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
    with w.page.expect_response(endpoint) as answer:
        submit.click()
    check(answer.value.status == 204, f"the reset answered {answer.value.status}")
    said = w.wait_status("success")
    expected = "Your password has been changed. Log in with your new password."
    check(said == expected, f"the reset page said {said!r}, not {expected!r}")
    check(w.page.locator("#account-form").is_hidden(), "the reset form is still shown after success")
    check("token=" not in w.page.url, f"the token is still in the address bar: {w.page.url}")
    w.assert_clean("reset page")
    w.close()
    print("reset page: the new password was set, the token left the address bar")

    api.expect(401, "GET", "/api/v1/users/me", token=old_token)
    status, _ = api.login(address, PASSWORD)
    check(status == 401, f"the old password still logs in: {status}")
    status, _ = api.login(address, NEW_PASSWORD)
    check(status == 200, f"the new password does not log in: {status}")
    print("after the reset: the old session and the old password get 401, the new password logs in")

    # The link a second time: the page shows the service's own answer.
    w = Watched(browser, api.base)
    w.may_fail.add(endpoint)
    w.open(link)
    w.page.get_by_label("New password", exact=True).fill(NEW_PASSWORD + "2")
    w.page.get_by_label("Repeat the new password").fill(NEW_PASSWORD + "2")
    with w.page.expect_response(endpoint) as answer:
        w.page.get_by_role("button", name="Change my password").click()
    check(answer.value.status == 400, f"the spent link answered {answer.value.status}")
    detail = answer.value.json()["detail"]
    said = w.wait_status("error")
    check(detail in said, f"the spent link's page said {said!r}, not the detail {detail!r}")
    check(w.page.locator("#account-form").is_visible(), "the form went away after an error")
    w.assert_clean("reset page, spent link")
    w.close()
    print(f"reset page, the link again: shows the 400 detail {detail!r}")


def logged_errors(path):
    """The server's ERROR lines (in either log format)."""
    with open(path, errors="replace") as f:
        return [l for l in f if '"level":"ERROR"' in l or re.search(r"\sERROR\s", l)]


def main(binary):
    catcher = Catcher()
    smtp = Controller(catcher, hostname="127.0.0.1", port=free_port())
    smtp.start()
    work = tempfile.mkdtemp(prefix="mail-check-")
    proc = None
    try:
        proc, base = start_server(binary, work, smtp.port)
        print(f"server at {base}, SMTP catcher at 127.0.0.1:{smtp.port}")
        api = Api(base)
        address = f"mail-check-{secrets.token_hex(4)}@example.com"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                verify_email(browser, api, catcher, address)
                reset_password(browser, api, catcher, address)
            finally:
                browser.close()
        errors = logged_errors(os.path.join(work, "server.log"))
        check(not errors, "the server logged errors:\n" + "".join(errors[:20]))
    except (Failure, BrowserError) as failure:
        print(f"FAIL {failure}")
        log = os.path.join(work, "server.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
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
        smtp.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("mail and account pages: passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(os.path.abspath(sys.argv[1])))
