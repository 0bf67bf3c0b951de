//! Prometheus metrics: the families, the small calls the handlers make, the route labels, and the
//! `/metrics` listener (`METRICS_ADDR`).
//!
//! Each [`AppState`] has its own [`Metrics`] in its own registry, not a process-wide one: two apps
//! in one process (the tests, a second replica in a test) count only their own requests. Counters
//! and histograms are atomics (the `prometheus` crate), so the request path adds no lock to wait
//! on and nothing grows while nobody scrapes. What a gauge shows is read when scraped: the hashing
//! queue's length from the [`PasswordHasher`], the outbox's unsent rows from the store, the
//! process figures from `/proc`; nothing polls.
//!
//! A route is labelled with its path template (`/api/v1/admin/users/{id}`), taken from the served
//! OpenAPI document's paths plus the few undocumented asset routes ([`UNDOCUMENTED`]), so that a
//! raw path (an id, a typo, a scanner's guesses) never becomes a label: a path no route has is
//! [`UNMATCHED`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::error::{self, ApiError};
use crate::filters::{allow, get, request_id, stamp, with_state};
use crate::mail::Mailer;
use crate::password::PasswordHasher;
use crate::store::Refresh;

/// The route label of a request whose path is no route's.
pub const UNMATCHED: &str = "unmatched";

/// Routes the OpenAPI document leaves out (the files behind its pages), as templates.
pub const UNDOCUMENTED: &[&str] = &[
    "/docs/{file}",
    "/redoc/redoc.standalone.js",
    "/account/account.js",
    "/account/account.css",
];

/// Request latencies: from well under a millisecond (`/me`) to a queued bcrypt at cost 12.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// One bcrypt: about a millisecond at cost 4, a quarter of a second at 12, a second at 14.
const HASH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How long a scrape waits for the store's count of unsent mail.
const STORE_DEADLINE: Duration = Duration::from_secs(2);

/// The service's metrics. Cheap to clone (each family is one reference count).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    logins: IntCounterVec,
    registrations: IntCounter,
    refreshes: IntCounterVec,
    hash_queue: IntGauge,
    outbox_pending: IntGauge,
}

/// How long bcrypt took, per hash or verify, measured by the hashing thread (the wait in the
/// queue is not in it: `auth_password_hash_queue_depth` shows that). Made by the
/// [`PasswordHasher`], registered by [`Metrics::new`].
#[derive(Clone)]
pub struct HashTimes(Histogram);

impl HashTimes {
    pub fn new() -> Self {
        let opts = HistogramOpts::new(
            "auth_password_hash_seconds",
            "Seconds bcrypt took per password hash or verify, on a hashing thread.",
        )
        .buckets(HASH_BUCKETS.to_vec());
        Self(
            Histogram::with_opts(opts).expect("constant options that every_family_is_valid checks"),
        )
    }

    pub fn observe(&self, took: Duration) {
        self.0.observe(took.as_secs_f64());
    }
}

impl Default for HashTimes {
    fn default() -> Self {
        Self::new()
    }
}

/// Delivery attempts of the mail worker, by outcome. Made by the [`Mailer`], registered by
/// [`Metrics::new`].
#[derive(Clone)]
pub struct MailOutcomes(IntCounterVec);

impl MailOutcomes {
    pub fn new() -> Self {
        let counter = counter_vec(
            "auth_mail_sent_total",
            "Mail delivery attempts over SMTP, by outcome: sent (the server took it) or failed \
             (it stays queued, or the server refused it for good).",
            "outcome",
            &["sent", "failed"],
        );
        Self(counter)
    }

    /// The SMTP server took a mail.
    pub fn sent(&self) {
        self.0.with_label_values(&["sent"]).inc();
    }

    /// An attempt failed (retried later, or dropped when the server refused it for good).
    pub fn failed(&self) {
        self.0.with_label_values(&["failed"]).inc();
    }
}

impl Default for MailOutcomes {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter with one label whose `values` are made at once, so that every outcome is a series
/// (at 0) from the start: a rate over a series that appears only at its first event misses it.
fn counter_vec(name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), &[label])
        .expect("constant options that every_family_is_valid checks");
    for value in values {
        counter.with_label_values(&[*value]);
    }
    counter
}

impl Metrics {
    /// The families in a registry of their own, with the hasher's and the mailer's, and the
    /// process's (Linux).
    pub fn new(hasher: &PasswordHasher, mailer: &Mailer) -> Result<Self, ApiError> {
        // Built here, not at the first request.
        LazyLock::force(&ROUTES);
        let fail = |e: prometheus::Error| ApiError::Internal(format!("metrics: {e}"));
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by method, route (the path template) and status.",
            ),
            &["method", "route", "status"],
        )
        .map_err(fail)?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Seconds from a request's arrival to its answer, by route (the path template).",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["route"],
        )
        .map_err(fail)?;
        let logins = counter_vec(
            "auth_logins_total",
            "Login attempts (the password step, and the second factor's), by outcome.",
            "outcome",
            &[
                "success",
                "invalid",
                "throttled",
                "mfa_required",
                "forbidden",
            ],
        );
        let registrations = IntCounter::new(
            "auth_registrations_total",
            "Users registered through the API.",
        )
        .map_err(fail)?;
        let refreshes = counter_vec(
            "auth_refreshes_total",
            "Refresh token exchanges, by outcome: rotated, grace (a just-spent token got the live \
             pair), reused (a spent token: its session was revoked), invalid.",
            "outcome",
            &["rotated", "grace", "reused", "invalid"],
        );
        let hash_queue = IntGauge::new(
            "auth_password_hash_queue_depth",
            "Password hashes and verifies waiting for a hashing thread.",
        )
        .map_err(fail)?;
        let outbox_pending = IntGauge::new(
            "auth_mail_outbox_pending",
            "Mails in the outbox not sent yet (nor dropped), as of the last scrape that could read \
             the database.",
        )
        .map_err(fail)?;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(durations.clone()),
            Box::new(logins.clone()),
            Box::new(registrations.clone()),
            Box::new(refreshes.clone()),
            Box::new(hash_queue.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(hasher.hash_times().0.clone()),
            Box::new(mailer.outcomes().0.clone()),
        ];
        for collector in collectors {
            registry.register(collector).map_err(fail)?;
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(fail)?;
        Ok(Self {
            registry,
            requests,
            durations,
            logins,
            registrations,
            refreshes,
            hash_queue,
            outbox_pending,
        })
    }

    /// One answered request (the app's `finish` calls this for every request it answers).
    pub fn request(
        &self,
        method: &'static str,
        route: &'static str,
        status: StatusCode,
        took: Duration,
    ) {
        if let Ok(counter) =
            self.requests
                .get_metric_with_label_values(&[method, route, status.as_str()])
        {
            counter.inc();
        }
        if let Ok(histogram) = self.durations.get_metric_with_label_values(&[route]) {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// A user registered.
    pub fn registered(&self) {
        self.registrations.inc();
    }

    /// A refresh's outcome, as the store judged the presented token (one that is no refresh
    /// token at all is `Invalid`).
    pub fn refresh(&self, outcome: &Refresh) {
        let label = match outcome {
            Refresh::Rotated { .. } => "rotated",
            Refresh::Grace { .. } => "grace",
            Refresh::Reused { .. } => "reused",
            Refresh::Invalid => "invalid",
        };
        self.refreshes.with_label_values(&[label]).inc();
    }

    /// Runs a login attempt (the password step or the second factor) and counts its outcome.
    /// The count is made in the attempt's own future, which the handlers run in a task of its
    /// own: a client that hangs up is counted too.
    pub fn counted_login<T, F>(&self, attempt: F) -> impl Future<Output = F::Output> + use<T, F>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let logins = self.logins.clone();
        async move {
            let result = attempt.await;
            if let Some(outcome) = login_outcome(&result) {
                logins.with_label_values(&[outcome]).inc();
            }
            result
        }
    }

    /// The text a scrape gets: the gauges read now, then every family.
    pub async fn render(&self, state: &AppState) -> String {
        self.hash_queue
            .set(i64::try_from(state.hasher.queue_len()).unwrap_or(i64::MAX));
        match tokio::time::timeout(STORE_DEADLINE, state.store.pending_mail()).await {
            Ok(Ok(pending)) => self
                .outbox_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX)),
            // The last count stays; the rest of the scrape is still worth having.
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics: the outbox could not be counted"),
            Err(_) => {
                tracing::warn!("metrics: the outbox could not be counted within {STORE_DEADLINE:?}")
            }
        }
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(error = %e, "metrics: could not encode");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// The outcome label of a finished login attempt; `None` when the service failed (503, 500) or
/// the input was malformed: no credentials were judged.
fn login_outcome<T>(result: &Result<T, ApiError>) -> Option<&'static str> {
    match result {
        Ok(_) => Some("success"),
        Err(ApiError::InvalidCredentials | ApiError::WrongCode(_)) => Some("invalid"),
        Err(ApiError::TooManyAttempts { .. }) => Some("throttled"),
        Err(ApiError::MfaRequired { .. }) => Some("mfa_required"),
        // A disabled account, or an unverified email with REQUIRE_EMAIL_VERIFICATION.
        Err(ApiError::Forbidden(_)) => Some("forbidden"),
        Err(_) => None,
    }
}

/// The method as a label: the standard ones by name, any other as `other` (a client may send any
/// token as a method, and a label must not grow with what clients send).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The route label of a path: its template, or [`UNMATCHED`].
pub fn route(path: &str) -> &'static str {
    ROUTES.label(path)
}

/// The templates: the `paths` of the served OpenAPI document (the committed `openapi.json`, which a
/// test keeps equal to what the routes generate), and [`UNDOCUMENTED`]. Only the keys are read;
/// building utoipa's document instead left the process 1.5 MiB larger (measured).
static ROUTES: LazyLock<RouteTable> = LazyLock::new(|| {
    #[derive(serde::Deserialize)]
    struct Document {
        paths: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    }
    let documented = match serde_json::from_str::<Document>(crate::routes::docs::OPENAPI_JSON) {
        Ok(document) => document.paths.into_keys().collect(),
        Err(e) => {
            // A test reads the same document: this is a build that skipped the tests.
            tracing::error!(error = %e, "metrics: cannot read the OpenAPI document's paths");
            Vec::new()
        }
    };
    RouteTable::new(
        documented
            .iter()
            .map(String::as_str)
            .chain(UNDOCUMENTED.iter().copied()),
    )
});

/// The templates, made once: those without a parameter by their exact path (one hash lookup, the
/// common case: `/api/v1/users/me`), the others by their number of segments.
struct RouteTable {
    exact: HashMap<&'static str, &'static str>,
    templated: Vec<Vec<Template>>,
}

struct Template {
    /// `None` for a parameter, which any non-empty segment fills.
    segments: Vec<Option<&'static str>>,
    label: &'static str,
}

impl RouteTable {
    fn new<'a>(templates: impl Iterator<Item = &'a str>) -> Self {
        let mut table = RouteTable {
            exact: HashMap::new(),
            templated: Vec::new(),
        };
        for template in templates {
            // Made once per process (a handful of short strings), for labels that live as long.
            let label: &'static str = Box::leak(template.to_owned().into_boxed_str());
            let segments: Vec<Option<&'static str>> = label
                .trim_start_matches('/')
                .split('/')
                .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then_some(s))
                .collect();
            if segments.iter().all(Option::is_some) {
                table.exact.insert(label, label);
            } else {
                if table.templated.len() <= segments.len() {
                    table.templated.resize_with(segments.len() + 1, Vec::new);
                }
                table.templated[segments.len()].push(Template { segments, label });
            }
        }
        // Where two templates fit a path, the one with more fixed segments wins (as a fixed path
        // wins over any template).
        for same_length in &mut table.templated {
            same_length.sort_by_key(|t| std::cmp::Reverse(t.segments.iter().flatten().count()));
        }
        table
    }

    /// warp's own matching: segments between single slashes, one trailing slash allowed.
    fn label(&self, path: &str) -> &'static str {
        let path = match path.strip_suffix('/') {
            Some(stripped) if !stripped.is_empty() => stripped,
            _ => path,
        };
        if let Some(label) = self.exact.get(path) {
            return label;
        }
        let rest = path.strip_prefix('/').unwrap_or(path);
        let count = rest.split('/').count();
        let Some(candidates) = self.templated.get(count) else {
            return UNMATCHED;
        };
        candidates
            .iter()
            .find(|t| {
                t.segments
                    .iter()
                    .zip(rest.split('/'))
                    .all(|(want, got)| match want {
                        Some(fixed) => *fixed == got,
                        None => !got.is_empty(),
                    })
            })
            .map_or(UNMATCHED, |t| t.label)
    }
}

/// The metrics listener's whole surface: `GET` (and `HEAD`) `/metrics`; another method is a 405
/// and any other path a 404, both problem+json. Scrapes are logged at debug level only (one every
/// few seconds would drown the access log), and are not counted in `http_requests_total`, which
/// is about the API.
pub fn app(state: &AppState) -> BoxedFilter<(Response,)> {
    let scrape = warp::path!("metrics").and(
        get()
            .and(warp::method())
            .and(with_state(state))
            .then(|method: Method, state: AppState| async move {
                let text = state.metrics.render(&state).await;
                let mut response =
                    warp::reply::with_header(text, header::CONTENT_TYPE, prometheus::TEXT_FORMAT)
                        .into_response();
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if method == Method::HEAD {
                    crate::without_body(&mut response);
                }
                response
            })
            .or(allow("GET, HEAD"))
            .unify(),
    );
    scrape
        .recover(error::recover)
        .unify()
        .and(request_id())
        .map(
            |mut response: Response, id: Option<crate::filters::RequestId>| {
                tracing::debug!(status = response.status().as_u16(), "metrics request");
                let id = id.map_or_else(|| HeaderValue::from_static("-"), |id| id.header());
                stamp(response.headers_mut(), id);
                response
            },
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_valid() {
        let hasher = PasswordHasher::new(4, 1, 1).unwrap();
        let config = crate::config::Config::from_vars(Vec::<(String, String)>::new()).unwrap();
        let mailer = Mailer::new(&config.mail).unwrap();
        let metrics = Metrics::new(&hasher, &mailer).unwrap();
        let names: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for name in [
            "auth_logins_total",
            "auth_mail_sent_total",
            "auth_refreshes_total",
            "auth_registrations_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }

    #[test]
    fn paths_get_their_templates_and_nothing_else_a_label() {
        let table = RouteTable::new(
            [
                "/api/v1/users/me",
                "/api/v1/users/me/sessions",
                "/api/v1/users/me/sessions/{id}",
                "/api/v1/admin/users/{id}",
                "/api/v1/admin/users/{id}/sessions",
                "/api/v1/admin/users/{id}/mfa",
                "/api/v1/admin/users/audit",
                "/docs",
                "/docs/{file}",
            ]
            .into_iter(),
        );
        let cases = [
            ("/api/v1/users/me", "/api/v1/users/me"),
            ("/api/v1/users/me/", "/api/v1/users/me"),
            (
                "/api/v1/users/me/sessions/abc123",
                "/api/v1/users/me/sessions/{id}",
            ),
            ("/api/v1/admin/users/42", "/api/v1/admin/users/{id}"),
            ("/api/v1/admin/users/42/", "/api/v1/admin/users/{id}"),
            (
                "/api/v1/admin/users/42/sessions",
                "/api/v1/admin/users/{id}/sessions",
            ),
            ("/api/v1/admin/users/42/mfa", "/api/v1/admin/users/{id}/mfa"),
            // A fixed segment wins over a parameter.
            ("/api/v1/admin/users/audit", "/api/v1/admin/users/audit"),
            ("/docs", "/docs"),
            ("/docs/swagger-ui.css", "/docs/{file}"),
            ("/", UNMATCHED),
            ("", UNMATCHED),
            ("/api/v1/users/me//", UNMATCHED),
            ("/api//v1/users/me", UNMATCHED),
            ("/api/v1/admin/users//sessions", UNMATCHED),
            ("/api/v1/admin/users/42/other", UNMATCHED),
            ("/wp-login.php", UNMATCHED),
            ("/api/v1/users/me/sessions/a/b/c/d/e/f/g", UNMATCHED),
        ];
        for (path, label) in cases {
            assert_eq!(table.label(path), label, "{path:?}");
        }
    }

    #[test]
    fn the_documented_and_the_asset_routes_are_all_in_the_table() {
        assert_eq!(route("/api/v1/admin/users/7"), "/api/v1/admin/users/{id}");
        assert_eq!(
            route("/redoc/redoc.standalone.js"),
            "/redoc/redoc.standalone.js"
        );
        assert_eq!(route("/docs/index.css"), "/docs/{file}");
        assert_eq!(route("/account/account.js"), "/account/account.js");
        assert_eq!(route("/metrics"), UNMATCHED);
    }

    #[test]
    fn login_outcomes() {
        let outcome = |r: Result<(), ApiError>| login_outcome(&r);
        assert_eq!(outcome(Ok(())), Some("success"));
        assert_eq!(outcome(Err(ApiError::InvalidCredentials)), Some("invalid"));
        assert_eq!(outcome(Err(ApiError::WrongCode("x"))), Some("invalid"));
        assert_eq!(
            outcome(Err(ApiError::TooManyAttempts { retry_after: 30 })),
            Some("throttled")
        );
        assert_eq!(
            outcome(Err(ApiError::MfaRequired {
                mfa_token: "t".into()
            })),
            Some("mfa_required")
        );
        assert_eq!(outcome(Err(ApiError::Forbidden("no"))), Some("forbidden"));
        assert_eq!(outcome(Err(ApiError::Overloaded)), None);
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
