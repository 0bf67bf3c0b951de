//! `/api/v1/users/me/sessions`: the caller's sessions (one per login, on each device), listed and
//! ended. The admin routes list and end another user's with the same [`Session`] shape.

use serde::Serialize;
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::audit::Context;
use crate::error::{ApiError, InternalError, NotFound, ServiceUnavailable, Unauthorized};
use crate::filters::{Auth, allow, audit_context, get, with_auth, with_state};
use crate::routes::no_content;
use crate::store::SessionInfo;
use crate::tokens::{now_seconds, rfc3339};

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    // GET, DELETE /api/v1/users/me/sessions
    let all = warp::path!("api" / "v1" / "users" / "me" / "sessions").and(
        get()
            .and(with_auth(state))
            .and(with_state(state))
            .and_then(list_sessions)
            .or(warp::delete()
                .and(with_auth(state))
                .and(audit_context())
                .and(with_state(state))
                .and_then(end_other_sessions))
            .unify()
            .or(allow("GET, HEAD, DELETE"))
            .unify(),
    );

    // DELETE /api/v1/users/me/sessions/{id}
    let session = || warp::path!("api" / "v1" / "users" / "me" / "sessions" / String);
    let end = session()
        .and(warp::delete())
        .and(with_auth(state))
        .and(audit_context())
        .and(with_state(state))
        .and_then(end_session);
    let other = session()
        .and(allow("DELETE"))
        .map(|_: String, refused: Response| refused);
    let one = end.or(other).unify();

    all.or(one).unify().boxed()
}

/// A session: one login, on one device, until it ends.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Session, example = json!({"id": "0d2c5e0b8f5a4c1e9a3b7d6f1e2a4b5c", "created_at": "2026-12-01T09:00:00Z", "last_used_at": "2026-12-01T10:00:00Z", "expires_at": "2026-12-15T09:00:00Z", "user_agent": "Mozilla/5.0", "ip": "203.0.113.7", "current": true}))]
pub struct SessionOut {
    /// The session's id (the `sid` claim of its access tokens).
    pub id: String,
    /// The login (RFC 3339, UTC).
    pub created_at: String,
    /// The login or the last refresh (not every request).
    pub last_used_at: String,
    /// When the session ends, however often it is refreshed.
    pub expires_at: String,
    /// The client's `User-Agent` at the last login or refresh (at most 256 characters).
    #[schema(required = true)]
    pub user_agent: Option<String>,
    /// The client's address then.
    #[schema(required = true)]
    pub ip: Option<String>,
    /// Whether this is the session of the token that asked.
    pub current: bool,
}

impl SessionOut {
    pub fn new(session: SessionInfo, current: Option<&str>) -> Self {
        Self {
            current: current == Some(session.id.as_str()),
            id: session.id,
            created_at: rfc3339(session.created_at),
            last_used_at: rfc3339(session.last_used_at),
            expires_at: rfc3339(session.expires_at),
            user_agent: session.user_agent,
            ip: session.ip,
        }
    }
}

/// The sessions as the API shows them; `current` names the caller's own.
pub fn sessions_reply(sessions: Vec<SessionInfo>, current: Option<&str>) -> Response {
    let out: Vec<SessionOut> = sessions
        .into_iter()
        .map(|s| SessionOut::new(s, current))
        .collect();
    warp::reply::json(&out).into_response()
}

/// The caller's live sessions, newest first; `current` marks the one of this token.
#[utoipa::path(
    get,
    path = "/api/v1/users/me/sessions",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's sessions, newest first", body = [SessionOut]),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn list_sessions(auth: Auth, state: AppState) -> Result<Response, Rejection> {
    let sessions = state.store.sessions_of(auth.user.id, now_seconds()).await?;
    Ok(sessions_reply(sessions, Some(&auth.session_id)))
}

/// End every session of the caller but this one (log out the other devices).
#[utoipa::path(
    delete,
    path = "/api/v1/users/me/sessions",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every other session has ended; their tokens stop working at once"),
        (status = 401, response = Unauthorized),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn end_other_sessions(
    auth: Auth,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    let ended = state
        .store
        .end_sessions(auth.user.id, Some(auth.session_id), &audit.by(auth.user.id))
        .await?;
    tracing::info!(
        user_id = auth.user.id,
        sessions = ended,
        "other sessions ended"
    );
    Ok(no_content())
}

/// End one session of the caller (it may be this one); its tokens stop working at once.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me/sessions/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 204, description = "The session has ended"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn end_session(
    id: String,
    auth: Auth,
    audit: Context,
    state: AppState,
) -> Result<Response, Rejection> {
    if !state
        .store
        .end_session(auth.user.id, id, &audit.by(auth.user.id))
        .await?
    {
        // Unknown, or another user's: the same answer.
        return Err(ApiError::NotFound("No session with this id").into());
    }
    tracing::info!(user_id = auth.user.id, "session ended");
    Ok(no_content())
}
