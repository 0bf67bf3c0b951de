//! One error type and one mapping to `application/problem+json` (RFC 9457).
//!
//! Domain code returns [`ApiError`]; filters turn it into a rejection; [`recover`] turns every
//! rejection (ours, and warp's own: no route, a header it could not parse, CORS) into a problem
//! response, and anything it does not know into a 500 whose cause is logged.
//! Causes of server-side failures are logged with the request's span (so with its request id) and
//! never sent: the client gets a generic detail. No variant carries a submitted password.
//!
//! The reusable error responses of the OpenAPI document ([`BadRequest`], [`Unauthorized`], …)
//! live here too, their examples made from the same variants and constants.

use std::convert::Infallible;

use serde::Serialize;
use utoipa::{ToResponse, ToSchema};
use warp::Rejection;

use crate::filters::{BODY_DEADLINE, BODY_LIMIT};
use crate::store::StoreError;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

pub const PROBLEM_JSON: &str = "application/problem+json";
const CHALLENGE: &str = "Bearer realm=\"warp-auth-api\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"warp-auth-api\", error=\"invalid_token\"";

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name as sent (`password`, `email`, …).
    #[schema(example = "password")]
    pub field: String,
    /// What is wrong with it. Never the submitted value.
    #[schema(example = "must be at least 8 characters")]
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error response (RFC 9457 problem details).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "Invalid or expired token"}))]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem this is.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub type_: &'static str,
    /// The status's reason phrase.
    #[schema(example = "Unauthorized")]
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(example = 401)]
    pub status: u16,
    /// What went wrong, for a human.
    #[schema(example = "Invalid or expired token")]
    pub detail: String,
    /// On validation failures: every bad field at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("The request is not valid")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("Invalid email or password")]
    InvalidCredentials,
    #[error("The current password is wrong")]
    WrongPassword,
    #[error("Not authenticated: send an Authorization: Bearer token")]
    MissingToken,
    #[error("Invalid or expired token")]
    InvalidToken,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("Method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("Email already registered")]
    EmailTaken,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("Request body is larger than {} KiB", BODY_LIMIT / 1024)]
    PayloadTooLarge,
    #[error("The request body did not arrive within {} seconds", BODY_DEADLINE.as_secs())]
    RequestTimeout,
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("Too many login attempts; try again in {retry_after} seconds")]
    TooManyAttempts { retry_after: u64 },
    /// The hourly limit of mails of one kind to one user.
    #[error(
        "Too many mails of this kind were sent to this address; try again in {retry_after} seconds"
    )]
    TooManyMails { retry_after: u64 },
    #[error("The server is busy hashing passwords; try again shortly")]
    Overloaded,
    /// The password was right; the login needs its second step (`POST /login/mfa`).
    #[error("A second factor is required")]
    MfaRequired { mfa_token: String },
    /// A wrong second-factor code, or a dead `mfa_token`.
    #[error("{0}")]
    WrongCode(&'static str),
    /// No configured `JWT_SECRET` to seal TOTP secrets with.
    #[error("Two-factor authentication is not available: the server needs JWT_SECRET to be set")]
    MfaUnavailable,
    /// The database is locked, full or failing: a passing condition, so 503 with `Retry-After`.
    #[error("The database is temporarily unavailable; try again shortly")]
    Unavailable(String),
    /// The database file is damaged: requests that touch it get 503 until an operator restores
    /// it (logged as an error, unlike a passing [`ApiError::Unavailable`]).
    #[error("The database is temporarily unavailable; try again shortly")]
    Corrupt(String),
    /// Anything unexpected. The cause is logged, never sent.
    #[error("Internal server error")]
    Internal(String),
}

impl warp::reject::Reject for ApiError {}

/// Store outcomes as HTTP errors: the one place where domain errors get a status.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::EmailTaken => ApiError::EmailTaken,
            StoreError::NotFound => ApiError::NotFound("No user with this id"),
            StoreError::LastAdmin => ApiError::Conflict(LAST_ADMIN),
            StoreError::NotAdmin => ApiError::Forbidden(NEEDS_ADMIN),
            // The caller's own account is gone: its token is dead.
            StoreError::ActorGone => ApiError::InvalidToken,
            StoreError::PasswordChanged => ApiError::InvalidCredentials,
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            StoreError::Corrupt(cause) => ApiError::Corrupt(cause),
            StoreError::Internal(cause) => ApiError::Internal(format!("database: {cause}")),
        }
    }
}

/// Handlers use `?` on store calls directly.
impl From<StoreError> for Rejection {
    fn from(err: StoreError) -> Self {
        ApiError::from(err).into()
    }
}

/// What is said when a change would leave no admin.
pub const LAST_ADMIN: &str = "This is the last admin; promote another user first";
/// What a mailed link's unknown, used, replaced or expired token gets.
pub const BAD_LINK: &str = "This link is invalid or has expired; ask for a new one";
/// What an unverified account's right password gets with `REQUIRE_EMAIL_VERIFICATION=true`.
pub const VERIFY_FIRST: &str = "Verify your email address first";
/// What a disabled account's right password gets.
pub const ACCOUNT_DISABLED: &str = "This account is disabled";
/// What `POST /register` gets with `REGISTRATION=closed`.
pub const REGISTRATION_CLOSED: &str = "Registration is closed; ask an administrator for an account";
/// What a member is told at an admin route.
pub const NEEDS_ADMIN: &str = "This needs the admin role";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidCredentials
            | Self::WrongPassword
            | Self::WrongCode(_)
            | Self::MissingToken
            | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::MfaRequired { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::EmailTaken | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyAttempts { .. } | Self::TooManyMails { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Overloaded | Self::Unavailable(_) | Self::Corrupt(_) | Self::MfaUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem+json response for this error; server-side causes are logged here, once.
    pub fn to_response(&self) -> Response {
        match self {
            Self::Internal(cause) => tracing::error!(cause = %cause, "internal error"),
            Self::Unavailable(cause) => tracing::warn!(cause = %cause, "database unavailable"),
            Self::Corrupt(cause) => {
                tracing::error!(cause = %cause, "the database is damaged; restore it from a backup")
            }
            Self::Overloaded => tracing::warn!("password hashing queue full"),
            _ => {}
        }
        let errors = match self {
            Self::Validation(errors) => Some(errors.clone()),
            _ => None,
        };
        let mut response = match self {
            // The two extension members of the second step (RFC 9457 allows them).
            Self::MfaRequired { mfa_token } => problem_with(
                self.status(),
                self.to_string(),
                serde_json::json!({
                    "mfa_token": mfa_token,
                    "expires_in": crate::mfa::MFA_TOKEN_SECONDS,
                }),
            ),
            _ => problem(self.status(), self.to_string(), errors),
        };
        let headers = response.headers_mut();
        match self {
            Self::MissingToken
            | Self::InvalidCredentials
            | Self::WrongPassword
            | Self::WrongCode(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                );
            }
            Self::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE_INVALID),
                );
            }
            Self::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::TooManyAttempts { retry_after } | Self::TooManyMails { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::Overloaded | Self::Unavailable(_) | Self::Corrupt(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // Until an operator sets JWT_SECRET.
            Self::MfaUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
            }
            _ => {}
        }
        response
    }
}

/// A problem+json response with the given status and detail.
pub fn problem(status: StatusCode, detail: String, errors: Option<Vec<FieldError>>) -> Response {
    let body = Problem {
        type_: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        errors,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(json.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// A problem+json response with extension members beside the standard ones.
fn problem_with(status: StatusCode, detail: String, extensions: serde_json::Value) -> Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(body), serde_json::Value::Object(more)) = (body.as_object_mut(), extensions) {
        body.extend(more);
    }
    let mut response = Response::new(serde_json::to_vec(&body).unwrap_or_default().into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// The one rejection handler: every rejection becomes a problem+json response.
pub async fn recover(err: Rejection) -> Result<Response, Infallible> {
    use warp::reject::{InvalidHeader, MethodNotAllowed};
    if let Some(e) = err.find::<ApiError>() {
        return Ok(e.to_response());
    }
    let response = if err.is_not_found() {
        ApiError::NotFound("No resource at this path").to_response()
    } else if let Some(e) = err.find::<InvalidHeader>() {
        ApiError::BadRequest(e.to_string()).to_response()
    } else if err.find::<warp::filters::cors::CorsForbidden>().is_some() {
        ApiError::Forbidden("This request is not allowed by CORS (CORS_ORIGINS)").to_response()
    } else if err.find::<MethodNotAllowed>().is_some() {
        // Every path has its own method fallback with an `Allow` list (see `filters::allow`), so
        // this is only reached by a route that forgot one.
        problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed".into(),
            None,
        )
    } else {
        // Bodies, lengths and queries are read by our own filters, which answer in ApiError;
        // a warp rejection of another kind is a bug.
        ApiError::Internal(format!("unhandled rejection: {err:?}")).to_response()
    };
    Ok(response)
}

// The error responses of the OpenAPI document, one per status.

/// Malformed JSON or query, a missing or mistyped field, or failed validation; `errors` names
/// every bad field at once.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Bad Request", "status": 400,
        "detail": "The request is not valid",
        "errors": [{"field": "password", "message": "must be at least 8 characters"}]})
)]
pub struct BadRequest(pub Problem);

/// Bad credentials, or a missing, malformed, expired, revoked or wrongly signed token.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"warp-auth-api\"`, plus `error=\"invalid_token\"` when a token was sent")),
    example = json!({"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": ApiError::InvalidToken.to_string()})
)]
pub struct Unauthorized(pub Problem);

/// Authenticated, but the role does not allow this.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Forbidden", "status": 403, "detail": NEEDS_ADMIN})
)]
pub struct Forbidden(pub Problem);

/// No such user.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No user with this id"})
)]
pub struct NotFound(pub Problem);

/// The change conflicts with the current state (an email already registered, the last admin).
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Conflict", "status": 409, "detail": ApiError::EmailTaken.to_string()})
)]
pub struct Conflict(pub Problem);

/// The body is over the size limit.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Payload Too Large", "status": 413, "detail": ApiError::PayloadTooLarge.to_string()})
)]
pub struct PayloadTooLarge(pub Problem);

/// The body did not arrive within the body deadline after the headers.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Request Timeout", "status": 408, "detail": ApiError::RequestTimeout.to_string()})
)]
pub struct RequestTimeout(pub Problem);

/// The body's content type is not one this operation reads.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Unsupported Media Type", "status": 415, "detail": "Send application/json"})
)]
pub struct UnsupportedMediaType(pub Problem);

/// Too many failed logins for this account or from this address (or, for mail, too many mails
/// of one kind to one user within an hour).
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait")),
    example = json!({"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "Too many login attempts; try again in 30 seconds"})
)]
pub struct TooManyRequests(pub Problem);

/// Overloaded (the password hashing queue is full) or the database is locked, full or failing.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait")),
    example = json!({"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": ApiError::Unavailable(String::new()).to_string()})
)]
pub struct ServiceUnavailable(pub Problem);

/// Something unexpected; the cause is logged with the request id, never sent.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Internal Server Error", "status": 500, "detail": "Internal server error"})
)]
pub struct InternalError(pub Problem);
