//! The HTTP/1 server around [`crate::app`]: connection limits, panics, graceful shutdown.
//!
//! warp's own `serve` offers none of the limits the contract needs, so connections are served
//! with hyper directly: at most 100 request headers and 16 KiB of headers (a problem+json 431
//! beyond; hyper itself answers a bare 431 past 200 headers or a 64 KiB head), a 10-second
//! deadline for a request head to arrive (an idle connection, a first request included, is closed
//! after it), at most 4096 connections at once and 128 per client address, the client address
//! for the handlers, and a panic in a handler answered with a problem+json 500 instead of a
//! dropped connection.

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use warp::reply::Response;

use crate::error::problem;
use crate::filters::{ClientAddr, LoggedUser, RequestId, stamp};

/// Longest wait for in-flight requests after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Request headers allowed, in number and in bytes (names, values and their separators).
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 4096;
/// Connections one client address may hold at once; past that its new ones are closed at once,
/// so that one client cannot take the slots every other client needs.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 128;

/// Serves `app` on `listener` until `shutdown` completes, then lets in-flight requests finish.
/// Connections from `trusted_proxies` are not capped per address, and their requests' client is
/// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub async fn serve(
    listener: TcpListener,
    app: BoxedFilter<(Response,)>,
    trusted_proxies: Vec<IpNet>,
    shutdown: impl Future<Output = ()>,
) {
    let trusted: Arc<[IpNet]> = trusted_proxies.into();
    let mut http = http1::Builder::new();
    // Generous here, so that the check below, which answers in problem+json, sees the request.
    http.max_headers(2 * MAX_HEADERS)
        .max_buf_size(4 * MAX_HEADER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Arc::new(PerClient::new(MAX_CONNECTIONS_PER_CLIENT));

    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let from_proxy = is_trusted(&trusted, peer.ip());
        let client_slot = if from_proxy {
            // A proxy carries many clients' connections: the per-address share is not its.
            None
        } else {
            let Some(slot) = clients.admit(peer.ip()) else {
                // Over its share: closed at once (dropping the stream), which frees the global
                // slot.
                drop(stream);
                continue;
            };
            Some(slot)
        };
        let _ = stream.set_nodelay(true);
        let warp_service = warp::service(app.clone());
        let trusted = trusted.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let client = if from_proxy {
                forwarded_client(request.headers(), &trusted).unwrap_or(peer.ip())
            } else {
                peer.ip()
            };
            request.extensions_mut().insert(ClientAddr(client));
            // Filled in by `with_auth`, for the access-log line.
            request.extensions_mut().insert(LoggedUser::default());
            // One id per request, from here on: the access log, the answer's header and any audit
            // event the request writes all carry it.
            let request_id = RequestId::for_header(request.headers().get("x-request-id"));
            request.extensions_mut().insert(request_id.clone());
            let too_large = head_too_large(request.headers());
            let mut inner = warp_service.clone();
            async move {
                if too_large {
                    return Ok(header_fields_too_large(request_id));
                }
                let response = match AssertUnwindSafe(inner.call(request)).catch_unwind().await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(panic) => panic_response(request_id, panic),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(client_slot);
            drop(slot);
        });
    }

    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
        }
    }
}

fn is_trusted(trusted: &[IpNet], addr: IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&addr))
}

/// The client a trusted proxy forwards for: the right-most address of `X-Forwarded-For` (all
/// such headers, in order) that is not a trusted proxy itself; the left part can be forged by
/// the client, the part added by trusted proxies cannot. `None` when there is none to believe.
fn forwarded_client(headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        hops.extend(value.to_str().ok()?.split(',').map(str::trim));
    }
    for hop in hops.iter().rev() {
        let addr = parse_hop(hop)?;
        if !is_trusted(trusted, addr) {
            return Some(addr);
        }
    }
    None
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`192.0.2.1:4711`, `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The connections each client address holds (IPv6 by its /64, as the login throttle counts).
struct PerClient {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    /// When a refusal was last logged, so that a flood logs a line a second, not one a refusal.
    last_logged: Mutex<Option<Instant>>,
}

impl PerClient {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Mutex::new(HashMap::new()),
            last_logged: Mutex::new(None),
        }
    }

    /// A slot for one more connection of `addr`, or `None` when it holds its share already.
    fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<ClientSlot> {
        let key = crate::throttle::address_key(addr);
        {
            let mut held = lock(&self.held);
            let count = held.entry(key).or_insert(0);
            if *count < self.limit {
                *count += 1;
                return Some(ClientSlot {
                    clients: self.clone(),
                    key,
                });
            }
        }
        let mut last = lock(&self.last_logged);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(
                client = %addr,
                limit = self.limit,
                "connection refused: this client holds its share of connections already"
            );
        }
        None
    }
}

/// One connection of a client; dropping it gives the slot back.
struct ClientSlot {
    clients: Arc<PerClient>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = lock(&self.clients.held);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The counts hold no invariant a panic could break halfway: a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the request's headers are over the contract's limits.
fn head_too_large(headers: &HeaderMap) -> bool {
    headers.len() > MAX_HEADERS
        || headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
            > MAX_HEADER_BYTES
}

/// 431 as problem+json; the connection is closed after it (the body is not read).
fn header_fields_too_large(request_id: RequestId) -> Response {
    let mut response = problem(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!(
            "At most {MAX_HEADERS} request headers and {} KiB of them",
            MAX_HEADER_BYTES / 1024
        ),
        None,
    );
    let headers = response.headers_mut();
    stamp(headers, request_id.header());
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The answer to a handler that panicked: a generic 500; the panic's message goes to the log.
fn panic_response(request_id: RequestId, panic: Box<dyn Any + Send>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(panic = %message, request_id = request_id.as_str(), "handler panicked");
    let mut response = problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal server error".into(),
        None,
    );
    stamp(response.headers_mut(), request_id.header());
    response
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        let client = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            forwarded_client(&headers, &trusted)
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(client(&["198.51.100.1"]), ip("198.51.100.1"));
        // A client cannot hide behind a forged left part.
        assert_eq!(client(&["6.6.6.6, 198.51.100.1"]), ip("198.51.100.1"));
        // Trusted hops are skipped; several headers are one list.
        assert_eq!(
            client(&["198.51.100.1, 10.1.2.3", "192.0.2.7"]),
            ip("198.51.100.1")
        );
        assert_eq!(client(&["[2001:db8::1]:4711"]), ip("2001:db8::1"));
        assert_eq!(client(&["198.51.100.1:80"]), ip("198.51.100.1"));
        assert_eq!(client(&["10.0.0.1"]), None, "only proxies: none to believe");
        assert_eq!(client(&["garbage, 10.0.0.1"]), None);
        assert_eq!(client(&[]), None);
        assert!(is_trusted(&trusted, "::ffff:10.0.0.5".parse().unwrap()));
    }
}
