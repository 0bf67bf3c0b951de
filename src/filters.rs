//! The composable pieces every route is built from: state injection, bodies, authentication and
//! the per-path method fallback.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use validator::ValidateArgs;
use warp::http::{HeaderMap, HeaderValue, Method, header};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;
use crate::error::ApiError;
use crate::store::{Role, Store, User};
use crate::tokens;
use crate::validation::{self, Rules};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The database handle, for handlers that need nothing else.
pub fn with_db(
    store: &Store,
) -> impl Filter<Extract = (Store,), Error = Infallible> + Clone + use<> {
    let store = store.clone();
    warp::any().map(move || store.clone())
}

/// The whole application state.
pub fn with_state(
    state: &AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone + use<> {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// The client's address, as the server saw the connection (set by `server::serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

pub fn client_addr() -> impl Filter<Extract = (Option<ClientAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<ClientAddr>()
}

/// The client as a session records it: its raw `User-Agent` (never refused, whatever its bytes)
/// and its address.
pub fn session_client()
-> impl Filter<Extract = (crate::sessions::Client,), Error = Infallible> + Clone {
    warp::header::value("user-agent")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
        .and(client_addr())
        .map(|agent: Option<HeaderValue>, addr: Option<ClientAddr>| {
            crate::sessions::Client::new(
                agent.as_ref().map(HeaderValue::as_bytes),
                addr.map(|a| a.0),
            )
        })
}

/// The request as audit events record it: the client (address, `User-Agent`) and the request's
/// id; no actor yet (an authenticated handler names it with [`crate::audit::Context::by`]).
pub fn audit_context() -> impl Filter<Extract = (crate::audit::Context,), Error = Infallible> + Clone
{
    session_client()
        .and(request_id())
        .map(|client, id: Option<RequestId>| crate::audit::Context {
            actor_id: None,
            client,
            request_id: id.map(|id| id.as_str().to_owned()),
        })
}

/// The kinds of body a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

impl BodyKind {
    fn of(content_type: &str) -> Option<Self> {
        let mut parts = content_type.split(';');
        let essence = parts.next().unwrap_or_default().trim();
        // A charset other than UTF-8 would be misread: refuse it as an unsupported type.
        let charset_ok = parts.all(|p| match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        });
        if !charset_ok {
            return None;
        }
        if essence.eq_ignore_ascii_case("application/json") {
            Some(Self::Json)
        } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(Self::Form)
        } else {
            None
        }
    }
}

/// The body of a request whose content type is one of `accepted`, read up to [`BODY_LIMIT`]
/// whether or not a `Content-Length` announces its size (a chunked body is counted as it comes).
pub fn body_of(
    accepted: &'static [BodyKind],
) -> impl Filter<Extract = (BodyKind, Bytes), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(
            move |length: Option<u64>, content_type: Option<String>, chunked: Option<String>| async move {
                if length.is_some_and(|n| n > BODY_LIMIT as u64) {
                    return Err(Rejection::from(ApiError::PayloadTooLarge));
                }
                // No body and no type at all: read as an empty JSON object, so that the answer
                // is a 400 naming what is missing rather than a 415 about a type never sent.
                if content_type.is_none()
                    && length.unwrap_or(0) == 0
                    && chunked.is_none()
                    && accepted.contains(&BodyKind::Json)
                {
                    return Ok(None);
                }
                match content_type.as_deref().and_then(BodyKind::of) {
                    Some(kind) if accepted.contains(&kind) => Ok(Some(kind)),
                    _ => Err(ApiError::UnsupportedMediaType(
                        if accepted.contains(&BodyKind::Form) {
                            "Send application/json or application/x-www-form-urlencoded"
                        } else {
                            "Send application/json"
                        },
                    )
                    .into()),
                }
            },
        )
        .and(warp::body::stream())
        .and_then(|kind: Option<BodyKind>, stream| async move {
            // Nothing sent: an empty JSON body, which `parse_json_body` reads as `{}`.
            let Some(kind) = kind else {
                return Ok::<_, Rejection>((BodyKind::Json, Bytes::new()));
            };
            let bytes = read_limited(stream).await?;
            Ok::<_, Rejection>((kind, bytes))
        })
        .untuple_one()
}

/// How long a body may take to arrive once its headers have: a client sending a byte now and
/// then must not hold a connection forever.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

async fn read_limited<S, B>(stream: S) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let read = async {
        let mut stream = std::pin::pin!(stream);
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let mut chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("Could not read the body: {e}")))?;
            if body.len() + chunk.remaining() > BODY_LIMIT {
                return Err(ApiError::PayloadTooLarge);
            }
            while chunk.has_remaining() {
                let piece = chunk.chunk();
                let n = piece.len();
                body.extend_from_slice(piece);
                chunk.advance(n);
            }
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_DEADLINE, read)
        .await
        .map_err(|_| ApiError::RequestTimeout)?
}

/// A JSON body of type `T`: size limit → content type → JSON → validation, each failure a
/// problem+json (413, 415, 400 naming the fields).
pub fn json_body<T>(
    rules: &Arc<Rules>,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone + use<T>
where
    T: DeserializeOwned + for<'a> ValidateArgs<'a, Args = &'a Rules> + Send + 'static,
{
    let rules = rules.clone();
    body_of(&[BodyKind::Json]).and_then(move |_kind, body: Bytes| {
        let rules = rules.clone();
        async move { parse_json_body::<T>(&body, &rules).map_err(Rejection::from) }
    })
}

/// A JSON body as `T`; a request that sent nothing (no body, no type) is read as `{}`, so that the
/// answer names the fields it lacks, and is refused when `T` needs none (a body is still
/// required: an empty PATCH is a mistake, not "change nothing").
pub fn parse_json_body<T>(body: &[u8], rules: &Rules) -> Result<T, ApiError>
where
    T: DeserializeOwned + for<'a> ValidateArgs<'a, Args = &'a Rules>,
{
    if !body.is_empty() {
        return validation::parse_json::<T>(body, rules);
    }
    match validation::parse_json::<T>(b"{}", rules) {
        Ok(_) => Err(ApiError::BadRequest(
            "Send a JSON body (Content-Type: application/json)".into(),
        )),
        Err(e) => Err(e),
    }
}

/// Like [`json_body`], or `None` when the request has no body at all: no content type, and
/// nothing sent (`/refresh` with the refresh cookie).
pub fn optional_json_body<T>(
    rules: &Arc<Rules>,
) -> impl Filter<Extract = (Option<T>,), Error = Rejection> + Clone + use<T>
where
    T: DeserializeOwned + for<'a> ValidateArgs<'a, Args = &'a Rules> + Send + 'static,
{
    let empty = warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(
            |kind: Option<String>, length: Option<u64>, chunked: Option<String>| async move {
                // Nothing sent: no length and no chunks, or a length of 0 (whatever the type).
                if length == Some(0) || (kind.is_none() && length.is_none() && chunked.is_none()) {
                    Ok(None)
                } else {
                    Err(warp::reject::not_found())
                }
            },
        );
    empty.or(json_body::<T>(rules).map(Some)).unify()
}

/// The `Authorization` header as far as authentication cares.
enum Credentials {
    Bearer(String),
    /// No header, or another scheme: no token was sent.
    Absent,
    /// A header that is not even text: a token was sent, and it is bad.
    Unreadable,
}

impl FromStr for Credentials {
    type Err = Infallible;

    /// `<scheme><spaces or tabs><token>`: RFC 7235 asks for spaces, but a tab is whitespace to
    /// every other reader of the header, so `Bearer<TAB>token` is a bearer token too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scheme, token) = s.split_once([' ', '\t']).unwrap_or((s, ""));
        Ok(if scheme.eq_ignore_ascii_case("bearer") {
            Credentials::Bearer(token.trim().to_owned())
        } else {
            Credentials::Absent
        })
    }
}

/// The authenticated caller: the user as stored now, and the session the token belongs to.
#[derive(Debug, Clone)]
pub struct Auth {
    pub user: User,
    pub session_id: String,
}

/// `Authorization: Bearer <access token>` → the current user and session. The token must verify
/// and its session and user must still exist, so logout and revocation take effect at once.
pub fn with_auth(
    state: &AppState,
) -> impl Filter<Extract = (Auth,), Error = Rejection> + Clone + use<> {
    let state = state.clone();
    warp::header::optional::<Credentials>("authorization")
        .or_else(|_| async { Ok::<_, Rejection>((Some(Credentials::Unreadable),)) })
        .and_then(move |credentials: Option<Credentials>| {
            let state = state.clone();
            async move {
                authenticate(&state, credentials)
                    .await
                    .map_err(Rejection::from)
            }
        })
        .and(warp::ext::optional::<LoggedUser>())
        .map(|auth: Auth, logged: Option<LoggedUser>| {
            if let Some(logged) = logged {
                logged.set(auth.user.id);
            }
            auth
        })
}

/// Who a request authenticated as, for its access-log line: `server::serve` gives each request
/// an empty one, [`with_auth`] fills it in, the app's `finish` reads it. (A field recorded into the
/// request span would do the same, at the cost of re-serializing the span's fields with JSON logs,
/// about 2 µs: see BENCHMARKS.md.)
#[derive(Debug, Clone, Default)]
pub struct LoggedUser(Arc<std::sync::atomic::AtomicI64>);

impl LoggedUser {
    fn set(&self, user_id: i64) {
        self.0.store(user_id, std::sync::atomic::Ordering::Relaxed);
    }

    /// The user id, once authenticated (ids start at 1).
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(std::sync::atomic::Ordering::Relaxed)).filter(|id| *id > 0)
    }
}

async fn authenticate(
    state: &AppState,
    credentials: Option<Credentials>,
) -> Result<Auth, ApiError> {
    let token = match credentials {
        None | Some(Credentials::Absent) => return Err(ApiError::MissingToken),
        Some(Credentials::Unreadable) => return Err(ApiError::InvalidToken),
        Some(Credentials::Bearer(token)) => token,
    };
    let claims = match state.tokens.verify(&token) {
        Ok(claims) => claims,
        // A key made moments ago (a rotation another replica picked up first): look again.
        Err(tokens::Refused::UnknownKey)
            if state
                .tokens
                .ring()
                .reload_for_unknown_kid(&state.store)
                .await =>
        {
            state
                .tokens
                .verify(&token)
                .map_err(|_| ApiError::InvalidToken)?
        }
        Err(_) => return Err(ApiError::InvalidToken),
    };
    let user = state
        .store
        .session_user(
            claims.session_id.clone(),
            claims.user_id,
            tokens::now_seconds(),
        )
        .await?
        .ok_or(ApiError::InvalidToken)?;
    Ok(Auth {
        user,
        session_id: claims.session_id,
    })
}

/// `with_auth`, then the caller's role (as stored now) must be admin, else 403.
pub fn with_admin(
    state: &AppState,
) -> impl Filter<Extract = (Auth,), Error = Rejection> + Clone + use<> {
    with_auth(state).and_then(|auth: Auth| async move {
        if auth.user.role == Role::Admin {
            Ok(auth)
        } else {
            Err(Rejection::from(ApiError::Forbidden(
                crate::error::NEEDS_ADMIN,
            )))
        }
    })
}

/// GET, and HEAD on the same route (uptime monitors send it): the app answers a HEAD with the
/// GET's status and headers and no body (see `crate::app`).
pub fn get() -> impl Filter<Extract = (), Error = Rejection> + Copy {
    warp::get().or(warp::head()).unify()
}

/// The last branch of every path: a method the path does not serve gets 405 with `Allow`
/// (`allowed` is that header's value, e.g. `"GET, PATCH"`); a method it does serve falls through
/// with a not-found rejection, so the error of the branch that ran (401, 400, …) is the answer.
pub fn allow(
    allowed: &'static str,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::method().and_then(move |method: Method| async move {
        if allowed.split(", ").any(|m| m == method.as_str()) {
            Err(warp::reject::not_found())
        } else {
            Err(Rejection::from(ApiError::MethodNotAllowed {
                allow: allowed,
            }))
        }
    })
}

/// A request id: the caller's `X-Request-Id` when it is 1 to 64 characters of `A-Za-z0-9._-`,
/// else a new one. `server::serve` gives each request its id as a request extension, so that
/// every filter reads the same one ([`request_id`]).
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl FromStr for RequestId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let valid = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            HeaderValue::from_str(s).map(RequestId).map_err(|_| ())
        } else {
            Err(())
        }
    }
}

impl RequestId {
    fn generate() -> Self {
        let id = crate::tokens::random_id();
        // 32 hex digits are always a valid header value.
        RequestId(HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    /// The id to answer a request with, given its `X-Request-Id` header.
    pub fn for_header(given: Option<&HeaderValue>) -> Self {
        given
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<RequestId>().ok())
            .unwrap_or_else(RequestId::generate)
    }

    /// The id as a header value.
    pub fn header(self) -> HeaderValue {
        self.0
    }

    /// The id as text (it is ASCII by construction).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

/// The request's id as `server::serve` assigned it; without the server (`warp::test`), the
/// caller's valid `X-Request-Id`, if any.
pub fn request_id() -> impl Filter<Extract = (Option<RequestId>,), Error = Infallible> + Clone {
    warp::ext::optional::<RequestId>()
        .and(
            warp::header::optional::<RequestId>("x-request-id")
                .or_else(|_| async { Ok::<_, Infallible>((None,)) }),
        )
        .map(|assigned: Option<RequestId>, given: Option<RequestId>| assigned.or(given))
}

/// The headers every response carries: its request id, and `nosniff`. Used by the app for
/// every response it makes, and by the server for the few it makes itself (431, a panic).
pub fn stamp(headers: &mut HeaderMap, request_id: HeaderValue) {
    headers.insert("x-request-id", request_id);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// The request's id (recorded into the request span), whether it is a HEAD, and its start time.
/// Dropped before the
/// app's [`finish`](crate::app) took it, it logs the request as abandoned: a client that hangs up
/// before its answer still leaves an access-log line.
pub struct RequestContext {
    pub id: HeaderValue,
    pub head: bool,
    pub start: Instant,
    /// The method and the route (the path's template) as the metrics label them.
    pub method: &'static str,
    pub route: &'static str,
    client: Option<std::net::IpAddr>,
    user: Option<LoggedUser>,
    answered: bool,
}

impl RequestContext {
    /// The request was answered; its access-log line is the caller's to write.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// Milliseconds since the request came in, to the microsecond.
    pub fn latency_ms(&self) -> f64 {
        self.start.elapsed().as_micros() as f64 / 1000.0
    }

    /// The client's address, as a log field.
    pub fn client(&self) -> Option<tracing::field::DisplayValue<std::net::IpAddr>> {
        self.client.map(tracing::field::display)
    }

    /// The user the request authenticated as, if it did.
    pub fn user_id(&self) -> Option<i64> {
        self.user.as_ref().and_then(LoggedUser::get)
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        if !self.answered {
            // Dropped inside the request span: the line carries the method, path and id.
            tracing::info!(
                latency_ms = self.latency_ms(),
                route = self.route,
                client = self.client(),
                user_id = self.user_id(),
                "request abandoned: the client closed the connection before the answer"
            );
        }
    }
}

pub fn request_context() -> impl Filter<Extract = (RequestContext,), Error = Infallible> + Clone {
    request_id()
        .and(warp::method())
        .map(|id: Option<RequestId>, method: Method| {
            let id = id.unwrap_or_else(RequestId::generate).0;
            if let Ok(text) = id.to_str() {
                tracing::Span::current().record("request_id", text);
            }
            RequestContext {
                id,
                head: method == Method::HEAD,
                start: Instant::now(),
                method: crate::metrics::method_label(&method),
                route: crate::metrics::UNMATCHED,
                client: None,
                user: None,
                answered: false,
            }
        })
        .and(warp::path::full())
        .and(client_addr())
        .and(warp::ext::optional::<LoggedUser>())
        .map(access_log_fields)
}

/// What the access-log line says beyond the span's method, path and id, and the metrics label:
/// the route (the path's template), the client, and (filled in later) the user.
fn access_log_fields(
    mut ctx: RequestContext,
    path: FullPath,
    client: Option<ClientAddr>,
    user: Option<LoggedUser>,
) -> RequestContext {
    ctx.route = crate::metrics::route(path.as_str());
    ctx.client = client.map(|c| c.0);
    ctx.user = user;
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str) -> Option<String> {
        match header.parse::<Credentials>() {
            Ok(Credentials::Bearer(token)) => Some(token),
            _ => None,
        }
    }

    #[test]
    fn spaces_or_tabs_separate_the_scheme_from_the_token() {
        for header in [
            "Bearer abc",
            "bearer abc",
            "Bearer\tabc",
            "BEARER \t  abc",
            "Bearer\t\tabc ",
        ] {
            assert_eq!(token(header).as_deref(), Some("abc"), "{header:?}");
        }
        assert_eq!(token("Bearer").as_deref(), Some(""));
        assert_eq!(token("Bearer\t").as_deref(), Some(""));
        for other in ["Basic abc", "Basic\tabc", "Bearerabc", "", "abc"] {
            assert_eq!(token(other), None, "{other:?}");
        }
    }
}
