//! `/api/v1/users`: registration, login and the caller's own account.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::error::ApiError;
use crate::filters::{Auth, BodyKind, allow, body_of, json_body, with_auth, with_state};
use crate::store::{NewSession, Role, User};
use crate::tokens::{self, RefreshToken};
use crate::validation::{self, Rules, normalize_email, normalize_name};

pub fn routes(state: &AppState) -> BoxedFilter<(Response,)> {
    let users = warp::path!("api" / "v1" / "users" / ..);

    // POST /api/v1/users/register
    let register = warp::path!("register").and(
        warp::post()
            .and(json_body::<RegisterIn>(&state.rules))
            .and(with_state(state))
            .and_then(register)
            .or(allow("POST"))
            .unify(),
    );

    // POST /api/v1/users/login
    let login = warp::path!("login").and(
        warp::post()
            .and(login_body(state))
            .and(with_state(state))
            .and_then(login)
            .or(allow("POST"))
            .unify(),
    );

    // GET /api/v1/users/me
    let me = warp::path!("me").and(
        warp::get()
            .and(with_auth(state))
            .map(|auth: Auth| warp::reply::json(&auth.user).into_response())
            .or(allow("GET"))
            .unify(),
    );

    users.and(register.or(login).unify().or(me).unify()).boxed()
}

/// Registration body.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"email": "alice@example.com", "password": "MyStrongPass123", "full_name": "Alice"}))]
pub struct RegisterIn {
    /// Trimmed and lower-cased; at most 254 characters.
    #[serde(deserialize_with = "normalize_email")]
    #[validate(
        email(message = "must be a valid email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
    #[schema(example = "alice@example.com", max_length = 254)]
    email: String,
    /// At least `PASSWORD_MIN_LENGTH` characters (default 8), at most 72 bytes, not a common password.
    #[validate(custom(function = "validation::new_password", use_context))]
    #[schema(example = "MyStrongPass123", min_length = 8, format = Password)]
    password: String,
    /// Trimmed; at most 100 characters; an empty string becomes null.
    #[serde(default, deserialize_with = "normalize_name")]
    #[validate(length(max = 100, message = "must be at most 100 characters"))]
    #[schema(example = "Alice", max_length = 100)]
    full_name: Option<String>,
}

/// Login body (JSON).
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[validate(context = Rules)]
#[schema(example = json!({"email": "alice@example.com", "password": "MyStrongPass123"}))]
pub struct LoginIn {
    #[serde(deserialize_with = "normalize_email")]
    #[validate(email(message = "must be a valid email address"))]
    #[schema(example = "alice@example.com")]
    email: String,
    #[validate(custom(function = "validation::presented_password"))]
    #[schema(example = "MyStrongPass123", format = Password)]
    password: String,
}

/// Login body (form, the OAuth2 password grant's shape): `username` is the email.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginForm {
    #[schema(example = "alice@example.com")]
    username: String,
    #[schema(example = "MyStrongPass123", format = Password)]
    password: String,
}

/// A token pair. Sent with `Cache-Control: no-store`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// A JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 3600)]
    pub expires_in: u64,
    /// An opaque token for `POST /api/v1/users/refresh`; each use spends it.
    pub refresh_token: String,
}

/// The login body, as JSON or as a form; both end as a validated [`LoginIn`].
fn login_body(
    state: &AppState,
) -> impl Filter<Extract = (LoginIn,), Error = Rejection> + Clone + use<> {
    let rules = state.rules.clone();
    body_of(&[BodyKind::Json, BodyKind::Form]).and_then(move |kind, body: bytes::Bytes| {
        let rules = rules.clone();
        async move {
            match kind {
                BodyKind::Json => validation::parse_json::<LoginIn>(&body, &rules),
                BodyKind::Form => parse_login_form(&body, &rules),
            }
            .map_err(Rejection::from)
        }
    })
}

fn parse_login_form(body: &[u8], rules: &Rules) -> Result<LoginIn, ApiError> {
    let form: LoginForm = serde_urlencoded::from_bytes(body).map_err(|e| {
        let message = e.to_string();
        match message.strip_prefix("missing field `") {
            Some(rest) => ApiError::Validation(vec![crate::error::FieldError::new(
                rest.split('`').next().unwrap_or_default(),
                "is required",
            )]),
            None => ApiError::BadRequest("Malformed form body".into()),
        }
    })?;
    let login = LoginIn {
        email: form.username.trim().to_lowercase(),
        password: form.password,
    };
    validation::validate(&login, rules).map_err(|e| match e {
        // The form calls the email `username`.
        ApiError::Validation(mut errors) => {
            for error in &mut errors {
                if error.field == "email" {
                    error.field = "username".into();
                }
            }
            ApiError::Validation(errors)
        }
        other => other,
    })?;
    Ok(login)
}

/// POST /api/v1/users/register
async fn register(body: RegisterIn, state: AppState) -> Result<Response, Rejection> {
    // A cheap check first, so that a taken email costs no hashing; the unique index still
    // decides when two registrations race.
    if state.store.email_exists(body.email.clone()).await? {
        return Err(ApiError::EmailTaken.into());
    }
    let hash = state.hasher.hash(body.password).await?;
    let user = state
        .store
        .create_user(body.email, body.full_name, hash, Role::Member)
        .await?;
    tracing::info!(user_id = user.id, "user registered");
    Ok(created(&user))
}

fn created(user: &User) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply::json(user), StatusCode::CREATED).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_static("/api/v1/users/me"),
    );
    response
}

/// POST /api/v1/users/login
async fn login(body: LoginIn, state: AppState) -> Result<Response, Rejection> {
    let credentials = state.store.credentials(body.email).await?;
    // Unknown emails are checked against a dummy hash: both failures take the same time.
    let stored = credentials.as_ref().map(|c| c.password_hash.clone());
    let valid = state.hasher.verify(body.password.clone(), stored).await?;
    let credentials = match credentials {
        Some(c) if valid => c,
        _ => return Err(ApiError::InvalidCredentials.into()),
    };
    if state.hasher.needs_rehash(&credentials.password_hash) {
        let new_hash = state.hasher.hash(body.password).await?;
        state
            .store
            .rehash_password(credentials.user_id, credentials.password_hash, new_hash)
            .await?;
        tracing::info!(
            user_id = credentials.user_id,
            "password re-hashed at the configured cost"
        );
    }
    let token = start_session(&state, credentials.user_id).await?;
    tracing::info!(user_id = credentials.user_id, "login");
    Ok(token_response(&token))
}

/// Creates a session for the user and returns its first token pair.
async fn start_session(state: &AppState, user_id: i64) -> Result<Token, ApiError> {
    let session_id = tokens::new_session_id();
    let refresh = RefreshToken::generate();
    let now = tokens::now_seconds();
    state
        .store
        .create_session(NewSession {
            id: &session_id,
            user_id,
            refresh_hash: &refresh.hash,
            now,
            expires_at: now + u64::from(state.config.refresh_token_days) * 86_400,
        })
        .await?;
    token_pair(state, user_id, &session_id, refresh.token)
}

fn token_pair(
    state: &AppState,
    user_id: i64,
    session_id: &str,
    refresh_token: String,
) -> Result<Token, ApiError> {
    Ok(Token {
        access_token: state.tokens.issue(user_id, session_id)?,
        token_type: "bearer".into(),
        expires_in: state.tokens.ttl_seconds(),
        refresh_token,
    })
}

/// A token response must not be cached by the browser or any proxy.
fn token_response(token: &Token) -> Response {
    let mut response = warp::reply::json(token).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
