//! `/api/v1/admin`: user management for admins (a member gets 403).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::audit::{self, Context};
use crate::error::{ApiError, FieldError};
use crate::error::{
    BadRequest, Conflict, Forbidden, InternalError, NotFound, PayloadTooLarge, RequestTimeout,
    ServiceUnavailable, TooManyRequests, Unauthorized, UnsupportedMediaType,
};
use crate::filters::{Auth, allow, audit_context, get, json_body, with_admin, with_db, with_state};
use crate::mail::MAILS_PER_HOUR;
use crate::routes::no_content;
use crate::routes::recovery::{Accepted, accepted};
use crate::routes::sessions::{SessionOut, sessions_reply};
use crate::store::{
    MailKind, Queued, Recipient, Role, Store, StoreError, User, UserChange, UserQuery,
};
use crate::tokens::now_seconds;
use crate::validation::Rules;

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    // GET /api/v1/admin/users?limit&offset|after_id&q
    let list = warp::path!("api" / "v1" / "admin" / "users").and(
        get()
            .and(with_admin(state))
            .and(page_query())
            .and(with_db(&state.store))
            .and_then(list_users)
            .or(allow("GET, HEAD"))
            .unify(),
    );

    // GET, PATCH, DELETE /api/v1/admin/users/{id}
    let user = || warp::path!("api" / "v1" / "admin" / "users" / UserId);
    let read = user()
        .and(get())
        .and(with_admin(state))
        .and(with_db(&state.store))
        .and_then(get_user);
    let patch = user()
        .and(warp::patch())
        .and(with_admin(state))
        .and(json_body::<UserChangeIn>(&state.rules))
        .and(audit_context())
        .and(with_db(&state.store))
        .and_then(update_user);
    let delete = user()
        .and(warp::delete())
        .and(with_admin(state))
        .and(audit_context())
        .and(with_db(&state.store))
        .and_then(delete_user);
    let other = user()
        .and(allow("GET, HEAD, PATCH, DELETE"))
        .map(|_: UserId, refused: Response| refused);
    let one = read.or(patch).unify().or(delete).unify().or(other).unify();

    // GET, DELETE /api/v1/admin/users/{id}/sessions
    let sessions = || warp::path!("api" / "v1" / "admin" / "users" / UserId / "sessions");
    let list_sessions = sessions()
        .and(get())
        .and(with_admin(state))
        .and(with_db(&state.store))
        .and_then(user_sessions);
    let end_sessions = sessions()
        .and(warp::delete())
        .and(with_admin(state))
        .and(audit_context())
        .and(with_db(&state.store))
        .and_then(end_user_sessions);
    let other = sessions()
        .and(allow("GET, HEAD, DELETE"))
        .map(|_: UserId, refused: Response| refused);
    let sessions = list_sessions.or(end_sessions).unify().or(other).unify();

    // DELETE /api/v1/admin/users/{id}/mfa
    let mfa = || warp::path!("api" / "v1" / "admin" / "users" / UserId / "mfa");
    let mfa_off = mfa()
        .and(warp::delete())
        .and(with_admin(state))
        .and(audit_context())
        .and(with_db(&state.store))
        .and_then(disable_mfa);
    let other = mfa()
        .and(allow("DELETE"))
        .map(|_: UserId, refused: Response| refused);
    let mfa = mfa_off.or(other).unify();

    // POST /api/v1/admin/users/{id}/password-reset
    let reset = || warp::path!("api" / "v1" / "admin" / "users" / UserId / "password-reset");
    let send_reset = reset()
        .and(warp::post())
        .and(with_admin(state))
        .and(audit_context())
        .and(with_state(state))
        .and_then(send_password_reset);
    let other = reset()
        .and(allow("POST"))
        .map(|_: UserId, refused: Response| refused);
    let reset = send_reset.or(other).unify();

    // GET /api/v1/admin/audit?user_id&type&before_id&limit
    let audit = warp::path!("api" / "v1" / "admin" / "audit").and(
        get()
            .and(with_admin(state))
            .and(audit_query())
            .and(with_db(&state.store))
            .and_then(list_audit)
            .or(allow("GET, HEAD"))
            .unify(),
    );

    list.or(one)
        .unify()
        .or(sessions)
        .unify()
        .or(reset)
        .unify()
        .or(mfa)
        .unify()
        .or(audit)
        .unify()
        .boxed()
}

/// A user id in a path: digits only, so `/users/abc` (or `-1`, `+1`, `1e3`) is no route: 404.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserId(i64);

impl FromStr for UserId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map(UserId).map_err(|_| ())
    }
}

/// Paging and search of the user list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Users per page, 1 to 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, default = 50)]
    limit: Option<String>,
    /// Users to skip (not with `after_id`).
    #[param(value_type = Option<i64>, minimum = 0, default = 0)]
    offset: Option<String>,
    /// Keyset paging: only users whose id is greater (the last id of the previous page); the
    /// same order as offset paging, at the same cost however deep.
    #[param(value_type = Option<i64>, minimum = 0)]
    after_id: Option<String>,
    /// Only users whose email contains this text, ignoring case.
    #[param(value_type = Option<String>, max_length = 254)]
    q: Option<String>,
}

/// The query string as a validated [`UserQuery`]; every bad parameter is named at once.
fn page_query() -> impl Filter<Extract = (UserQuery,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            let query: PageQuery = serde_urlencoded::from_str(&raw)
                .map_err(|_| ApiError::BadRequest("Malformed query string".into()))?;
            let mut errors = Vec::new();
            let limit = number_param("limit", query.limit.as_deref(), 1, 100, &mut errors);
            let offset = number_param("offset", query.offset.as_deref(), 0, i64::MAX, &mut errors);
            let after_id = number_param(
                "after_id",
                query.after_id.as_deref(),
                0,
                i64::MAX,
                &mut errors,
            );
            if after_id.is_some() && query.offset.is_some() {
                errors.push(FieldError::new(
                    "offset",
                    "cannot be combined with after_id: page by one or the other",
                ));
            }
            let q = match query.q.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(q) if q.chars().count() > 254 => {
                    errors.push(FieldError::new("q", "must be at most 254 characters"));
                    None
                }
                // Emails are stored lower-cased (domains in their ASCII form).
                Some(q) => Some(q.to_lowercase()),
            };
            if errors.is_empty() {
                Ok(UserQuery {
                    limit: limit.unwrap_or(50),
                    offset: offset.unwrap_or(0),
                    after_id,
                    q,
                })
            } else {
                Err(Rejection::from(ApiError::Validation(errors)))
            }
        })
}

/// The audit log's filters and paging.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only events about this user.
    #[param(value_type = Option<i64>, minimum = 1)]
    user_id: Option<String>,
    /// Only events of this type (e.g. `login.failed`).
    #[serde(rename = "type")]
    #[param(value_type = Option<String>, example = "login.failed")]
    kind: Option<String>,
    /// Only events older than this one (the last id of the previous page).
    #[param(value_type = Option<i64>, minimum = 1)]
    before_id: Option<String>,
    /// Events per page, 1 to 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, default = 50)]
    limit: Option<String>,
}

/// A whole number from `min`, or the parameter is named in `errors`.
fn number_param(
    name: &str,
    value: Option<&str>,
    min: i64,
    max: i64,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    match value.map(str::parse::<i64>) {
        None => None,
        Some(Ok(n)) if (min..=max).contains(&n) => Some(n),
        Some(_) if max == i64::MAX => {
            errors.push(FieldError::new(
                name,
                format!("must be an integer of {min} or more"),
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                name,
                format!("must be an integer from {min} to {max}"),
            ));
            None
        }
    }
}

/// The query string as a validated [`audit::Query`]; every bad parameter is named at once.
fn audit_query() -> impl Filter<Extract = (audit::Query,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            let params: AuditParams = serde_urlencoded::from_str(&raw)
                .map_err(|_| ApiError::BadRequest("Malformed query string".into()))?;
            let mut errors = Vec::new();
            let user_id = number_param(
                "user_id",
                params.user_id.as_deref(),
                1,
                i64::MAX,
                &mut errors,
            );
            let before_id = number_param(
                "before_id",
                params.before_id.as_deref(),
                1,
                i64::MAX,
                &mut errors,
            );
            let limit = number_param("limit", params.limit.as_deref(), 1, 100, &mut errors);
            let kind = match params.kind.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(name) => match audit::Kind::parse(name) {
                    Some(kind) => Some(kind),
                    None => {
                        let known: Vec<&str> =
                            audit::Kind::ALL.iter().map(|k| k.as_str()).collect();
                        errors.push(FieldError::new(
                            "type",
                            format!("must be one of {}", known.join(", ")),
                        ));
                        None
                    }
                },
            };
            if errors.is_empty() {
                Ok(audit::Query {
                    user_id,
                    kind,
                    before_id,
                    limit: limit.unwrap_or(50),
                })
            } else {
                Err(Rejection::from(ApiError::Validation(errors)))
            }
        })
}

/// A page of audit events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<audit::AuditEvent>,
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    /// All the users the query matches, on every page.
    #[schema(example = 1)]
    pub total: i64,
    #[schema(example = 50)]
    pub limit: i64,
    #[schema(example = 0)]
    pub offset: i64,
}

/// A change to a user: only the fields present change (`{}` changes nothing).
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"role": "admin"}))]
pub struct UserChangeIn {
    /// A demotion applies to the user's live tokens at once.
    #[serde(default)]
    role: Option<Role>,
    /// `true` ends every session of the user at once and refuses its logins (403).
    #[serde(default)]
    disabled: Option<bool>,
}

/// List users, ordered by id, a page at a time (by `offset`, or after an id), optionally only
/// those whose email contains `q`.
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn list_users(
    _admin: Auth,
    query: UserQuery,
    store: Store,
) -> Result<Response, Rejection> {
    let (limit, offset) = (query.limit, query.offset);
    let page = store.list_users(query).await?;
    Ok(warp::reply::json(&UserPage {
        items: page.items,
        total: page.total,
        limit,
        offset,
    })
    .into_response())
}

/// One user.
#[utoipa::path(
    get,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn get_user(
    id: UserId,
    _admin: Auth,
    store: Store,
) -> Result<Response, Rejection> {
    let user = store.user(id.0).await?.ok_or(StoreError::NotFound)?;
    Ok(warp::reply::json(&user).into_response())
}

/// Change a user's role or disable it; a demotion applies to that user's live tokens at once, and
/// disabling ends every session of it and refuses its logins (403). The last enabled admin
/// cannot be demoted or disabled (409).
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    request_body = UserChangeIn,
    responses(
        (status = 200, description = "The user as it is now", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn update_user(
    id: UserId,
    admin: Auth,
    body: UserChangeIn,
    audit: Context,
    store: Store,
) -> Result<Response, Rejection> {
    let change = UserChange {
        role: body.role,
        disabled: body.disabled,
    };
    let user = store
        .update_user(admin.user.id, id.0, change, &audit.by(admin.user.id))
        .await?;
    tracing::info!(
        admin_id = admin.user.id,
        user_id = user.id,
        role = user.role.as_str(),
        disabled = user.disabled,
        "user changed by an admin"
    );
    Ok(warp::reply::json(&user).into_response())
}

/// Delete a user; its tokens die at once. The last admin cannot be deleted (409).
#[utoipa::path(
    delete,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn delete_user(
    id: UserId,
    admin: Auth,
    audit: Context,
    store: Store,
) -> Result<Response, Rejection> {
    store
        .delete_user(Some(admin.user.id), id.0, &audit.by(admin.user.id))
        .await?;
    tracing::info!(
        admin_id = admin.user.id,
        user_id = id.0,
        "user deleted by an admin"
    );
    Ok(no_content())
}

/// A user's live sessions, newest first (`current` is always false here).
#[utoipa::path(
    get,
    path = "/api/v1/admin/users/{id}/sessions",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    responses(
        (status = 200, description = "The user's sessions, newest first", body = [SessionOut]),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn user_sessions(
    id: UserId,
    _admin: Auth,
    store: Store,
) -> Result<Response, Rejection> {
    store.user(id.0).await?.ok_or(StoreError::NotFound)?;
    let sessions = store.sessions_of(id.0, now_seconds()).await?;
    Ok(sessions_reply(sessions, None))
}

/// End every session of a user (a forced logout): its tokens stop working at once.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/users/{id}/sessions",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    responses(
        (status = 204, description = "Every session of the user has ended"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn end_user_sessions(
    id: UserId,
    admin: Auth,
    audit: Context,
    store: Store,
) -> Result<Response, Rejection> {
    store.user(id.0).await?.ok_or(StoreError::NotFound)?;
    let ended = store
        .end_sessions(id.0, None, &audit.by(admin.user.id))
        .await?;
    tracing::info!(
        admin_id = admin.user.id,
        user_id = id.0,
        sessions = ended,
        "sessions ended by an admin"
    );
    Ok(no_content())
}

/// Send a user the password reset mail (as `POST /password/forgot` would).
///
/// At most 3 reset mails an hour go to one user, whoever asks (429 after that).
#[utoipa::path(
    post,
    path = "/api/v1/admin/users/{id}/password-reset",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    responses(
        (status = 202, description = "A reset mail is queued", body = Accepted),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn send_password_reset(
    id: UserId,
    admin: Auth,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    match state
        .store
        .queue_mail(
            Recipient::User(id.0),
            MailKind::ResetPassword,
            now_seconds(),
            MAILS_PER_HOUR,
            &audit.by(admin.user.id),
        )
        .await?
    {
        Queued::Yes => {
            state.mailer.queued();
            tracing::info!(
                admin_id = admin.user.id,
                user_id = id.0,
                "password reset mail queued by an admin"
            );
            Ok(accepted("A password reset mail is on its way to the user"))
        }
        Queued::Limited { retry_after } => Err(ApiError::TooManyMails { retry_after }.into()),
        Queued::NoSuchUser => Err(StoreError::NotFound.into()),
    }
}

/// Turn a user's MFA off (a lost phone); the user logs in with the password alone until it is
/// enrolled again.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/users/{id}/mfa",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    responses(
        (status = 204, description = "The user's MFA is off"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn disable_mfa(
    id: UserId,
    admin: Auth,
    audit: Context,
    store: Store,
) -> Result<Response, Rejection> {
    store.user(id.0).await?.ok_or(StoreError::NotFound)?;
    if !store.disable_mfa(id.0, &audit.by(admin.user.id)).await? {
        return Err(ApiError::Conflict("Two-factor authentication is not on for this user").into());
    }
    tracing::info!(
        admin_id = admin.user.id,
        user_id = id.0,
        "MFA turned off by an admin"
    );
    Ok(no_content())
}

/// The audit log, newest first: registrations, logins (succeeded, failed, throttled), password
/// changes and resets, verifications, ended sessions, refresh-token reuse, MFA, admin changes
/// and key rotations, each with who acted, from which address and in which request.
///
/// Page with `before_id` (the last id of the previous page). Events older than
/// `AUDIT_RETENTION_DAYS` (90) are gone. No event holds a secret.
#[utoipa::path(
    get,
    path = "/api/v1/admin/audit",
    tag = "admin",
    security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "A page of events, newest first", body = AuditPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn list_audit(
    _admin: Auth,
    query: audit::Query,
    store: Store,
) -> Result<Response, Rejection> {
    let items = store.audit_events(query).await?;
    Ok(warp::reply::json(&AuditPage { items }).into_response())
}
