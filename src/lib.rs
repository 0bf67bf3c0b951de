//! warp-auth-api: user registration, login with JWT and sessions, on warp and SQLite.
//!
//! [`app`] is the whole HTTP surface as one warp filter: `main` serves it and the tests drive it.
//! Requests flow: request id → routes (path → method → auth → body → handler) → one `recover` →
//! CORS → response headers, all inside one tracing span per request.

pub mod audit;
pub mod commands;
pub mod config;
pub mod error;
pub mod filters;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod mfa;
pub mod openapi;
pub mod password;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tokens;
pub mod validation;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::config::Config;
use crate::password::PasswordHasher;
use crate::store::Store;
use crate::throttle::Throttle;
use crate::tokens::TokenKeys;
use crate::validation::Rules;

/// Audit events removed per batch, and batches per housekeeping round.
const AUDIT_PURGE_BATCH: u32 = 5_000;
const AUDIT_PURGE_BATCHES: u32 = 20;

/// Everything a request may need. Cheap to clone: one reference count (it is cloned on every
/// authenticated request, so it is one shared count, not one per part).
#[derive(Clone)]
pub struct AppState(Arc<State>);

/// The parts of the state.
pub struct State {
    pub config: Config,
    pub store: Store,
    pub tokens: TokenKeys,
    pub hasher: PasswordHasher,
    pub rules: Arc<Rules>,
    pub throttle: Throttle,
    pub mailer: mail::Mailer,
    pub mfa: mfa::Mfa,
    /// Keeps a flood of refused logins from writing a flood of `login.throttled` events.
    pub throttled_events: audit::Coalesce,
    /// The Prometheus families (`/metrics` on METRICS_ADDR).
    pub metrics: metrics::Metrics,
    /// `PUBLIC_URL`'s origin.
    public_origin: String,
}

impl std::ops::Deref for AppState {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL: {0}")]
    Database(#[from] store::OpenError),
    #[error("{0}")]
    Setup(#[from] error::ApiError),
    #[error("{0}")]
    Keys(#[from] keys::KeyError),
    #[error("{0}")]
    Mail(#[from] mail::MailError),
}

impl AppState {
    /// Opens the database, starts the hashing pool and prepares the signing keys.
    pub async fn new(config: Config) -> Result<Self, StartError> {
        let store = Store::open(&config.database, config.database_max_connections).await?;
        let hasher = PasswordHasher::with_cpu_count(config.bcrypt_cost)?;
        Self::with_parts(config, store, hasher).await
    }

    /// Assembles a state from parts that are already set up (tests size the hashing pool); the
    /// signing keys are read (or, the first time, made) here.
    pub async fn with_parts(
        config: Config,
        store: Store,
        hasher: PasswordHasher,
    ) -> Result<Self, StartError> {
        let ring = keys::KeyRing::load(&config, &store).await?;
        let mailer = mail::Mailer::new(&config.mail)?;
        let metrics = metrics::Metrics::new(&hasher, &mailer)?;
        let public_origin = url::Url::parse(&config.mail.public_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Ok(Self(Arc::new(State {
            mfa: mfa::Mfa::new(&config),
            throttled_events: audit::Coalesce::new(audit::THROTTLED_EVENT_EVERY),
            mailer,
            metrics,
            public_origin,
            tokens: TokenKeys::new(&config, Arc::new(ring)),
            rules: Arc::new(Rules {
                password_min_length: config.password_min_length,
            }),
            throttle: Throttle::for_store(&store, config.login_max_failures),
            config,
            store,
            hasher,
        })))
    }
}

impl AppState {
    /// The service's own origin (`PUBLIC_URL`'s scheme, host and port), for the refresh cookie's
    /// origin check.
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    /// Whether a request's `Origin` is the service's own or a listed CORS origin (the refresh
    /// cookie is taken, and set, only for those).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        origin == self.public_origin() || self.config.cors_origins.iter().any(|c| c == origin)
    }

    /// In cookie mode, a login from a page of another origin is refused: a cross-site form
    /// must not log the browser into the sender's account (login CSRF). Requests without an
    /// `Origin` (not from a browser page) are left alone.
    pub fn check_login_origin(&self, origin: Option<&str>) -> Result<(), error::ApiError> {
        match origin {
            Some(origin) if self.config.refresh_token_cookie && !self.origin_allowed(origin) => {
                Err(error::ApiError::Forbidden(
                    "A login that sets the refresh cookie is taken only from this service's own origin or one in CORS_ORIGINS",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Housekeeping, every minute while the server runs: expired sessions, sealed successors past
    /// their grace window, idle throttle entries, expired mail tokens, old outbox rows and audit
    /// events past their retention go.
    pub async fn maintain(self) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            self.throttle.purge().await;
            match sessions::purge_expired(&self.store).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "expired sessions removed"),
                Err(e) => tracing::warn!(error = %e, "could not remove expired sessions"),
            }
            if let Err(e) = self.store.purge_challenges(tokens::now_seconds()).await {
                tracing::warn!(error = %e, "could not remove expired second-factor challenges");
            }
            if let Err(e) = self.store.purge_mail(tokens::now_seconds()).await {
                tracing::warn!(error = %e, "could not remove expired mail tokens and sent mail");
            }
            self.purge_audit().await;
        }
    }

    /// Removes audit events older than `AUDIT_RETENTION_DAYS`, in batches (each its own short
    /// write, so requests are not held behind one long delete), at most [`AUDIT_PURGE_BATCHES`]
    /// a round: a long backlog (a lowered retention) goes over several rounds.
    pub async fn purge_audit(&self) -> u64 {
        let retention = u64::from(self.config.audit_retention_days) * 86_400;
        let before = tokens::now_seconds().saturating_sub(retention);
        let mut removed = 0;
        for _ in 0..AUDIT_PURGE_BATCHES {
            match self.store.purge_audit(before, AUDIT_PURGE_BATCH).await {
                Ok(n) => {
                    removed += n;
                    if n < u64::from(AUDIT_PURGE_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove old audit events");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                events = removed,
                "audit events past their retention removed"
            );
        }
        removed
    }

    /// The mail worker: delivers the outbox while the server runs (see [`mail`]).
    pub async fn deliver_mail(self) {
        self.mailer.run(self.store.clone()).await;
    }
}

/// The whole service: every route, one `recover`, CORS, the common headers and the request span.
pub fn app(state: AppState) -> BoxedFilter<(Response,)> {
    let routes = routes::ops::routes(&state)
        .or(routes::users::routes(&state))
        .unify()
        .or(routes::recovery::routes(&state))
        .unify()
        .or(routes::sessions::routes(&state))
        .unify()
        .or(routes::mfa::routes(&state))
        .unify()
        .or(routes::admin::routes(&state))
        .unify()
        .or(routes::keys::routes(&state))
        .unify()
        .or(routes::docs::routes())
        .unify()
        .or(routes::account::routes())
        .unify()
        .boxed();
    let api = routes.recover(error::recover).unify().boxed();
    let api = with_cors(
        api,
        &state.config.cors_origins,
        state.config.refresh_token_cookie,
    );
    let metrics = state.metrics.clone();
    filters::request_context()
        .and(api)
        .map(move |ctx, response| finish(ctx, response, &metrics))
        .with(warp::trace(request_span))
        .map(Reply::into_response)
        .boxed()
}

/// Adds CORS for the configured origins. Only a request whose `Origin` is listed goes through
/// warp's CORS filter (preflights answered, `Access-Control-*` headers added); any other request,
/// a same-origin one included (browsers send `Origin` on same-origin POSTs), is served as if CORS
/// were off, and the browser itself keeps other origins from reading the answer.
/// With the refresh cookie (`credentials`), listed origins may send it (`credentials:
/// "include"`).
fn with_cors(
    api: BoxedFilter<(Response,)>,
    origins: &[String],
    credentials: bool,
) -> BoxedFilter<(Response,)> {
    if origins.is_empty() {
        return api;
    }
    let any = origins.iter().any(|o| o == "*");
    let mut cors = warp::cors()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            header::LOCATION,
            header::WWW_AUTHENTICATE,
            header::RETRY_AFTER,
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(600)
        .allow_credentials(credentials);
    cors = if any {
        cors.allow_any_origin()
    } else {
        cors.allow_origins(origins.iter().map(String::as_str))
    };
    let listed: Arc<[String]> = origins.into();
    let listed_origin = warp::header::optional::<String>("origin")
        .and_then(move |origin: Option<String>| {
            let listed = listed.clone();
            async move {
                match origin {
                    Some(o) if any || listed.contains(&o) => Ok(()),
                    _ => Err(warp::reject::not_found()),
                }
            }
        })
        .untuple_one();
    let cors_api = api
        .clone()
        .with(cors)
        .map(Reply::into_response)
        // A listed origin asking for what CORS does not allow (another header, say): a problem.
        .recover(error::recover)
        .unify();
    listed_origin.and(cors_api).or(api).unify().boxed()
}

fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %info.method(),
        path = %info.path(),
        request_id = tracing::field::Empty,
    )
}

/// A HEAD's answer: the GET's status and headers, with the length the body would have had.
pub(crate) fn without_body(response: &mut Response) {
    use hyper::body::Body as _;
    let length = response.body().size_hint().exact();
    *response.body_mut() = Default::default();
    if let Some(length) = length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// Headers every response carries, and the one access-log line per request.
fn finish(
    mut ctx: filters::RequestContext,
    mut response: Response,
    metrics: &metrics::Metrics,
) -> Response {
    ctx.answered();
    // The id moves into the response (the context only logs from here on, in Drop).
    let id = std::mem::replace(&mut ctx.id, HeaderValue::from_static(""));
    filters::stamp(response.headers_mut(), id);
    if ctx.head {
        without_body(&mut response);
    }
    metrics.request(
        ctx.method,
        ctx.route,
        response.status(),
        ctx.start.elapsed(),
    );
    let status = response.status().as_u16();
    // Whole microseconds, so the figure prints short.
    let latency_ms = ctx.latency_ms();
    // The route, client and user are this line's own fields, not the span's: recorded into the
    // span, each would cost a re-serialization of its fields with JSON logs (BENCHMARKS.md).
    let (route, client, user_id) = (ctx.route, ctx.client(), ctx.user_id());
    if status == 503 {
        // Overload or a busy database: a condition to watch, not a fault (the cause is logged).
        tracing::warn!(
            status,
            latency_ms,
            route,
            client,
            user_id,
            "request finished"
        );
    } else if status >= 500 {
        tracing::error!(
            status,
            latency_ms,
            route,
            client,
            user_id,
            "request finished"
        );
    } else {
        tracing::info!(
            status,
            latency_ms,
            route,
            client,
            user_id,
            "request finished"
        );
    }
    response
}
