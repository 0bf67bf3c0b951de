//! The two account pages the mails link to, `/account/verify-email` and
//! `/account/reset-password`, with their script and style: static files inside the binary.
//!
//! The link's `?token=` is read by the page's own script and sent only when the user submits the
//! form (mail scanners that follow links spend nothing); the server never puts it into the HTML,
//! so the query string is not even read here.

use bytes::Bytes;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

use crate::filters::{allow, get};

/// Everything from this origin only (the pages' script, style and API calls), and no inline
/// script or style; no `<base>`, no framing.
const POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const VERIFY_EMAIL: &str = include_str!("../../assets/account/verify-email.html");
const RESET_PASSWORD: &str = include_str!("../../assets/account/reset-password.html");
const SCRIPT: &str = include_str!("../../assets/account/account.js");
const STYLE: &str = include_str!("../../assets/account/account.css");

pub fn routes() -> BoxedFilter<(Response,)> {
    // GET /account/verify-email
    let verify_email = warp::path!("account" / "verify-email")
        .and(get().map(verify_email_page).or(allow("GET, HEAD")).unify());
    // GET /account/reset-password
    let reset_password = warp::path!("account" / "reset-password").and(
        get()
            .map(reset_password_page)
            .or(allow("GET, HEAD"))
            .unify(),
    );
    // GET /account/account.js
    let script = warp::path!("account" / "account.js").and(
        get()
            .map(|| asset(SCRIPT, "text/javascript; charset=utf-8"))
            .or(allow("GET, HEAD"))
            .unify(),
    );
    // GET /account/account.css
    let style = warp::path!("account" / "account.css").and(
        get()
            .map(|| asset(STYLE, "text/css; charset=utf-8"))
            .or(allow("GET, HEAD"))
            .unify(),
    );

    verify_email
        .or(reset_password)
        .unify()
        .or(script)
        .unify()
        .or(style)
        .unify()
        .boxed()
}

/// The page a verification mail links to (`?token=…`): a button that verifies the email.
///
/// Opening it spends nothing; the button POSTs the token to `/api/v1/users/email/verify`.
#[utoipa::path(
    get,
    path = "/account/verify-email",
    tag = "account",
    params(("token" = Option<String>, Query, description = "The token of the mailed link (read by the page's script)")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub(crate) fn verify_email_page() -> Response {
    page(VERIFY_EMAIL)
}

/// The page a reset mail links to (`?token=…`): a form for the new password.
///
/// Opening it spends nothing; the form POSTs to `/api/v1/users/password/reset`.
#[utoipa::path(
    get,
    path = "/account/reset-password",
    tag = "account",
    params(("token" = Option<String>, Query, description = "The token of the mailed link (read by the page's script)")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub(crate) fn reset_password_page() -> Response {
    page(RESET_PASSWORD)
}

/// A page: never cached (its address holds a token, and so may a cache's key), and its address
/// never sent on as a referrer.
fn page(html: &'static str) -> Response {
    let mut response = with_type(html, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The script and the style: not versioned in their paths, so cached only briefly.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = with_type(body, content_type);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn with_type(body: &'static str, content_type: &'static str) -> Response {
    let mut response = Response::new(Bytes::from_static(body.as_bytes()).into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    response
}
