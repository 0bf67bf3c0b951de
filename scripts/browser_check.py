"""Render /docs and /redoc in a real Chromium and use Swagger UI the way a user does.

usage: python scripts/browser_check.py http://127.0.0.1:PORT

Checks, with no network but the server's own origin:
  * /docs (Swagger UI) and /redoc (ReDoc) render, and every path of the contract appears on both;
  * neither page requests anything from another origin, and no page script errors;
  * in Swagger UI, "Authorize" with a bearer token and "Try it out" on GET /api/v1/users/me
    answers 200 with that user.
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


def main(base):
    failures = []
    email = f"browser{int(time.time() * 1000)}@example.com"
    post(base, "/api/v1/users/register", {"email": email, "password": "MyStrongPass123"})
    token = post(base, "/api/v1/users/login", {"email": email, "password": "MyStrongPass123"})["access_token"]

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
                page.fill(".auth-container input", token)
                page.click(".auth-btn-wrapper button.authorize")
                page.click("button.btn-done")
                op = page.locator("#operations-users-me")
                op.locator(".opblock-summary").click()
                op.locator("button.try-out__btn").click()
                op.locator("button.execute").click()
                status_cell = op.locator(".live-responses-table tbody .response-col_status").first
                status_cell.wait_for(timeout=30_000)
                status = status_cell.inner_text().strip()
                body = op.locator(".live-responses-table .microlight").first.inner_text()
                if status != "200" or email not in body:
                    failures.append(f"/docs: Try it out on GET /api/v1/users/me gave {status}: {body[:200]}")
                else:
                    print("/docs: Authorize + Try it out on GET /api/v1/users/me: 200 with the user")
            page.close()
        browser.close()

    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1].rstrip("/")))
