//! The HTTP endpoint: `/metrics`, `/events` (NDJSON, live) and `/healthz`, read-only. hyper's
//! HTTP/1 server with a cap on header bytes and count, a header read timeout (slow-loris), and
//! a cap on open connections.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Channel, Full};
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{broadcast, Semaphore},
};

use super::metrics::Metrics;

type Body = BoxBody<Bytes, Infallible>;

/// How long a client may take to send its request line and headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers per request at most (a scrape sends a handful).
const MAX_HEADERS: usize = 64;
/// Lines queued in one `/events` response before the client counts as slow.
const CLIENT_QUEUE: usize = 256;

/// What the handlers read; shared by every connection.
pub struct Shared {
    pub metrics: Metrics,
    /// Serialized event lines, one per event, for `/events`.
    pub events: broadcast::Sender<Bytes>,
    /// The `ready` line each `/events` client receives first.
    pub ready_line: Bytes,
    /// False once the tracer's event stream has ended.
    pub healthy: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

/// Accepts connections until the task is aborted. Connections already open live on (each in
/// its own task) until the client or the process goes away.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.metrics.connection_refused();
            log::debug!(
                "refusing {peer}: {} connections open",
                limits.max_connections
            );
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(limits.max_header_bytes)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/events" | "/healthz" | "/");
    if !known {
        return full(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = full(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "read-only endpoint: GET only\n",
        );
        resp.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => full(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        "/healthz" => {
            if shared.healthy.load(Ordering::Relaxed) {
                full(StatusCode::OK, TEXT, "ok\n")
            } else {
                full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "tracer event stream ended\n",
                )
            }
        }
        "/events" => events(shared),
        _ => full(
            StatusCode::OK,
            TEXT,
            "oomlab serve: /metrics (Prometheus), /events (NDJSON, live), /healthz\n",
        ),
    }
}

/// A live NDJSON response: the `ready` line, then every event as it comes. A client that reads
/// too slowly fills its queue, its broadcast receiver falls behind and it skips events (told so
/// with a `{"type":"skipped"}` line); the daemon never waits for it.
fn events(shared: &Shared) -> Response<Body> {
    let mut rx = shared.events.subscribe();
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(CLIENT_QUEUE);
    let ready = shared.ready_line.clone();
    let metrics = shared.metrics.clone();
    tokio::spawn(async move {
        if tx.send_data(ready).await.is_err() {
            return;
        }
        loop {
            let line = match rx.recv().await {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics.stream_skipped(n);
                    Bytes::from(format!("{{\"type\":\"skipped\",\"events\":{n}}}\n"))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send_data(line).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}
