//! `GET /metrics`, `/healthz` and `/readyz` on `metrics.listen`.

use super::Metrics;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One readiness check: its name, and `Err(reason)` when it fails.
pub type CheckResult = (&'static str, Result<(), String>);

/// Runs the readiness checks behind `/readyz`.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Vec<CheckResult>> + Send + Sync>;

/// Serves the endpoint on an already bound listener until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let metrics = metrics.clone();
            let readiness = readiness.clone();
            async move { Ok::<_, Infallible>(route(req, &metrics, &readiness).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(socket), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            // Readiness as a metric too, so alerts need no probe of /readyz.
            for (name, result) in readiness().await {
                metrics
                    .ready
                    .with_label_values(&[name])
                    .set(i64::from(result.is_ok()));
            }
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            )
        }
        "/healthz" => respond(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.to_string(),
        ),
        "/readyz" => {
            let checks = readiness().await;
            let ready = checks.iter().all(|(_, r)| r.is_ok());
            let body = serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "checks": checks.iter().map(|(name, r)| (name.to_string(), match r {
                    Ok(()) => serde_json::json!({"ok": true}),
                    Err(e) => serde_json::json!({"ok": false, "error": e}),
                })).collect::<serde_json::Map<_, _>>(),
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body.to_string())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
