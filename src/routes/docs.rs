//! The API's documentation: `/openapi.json`, Swagger UI at `/docs` and ReDoc at `/redoc`, with
//! every asset inside the binary (no page loads anything from another origin).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::error::ApiError;
use crate::filters::{allow, get};

/// Only this origin: scripts and styles from here, images from here or inline, no frames.
/// (ReDoc's bundle would fetch its logo from a CDN; this keeps it from trying.)
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const SWAGGER_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>warp-auth-api – Swagger UI</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/docs/index.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="utf-8"></script>
    <script src="/docs/swagger-ui-standalone-preset.js" charset="utf-8"></script>
    <script src="/docs/swagger-initializer.js" charset="utf-8"></script>
  </body>
</html>
"#;

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>warp-auth-api – ReDoc</title>
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js" charset="utf-8"></script>
  </body>
</html>
"#;

/// The committed OpenAPI document, served as is (a test keeps it equal to the generated one).
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

pub fn routes() -> BoxedFilter<(Response,)> {
    let config = Arc::new(
        utoipa_swagger_ui::Config::from("/openapi.json")
            // The default validator badge would call validator.swagger.io.
            .validator_url("none")
            .persist_authorization(true)
            .display_request_duration(true),
    );

    // GET /openapi.json
    let spec =
        warp::path!("openapi.json").and(get().map(openapi_json).or(allow("GET, HEAD")).unify());
    // GET /docs
    let swagger = warp::path!("docs").and(get().map(swagger_ui).or(allow("GET, HEAD")).unify());
    // GET /docs/{file}
    let file = || warp::path!("docs" / String);
    let swagger_files = file()
        .and(get())
        .and_then(move |file: String| {
            let config = config.clone();
            async move { swagger_file(&file, config) }
        })
        .or(file()
            .and(allow("GET, HEAD"))
            .map(|_: String, refused: Response| refused))
        .unify();
    // GET /redoc
    let redoc_page = warp::path!("redoc").and(get().map(redoc).or(allow("GET, HEAD")).unify());
    // GET /redoc/redoc.standalone.js
    let redoc_js = warp::path!("redoc" / "redoc.standalone.js").and(
        get()
            .map(|| {
                asset(
                    Bytes::from_static(REDOC_JS),
                    "text/javascript; charset=utf-8",
                )
            })
            .or(allow("GET, HEAD"))
            .unify(),
    );

    spec.or(swagger)
        .unify()
        .or(swagger_files)
        .unify()
        .or(redoc_page)
        .unify()
        .or(redoc_js)
        .unify()
        .boxed()
}

/// The OpenAPI 3.1 document of this API (the committed `openapi.json`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
pub(crate) fn openapi_json() -> Response {
    with_type(
        Bytes::from_static(OPENAPI_JSON.as_bytes()),
        "application/json",
    )
}

/// Swagger UI on `/openapi.json`; works with no internet access.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "ops",
    responses((status = 200, description = "Swagger UI", body = String, content_type = "text/html"))
)]
pub(crate) fn swagger_ui() -> Response {
    page(SWAGGER_PAGE)
}

/// ReDoc on `/openapi.json`; works with no internet access.
#[utoipa::path(
    get,
    path = "/redoc",
    tag = "ops",
    responses((status = 200, description = "ReDoc", body = String, content_type = "text/html"))
)]
pub(crate) fn redoc() -> Response {
    page(REDOC_PAGE)
}

fn page(html: &'static str) -> Response {
    with_type(
        Bytes::from_static(html.as_bytes()),
        "text/html; charset=utf-8",
    )
}

fn swagger_file(
    file: &str,
    config: Arc<utoipa_swagger_ui::Config<'static>>,
) -> Result<Response, Rejection> {
    match utoipa_swagger_ui::serve(file, config) {
        Ok(Some(found)) => {
            let bytes = match found.bytes {
                Cow::Borrowed(b) => Bytes::from_static(b),
                Cow::Owned(v) => Bytes::from(v),
            };
            let mut response = asset(bytes, content_type(file));
            if found.gzpipped {
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            Ok(response)
        }
        Ok(None) => Err(ApiError::NotFound("No such documentation file").into()),
        Err(e) => Err(ApiError::Internal(format!("Swagger UI file {file}: {e}")).into()),
    }
}

/// Text types declare UTF-8: without it Chromium misreads the Swagger bundle and renders nothing.
fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("png") => "image/png",
        Some("map") | Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(bytes: Bytes, content_type: &'static str) -> Response {
    let mut response = with_type(bytes, content_type);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

/// A response of this type; every HTML one (the pages, and Swagger UI's own `index.html` and
/// `oauth2-redirect.html`) carries the page policy, so no documentation page can be framed or
/// load from elsewhere, whichever path reaches it.
fn with_type(body: Bytes, content_type: &'static str) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
    }
    response
}
