//! `/api/v1/users`: what the mailed links drive — email verification (and its resend), and
//! password reset (forgot, reset). The mails themselves are made and sent by [`crate::mail`].

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use utoipa::ToSchema;
use validator::Validate;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::audit::Context;
use crate::error::{
    ApiError, BAD_LINK, BadRequest, Conflict, InternalError, PayloadTooLarge, RequestTimeout,
    ServiceUnavailable, TooManyRequests, Unauthorized, UnsupportedMediaType,
};
use crate::filters::{
    Auth, ClientAddr, allow, audit_context, client_addr, json_body, with_auth, with_state,
};
use crate::mail::{MAILS_PER_HOUR, Mailer};
use crate::routes::no_content;
use crate::store::{MailKind, Queued, Recipient, User};
use crate::validation::{self, Rules, normalize_email};

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    let users = warp::path!("api" / "v1" / "users" / ..);

    // POST /api/v1/users/email/verify
    let verify = warp::path!("email" / "verify").and(
        warp::post()
            .and(json_body::<LinkTokenIn>(&state.rules))
            .and(audit_context())
            .and(with_state(state))
            .and_then(verify_email)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/me/email/verification
    let resend = warp::path!("me" / "email" / "verification").and(
        warp::post()
            .and(with_auth(state))
            .and(audit_context())
            .and(with_state(state))
            .and_then(resend_verification)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/password/forgot
    let forgot = warp::path!("password" / "forgot").and(
        warp::post()
            .and(json_body::<ForgotIn>(&state.rules))
            .and(client_addr())
            .and(audit_context())
            .and(with_state(state))
            .and_then(forgot_password)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/password/reset
    let reset = warp::path!("password" / "reset").and(
        warp::post()
            .and(json_body::<ResetIn>(&state.rules))
            .and(audit_context())
            .and(with_state(state))
            .and_then(reset_password)
            .or(allow("POST"))
            .unify(),
    );

    users
        .and(
            verify
                .or(resend)
                .unify()
                .or(forgot)
                .unify()
                .or(reset)
                .unify(),
        )
        .boxed()
}

/// The token of a mailed verification link.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct LinkTokenIn {
    /// The `token` parameter of the link.
    #[schema(min_length = 1, max_length = 256)]
    #[validate(length(min = 1, max = 256, message = "must be the token of a mailed link"))]
    token: String,
}

/// Forgot-password body.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"email": "alice@example.com"}))]
pub struct ForgotIn {
    #[serde(deserialize_with = "normalize_email")]
    #[validate(custom(function = "validation::valid_email"))]
    #[schema(example = "alice@example.com", format = Email, max_length = 254)]
    email: String,
}

/// Password reset body.
#[derive(Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
pub struct ResetIn {
    /// The `token` parameter of the mailed reset link.
    #[schema(min_length = 1, max_length = 256)]
    #[validate(length(min = 1, max = 256, message = "must be the token of a mailed link"))]
    token: String,
    /// The registration rules apply.
    #[validate(custom(function = "validation::new_password", use_context))]
    #[schema(format = Password, min_length = 8, max_length = 72)]
    new_password: String,
}

// Never the token or the password in a log line.
impl std::fmt::Debug for LinkTokenIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTokenIn").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ResetIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetIn").finish_non_exhaustive()
    }
}

/// The answer to a request that queues mail.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    #[schema(
        example = "If an account has this email address, a link to reset its password is on its way"
    )]
    pub detail: &'static str,
}

const FORGOT_ACCEPTED: &str =
    "If an account has this email address, a link to reset its password is on its way";
const VERIFICATION_ACCEPTED: &str =
    "A new verification link is on its way; earlier links no longer work";

pub(crate) fn accepted(detail: &'static str) -> Response {
    warp::reply::with_status(
        warp::reply::json(&Accepted { detail }),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

/// Verify the email address with the token of the mailed link.
///
/// The token works once; a newer link makes older ones stop working. A GET of the link (the
/// service's page) changes nothing: only this POST uses the token.
#[utoipa::path(
    post,
    path = "/api/v1/users/email/verify",
    tag = "users",
    request_body = LinkTokenIn,
    responses(
        (status = 200, description = "Verified", body = User),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn verify_email(
    body: LinkTokenIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    let hash = Mailer::hash_of(&body.token).ok_or_else(bad_link)?;
    let user = state
        .store
        .verify_email(hash, crate::tokens::now_seconds(), &audit)
        .await?
        .ok_or_else(bad_link)?;
    tracing::info!(user_id = user.id, "email verified");
    Ok(warp::reply::json(&user).into_response())
}

/// Send a new verification mail to the caller's address; older links stop working.
///
/// At most 3 an hour (429 with `Retry-After` after that); 409 when the address is verified.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/email/verification",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A verification mail is queued", body = Accepted),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn resend_verification(
    auth: Auth,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    if auth.user.email_verified {
        return Err(ApiError::Conflict("The email address is already verified").into());
    }
    match state
        .store
        .queue_mail(
            Recipient::User(auth.user.id),
            MailKind::VerifyEmail,
            crate::tokens::now_seconds(),
            MAILS_PER_HOUR,
            &audit.by(auth.user.id),
        )
        .await?
    {
        Queued::Yes => {
            state.mailer.queued();
            tracing::info!(user_id = auth.user.id, "verification mail queued");
            Ok(accepted(VERIFICATION_ACCEPTED))
        }
        Queued::Limited { retry_after } => Err(ApiError::TooManyMails { retry_after }.into()),
        // Deleted while this request was on its way: its token is dead.
        Queued::NoSuchUser => Err(ApiError::InvalidToken.into()),
    }
}

/// Ask for a password reset link by mail.
///
/// Always 202 with the same body, whether or not the email has an account (and about the same
/// time: the answer does not wait for the lookup). Nothing is sent for an unknown email, and at
/// most 3 mails an hour go to one address; requests from one client address count against the
/// login throttle's address limit (429).
#[utoipa::path(
    post,
    path = "/api/v1/users/password/forgot",
    tag = "users",
    request_body = ForgotIn,
    responses(
        (status = 202, description = "Accepted (whether or not the email has an account)", body = Accepted),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn forgot_password(
    body: ForgotIn,
    client: Option<ClientAddr>,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    if let Some(ClientAddr(addr)) = client {
        state.throttle.count_address(addr).await?;
    }
    // The lookup and the queueing happen after the answer: its timing says nothing about
    // whether the email has an account.
    let Some(slot) = state.mailer.background_slot() else {
        tracing::warn!("too many password reset requests at once: this one is not looked up");
        return Ok(accepted(FORGOT_ACCEPTED));
    };
    let task_state = state.clone();
    tokio::spawn(
        async move {
            let _slot = slot;
            match task_state
                .store
                .queue_mail(
                    Recipient::Email(body.email),
                    MailKind::ResetPassword,
                    crate::tokens::now_seconds(),
                    MAILS_PER_HOUR,
                    &audit,
                )
                .await
            {
                Ok(Queued::Yes) => {
                    task_state.mailer.queued();
                    tracing::info!("password reset mail queued");
                }
                Ok(Queued::Limited { .. }) => {
                    tracing::info!(
                        "password reset mail not sent: 3 went to this address within the hour"
                    );
                }
                Ok(Queued::NoSuchUser) => {
                    tracing::info!(
                        "password reset asked for an email with no account; nothing sent"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "password reset mail could not be queued"),
            }
        }
        .in_current_span(),
    );
    Ok(accepted(FORGOT_ACCEPTED))
}

/// Set a new password with the token of a mailed reset link.
///
/// The token works once; every session of the user ends; the email counts as verified. A
/// password change by any path makes outstanding reset links stop working.
#[utoipa::path(
    post,
    path = "/api/v1/users/password/reset",
    tag = "users",
    request_body = ResetIn,
    responses(
        (status = 204, description = "The password is set; every session of the user has ended"),
        (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn reset_password(
    body: ResetIn,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    let hash = Mailer::hash_of(&body.token).ok_or_else(bad_link)?;
    let now = crate::tokens::now_seconds();
    // Checked before the password is hashed, so a bad link costs no bcrypt; used in the
    // transaction that sets the password, so a link used twice at once works once.
    let (_, email) = state
        .store
        .reset_token_user(hash, now)
        .await?
        .ok_or_else(bad_link)?;
    crate::password::check_personal(&body.new_password, &email).map_err(|message| {
        ApiError::Validation(vec![crate::error::FieldError::new("new_password", message)])
    })?;
    let new_hash = state.hasher.hash(body.new_password).await?;
    let user_id = state
        .store
        .reset_password(hash, new_hash, crate::tokens::now_seconds(), &audit)
        .await?
        .ok_or_else(bad_link)?;
    tracing::info!(user_id, "password reset; every session revoked");
    Ok(no_content())
}

fn bad_link() -> ApiError {
    ApiError::BadRequest(BAD_LINK.into())
}
