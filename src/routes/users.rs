//! `/api/v1/users`: registration, login, sessions (refresh, logout) and the caller's own account.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::ToSchema;
use validator::Validate;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::audit::{self, Context};
use crate::error::FieldError;
use crate::error::{ACCOUNT_DISABLED, ApiError, REGISTRATION_CLOSED, VERIFY_FIRST};
use crate::error::{
    BadRequest, Conflict, Forbidden, InternalError, PayloadTooLarge, RequestTimeout,
    ServiceUnavailable, TooManyRequests, Unauthorized, UnsupportedMediaType,
};
use crate::filters::{
    Auth, BodyKind, allow, audit_context, body_of, get, json_body, optional_json_body, with_auth,
    with_state,
};
use crate::routes::no_content;
use crate::sessions::{self, SecondFactor, TokenPair};
use crate::store::{Role, User};
use crate::validation::{self, Rules, normalize_email, normalize_name};

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    let users = warp::path!("api" / "v1" / "users" / ..);

    // POST /api/v1/users/register
    let register = warp::path!("register").and(
        warp::post()
            .and(registration_open(state))
            .and(json_body::<RegisterIn>(&state.rules))
            .and(audit_context())
            .and(with_state(state))
            .and_then(register)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/login
    let login = warp::path!("login").and(
        warp::post()
            .and(login_body(state))
            .and(warp::header::optional::<String>("origin"))
            .and(audit_context())
            .and(with_state(state))
            .and_then(login)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/refresh
    let refresh = warp::path!("refresh").and(
        warp::post()
            .and(optional_json_body::<RefreshIn>(&state.rules))
            .and(warp::cookie::optional::<String>(REFRESH_COOKIE))
            .and(warp::header::optional::<String>("origin"))
            .and(audit_context())
            .and(with_state(state))
            .and_then(refresh)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/logout
    let logout = warp::path!("logout").and(
        warp::post()
            .and(with_auth(state))
            .and(audit_context())
            .and(with_state(state))
            .and_then(logout)
            .or(allow("POST"))
            .unify(),
    );

    // GET, PATCH, DELETE /api/v1/users/me
    let me = warp::path!("me").and(
        get()
            .and(with_auth(state))
            .map(me)
            .or(warp::patch()
                .and(with_auth(state))
                .and(json_body::<ProfileIn>(&state.rules))
                .and(with_state(state))
                .and_then(update_profile))
            .unify()
            .or(warp::delete()
                .and(with_auth(state))
                .and(audit_context())
                .and(with_state(state))
                .and_then(delete_account))
            .unify()
            .or(allow("GET, HEAD, PATCH, DELETE"))
            .unify(),
    );

    // PUT /api/v1/users/me/password
    let password = warp::path!("me" / "password").and(
        warp::put()
            .and(with_auth(state))
            .and(json_body::<PasswordChangeIn>(&state.rules))
            .and(audit_context())
            .and(with_state(state))
            .and_then(change_password)
            .or(allow("PUT"))
            .unify(),
    );

    users
        .and(
            register
                .or(login)
                .unify()
                .or(refresh)
                .unify()
                .or(logout)
                .unify()
                .or(me)
                .unify()
                .or(password)
                .unify(),
        )
        .boxed()
}

/// Registration body.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"email": "alice@example.com", "password": "MyStrongPass123", "full_name": "Alice"}))]
pub struct RegisterIn {
    /// Trimmed and lower-cased; at most 254 characters.
    #[serde(deserialize_with = "normalize_email")]
    #[validate(custom(function = "validation::valid_email"))]
    #[schema(example = "alice@example.com", format = Email, max_length = 254)]
    email: String,
    /// At least `PASSWORD_MIN_LENGTH` characters (default 8), at most 72 bytes, not a common password.
    #[validate(custom(function = "validation::new_password", use_context))]
    #[schema(example = "MyStrongPass123", format = Password, min_length = 8, max_length = 72)]
    password: String,
    /// Trimmed; at most 100 characters; an empty string becomes null.
    #[serde(default, deserialize_with = "normalize_name")]
    #[validate(custom(function = "validation::name_length"))]
    #[schema(example = "Alice", max_length = 100)]
    full_name: Option<String>,
}

/// Login body (JSON).
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"email": "alice@example.com", "password": "MyStrongPass123"}))]
pub struct LoginIn {
    #[serde(deserialize_with = "normalize_email")]
    #[validate(custom(function = "validation::valid_email"))]
    #[schema(example = "alice@example.com", format = Email, max_length = 254)]
    email: String,
    #[validate(custom(function = "validation::presented_password"))]
    #[schema(example = "MyStrongPass123", format = Password, min_length = 1, max_length = 72)]
    password: String,
}

/// Login body (form, the OAuth2 password grant's shape): `username` is the email.
#[derive(Deserialize, ToSchema)]
pub struct LoginForm {
    #[schema(example = "alice@example.com", format = Email, max_length = 254)]
    username: String,
    #[schema(example = "MyStrongPass123", format = Password, min_length = 1, max_length = 72)]
    password: String,
}

/// Refresh body.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct RefreshIn {
    /// The refresh token of the last token pair; it is spent by this call. (Anything that is
    /// not one, an access token say, is a 401.)
    #[schema(min_length = 1, max_length = 4096)]
    #[validate(length(min = 1, max = 4096, message = "must be a refresh token"))]
    refresh_token: String,
}

/// Profile changes: only the fields present change.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"full_name": "Alice Liddell"}))]
pub struct ProfileIn {
    /// Trimmed, at most 100 characters; null or an empty string clears it; absent leaves it.
    #[serde(default, deserialize_with = "validation::patch_name")]
    #[validate(custom(function = "validation::name_length"))]
    #[schema(value_type = Option<String>, max_length = 100, example = "Alice Liddell")]
    full_name: Option<Option<String>>,
}

/// Password change body.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"current_password": "MyStrongPass123", "new_password": "An0ther-Strong-Pass"}))]
pub struct PasswordChangeIn {
    #[validate(custom(function = "validation::presented_password"))]
    #[schema(format = Password, min_length = 1, max_length = 72)]
    current_password: String,
    /// The registration rules apply.
    #[validate(custom(function = "validation::new_password", use_context))]
    #[schema(format = Password, min_length = 8, max_length = 72)]
    new_password: String,
}

/// A token pair. Sent with `Cache-Control: no-store`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"access_token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJIUzI1NiJ9…", "token_type": "bearer", "expires_in": 3600, "refresh_token": "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}))]
pub struct Token {
    /// A JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 3600)]
    pub expires_in: u64,
    /// An opaque token for `POST /api/v1/users/refresh`; each use spends it. Absent with
    /// `REFRESH_TOKEN_COOKIE=true`: it is then in the `refresh_token` cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub refresh_token: Option<String>,
}

/// Bodies that carry a secret show only its absence in `Debug`: one `?body` in a log call must
/// not write a password or a refresh token.
macro_rules! redacted_debug {
    ($($name:ident { $($field:ident),* }),* $(,)?) => {$(
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    )*};
}

redacted_debug! {
    RegisterIn { email, full_name },
    LoginIn { email },
    LoginForm { username },
    RefreshIn {},
    PasswordChangeIn {},
}

/// The login body, as JSON or as a form; both end as a validated [`LoginIn`].
fn login_body(
    state: &AppState,
) -> impl Filter<Extract = (LoginIn,), Error = Rejection> + Clone + use<> {
    let rules = state.rules.clone();
    body_of(&[BodyKind::Json, BodyKind::Form]).and_then(move |kind, body: bytes::Bytes| {
        let rules = rules.clone();
        async move {
            match kind {
                BodyKind::Json => crate::filters::parse_json_body::<LoginIn>(&body, &rules),
                BodyKind::Form => parse_login_form(&body, &rules),
            }
            .map_err(Rejection::from)
        }
    })
}

fn parse_login_form(body: &[u8], rules: &Rules) -> Result<LoginIn, ApiError> {
    let form: LoginForm = serde_urlencoded::from_bytes(body).map_err(|e| {
        match validation::missing_field(&e.to_string()) {
            Some(field) => {
                ApiError::Validation(vec![crate::error::FieldError::new(field, "is required")])
            }
            None => ApiError::BadRequest("Malformed form body".into()),
        }
    })?;
    let login = LoginIn {
        email: validation::normalized_email(&form.username),
        password: form.password,
    };
    validation::validate(&login, rules).map_err(|e| match e {
        // The form calls the email `username`.
        ApiError::Validation(mut errors) => {
            for error in &mut errors {
                if error.field == "email" {
                    error.field = "username".into();
                }
            }
            ApiError::Validation(errors)
        }
        other => other,
    })?;
    Ok(login)
}

/// Register a user.
///
/// The email is trimmed and lower-cased; the password must have at least `PASSWORD_MIN_LENGTH`
/// characters (default 8), at most 72 bytes, and not be a common password. A `role` sent here is
/// ignored: new users are members. A verification mail goes to the address. With
/// `REGISTRATION=closed` this answers 403.
#[utoipa::path(
    post,
    path = "/api/v1/users/register",
    tag = "users",
    request_body = RegisterIn,
    responses(
        (status = 201, description = "Registered; a verification mail is queued", body = User, headers(("Location" = String, description = "`/api/v1/users/me`"))),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn register(
    body: RegisterIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    crate::password::check_personal(&body.password, &body.email)
        .map_err(|message| ApiError::Validation(vec![FieldError::new("password", message)]))?;
    // A cheap check first, so that a taken email costs no hashing; the unique index still
    // decides when two registrations race.
    if state.store.email_exists(body.email.clone()).await? {
        return Err(ApiError::EmailTaken.into());
    }
    let hash = state.hasher.hash(body.password).await?;
    // The verification mail is queued in the transaction that makes the user.
    let user = state
        .store
        .create_user(
            body.email,
            body.full_name,
            hash,
            Role::Member,
            Some(crate::tokens::now_seconds()),
            &audit,
        )
        .await?;
    state.metrics.registered();
    state.mailer.queued();
    tracing::info!(
        user_id = user.id,
        "user registered; verification mail queued"
    );
    Ok(created(&user))
}

/// With `REGISTRATION=closed`, 403 before the body is read.
fn registration_open(
    state: &AppState,
) -> impl Filter<Extract = (), Error = Rejection> + Clone + use<> {
    let open = state.config.registration_open;
    warp::any()
        .and_then(move || async move {
            if open {
                Ok(())
            } else {
                Err(Rejection::from(ApiError::Forbidden(REGISTRATION_CLOSED)))
            }
        })
        .untuple_one()
}

fn created(user: &User) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply::json(user), StatusCode::CREATED).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/api/v1/users/me"),
    );
    response
}

/// The caller's own user.
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) fn me(auth: Auth) -> Response {
    warp::reply::json(&auth.user).into_response()
}

/// Log in: a new session and its first token pair.
///
/// JSON `{email, password}`, or the OAuth2 password form `username=…&password=…`. Unknown
/// emails and wrong passwords get the same 401. Repeated failures are throttled (429). With
/// `REQUIRE_EMAIL_VERIFICATION=true`, the right password of an unverified account gets 403, and
/// so does a disabled account's. With MFA on, the right password gets 403 with an `mfa_token`
/// (5 minutes) for `POST /api/v1/users/login/mfa`.
#[utoipa::path(
    post,
    path = "/api/v1/users/login",
    tag = "users",
    request_body(content(
        (LoginIn = "application/json"),
        (LoginForm = "application/x-www-form-urlencoded")
    )),
    responses(
        (status = 200, description = "A new token pair", body = Token, headers(("Cache-Control" = String, description = "`no-store`"), ("Pragma" = String, description = "`no-cache`"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn login(
    body: LoginIn,
    origin: Option<String>,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    state.check_login_origin(origin.as_deref())?;
    // The attempt runs to its end in a task of its own, whatever the client does: a client that
    // hangs up while a wrong password's answer is padded must not spare that guess from the
    // throttle (dropping this handler's future does not stop the task).
    let attempt = state
        .metrics
        .counted_login(attempt_login(state.clone(), body, audit));
    let attempt = tokio::spawn(attempt.in_current_span());
    let pair = attempt
        .await
        .map_err(|e| ApiError::Internal(format!("login task: {e}")))??;
    Ok(token_response(&state, pair))
}

/// One login attempt, from the throttle to the new session; each outcome is logged.
async fn attempt_login(
    state: AppState,
    body: LoginIn,
    context: Context,
) -> Result<TokenPair, ApiError> {
    // A throttled account or address gets 429 even with the right password.
    let attempt = begin_attempt(&state, &body.email, &context).await?;
    let credentials = state.store.credentials(body.email.clone()).await?;
    // Unknown emails are checked against a dummy hash: both failures take the same time.
    let stored = credentials.as_ref().map(|c| c.password_hash.clone());
    let verdict = state.hasher.verify(body.password.clone(), stored).await?;
    let credentials = match credentials {
        Some(c) if verdict.valid => c,
        other => {
            // Counted before the answer is padded.
            attempt.failed().await;
            let user_id = other.map(|c| c.user_id);
            tracing::warn!(outcome = "invalid", user_id, "login failed");
            audit::record(
                &state.store,
                audit::login_failed(user_id, "invalid"),
                &context,
            )
            .await;
            verdict.pad().await;
            return Err(ApiError::InvalidCredentials);
        }
    };
    // With a second factor to come, the account's count is cleared only when it is right.
    if credentials.mfa_enabled {
        attempt.released().await;
    } else {
        attempt.succeeded().await;
    }
    if credentials.disabled {
        tracing::warn!(
            outcome = "disabled",
            user_id = credentials.user_id,
            "login refused: the account is disabled"
        );
        let event = audit::login_failed(Some(credentials.user_id), "disabled");
        audit::record(&state.store, event, &context).await;
        return Err(ApiError::Forbidden(ACCOUNT_DISABLED));
    }
    if state.config.require_email_verification && !credentials.email_verified {
        tracing::warn!(
            outcome = "unverified",
            user_id = credentials.user_id,
            "login refused: the email is not verified"
        );
        let event = audit::login_failed(Some(credentials.user_id), "unverified");
        audit::record(&state.store, event, &context).await;
        return Err(ApiError::Forbidden(VERIFY_FIRST));
    }
    let mut verified_hash = credentials.password_hash;
    if state.hasher.needs_rehash(&verified_hash) {
        let new_hash = state.hasher.hash(body.password.clone()).await?;
        if state
            .store
            .rehash_password(credentials.user_id, verified_hash.clone(), new_hash.clone())
            .await?
        {
            tracing::info!(
                user_id = credentials.user_id,
                "password re-hashed at the configured cost"
            );
            verified_hash = new_hash;
        } else if let Some(now_stored) = state.store.password_hash(credentials.user_id).await? {
            // The hash changed since it was read: a racing login re-hashed it (then this password
            // still matches it), or the password changed (then it does not, and 401 is right).
            if state
                .hasher
                .verify(body.password, Some(now_stored.clone()))
                .await?
                .valid
            {
                verified_hash = now_stored;
            }
        }
    }
    if credentials.mfa_enabled {
        // The second step: the session starts at /login/mfa, from this verified password.
        let token = crate::tokens::OpaqueToken::generate();
        state
            .store
            .create_challenge(
                token.hash,
                credentials.user_id,
                verified_hash,
                crate::tokens::now_seconds() + crate::mfa::MFA_TOKEN_SECONDS,
            )
            .await?;
        tracing::info!(
            outcome = "mfa_required",
            user_id = credentials.user_id,
            "login: the password is right; a second factor is required"
        );
        return Err(ApiError::MfaRequired {
            mfa_token: token.token,
        });
    }
    // Only while the password checked is still the user's: a change that went through meanwhile
    // wins, and this login gets 401 rather than a session that outlives it.
    let started = sessions::start(
        &state,
        credentials.user_id,
        credentials.role,
        verified_hash,
        &context,
        SecondFactor::None,
    )
    .await;
    if let Err(ApiError::InvalidCredentials) = started {
        tracing::warn!(
            outcome = "invalid",
            user_id = credentials.user_id,
            "login failed: the password changed while it was checked"
        );
        let event = audit::login_failed(Some(credentials.user_id), "password_changed");
        audit::record(&state.store, event, &context).await;
    }
    let pair = started?;
    tracing::info!(outcome = "success", user_id = credentials.user_id, "login");
    Ok(pair)
}

/// Exchange a refresh token for a new pair of the same session.
///
/// Each refresh token works once. A spent token presented again revokes its whole session,
/// except within 10 seconds of its use, when it gets the live pair again (racing tabs, retries).
#[utoipa::path(
    post,
    path = "/api/v1/users/refresh",
    tag = "users",
    request_body = RefreshIn,
    responses(
        (status = 200, description = "A new token pair", body = Token, headers(("Cache-Control" = String, description = "`no-store`"), ("Pragma" = String, description = "`no-cache`"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn refresh(
    body: Option<RefreshIn>,
    cookie: Option<String>,
    origin: Option<String>,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    let presented = match body {
        Some(body) => body.refresh_token,
        None if state.config.refresh_token_cookie => {
            // The cookie goes with any request the browser makes to this path, so it is taken
            // only from the service's own pages and the listed origins (no cross-site refresh).
            let allowed = origin.as_deref().is_some_and(|o| state.origin_allowed(o));
            if !allowed {
                return Err(ApiError::Forbidden(
                    "The refresh cookie is taken only from this service's own origin or one in CORS_ORIGINS",
                )
                .into());
            }
            cookie.ok_or(ApiError::InvalidToken)?
        }
        None => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "refresh_token",
                "is required",
            )])
            .into());
        }
    };
    let pair = sessions::rotate(&state, &presented, audit).await?;
    Ok(token_response(&state, pair))
}

/// End this session: its access and refresh tokens stop working at once.
#[utoipa::path(
    post,
    path = "/api/v1/users/logout",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn logout(
    auth: Auth,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    state
        .store
        .delete_session(auth.session_id, &audit.by(auth.user.id))
        .await?;
    tracing::info!(user_id = auth.user.id, "logout");
    let mut response = no_content();
    if state.config.refresh_token_cookie {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, refresh_cookie("", 0));
    }
    Ok(response)
}

/// Change the caller's profile; only the fields sent change (`{}` changes nothing).
#[utoipa::path(
    patch,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    request_body = ProfileIn,
    responses(
        (status = 200, description = "The user as it is now", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn update_profile(
    auth: Auth,
    body: ProfileIn,
    state: AppState,
) -> Result<Response, Rejection> {
    let user = match body.full_name {
        None => auth.user,
        Some(full_name) => state
            .store
            .set_full_name(auth.user.id, full_name)
            .await?
            .ok_or(ApiError::InvalidToken)?,
    };
    Ok(warp::reply::json(&user).into_response())
}

/// Delete the caller's account and every session of it; the email can register again.
///
/// The last admin cannot delete itself (409): promote another user first.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn delete_account(
    auth: Auth,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    state
        .store
        .delete_user(None, auth.user.id, &audit.by(auth.user.id))
        .await?;
    tracing::info!(user_id = auth.user.id, "account deleted");
    Ok(no_content())
}

/// Change the caller's password; every session of the user, this one too, ends.
///
/// 401 when the current password is wrong (repeated failures are throttled like logins).
#[utoipa::path(
    put,
    path = "/api/v1/users/me/password",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordChangeIn,
    responses(
        (status = 204, description = "Changed; log in again"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn change_password(
    auth: Auth,
    body: PasswordChangeIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    crate::password::check_personal(&body.new_password, &auth.user.email)
        .map_err(|message| ApiError::Validation(vec![FieldError::new("new_password", message)]))?;
    // Guessing the current password with a stolen access token is throttled like a login.
    let attempt = state.throttle.begin(&auth.user.email, None).await?;
    let stored = state
        .store
        .password_hash(auth.user.id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let verdict = state
        .hasher
        .verify(body.current_password, Some(stored.clone()))
        .await?;
    if !verdict.valid {
        attempt.failed().await;
        tracing::warn!(
            user_id = auth.user.id,
            "password change refused: wrong current password"
        );
        verdict.pad().await;
        return Err(ApiError::WrongPassword.into());
    }
    attempt.succeeded().await;
    let new_hash = state.hasher.hash(body.new_password).await?;
    if !state
        .store
        .change_password(auth.user.id, stored, new_hash, &audit.by(auth.user.id))
        .await?
    {
        // Another change won the race, and with it ended every session of the user, this one
        // too: the caller's token is dead.
        return Err(ApiError::InvalidToken.into());
    }
    tracing::info!(
        user_id = auth.user.id,
        "password changed; every session revoked"
    );
    Ok(no_content())
}

/// Admits a login attempt past the throttle, or answers 429; a refusal is logged, and written
/// as `login.throttled` (at most once a minute per account and per address).
pub(crate) async fn begin_attempt<'a>(
    state: &'a AppState,
    email: &str,
    context: &Context,
) -> Result<crate::throttle::Guard<'a>, ApiError> {
    let address = context
        .client
        .ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    match state.throttle.begin(email, address).await {
        Err(ApiError::TooManyAttempts { retry_after }) => {
            tracing::warn!(outcome = "throttled", "login refused: too many attempts");
            audit::login_throttled(state, context, email, retry_after).await;
            Err(ApiError::TooManyAttempts { retry_after })
        }
        other => other,
    }
}

/// The refresh cookie's name (Sessions in the browser).
pub const REFRESH_COOKIE: &str = "refresh_token";

/// The refresh cookie: readable by no script, sent only over HTTPS (browsers treat localhost as
/// such), to this site, and only to the users paths.
fn refresh_cookie(token: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/api/v1/users; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("refresh_token=; Max-Age=0"))
}

/// A new pair as the response: the refresh token in the body, or (cookie mode) in the cookie
/// only. Never cached by the browser or any proxy.
pub(crate) fn token_response(state: &AppState, pair: TokenPair) -> Response {
    let cookie = state.config.refresh_token_cookie;
    let body = Token {
        access_token: pair.access_token,
        token_type: "bearer".into(),
        expires_in: pair.expires_in,
        refresh_token: (!cookie).then(|| pair.refresh_token.clone()),
    };
    let mut response = warp::reply::json(&body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if cookie {
        headers.insert(
            header::SET_COOKIE,
            refresh_cookie(&pair.refresh_token, pair.session_remaining),
        );
    }
    response
}
