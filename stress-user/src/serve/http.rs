//! The HTTP endpoint: `/metrics`, `/events` (NDJSON, live) and `/healthz`, read-only. hyper's
//! HTTP/1 server with a cap on header bytes and count, a header read timeout (slow-loris), the
//! connection table's caps and evictions (`conns`), TLS and basic auth when a web config says
//! so (`web`), and a write timeout for `/events` clients that stop reading.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt as _, Channel, Full};
use hyper::{
    body::Incoming,
    header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{
        broadcast::{
            self,
            error::{RecvError, TryRecvError},
        },
        watch,
    },
};

use super::{
    conns::{Conn, Conns, StreamSlot},
    metrics::Metrics,
    web::Web,
};

type Body = BoxBody<Bytes, Infallible>;

/// How long a client may take to send its request line and headers (also the keep-alive idle
/// time between requests, and the TLS handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers per request at most (a scrape sends a handful).
const MAX_HEADERS: usize = 64;
/// Writes queued in one `/events` response before the client counts as slow (with
/// [`BATCH_BYTES`], at most 64 KiB per client).
const CLIENT_QUEUE: usize = 4;
/// Lines that are already waiting for an `/events` client go out in one write of up to this.
const BATCH_BYTES: usize = 16 << 10;

/// What the handlers read; shared by every connection.
pub struct Shared {
    pub metrics: Metrics,
    /// Serialized event lines for `/events`, in chunks.
    pub events: broadcast::Sender<Chunk>,
    /// The number of the next line the daemon will send: where a new client starts counting.
    pub next_line: AtomicU64,
    /// The `ready` line each `/events` client receives first.
    pub ready_line: Bytes,
    /// False once the tracer's event stream has ended.
    pub healthy: AtomicBool,
    /// Set to true when the daemon stops: `/events` responses send what is queued and end,
    /// and connections close once their response is out. Each connection and stream holds a
    /// receiver, so `closing.closed()` tells when all of them are done.
    pub closing: watch::Sender<bool>,
    /// Who holds a connection, and the caps (changed by a reload).
    pub conns: Arc<Conns>,
    /// TLS and basic auth for new connections (replaced by a reload).
    pub web: RwLock<Arc<Web>>,
    /// `max_header_bytes`, for new connections.
    pub max_header_bytes: AtomicUsize,
    /// `stream_write_timeout` in milliseconds, for new streams.
    pub stream_write_timeout_ms: AtomicU64,
}

impl Shared {
    /// Tells every connection to finish and waits (at most `grace`) until all have; true when
    /// they all did.
    pub async fn close_connections(&self, grace: Duration) -> bool {
        self.closing.send_replace(true);
        tokio::time::timeout(grace, self.closing.closed())
            .await
            .is_ok()
    }

    fn web(&self) -> Arc<Web> {
        self.web
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_web(&self, web: Web) {
        *self
            .web
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(web);
    }
}

/// Resolves once the daemon stops (at once if it already has).
async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which is a stop too.
    let _ = closing.wait_for(|c| *c).await;
}

/// Whole NDJSON lines for `/events`: those of one turn of the daemon's loop. Lines are numbered
/// from the daemon's start, so a client that misses chunks knows how many lines it missed.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The number of the first line.
    pub first: u64,
    pub lines: u64,
    pub bytes: Bytes,
}

/// Accepts connections until the task is aborted. Connections already open live on (each in
/// its own task) until the client or the process goes away, or a newer one evicts them.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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
        let conn = match shared.conns.admit(peer.ip()) {
            Ok(c) => c,
            Err(why) => {
                shared.metrics.connection_refused();
                log::debug!("refusing {peer}: {why:?}");
                continue;
            }
        };
        keepalive(&stream, peer);
        tokio::spawn(connection(stream, peer, conn, shared.clone()));
        // The new connection runs next (tokio's LIFO slot): a request already waiting in its
        // socket is read, and the connection is busy, before the next accept of a burst could
        // evict it as idle.
        tokio::task::yield_now().await;
    }
}

/// TCP keepalive probes after this much silence, then every [`KEEPALIVE_INTERVAL`], and the
/// connection is reset after [`KEEPALIVE_PROBES`] unanswered ones: a peer that vanished (no
/// FIN: a node or a route gone) gives back its `/events` slot within about a minute, even on
/// a quiet node where no write would ever time out.
const KEEPALIVE_IDLE: libc::c_int = 30;
const KEEPALIVE_INTERVAL: libc::c_int = 10;
const KEEPALIVE_PROBES: libc::c_int = 3;

fn keepalive(stream: &TcpStream, peer: SocketAddr) {
    use std::os::fd::AsRawFd as _;
    let fd = stream.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES),
    ] {
        // SAFETY: an int option on a socket this function borrows, with its true size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
            )
        };
        if r != 0 {
            log::debug!(
                "TCP keepalive for {peer}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// One connection: the TLS handshake if configured, then HTTP/1 until the client leaves, the
/// daemon stops, or the connection is evicted.
async fn connection(stream: TcpStream, peer: SocketAddr, conn: Conn, shared: Arc<Shared>) {
    let web = shared.web();
    conn.set_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let conn = Arc::new(conn);
    match &web.tls {
        None => http(TokioIo::new(stream), peer, conn, shared, web.clone()).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)) => r,
                () = conn.evicted() => return,
            };
            match handshake {
                Ok(Ok(tls)) => http(TokioIo::new(tls), peer, conn, shared, web.clone()).await,
                Ok(Err(e)) => {
                    shared.metrics.tls_failed();
                    log::debug!("TLS handshake with {peer}: {e}");
                }
                Err(_) => {
                    shared.metrics.tls_failed();
                    log::debug!(
                        "TLS handshake with {peer}: no handshake within {HEADER_READ_TIMEOUT:?}"
                    );
                }
            }
        }
    }
}

async fn http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    web: Arc<Web>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut closing = shared.closing.subscribe();
    let max_buf = shared.max_header_bytes.load(Ordering::Relaxed);
    let handler = conn.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let web = web.clone();
        let conn = handler.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &web, &conn, &req).await) }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(max_buf)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    let mut http = std::pin::pin!(http);
    // On stop: finish the response in flight (an `/events` stream ends once its queued lines
    // are out), then close instead of waiting for another request. Evicted (idle, or a stalled
    // stream): closed at once.
    let result = tokio::select! {
        r = http.as_mut() => r,
        () = conn.evicted() => {
            log::debug!("connection from {peer}: closed (evicted or stalled)");
            return;
        }
        () = closed(&mut closing) => {
            http.as_mut().graceful_shutdown();
            tokio::select! {
                r = http.as_mut() => r,
                () = conn.evicted() => return,
            }
        }
    };
    if let Err(e) = result {
        log::debug!("connection from {peer}: {e}");
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

const TEXT: &str = "text/plain; charset=utf-8";

/// One request: credentials first where they are asked (the connection stays evictable while a
/// bcrypt check waits), then the answer.
async fn handle(
    shared: &Shared,
    web: &Web,
    conn: &Conn,
    req: &Request<Incoming>,
) -> Response<Body> {
    // Probes need no credentials: /healthz says nothing about the node.
    if let (Some(auth), false) = (&web.auth, req.uri().path() == "/healthz") {
        let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if !auth.check(header).await {
            shared.metrics.unauthorized();
            let mut resp = full(StatusCode::UNAUTHORIZED, TEXT, "credentials needed\n");
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oomlab\", charset=\"UTF-8\""),
            );
            return resp;
        }
    }
    conn.busy();
    let resp = route(shared, conn, req);
    // A stream holds its slot (and the connection) until it ends.
    conn.idle_unless_streaming();
    resp
}

fn route(shared: &Shared, conn: &Conn, req: &Request<Incoming>) -> Response<Body> {
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
        "/events" => match conn.start_stream() {
            Some(slot) => events(shared, slot),
            None => {
                shared.metrics.stream_refused();
                let mut resp = full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "all /events stream slots are taken (max_streams); try again later\n",
                );
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("10"));
                resp
            }
        },
        _ => full(
            StatusCode::OK,
            TEXT,
            "oomlab serve: /metrics (Prometheus), /events (NDJSON, live), /healthz\n",
        ),
    }
}

/// A live NDJSON response: the `ready` line, then every event as it comes. Lines that are
/// already waiting go out together, up to [`BATCH_BYTES`] in one write. A client that reads too
/// slowly fills its queue; from then on the events that arrive are skipped — counted in
/// `oomlab_events_stream_skipped_total` as they are skipped, and told to the client with a
/// `{"type":"skipped","events":N}` line where the gap is, once it reads again. The daemon never
/// waits for a client.
fn events(shared: &Shared, slot: StreamSlot) -> Response<Body> {
    let rx = shared.events.subscribe();
    // Read after subscribing: a chunk sent in between is received, not counted as missed.
    let first = shared.next_line.load(Ordering::Acquire);
    let (tx, body) = Channel::<Bytes, Infallible>::new(CLIENT_QUEUE);
    let ready = shared.ready_line.clone();
    let metrics = shared.metrics.clone();
    let closing = shared.closing.subscribe();
    let stall = Duration::from_millis(shared.stream_write_timeout_ms.load(Ordering::Relaxed));
    tokio::spawn(stream_events(
        Stream {
            rx,
            tx,
            slot,
            stall,
        },
        ready,
        Gaps::new(metrics, first),
        closing,
    ));
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

/// One `/events` client's ends: the broadcast in, the response body out, its slot, and how long
/// it may accept no bytes.
struct Stream {
    rx: broadcast::Receiver<Chunk>,
    tx: http_body_util::channel::Sender<Bytes, Infallible>,
    slot: StreamSlot,
    stall: Duration,
}

/// How often an idle `/events` stream looks whether its client has gone.
const PEER_CHECK: Duration = Duration::from_millis(500);

/// One `/events` client: gathers chunks into writes of up to [`BATCH_BYTES`] and sends them,
/// skipping (and counting) what arrives while the client's queue is full. A client whose queue
/// stays full for `stream_write_timeout` is disconnected and counted.
async fn stream_events(
    stream: Stream,
    ready: Bytes,
    mut gaps: Gaps,
    mut closing: watch::Receiver<bool>,
) {
    let Stream {
        mut rx,
        mut tx,
        slot,
        stall,
    } = stream;
    if tx.send_data(ready).await.is_err() {
        return;
    }
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
    // False once the daemon stops (or the broadcast ends): what is queued, and a last
    // `skipped` line if any, still go out.
    let mut open = true;
    loop {
        if batch.is_empty() && open {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Ok(chunk) => gaps.take(&chunk, &mut batch),
                    // The next chunk's number tells how many lines were missed.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                // The daemon stops: what is still queued goes out (below), then the end.
                () = closed(&mut closing) => open = false,
                // Nothing to send: has the client left? Only a failed write would tell, and on
                // a quiet node none comes (tests/serve_hostile.rs saw slots held after their
                // clients had gone).
                () = tokio::time::sleep(PEER_CHECK) => {
                    if slot.peer_gone() {
                        slot.drop_client();
                        return;
                    }
                    continue;
                }
            }
        }
        // Whatever else is already waiting goes into the same write.
        while batch.len() < BATCH_BYTES || !open {
            match rx.try_recv() {
                Ok(chunk) => gaps.take(&chunk, &mut batch),
                Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    open = false;
                    break;
                }
            }
        }
        if batch.is_empty() {
            return; // stopped, with nothing left to send
        }
        let out = batch.split().freeze();
        // While the client's queue is full, keep taking chunks from the broadcast (so the
        // daemon's buffer does not hold them for this client) and count their lines as skipped
        // now; the client is told at the head of its next write.
        let stalled = tokio::time::sleep(stall);
        let mut stalled = std::pin::pin!(stalled);
        loop {
            tokio::select! {
                biased;
                sent = tx.send_data(out.clone()) => {
                    if sent.is_err() {
                        return; // the client went away
                    }
                    break;
                }
                () = &mut stalled => {
                    gaps.metrics.stream_dropped();
                    log::info!("/events client accepted no bytes for {stall:?}: disconnected");
                    slot.drop_client();
                    return;
                }
                next = rx.recv(), if open => match next {
                    Ok(chunk) => gaps.skip(&chunk),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => open = false,
                }
            }
        }
        gaps.tell(&mut batch);
    }
}

/// What one `/events` client missed: lines whose chunks it never received (it lagged behind the
/// broadcast) or dropped (its queue was full).
struct Gaps {
    metrics: Metrics,
    /// The number of the next line this client should see.
    next: u64,
    /// Skipped lines the client has not been told about yet.
    untold: u64,
}

impl Gaps {
    fn new(metrics: Metrics, first: u64) -> Gaps {
        Gaps {
            metrics,
            next: first,
            untold: 0,
        }
    }

    /// `n` lines skipped: counted now, told to the client with its next write.
    fn count(&mut self, n: u64) {
        if n > 0 {
            self.metrics.stream_skipped(n);
            self.untold += n;
        }
    }

    /// Lines between the last chunk seen and this one were missed.
    fn missed_before(&mut self, chunk: &Chunk) {
        self.count(chunk.first.saturating_sub(self.next));
        self.next = self.next.max(chunk.first + chunk.lines);
    }

    /// A chunk that goes to the client, after the news of any gap before it.
    fn take(&mut self, chunk: &Chunk, batch: &mut BytesMut) {
        self.missed_before(chunk);
        self.tell(batch);
        batch.put_slice(&chunk.bytes);
    }

    /// A chunk dropped because the client is not reading.
    fn skip(&mut self, chunk: &Chunk) {
        self.missed_before(chunk);
        self.count(chunk.lines);
    }

    fn tell(&mut self, batch: &mut BytesMut) {
        if self.untold > 0 {
            batch.put_slice(skipped_line(self.untold).as_bytes());
            self.untold = 0;
        }
    }
}

fn skipped_line(n: u64) -> String {
    format!("{{\"type\":\"skipped\",\"events\":{n}}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(first: u64, lines: u64) -> Chunk {
        let bytes: String = (first..first + lines).map(|n| format!("{n}\n")).collect();
        Chunk {
            first,
            lines,
            bytes: Bytes::from(bytes),
        }
    }

    fn skipped_metric(m: &Metrics) -> String {
        m.encode()
            .lines()
            .find(|l| l.starts_with("oomlab_events_stream_skipped_total "))
            .expect("skipped counter")
            .to_owned()
    }

    #[test]
    fn gaps_are_counted_when_they_happen_and_told_where_they_are() {
        let metrics = Metrics::new("test");
        let mut gaps = Gaps::new(metrics.clone(), 10);
        let mut out = BytesMut::new();
        gaps.take(&chunk(10, 2), &mut out);
        // Lagged past lines 12..15: told before line 15.
        gaps.take(&chunk(15, 1), &mut out);
        assert_eq!(
            &out[..],
            b"10\n11\n{\"type\":\"skipped\",\"events\":3}\n15\n"
        );
        assert_eq!(
            skipped_metric(&metrics),
            "oomlab_events_stream_skipped_total 3"
        );
        // A stalled client drops 16..20 and lags past 20..22: counted at once, told later.
        out.clear();
        gaps.skip(&chunk(16, 4));
        gaps.skip(&chunk(22, 1));
        assert_eq!(
            skipped_metric(&metrics),
            "oomlab_events_stream_skipped_total 10"
        );
        gaps.tell(&mut out);
        gaps.take(&chunk(23, 1), &mut out);
        assert_eq!(&out[..], b"{\"type\":\"skipped\",\"events\":7}\n23\n");
    }

    #[test]
    fn a_chunk_sent_while_a_client_subscribes_is_not_a_gap() {
        // The daemon moved next_line to 5 before sending lines 3..5; the new client reads 5.
        let metrics = Metrics::new("test");
        let mut gaps = Gaps::new(metrics.clone(), 5);
        let mut out = BytesMut::new();
        gaps.take(&chunk(3, 2), &mut out);
        gaps.take(&chunk(5, 1), &mut out);
        assert_eq!(&out[..], b"3\n4\n5\n");
        assert_eq!(
            skipped_metric(&metrics),
            "oomlab_events_stream_skipped_total 0"
        );
    }
}
