//! `oomlab serve` against clients that want to hurt it, on loopback: a thousand idle
//! connections and fifty `/events` clients that never read (the probes must still get a place,
//! and fast), slow-loris headers, oversized headers, ten thousand pipelined requests, streams
//! closed mid-flight while events flow. The daemon must stay up, drop and count what stalls,
//! and give its memory back.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::serve::{
    adj_flood, raise_nofile, reset_on_close, stalled_events_client, try_get, Serve,
};

fn connect(port: u16) -> TcpStream {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to oomlab serve")
}

/// One probe as a kubelet or a scrape makes it: a new connection, one request, the whole
/// answer. Returns the status and how long it took.
fn probe(port: u16, path: &str) -> (u16, Duration) {
    let start = Instant::now();
    let status = try_get(port, path, "").map_or(0, |(s, _)| s);
    (status, start.elapsed())
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

/// Opens idle connections (a TCP connect, not a byte sent) every `every` until told to stop,
/// and keeps them open: a flood that goes on while the probes run.
fn churn(
    port: u16,
    every: Duration,
    stop: Arc<AtomicBool>,
    max: usize,
) -> thread::JoinHandle<Vec<TcpStream>> {
    thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) && held.len() < max {
            held.push(connect(port));
            thread::sleep(every);
        }
        held
    })
}

/// The daemon's side of its connections has TCP keepalive armed (a vanished peer gives its
/// slot back even when nothing is written), as the kernel reports it to `ss`.
fn keepalive_armed(port: u16) {
    if common::in_vm() {
        eprintln!("note: no ss in the VM guest; the keepalive check runs on the host");
        return;
    }
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("run ss (Debian package iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        !lines.is_empty(),
        "ss shows the daemon's connections: {text}"
    );
    assert!(
        lines.iter().all(|l| l.contains("timer:(keepalive")),
        "every accepted connection has keepalive armed:\n{text}"
    );
}

#[test]
fn idle_flood_and_stalled_streams_leave_probes_a_place() {
    if !common::need_root("idle_flood_and_stalled_streams_leave_probes_a_place") {
        return;
    }
    let hard = raise_nofile();
    assert!(
        hard >= 4096,
        "RLIMIT_NOFILE hard limit {hard}: this test holds ~2,100 sockets"
    );
    // The defaults (max_connections 32, per peer 16, max_streams 8), a short write timeout.
    let serve = Serve::start("stream_write_timeout = \"1s\"\n");
    let port = serve.port;

    // 50 /events clients that never read: 8 get a stream; the other 42 get a 503, or, when
    // newer connections came before their request was read, their place goes to those.
    let stalled: Vec<TcpStream> = (0..50).map(|_| stalled_events_client(port)).collect();
    let (mut open, mut refused, mut evicted) = (0.0, 0.0, 0.0);
    let settled = common::wait_until(Duration::from_secs(10), || {
        open = serve.metric("oomlab_events_streams_open");
        refused = serve.metric("oomlab_events_streams_refused_total");
        evicted = serve.metric("oomlab_http_connections_evicted_total");
        open >= 8.0 && refused + evicted >= 42.0
    });
    eprintln!("50 /events clients: {open} streams, {refused} answered 503, {evicted} evicted");
    assert!(
        settled,
        "50 /events clients: {open} streams open, {refused} refused, {evicted} evicted"
    );
    let streams = serve.metric("oomlab_events_streams_open");
    assert_eq!(streams, 8.0, "max_streams = 8");
    keepalive_armed(port);

    // 1,000 idle connections at once, then more every 2 ms while the probes run.
    let idle: Vec<TcpStream> = (0..1000).map(|_| connect(port)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // In the VM matrix the guest's one emulated CPU runs this flood, the probes and the
    // daemon: a connect costs ~20 times more there.
    let every = Duration::from_millis(if common::in_vm() { 10 } else { 2 });
    let flood = churn(port, every, stop.clone(), 1000);
    thread::sleep(Duration::from_millis(200));
    let mut latencies = Vec::new();
    for i in 0..100 {
        let path = if i % 2 == 0 { "/healthz" } else { "/metrics" };
        let (status, took) = probe(port, path);
        assert_eq!(status, 200, "probe {i} ({path}) under the flood");
        latencies.push(took);
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let churned = flood.join().expect("churn thread");
    let p99_flood = p99(latencies.clone());
    let max = latencies.iter().max().copied().unwrap_or_default();
    let open = serve.metric("oomlab_http_connections_open");
    let evicted = serve.metric("oomlab_http_connections_evicted_total");
    let refused = serve.metric("oomlab_http_connections_refused_total");
    eprintln!(
        "{} idle connections opened ({} during the probes) + 50 stalled /events clients: \
         daemon holds {open} connections, {streams} streams; {evicted} idle connections \
         evicted, {refused} refused; 100 probes: p99 {p99_flood:?}, max {max:?}",
        idle.len() + churned.len(),
        churned.len()
    );
    // The bound: p99 of 100 probes within 100 ms. Every probe must be answered
    // everywhere; the bound is for real CPUs, not the VM matrix's emulated one (TCG, shared
    // with the flood), where the figure is only reported.
    if common::in_vm() {
        eprintln!(
            "note: p99 {p99_flood:?} in the emulated VM; the 100 ms bound is checked on the host"
        );
    } else {
        assert!(
            p99_flood < Duration::from_millis(100),
            "p99 probe latency under the flood: {p99_flood:?}"
        );
    }
    assert!(open <= 32.0, "max_connections = 32 holds: {open} open");
    assert!(
        evicted >= 900.0,
        "idle connections made room: {evicted} evicted"
    );
    drop(idle);
    drop(churned);

    // Events flow: the 8 streams' small windows fill, and 1 s later they are dropped.
    let dropped_before = serve.metric("oomlab_events_streams_dropped_total");
    // Enough lines to fill 8 small windows and the daemon's socket buffers (fewer in the
    // emulated test VMs, where each write costs more).
    let writes = if common::in_vm() { 30_000 } else { 100_000 };
    let writer = thread::spawn(move || adj_flood(writes));
    let start = Instant::now();
    let mut during = Vec::new();
    let all_dropped = loop {
        let (status, took) = probe(port, "/healthz");
        assert_eq!(status, 200, "/healthz while the streams stall");
        during.push(took);
        let dropped = serve.metric("oomlab_events_streams_dropped_total") - dropped_before;
        if dropped >= streams || start.elapsed() > Duration::from_secs(20) {
            break dropped;
        }
        thread::sleep(Duration::from_millis(50));
    };
    writer.join().expect("adj flood");
    eprintln!(
        "stalled streams dropped: {all_dropped} after {:?}; /healthz meanwhile: max {:?}",
        start.elapsed(),
        during.iter().max().copied().unwrap_or_default()
    );
    assert_eq!(
        all_dropped, streams,
        "every stalled stream is dropped and counted (stream_write_timeout = 1s)"
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || serve
            .metric("oomlab_events_streams_open")
            == 0.0),
        "no stream left open"
    );
    // The daemon closed the dropped clients' connections.
    let mut closed = 0;
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut sink = vec![0u8; 1 << 20];
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => {
                    closed += 1;
                    break;
                }
                Ok(_) => {}
            }
        }
    }
    assert_eq!(closed, 50, "every /events client's connection ends");
    let mut serve = serve;
    serve.stop();
}

/// The daemon's SigIgn mask from the kernel has SIGPIPE in it.
fn ignores_sigpipe(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn in /proc/PID/status");
    mask & (1 << (libc::SIGPIPE - 1)) != 0
}

/// Slow-loris clients: a header byte every 300 ms. Returns how many the daemon closed within
/// `within`.
fn slowloris(port: u16, n: usize, within: Duration) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut conns: Vec<TcpStream> = (0..n)
            .map(|_| {
                let mut s = connect(port);
                s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                    .expect("start headers");
                s
            })
            .collect();
        let start = Instant::now();
        let mut closed = vec![false; n];
        while start.elapsed() < within && closed.iter().any(|c| !c) {
            for (s, c) in conns.iter_mut().zip(closed.iter_mut()) {
                if !*c && s.write_all(b"a").is_err() {
                    *c = true;
                }
                // A closed connection also shows as EOF on read.
                s.set_nonblocking(true).expect("nonblocking");
                let mut b = [0u8; 64];
                if matches!(s.read(&mut b), Ok(0)) {
                    *c = true;
                }
                s.set_nonblocking(false).expect("blocking");
            }
            thread::sleep(Duration::from_millis(300));
        }
        closed.iter().filter(|c| **c).count()
    })
}

/// `n` requests written back to back on one connection while a second thread reads the
/// answers; returns how many `200` answers came back.
fn pipelined(port: u16, n: usize) -> usize {
    let mut w = connect(port);
    let mut r = w.try_clone().expect("clone the socket");
    r.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reader = thread::spawn(move || {
        let needle = b"HTTP/1.1 200 OK";
        let mut count = 0;
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while count < n {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    carry.extend_from_slice(&buf[..k]);
                    count += carry.windows(needle.len()).filter(|w| w == needle).count();
                    // Keep a tail that may hold the start of a split status line.
                    let keep = carry.len().min(needle.len() - 1);
                    carry.drain(..carry.len() - keep);
                }
            }
        }
        count
    });
    let one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
    w.write_all(&all).expect("write the pipelined requests");
    let count = reader.join().expect("reader");
    let _ = w.shutdown(Shutdown::Both);
    count
}

/// `GET /events` with more requests and junk pipelined behind it, then gone — half of them
/// with a reset (SO_LINGER 0) instead of a FIN — while events flow.
fn events_then_close(port: u16, n: usize) {
    for i in 0..n {
        let mut s = connect(port);
        let _ = s.write_all(
            b"GET /events HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n\x00\xffjunk",
        );
        thread::sleep(Duration::from_millis(2));
        if i % 2 == 0 {
            reset_on_close(&s);
        }
        drop(s);
    }
}

fn oversized(port: u16, n: usize) {
    let big = format!("X-Big: {}\r\n", "a".repeat(64 << 10));
    for _ in 0..n {
        let status = try_get(port, "/metrics", &big).map(|r| r.0);
        assert!(
            matches!(status, Ok(431) | Ok(400)) || status.is_err(),
            "64 KiB of headers: {status:?}"
        );
    }
}

#[test]
fn hostile_requests_leave_the_daemon_as_it_was() {
    if !common::need_root("hostile_requests_leave_the_daemon_as_it_was") {
        return;
    }
    if common::skip_in_vm(
        "hostile_requests_leave_the_daemon_as_it_was",
        "it needs ~55 s of the guest's budget, and in a one-vCPU TCG guest the RSS baseline is set by how much of the 4 MiB event ring and the tracer channel a slower daemon ever filled, not by what hostile clients leave; the host runs it in full",
    ) {
        return;
    }
    let started = Instant::now();
    let mut serve = Serve::start("stream_write_timeout = \"1s\"\n");
    let port = serve.port;
    assert!(
        ignores_sigpipe(serve.child.id()),
        "oomlab serve must ignore SIGPIPE (a client closing mid-stream cannot kill it)"
    );

    // Warm-up: one round of the load, so the buffers that stay at their high-water mark (the
    // /events broadcast ring, the tracer's channel, the runtime's) are in "before"; what the
    // hostile clients leave behind is what comes on top.
    let writes = if common::in_vm() { 20_000 } else { 50_000 };
    let live = common::serve::events(port);
    adj_flood(writes);
    drop(live);
    assert_eq!(pipelined(port, 100), 100);
    oversized(port, 2);
    events_then_close(port, 10);
    // The daemon hands free heap back every 10 s: measure after the first time.
    thread::sleep(Duration::from_secs(11).saturating_sub(started.elapsed()));
    let before = serve.rss_kib();

    let loris = slowloris(port, 10, Duration::from_secs(8));
    oversized(port, 50);
    let answered = pipelined(port, 10_000);
    assert_eq!(answered, 10_000, "every pipelined request answered");
    let writer = thread::spawn(move || adj_flood(writes));
    events_then_close(port, 200);
    writer.join().expect("adj flood");
    let loris_closed = loris.join().expect("slowloris");
    assert_eq!(
        loris_closed, 10,
        "slow-loris clients are closed by the header timeout (5 s) or evicted"
    );
    assert!(serve.alive(), "oomlab serve died");
    assert_eq!(serve.get("/healthz"), (200, "ok\n".into()));
    assert!(
        common::wait_until(Duration::from_secs(5), || serve
            .metric("oomlab_events_streams_open")
            == 0.0),
        "streams whose clients left are gone"
    );
    let peak = serve.rss_kib();
    // Back within 10 % once the daemon has trimmed its heap (every 10 s).
    let limit = before + before / 10;
    let mut after = peak;
    let back = common::wait_until(Duration::from_secs(22), || {
        after = serve.rss_kib();
        after <= limit
    });
    eprintln!(
        "RSS: before {before} KiB, right after {peak} KiB, then {after} KiB; \
         {answered} pipelined answered, {loris_closed} slow-loris closed"
    );
    assert!(
        back,
        "RSS {after} KiB is not back within 10 % of {before} KiB"
    );
    assert!(serve.alive(), "oomlab serve died");
    serve.stop();
}
