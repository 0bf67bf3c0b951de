//! `server::serve`, the loop `main` runs, on a loopback port: panics and graceful shutdown.

use std::io::{Read, Write};
use std::time::Duration;

use warp::Filter;
use warp::reply::Response;

/// A panicking handler is answered with a problem+json 500 and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_handler_is_a_problem_500_and_the_server_lives_on() {
    let boom = warp::path!("boom").map(|| -> Response { panic!("handler bug") });
    let fine = warp::path!("fine").map(|| warp::Reply::into_response("fine"));
    let app = boom.or(fine).unify().boxed();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warp_auth_api::server::serve(listener, app, vec![], async {
        let _ = stopped.await;
    }));

    let get = move |path: &'static str, request_id: &'static str| {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        })
    };
    let answer = get("/boom", "panic-1").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(lower.contains("x-request-id: panic-1"), "{answer}");
    assert!(
        lower.contains("x-content-type-options: nosniff"),
        "{answer}"
    );
    assert!(
        answer.contains("\"status\":500") && !answer.contains("handler bug"),
        "{answer}"
    );

    let answer = get("/fine", "ok-1").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
