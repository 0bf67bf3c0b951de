//! `/api/v1/admin`: user management for admins (a member gets 403).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use validator::Validate;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::error::{ApiError, FieldError};
use crate::error::{
    BadRequest, Conflict, Forbidden, InternalError, NotFound, PayloadTooLarge, RequestTimeout,
    ServiceUnavailable, Unauthorized, UnsupportedMediaType,
};
use crate::filters::{Auth, allow, get, json_body, with_admin, with_db};
use crate::routes::no_content;
use crate::store::{Role, Store, User};
use crate::validation::Rules;

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    // GET /api/v1/admin/users?limit&offset
    let list = warp::path!("api" / "v1" / "admin" / "users").and(
        get()
            .and(with_admin(state))
            .and(page_query())
            .and(with_db(&state.store))
            .and_then(list_users)
            .or(allow("GET, HEAD"))
            .unify(),
    );

    // PATCH, DELETE /api/v1/admin/users/{id}
    let user = || warp::path!("api" / "v1" / "admin" / "users" / UserId);
    let patch = user()
        .and(warp::patch())
        .and(with_admin(state))
        .and(json_body::<RoleIn>(&state.rules))
        .and(with_db(&state.store))
        .and_then(set_role);
    let delete = user()
        .and(warp::delete())
        .and(with_admin(state))
        .and(with_db(&state.store))
        .and_then(delete_user);
    let other = user()
        .and(allow("PATCH, DELETE"))
        .map(|_: UserId, refused: Response| refused);
    let one = patch.or(delete).unify().or(other).unify();

    list.or(one).unify().boxed()
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

/// Paging of the user list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Users per page, 1 to 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, default = 50)]
    limit: Option<String>,
    /// Users to skip.
    #[param(value_type = Option<i64>, minimum = 0, default = 0)]
    offset: Option<String>,
}

/// The query string as a validated (limit, offset); every bad parameter is named at once.
fn page_query() -> impl Filter<Extract = ((i64, i64),), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            let query: PageQuery = serde_urlencoded::from_str(&raw)
                .map_err(|_| ApiError::BadRequest("Malformed query string".into()))?;
            let mut errors = Vec::new();
            let limit = match query.limit.as_deref().map(str::parse::<i64>) {
                None => 50,
                Some(Ok(n)) if (1..=100).contains(&n) => n,
                Some(_) => {
                    errors.push(FieldError::new("limit", "must be an integer from 1 to 100"));
                    0
                }
            };
            let offset = match query.offset.as_deref().map(str::parse::<i64>) {
                None => 0,
                Some(Ok(n)) if n >= 0 => n,
                Some(_) => {
                    errors.push(FieldError::new("offset", "must be an integer of 0 or more"));
                    0
                }
            };
            if errors.is_empty() {
                Ok((limit, offset))
            } else {
                Err(Rejection::from(ApiError::Validation(errors)))
            }
        })
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    /// All users, on every page.
    #[schema(example = 1)]
    pub total: i64,
    #[schema(example = 50)]
    pub limit: i64,
    #[schema(example = 0)]
    pub offset: i64,
}

/// A role change.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"role": "admin"}))]
pub struct RoleIn {
    role: Role,
}

/// List users, ordered by id, a page at a time.
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
    (limit, offset): (i64, i64),
    store: Store,
) -> Result<Response, Rejection> {
    let page = store.list_users(limit, offset).await?;
    Ok(warp::reply::json(&UserPage {
        items: page.items,
        total: page.total,
        limit,
        offset,
    })
    .into_response())
}

/// Set a user's role; it applies to that user's live tokens at once. The last admin cannot be
/// demoted (409).
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "The user's id", minimum = 1)),
    request_body = RoleIn,
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
pub(crate) async fn set_role(
    id: UserId,
    admin: Auth,
    body: RoleIn,
    store: Store,
) -> Result<Response, Rejection> {
    let user = store.set_role(admin.user.id, id.0, body.role).await?;
    tracing::info!(
        admin_id = admin.user.id,
        user_id = user.id,
        role = user.role.as_str(),
        "role changed"
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
    store: Store,
) -> Result<Response, Rejection> {
    store.delete_user(Some(admin.user.id), id.0).await?;
    tracing::info!(
        admin_id = admin.user.id,
        user_id = id.0,
        "user deleted by an admin"
    );
    Ok(no_content())
}
