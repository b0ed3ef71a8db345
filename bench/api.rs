//! The benchmarks' platform API: answers the bridge's completion call (CONTRACT §3, `POST
//! {notify.url}` with a JSON body carrying `id`) at a chosen pace, and counts what it got, so
//! a benchmark can measure how fast a backlog drains and check that every completion arrived.
//!
//! Usage: api ADDR
//!   any POST             a completion: answered with the current status after the current
//!                        latency; counted by its body's `id`
//!   PUT /mode?status=S&latency_ms=L
//!                        answer later completions with HTTP S after L ms (start: 200, 0)
//!   GET /stats           `{"requests":N,"delivered":N,"unique":N,"first_ms":T,"last_ms":T}`:
//!                        completions answered 2xx in all, distinct ids among them, and the
//!                        Unix times in ms of the first and last 2xx answer
//!   PUT /reset           forgets the counts
//! Prints `api listening on ADDR` once it listens.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the API answers and what it has seen.
#[derive(Default)]
struct State {
    status: u16,
    latency: Duration,
    requests: u64,
    delivered: u64,
    ids: HashSet<String>,
    first_ms: u128,
    last_ms: u128,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
}

/// `name=value` pairs of a query string.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    match (method, path.as_str()) {
        (Method::PUT, "/mode") => {
            let mut state = state.lock();
            if let Some(status) = query_value(&query, "status").and_then(|s| s.parse().ok()) {
                state.status = status;
            }
            if let Some(ms) = query_value(&query, "latency_ms").and_then(|s| s.parse().ok()) {
                state.latency = Duration::from_millis(ms);
            }
            Ok(reply(200, "{}".into()))
        }
        (Method::PUT, "/reset") => {
            let mut state = state.lock();
            let (status, latency) = (state.status, state.latency);
            *state = State {
                status,
                latency,
                ..State::default()
            };
            Ok(reply(200, "{}".into()))
        }
        (Method::GET, "/stats") => {
            let state = state.lock();
            Ok(reply(
                200,
                format!(
                    r#"{{"requests":{},"delivered":{},"unique":{},"first_ms":{},"last_ms":{}}}"#,
                    state.requests,
                    state.delivered,
                    state.ids.len(),
                    state.first_ms,
                    state.last_ms
                ),
            ))
        }
        (Method::POST, _) => {
            let body = request.into_body().collect().await?.to_bytes();
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
                .unwrap_or_default();
            let (status, latency) = {
                let mut state = state.lock();
                state.requests += 1;
                (state.status, state.latency)
            };
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if (200..300).contains(&status) {
                let mut state = state.lock();
                let now = now_ms();
                state.delivered += 1;
                state.ids.insert(id);
                if state.first_ms == 0 {
                    state.first_ms = now;
                }
                state.last_ms = now;
            }
            Ok(reply(status, r#"{"status":"ok"}"#.into()))
        }
        _ => Ok(reply(404, "{}".into())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addr = std::env::args()
        .nth(1)
        .ok_or("usage: api ADDR (e.g. 127.0.0.1:19380)")?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("api listening on {addr}");
    let state = Arc::new(Mutex::new(State {
        status: 200,
        ..State::default()
    }));
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
