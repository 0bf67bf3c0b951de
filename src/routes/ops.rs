//! Operations: liveness and readiness.

use serde::Serialize;
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::error::ApiError;
use crate::error::ServiceUnavailable;
use crate::filters::{allow, get, with_db};
use crate::store::{Store, StoreError};

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    // GET /health
    let health = warp::path!("health").and(get().map(health).or(allow("GET, HEAD")).unify());

    // GET /health/ready
    let ready = warp::path!("health" / "ready").and(
        get()
            .and(with_db(&state.store))
            .and_then(ready)
            .or(allow("GET, HEAD"))
            .unify(),
    );

    health.or(ready).unify().boxed()
}

/// The process's or the database's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/health",
    tag = "ops",
    responses((status = 200, description = "The process runs", body = Status))
)]
pub(crate) fn health() -> Response {
    warp::reply::json(&Status { status: "ok" }).into_response()
}

/// Readiness: 200 when the database answers a query, else 503 (unreachable, failing, damaged).
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "ops",
    responses(
        (status = 200, description = "The database answers a query", body = Status),
        (status = 503, response = ServiceUnavailable)
    )
)]
pub(crate) async fn ready(store: Store) -> Result<Response, Rejection> {
    store.ping().await.map_err(|e| match e {
        // Not ready, whatever the reason: readiness answers 503, never 500.
        StoreError::Internal(cause) => ApiError::Unavailable(cause),
        other => other.into(),
    })?;
    Ok(warp::reply::json(&Status { status: "ok" }).into_response())
}
