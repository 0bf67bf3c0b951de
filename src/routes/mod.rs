//! One module per resource; each exposes `routes(state)` as one boxed filter.

pub mod account;
pub mod admin;
pub mod docs;
pub mod keys;
pub mod mfa;
pub mod ops;
pub mod recovery;
pub mod sessions;
pub mod users;

use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

/// 204, no body.
pub fn no_content() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
}
