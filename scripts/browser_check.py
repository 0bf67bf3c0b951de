"""Render /docs and /redoc in a real Chromium and use Swagger UI the way a user does.

usage: python scripts/browser_check.py http://127.0.0.1:PORT

Checks, with no network but the server's own origin:
  * /docs (Swagger UI) and /redoc (ReDoc) render, and every path of the contract appears on both;
  * neither page requests anything from another origin, and no page script errors;
  * in Swagger UI, "Authorize" with a pasted bearer token and "Try it out" on
    GET /api/v1/users/me answers 200 with that user;
  * in Swagger UI, "Authorize" with another user's email and password (the OAuth2 password flow:
    Swagger UI posts the form to the login itself) and "Try it out" on GET /api/v1/users/me
    answers 200 with that user, the token sent as a bearer token, and no oauth2-redirect.html.
Exits non-zero, saying what failed, otherwise.
"""

import json
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

CONTRACT_PATHS = [
    "/api/v1/users/register",
    "/api/v1/users/login",
    "/api/v1/users/login/mfa",
    "/api/v1/users/me/mfa/totp",
    "/api/v1/users/me/mfa/totp/confirm",
    "/api/v1/users/me/mfa/recovery-codes",
    "/api/v1/admin/users/{id}/mfa",
    "/api/v1/users/refresh",
    "/api/v1/users/logout",
    "/api/v1/users/me",
    "/api/v1/users/me/password",
    "/api/v1/users/email/verify",
    "/api/v1/users/me/email/verification",
    "/api/v1/users/password/forgot",
    "/api/v1/users/password/reset",
    "/account/verify-email",
    "/account/reset-password",
    "/api/v1/admin/users",
    "/api/v1/admin/users/{id}",
    "/api/v1/users/me/sessions",
    "/api/v1/users/me/sessions/{id}",
    "/api/v1/admin/users/{id}/sessions",
    "/api/v1/admin/users/{id}/password-reset",
    "/health",
    "/health/ready",
    "/.well-known/jwks.json",
    "/openapi.json",
    "/docs",
    "/redoc",
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def post(base, path, body):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


def try_me(page):
    """"Try it out" then Execute on GET /api/v1/users/me: the status shown, and the body."""
    op = page.locator("#operations-users-me")
    op.locator(".opblock-summary").click()
    op.locator("button.try-out__btn").click()
    op.locator("button.execute").click()
    status_cell = op.locator(".live-responses-table tbody .response-col_status").first
    status_cell.wait_for(timeout=30_000)
    status = status_cell.inner_text().strip()
    body = op.locator(".live-responses-table .microlight").first.inner_text()
    return status, body


def oauth2_check(browser, base, email, password):
    """Authorize through the OAuth2 part of the dialog (username = the email), on a page of its
    own (a new context: nothing persisted from the bearer check), then GET /me."""
    failures = []
    page = browser.new_page()
    errors, seen = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: seen.append((r.method, r.url, r.headers.get("authorization"))))
    page.goto(base + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    page.click("button.authorize")
    # Found by heading: once authorized, a part shows its values as text, not inputs.
    oauth = page.locator(".auth-container").filter(has=page.locator("h4", has_text="(OAuth2, password)"))
    description = oauth.inner_text()
    if "username is the account's email" not in description:
        failures.append(f"/docs: the OAuth2 part of Authorize does not say what the username is: {description[:300]}")
    if "/api/v1/users/login" not in description:
        failures.append(f"/docs: the OAuth2 part of Authorize does not show the token URL: {description[:300]}")
    oauth.locator("#oauth_username").fill(email)
    oauth.locator("#oauth_password").fill(password)
    oauth.locator("button.authorize").click()
    try:
        oauth.get_by_role("button", name="Remove authorization").wait_for(timeout=30_000)
    except Exception:
        shown = oauth.locator(".errors").all_inner_texts()
        failures.append(f"/docs: OAuth2 Authorize did not authorize; the dialog says {shown}")
        page.close()
        return failures
    oauth.locator("button.btn-done").click()
    status, body = try_me(page)
    token_requests = [(m, u) for m, u, _ in seen if u.startswith(base + "/api/v1/users/login")]
    me_requests = [a for m, u, a in seen if u == base + "/api/v1/users/me"]
    if token_requests != [("POST", base + "/api/v1/users/login")]:
        failures.append(f"/docs: OAuth2 Authorize made these login requests: {token_requests}")
    if any("oauth2-redirect" in u for _, u, _ in seen):
        failures.append("/docs: the password flow opened oauth2-redirect.html")
    if not me_requests or not all(a and a.startswith("Bearer ") for a in me_requests):
        failures.append(f"/docs: GET /me after OAuth2 Authorize sent Authorization {me_requests}")
    if status != "200" or email not in body:
        failures.append(f"/docs: after OAuth2 Authorize, Try it out on GET /api/v1/users/me gave {status}: {body[:200]}")
    elif not failures:
        print("/docs: OAuth2 Authorize (email + password) + Try it out on GET /api/v1/users/me: 200 with the user")
    if errors:
        failures.append(f"/docs (OAuth2): script errors: {errors}")
    page.close()
    return failures


def main(base):
    failures = []
    stamp = int(time.time() * 1000)
    email = f"browser{stamp}@example.com"
    post(base, "/api/v1/users/register", {"email": email, "password": "MyStrongPass123"})
    token = post(base, "/api/v1/users/login", {"email": email, "password": "MyStrongPass123"})["access_token"]
    # A second user for the OAuth2 flow: the /me it shows can only come from its own login.
    oauth_email = f"browser-oauth{stamp}@example.com"
    post(base, "/api/v1/users/register", {"email": oauth_email, "password": "MyStrongPass123"})

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for page_path, ready in [("/docs", ".opblock"), ("/redoc", "[data-section-id]")]:
            page = browser.new_page()
            outside, errors = [], []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} for {r.url}") if r.status >= 400 else None)
            page.goto(base + page_path)
            page.wait_for_selector(ready, timeout=30_000)
            page.wait_for_load_state("networkidle")
            html = page.content()
            missing = [p for p in CONTRACT_PATHS if p not in html]
            if missing:
                failures.append(f"{page_path}: these paths do not appear in the rendered page: {missing}")
            if outside:
                failures.append(f"{page_path}: requests to another origin: {outside}")
            if errors:
                failures.append(f"{page_path}: script errors: {errors}")
            print(f"{page_path}: rendered, {len(CONTRACT_PATHS) - len(missing)}/{len(CONTRACT_PATHS)} paths")

            if page_path == "/docs":
                page.click("button.authorize")
                bearer = page.locator(".auth-container").filter(has=page.locator("h4", has_text="(http, Bearer)"))
                bearer.locator("#auth-bearer-value").fill(token)
                bearer.locator("button.authorize").click()
                bearer.locator("button.btn-done").click()
                status, body = try_me(page)
                if status != "200" or email not in body:
                    failures.append(f"/docs: Try it out on GET /api/v1/users/me gave {status}: {body[:200]}")
                else:
                    print("/docs: Authorize (pasted token) + Try it out on GET /api/v1/users/me: 200 with the user")
            page.close()
        failures += oauth2_check(browser, base, oauth_email, "MyStrongPass123")
        browser.close()

    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1].rstrip("/")))
