//! `oomlab serve`'s HTTP side under abuse, on loopback: unknown paths, writes, oversized
//! headers, a client that never reads `/events` during an event flood, idle connections beyond
//! the cap, and a config reload that moves the port — the daemon answers throughout and
//! exits cleanly on SIGTERM.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use common::{
    lines::{is_type, Lines},
    serve::{adj_flood, free_port, get, reset_on_close, try_get, Launch, Serve},
};
use nix::sys::signal::Signal;

/// `/healthz` answers 200 on `port`.
fn healthy(port: u16) -> bool {
    try_get(port, "/healthz", "").map(|r| r.0).ok() == Some(200)
}

/// Unknown paths, writes, oversized and too many headers are refused; the daemon still serves.
fn refuses_bad_requests(serve: &Serve) {
    let port = serve.port;
    assert_eq!(serve.get("/nope").0, 404);
    assert_eq!(serve.get("/metrics/../etc/passwd").0, 404);
    let (status, _) = {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        (out.split_whitespace().nth(1).map(str::to_owned), out)
    };
    assert_eq!(status.as_deref(), Some("405"), "POST is refused");
    let big = format!("X-Big: {}\r\n", "a".repeat(20 << 10));
    // hyper answers 431 and closes; with the rest of the request unread the kernel may turn
    // the close into a reset that drops the answer: either way the request is refused.
    let status = try_get(port, "/metrics", &big).map(|r| r.0);
    assert!(
        matches!(status, Ok(431) | Ok(400)) || status.is_err(),
        "20 KiB of headers (cap 16 KiB): {status:?}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let status = try_get(port, "/metrics", &many).map(|r| r.0);
    assert!(
        matches!(status, Ok(431) | Ok(400)) || status.is_err(),
        "200 headers: {status:?}"
    );
    assert_eq!(serve.get("/healthz"), (200, "ok\n".into()));
}

/// A client that asks for `/events` and never reads while adj events flood in: the daemon
/// keeps answering, counts every event or its loss, and the stalled client skips events while
/// a live one sees them. Returns the live client's stream.
fn flood_a_stalled_client(serve: &Serve) -> Lines {
    let port = serve.port;
    let mut stalled = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    write!(stalled, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut live = common::serve::events(port);
    live.wait_for(Duration::from_secs(5), |v| is_type(v, "ready"))
        .expect("ready line on /events");
    let before = serve.metric("oomlab_oom_score_adj_updates_total");
    // Enough lines (~17 MB; ~8 MB in the slow test VMs) to overflow the loopback socket
    // buffers of the stalled client.
    let writes: u32 = if common::in_vm() { 50_000 } else { 100_000 };
    let flood = std::thread::spawn(move || adj_flood(writes));
    // The daemon keeps answering during the flood.
    while !flood.is_finished() {
        assert_eq!(serve.get("/healthz").0, 200, "healthz during the flood");
        std::thread::sleep(Duration::from_millis(20));
    }
    flood.join().expect("flood thread");
    let me = i64::from(std::process::id());
    // The daemon works through what the ring holds at its own pace (slow in the emulated test
    // VMs): wait while the sum still moves, and give up once it has stood still for 10 s.
    let flood_done = Instant::now();
    let mut last = (f64::NAN, Instant::now());
    let (counted, lost) = loop {
        let counted = serve.metric("oomlab_oom_score_adj_updates_total") - before;
        let lost = serve.metric("oomlab_events_lost_total");
        let sum = counted + lost;
        if sum >= f64::from(writes) || last.1.elapsed() > Duration::from_secs(10) {
            break (counted, lost);
        }
        if sum != last.0 {
            last = (sum, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "flood of {writes}: counted {counted}, lost {lost}, {:?} after the last write",
        flood_done.elapsed()
    );
    assert!(
        counted + lost >= f64::from(writes),
        "every adj write is counted or reported lost: counted {counted}, lost {lost}"
    );
    // The live client saw our writes (the last one at least).
    live.wait_for(Duration::from_secs(10), |v| {
        is_type(v, "oom_score_adj") && v["pid"].as_i64() == Some(me) && v["oom_score_adj"] == 0
    })
    .expect("the live /events client sees the flood's last write");
    // The stalled client has fallen behind: it is told it skipped events, the daemon is not.
    let skipped = serve.metric("oomlab_events_stream_skipped_total");
    assert!(
        skipped > 0.0,
        "a client that never reads must skip events (stream_buffer = 64)"
    );
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = vec![0u8; 64 << 10];
    let n = stalled
        .read(&mut head)
        .expect("the stalled client can still read");
    assert!(n > 0, "stalled stream still open");
    drop(stalled);
    live
}

/// SIGHUP with a bad key keeps the running config; a port that cannot be bound keeps the old
/// listener serving, and the daemon says so; a free new port moves the listener.
fn reload_moves_the_port(serve: &mut Serve) {
    let port = serve.port;
    let config = serve.config.clone().expect("config path");
    let pid = serve.child.id() as i32;
    // Someone else holds the port the reload asks for.
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:{taken_port}\"\nmax_connections = 8\nmax_streams = 2\n"),
    )
    .expect("write config");
    common::signal(pid, Signal::SIGHUP);
    let said = format!("still listening on http://127.0.0.1:{port}");
    assert!(
        common::wait_until(Duration::from_secs(5), || serve
            .stderr_text()
            .contains(&said)),
        "a reload to a taken port says it keeps the old one: {}",
        serve.stderr_text()
    );
    assert!(
        serve
            .stderr_text()
            .contains(&format!("cannot listen on 127.0.0.1:{taken_port}")),
        "names the port it could not bind: {}",
        serve.stderr_text()
    );
    for _ in 0..5 {
        assert_eq!(
            serve.get("/healthz").0,
            200,
            "the old listener still serves"
        );
    }
    drop(taken);
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:{port}\"\ntop_m = 1\n"),
    )
    .expect("write config");
    common::signal(pid, Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(serve.get("/healthz").0, 200, "a bad config is refused");
    let new_port = free_port();
    std::fs::write(&config, format!("listen = \"127.0.0.1:{new_port}\"\n")).expect("write");
    common::signal(pid, Signal::SIGHUP);
    assert!(
        common::wait_until(Duration::from_secs(5), || healthy(new_port)),
        "the reload moves to port {new_port}"
    );
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "the old port is closed"
    );
    serve.port = new_port;
    assert!(get(new_port, "/metrics", "")
        .1
        .contains("oomlab_build_info{"));
}

#[test]
fn http_edges_slow_clients_and_reload() {
    if !common::need_root("http_edges_slow_clients_and_reload") {
        return;
    }
    let stderr = common::guard::TempPath::dir("serve-http");
    let mut serve = Serve::launch(
        "max_connections = 8\nmax_streams = 2\nstream_buffer = 64\n",
        &Launch {
            stderr: Some(stderr.path().join("stderr")),
            ..Launch::default()
        },
    );
    let port = serve.port;

    refuses_bad_requests(&serve);

    // A client that asks for /events and never reads, while events flood in.
    let live = flood_a_stalled_client(&serve);

    // Idle connections beyond max_connections take the places of older idle ones (or are
    // closed at once when none is idle); the daemon still serves.
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect idle"))
        .collect();
    // Let the accept loop see them all: those beyond the cap are closed and counted.
    std::thread::sleep(Duration::from_millis(300));
    drop(idle);
    drop(live);
    assert!(
        common::wait_until(Duration::from_secs(10), || healthy(port)),
        "serves again once the idle connections are gone"
    );

    let refused = serve.metric("oomlab_http_connections_refused_total")
        + serve.metric("oomlab_http_connections_evicted_total");
    assert!(
        refused >= 4.0,
        "12 idle connections with max_connections = 8: {refused} refused or evicted"
    );

    // SIGHUP: a bad key keeps the running config, a new port moves the listener.
    reload_moves_the_port(&mut serve);

    let took = serve.stop();
    eprintln!("SIGTERM to exit: {took:?}");
}

/// On a quiet node (only OOM events streamed, and none comes) an `/events` client that leaves
/// must give its slot back: no failed write will ever tell the daemon. With `max_streams = 1`
/// a second client is refused until then.
#[test]
fn a_stream_whose_client_left_frees_its_slot_on_a_quiet_node() {
    if !common::need_root("a_stream_whose_client_left_frees_its_slot_on_a_quiet_node") {
        return;
    }
    let serve = Serve::start("events = [\"oom\"]\nmax_streams = 1\n");
    // A request pipelined behind the stream (as tests/serve_hostile.rs sends): hyper has it
    // buffered and reads no further while the stream lasts, so it never sees the client go.
    let events = |s: &mut TcpStream| {
        s.write_all(
            b"GET /events HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .expect("ask for /events");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("a status line");
        String::from_utf8_lossy(&head).to_string()
    };
    for round in 0..2 {
        let mut first = TcpStream::connect((Ipv4Addr::LOCALHOST, serve.port)).expect("connect");
        assert_eq!(
            events(&mut first),
            "HTTP/1.1 200",
            "round {round}: first stream"
        );
        assert!(
            common::wait_until(Duration::from_secs(2), || serve
                .metric("oomlab_events_streams_open")
                == 1.0),
            "the stream is open"
        );
        // Half the rounds leave with a FIN, half with a reset.
        if round == 1 {
            reset_on_close(&first);
        }
        drop(first);
        assert!(
            common::wait_until(Duration::from_secs(3), || serve
                .metric("oomlab_events_streams_open")
                == 0.0),
            "round {round}: the slot of a client that left is still taken"
        );
        let mut second = TcpStream::connect((Ipv4Addr::LOCALHOST, serve.port)).expect("connect");
        assert_eq!(
            events(&mut second),
            "HTTP/1.1 200",
            "round {round}: the freed slot is given to the next client"
        );
        drop(second);
        assert!(common::wait_until(Duration::from_secs(3), || serve
            .metric("oomlab_events_streams_open")
            == 0.0));
    }
}
