//! `/api/v1/users`: the second factor — the second step of a login (`/login/mfa`), and the
//! caller's own TOTP enrollment, confirmation, removal and recovery codes. TOTP itself is
//! [`crate::mfa`].

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use utoipa::ToSchema;
use validator::Validate;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::audit::{self, Context};
use crate::error::{
    ApiError, BadRequest, Conflict, Forbidden, InternalError, PayloadTooLarge, RequestTimeout,
    ServiceUnavailable, TooManyRequests, Unauthorized, UnsupportedMediaType,
};
use crate::filters::{Auth, allow, audit_context, json_body, with_auth, with_state};
use crate::mfa::{Code, MAX_WRONG_CODES, Mfa};
use crate::routes::no_content;
use crate::routes::users::{Token, begin_attempt, token_response};
use crate::sessions::{self, TokenPair};
use crate::tokens::{OpaqueToken, now_seconds};
use crate::validation::{self, Rules};

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    let users = warp::path!("api" / "v1" / "users" / ..);

    // POST /api/v1/users/login/mfa
    let login = warp::path!("login" / "mfa").and(
        warp::post()
            .and(json_body::<MfaLoginIn>(&state.rules))
            .and(warp::header::optional::<String>("origin"))
            .and(audit_context())
            .and(with_state(state))
            .and_then(login_mfa)
            .or(allow("POST"))
            .unify(),
    );

    // POST, DELETE /api/v1/users/me/mfa/totp
    let totp = warp::path!("me" / "mfa" / "totp").and(
        warp::post()
            .and(with_auth(state))
            .and(json_body::<PasswordIn>(&state.rules))
            .and(with_state(state))
            .and_then(enroll)
            .or(warp::delete()
                .and(with_auth(state))
                .and(json_body::<PasswordCodeIn>(&state.rules))
                .and(audit_context())
                .and(with_state(state))
                .and_then(disable))
            .unify()
            .or(allow("POST, DELETE"))
            .unify(),
    );

    // POST /api/v1/users/me/mfa/totp/confirm
    let confirm = warp::path!("me" / "mfa" / "totp" / "confirm").and(
        warp::post()
            .and(with_auth(state))
            .and(json_body::<CodeIn>(&state.rules))
            .and(audit_context())
            .and(with_state(state))
            .and_then(confirm)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/me/mfa/recovery-codes
    let codes = warp::path!("me" / "mfa" / "recovery-codes").and(
        warp::post()
            .and(with_auth(state))
            .and(json_body::<PasswordCodeIn>(&state.rules))
            .and(audit_context())
            .and(with_state(state))
            .and_then(new_recovery_codes)
            .or(allow("POST"))
            .unify(),
    );

    users
        .and(login.or(totp).unify().or(confirm).unify().or(codes).unify())
        .boxed()
}

/// The second step of a login.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct MfaLoginIn {
    /// The `mfa_token` of the login's 403.
    #[schema(min_length = 1, max_length = 256)]
    #[validate(length(min = 1, max = 256, message = "must be the mfa_token of the login"))]
    mfa_token: String,
    /// A TOTP code (6 digits) or an unused recovery code.
    #[validate(custom(function = "validation::mfa_code"))]
    #[schema(example = "123456", min_length = 6, max_length = 19)]
    code: String,
}

/// The caller's password.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct PasswordIn {
    #[validate(custom(function = "validation::presented_password"))]
    #[schema(format = Password, min_length = 1, max_length = 72)]
    password: String,
}

/// A TOTP code.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct CodeIn {
    /// The 6 digits the authenticator app shows now.
    #[validate(custom(function = "validation::mfa_code"))]
    #[schema(example = "123456", min_length = 6, max_length = 19)]
    code: String,
}

/// The caller's password and a second-factor code.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct PasswordCodeIn {
    #[validate(custom(function = "validation::presented_password"))]
    #[schema(format = Password, min_length = 1, max_length = 72)]
    password: String,
    /// A TOTP code (6 digits) or an unused recovery code.
    #[validate(custom(function = "validation::mfa_code"))]
    #[schema(example = "123456", min_length = 6, max_length = 19)]
    code: String,
}

// Never a password, a code or a token in a log line.
macro_rules! secret_debug {
    ($($name:ident),*) => {$(
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    )*};
}
secret_debug!(MfaLoginIn, PasswordIn, CodeIn, PasswordCodeIn);

/// A pending TOTP enrollment: what an authenticator app needs.
#[derive(Serialize, ToSchema)]
pub struct TotpEnrollment {
    /// The secret, base32 (160 bits), to type into an app.
    #[schema(example = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")]
    pub secret: String,
    /// The same as an `otpauth://totp/…` URI (a QR code of it is what apps scan).
    #[schema(
        example = "otpauth://totp/warp-auth-api:alice%40example.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=warp-auth-api"
    )]
    pub otpauth_uri: String,
}

/// Recovery codes, shown this once: each works once in place of a TOTP code.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    #[schema(example = json!(["abcd-efgh-ijkl-mnop"]))]
    pub recovery_codes: Vec<String>,
}

const DEAD_TOKEN: &str = "The mfa_token is invalid or has expired; log in again";
const WRONG_CODE: &str = "The code is not valid";

/// A response with a secret in it: never cached.
fn secret_response(body: &impl Serialize, status: StatusCode) -> Response {
    let mut response = warp::reply::with_status(warp::reply::json(body), status).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn parsed(code: &str) -> Result<Code, ApiError> {
    // Validated already; a code that does not parse is a 400 all the same.
    Code::parse(code).ok_or_else(|| {
        ApiError::Validation(vec![crate::error::FieldError::new(
            "code",
            "must be 6 digits or a recovery code",
        )])
    })
}

/// Whether `code` is a right second factor of the user now; a TOTP code is accepted once.
async fn code_is_right(state: &AppState, user_id: i64, code: &Code) -> Result<bool, ApiError> {
    let now = now_seconds();
    match code {
        Code::Totp(digits) => {
            let Some(record) = state.store.totp(user_id).await? else {
                return Ok(false);
            };
            if !record.confirmed {
                return Ok(false);
            }
            let secret = state.mfa.open(&record)?;
            if !state.mfa.is_current(&record) {
                // Sealed under a JWT_SECRET that is now in JWT_PREVIOUS_SECRETS: seal it again, so
                // that the old secret can be dropped.
                let (sealed, key_id) = state.mfa.seal(&secret)?;
                state
                    .store
                    .reseal_totp(user_id, record.sealed.clone(), sealed, key_id)
                    .await?;
            }
            match state.mfa.matching_step(&secret, digits, now)? {
                Some(step) => Ok(state.store.accept_totp_step(user_id, step).await?),
                None => Ok(false),
            }
        }
        Code::Recovery(hash) => Ok(state.store.use_recovery_code(user_id, *hash, now).await?),
    }
}

/// The caller's password, and a code when given, checked as a login is: throttled per account,
/// each wrong answer counted.
async fn check_password_and_code(
    state: &AppState,
    auth: &Auth,
    password: String,
    code: Option<&Code>,
) -> Result<(), ApiError> {
    let attempt = state.throttle.begin(&auth.user.email, None).await?;
    let stored = state
        .store
        .password_hash(auth.user.id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let verdict = state.hasher.verify(password, Some(stored)).await?;
    if !verdict.valid {
        attempt.failed().await;
        verdict.pad().await;
        return Err(ApiError::WrongPassword);
    }
    if let Some(code) = code
        && !code_is_right(state, auth.user.id, code).await?
    {
        attempt.failed().await;
        tracing::warn!(user_id = auth.user.id, "a wrong second-factor code");
        return Err(ApiError::WrongCode(WRONG_CODE));
    }
    attempt.succeeded().await;
    Ok(())
}

/// The second step of a login: the `mfa_token` of the login's 403 and a code.
///
/// A TOTP code (±1 step of 30 s) or an unused recovery code gives the Token. An `mfa_token`
/// works once, for 5 minutes, and dies after 5 wrong codes; a TOTP code accepted once is not
/// accepted again. Wrong codes count as failed logins for the account's throttle.
#[utoipa::path(
    post,
    path = "/api/v1/users/login/mfa",
    tag = "users",
    request_body = MfaLoginIn,
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
pub(crate) async fn login_mfa(
    body: MfaLoginIn,
    origin: Option<String>,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    state.check_login_origin(origin.as_deref())?;
    // As a login: the attempt runs to its end whatever the client does.
    let attempt = state
        .metrics
        .counted_login(attempt_mfa(state.clone(), body, audit));
    let attempt = tokio::spawn(attempt.in_current_span());
    let pair = attempt
        .await
        .map_err(|e| ApiError::Internal(format!("login task: {e}")))??;
    Ok(token_response(&state, pair))
}

async fn attempt_mfa(
    state: AppState,
    body: MfaLoginIn,
    context: Context,
) -> Result<TokenPair, ApiError> {
    let code = parsed(&body.code)?;
    let hash = OpaqueToken::parse(&body.mfa_token)
        .map(|t| t.hash)
        .ok_or(ApiError::WrongCode(DEAD_TOKEN))?;
    // Each guess is counted before it is checked, so parallel guesses get no more than five.
    let challenge = state
        .store
        .claim_guess(hash, now_seconds(), MAX_WRONG_CODES)
        .await?
        .ok_or(ApiError::WrongCode(DEAD_TOKEN))?;
    if challenge.disabled {
        let event = audit::login_failed(Some(challenge.user_id), "disabled");
        audit::record(&state.store, event, &context).await;
        return Err(ApiError::Forbidden(crate::error::ACCOUNT_DISABLED));
    }
    let attempt = begin_attempt(&state, &challenge.email, &context).await?;
    if !code_is_right(&state, challenge.user_id, &code).await? {
        attempt.failed().await;
        tracing::warn!(
            outcome = "mfa_failed",
            user_id = challenge.user_id,
            "login: a wrong second-factor code"
        );
        let event = audit::Event::new(audit::Kind::LoginMfaFailed, Some(challenge.user_id))
            .with("code", code.kind());
        audit::record(&state.store, event, &context).await;
        return Err(ApiError::WrongCode(WRONG_CODE));
    }
    attempt.succeeded().await;
    if !state.store.take_challenge(hash).await? {
        // Used by a racing request, or failed out meanwhile.
        return Err(ApiError::WrongCode(DEAD_TOKEN));
    }
    let started = sessions::start(
        &state,
        challenge.user_id,
        challenge.role,
        challenge.password_hash,
        &context,
        code.second_factor(),
    )
    .await;
    if let Err(ApiError::InvalidCredentials) = started {
        // The password changed, or the account was disabled or deleted, between the two steps
        // (the code, a recovery code too, is spent all the same).
        tracing::warn!(
            outcome = "invalid",
            user_id = challenge.user_id,
            "login failed: the account changed between the two steps"
        );
        let event = audit::login_failed(Some(challenge.user_id), "password_changed")
            .with("second_factor", code.kind());
        audit::record(&state.store, event, &context).await;
    }
    let pair = started?;
    tracing::info!(
        outcome = "success",
        user_id = challenge.user_id,
        "login with a second factor"
    );
    Ok(pair)
}

/// Start a TOTP enrollment: a new secret for an authenticator app, pending until confirmed.
///
/// Replaces an earlier pending enrollment. Needs the password.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/mfa/totp",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordIn,
    responses(
        (status = 201, description = "A pending enrollment", body = TotpEnrollment),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn enroll(
    auth: Auth,
    body: PasswordIn,
    state: AppState,
) -> Result<Response, Rejection> {
    if !state.mfa.available() {
        return Err(ApiError::MfaUnavailable.into());
    }
    if auth.user.mfa_enabled {
        return Err(ApiError::Conflict(ALREADY_ON).into());
    }
    check_password_and_code(&state, &auth, body.password, None).await?;
    let secret = Mfa::new_secret();
    let (sealed, key_id) = state.mfa.seal(&secret)?;
    if !state
        .store
        .set_pending_totp(auth.user.id, sealed, key_id, now_seconds())
        .await?
    {
        return Err(ApiError::Conflict(ALREADY_ON).into());
    }
    let (secret, otpauth_uri) = state.mfa.enrollment(&secret, &auth.user.email)?;
    tracing::info!(user_id = auth.user.id, "TOTP enrollment started");
    Ok(secret_response(
        &TotpEnrollment {
            secret,
            otpauth_uri,
        },
        StatusCode::CREATED,
    ))
}

const ALREADY_ON: &str = "Two-factor authentication is already on";
const NOT_ON: &str = "Two-factor authentication is not on";

/// Confirm the pending enrollment with a current code: MFA is on.
///
/// Returns 10 recovery codes, shown this once; every other session of the user ends.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/mfa/totp/confirm",
    tag = "users",
    security(("bearer" = [])),
    request_body = CodeIn,
    responses(
        (status = 200, description = "MFA is on", body = RecoveryCodes),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn confirm(
    auth: Auth,
    body: CodeIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    let nothing = || {
        ApiError::BadRequest("Nothing to confirm: start with POST /api/v1/users/me/mfa/totp".into())
    };
    let Code::Totp(digits) = parsed(&body.code)? else {
        return Err(ApiError::BadRequest(
            "Confirm with the 6 digits of the authenticator app".into(),
        )
        .into());
    };
    let record = state.store.totp(auth.user.id).await?.ok_or_else(nothing)?;
    if record.confirmed {
        return Err(nothing().into());
    }
    let secret = state.mfa.open(&record)?;
    let Some(step) = state.mfa.matching_step(&secret, &digits, now_seconds())? else {
        return Err(ApiError::BadRequest(WRONG_CODE.into()).into());
    };
    let (shown, hashes) = Mfa::recovery_codes();
    if !state
        .store
        .confirm_totp(
            auth.user.id,
            record.sealed.clone(),
            step,
            hashes,
            auth.session_id.clone(),
            now_seconds(),
            &audit.by(auth.user.id),
        )
        .await?
    {
        return Err(nothing().into());
    }
    tracing::info!(
        user_id = auth.user.id,
        "MFA turned on; other sessions ended"
    );
    Ok(secret_response(
        &RecoveryCodes {
            recovery_codes: shown,
        },
        StatusCode::OK,
    ))
}

/// Turn MFA off, with the password and a code (TOTP or recovery).
#[utoipa::path(
    delete,
    path = "/api/v1/users/me/mfa/totp",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordCodeIn,
    responses(
        (status = 204, description = "MFA is off"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn disable(
    auth: Auth,
    body: PasswordCodeIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    if !auth.user.mfa_enabled {
        return Err(ApiError::Conflict(NOT_ON).into());
    }
    let code = parsed(&body.code)?;
    check_password_and_code(&state, &auth, body.password, Some(&code)).await?;
    if !state
        .store
        .disable_mfa(auth.user.id, &audit.by(auth.user.id))
        .await?
    {
        return Err(ApiError::Conflict(NOT_ON).into());
    }
    tracing::info!(user_id = auth.user.id, "MFA turned off");
    Ok(no_content())
}

/// New recovery codes, with the password and a code; the old ones stop working.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/mfa/recovery-codes",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordCodeIn,
    responses(
        (status = 200, description = "New recovery codes, shown this once", body = RecoveryCodes),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn new_recovery_codes(
    auth: Auth,
    body: PasswordCodeIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    if !auth.user.mfa_enabled {
        return Err(ApiError::Conflict(NOT_ON).into());
    }
    let code = parsed(&body.code)?;
    check_password_and_code(&state, &auth, body.password, Some(&code)).await?;
    let (shown, hashes) = Mfa::recovery_codes();
    if !state
        .store
        .replace_recovery_codes(auth.user.id, hashes, &audit.by(auth.user.id))
        .await?
    {
        return Err(ApiError::Conflict(NOT_ON).into());
    }
    tracing::info!(user_id = auth.user.id, "new recovery codes");
    Ok(secret_response(
        &RecoveryCodes {
            recovery_codes: shown,
        },
        StatusCode::OK,
    ))
}
