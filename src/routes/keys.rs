//! `/.well-known/jwks.json`: the public keys other services verify access tokens with.

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::filters::{allow, get, with_state};
use crate::keys::JwkSet;

/// How long clients may cache the set (the contract: five minutes).
const CACHE_CONTROL: &str = "public, max-age=300";

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    // GET /.well-known/jwks.json
    warp::path!(".well-known" / "jwks.json")
        .and(
            get()
                .and(with_state(state))
                .map(jwks)
                .or(allow("GET, HEAD"))
                .unify(),
        )
        .boxed()
}

/// The JWK Set (RFC 7517) of the keys that verify access tokens.
///
/// The signing key and every earlier key whose tokens may still be alive, public parts only.
/// With an HMAC algorithm (`HS256`, the default) the set is empty: a shared secret is never
/// published. A token names its key in its `kid` header; a client that meets an unknown `kid`
/// should fetch the set again (keys rotate).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "keys",
    responses((
        status = 200,
        description = "The public signing keys",
        body = JwkSet,
        headers(("Cache-Control" = String, description = "`public, max-age=300`"))
    ))
)]
pub(crate) fn jwks(state: AppState) -> Response {
    let body = state.tokens.ring().current().jwks();
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    response.into_response()
}
