//! `oomlab serve` with a web config (exporter-toolkit format: TLS and basic auth), judged by
//! the clients that use it: Debian's Prometheus scrapes it over TLS with basic auth (its own
//! `tls_config` and `basic_auth`), and says what it got when the credentials are missing or the
//! CA is wrong; curl checks `/healthz` without credentials, the 401 and its challenge, and,
//! after a SIGHUP, mutual TLS. Certificates are made by the openssl CLI in the test's temp dir.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    guard::{Reap, TempPath},
    serve::{free_port, get, Launch, Serve},
};
use nix::sys::signal::Signal;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`) in `dir`.
fn ca(dir: &Path, name: &str) -> PathBuf {
    let pem = dir.join(format!("{name}-ca.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN=oomlab test {name} CA"))
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}-ca.key")))
        .arg("-out")
        .arg(&pem));
    pem
}

/// A leaf `NAME.pem` / `NAME.key` signed by the CA `ca_name`, for `usage` (serverAuth or
/// clientAuth).
fn leaf(dir: &Path, ca_name: &str, name: &str, usage: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let pem = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .expect("write the extensions");
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join(format!("{ca_name}-ca.pem")))
        .arg("-CAkey")
        .arg(dir.join(format!("{ca_name}-ca.key")))
        .args(["-CAcreateserial", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&pem));
    (pem, key)
}

/// curl's exit code and the HTTP status it saw (0 when none), with `args` before the URL.
fn curl(port: u16, path: &str, args: &[&str]) -> (i32, u16) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl (Debian package `curl`; `cargo xtask setup` installs it)");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (out.status.code().unwrap_or(-1), code)
}

/// The response headers curl saw.
fn curl_headers(port: u16, path: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "5"])
        .args(args)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Prometheus' answer to an instant query, as JSON.
fn query(prom: u16, q: &str) -> serde_json::Value {
    let q: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(prom, &format!("/api/v1/query?query={q}"), "");
    assert_eq!(status, 200, "Prometheus query: {body}");
    serde_json::from_str(&body).expect("Prometheus answers JSON")
}

/// Prometheus' targets as (job, health, lastError); none while it is starting.
fn targets(prom: u16) -> Vec<(String, String, String)> {
    let Ok((200, body)) = common::serve::try_get(prom, "/api/v1/targets", "") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["data"]["activeTargets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                    (
                        t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                        s("health"),
                        s("lastError"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn prometheus(dir: &Path, port: u16, target: u16, ca: &Path, wrong_ca: &Path) -> Reap {
    let cfg = dir.join("prometheus.yml");
    let target = format!("127.0.0.1:{target}");
    let job = |name: &str, ca: &Path, auth: bool| {
        let auth = if auth {
            "    basic_auth:\n      username: prometheus\n      password: s3cret\n"
        } else {
            ""
        };
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n{auth}    static_configs:\n      - targets: [\"{target}\"]\n",
            ca.display()
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{}{}{}",
            job("oomlab-tls-auth", ca, true),
            job("oomlab-tls-no-auth", ca, false),
            job("oomlab-wrong-ca", wrong_ca, true),
        ),
    )
    .expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start prometheus (Debian package `prometheus`; `cargo xtask setup` installs it)");
    Reap(child)
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    if !common::need_root("prometheus_scrapes_over_tls_with_basic_auth") {
        return;
    }
    if common::skip_in_vm(
        "prometheus_scrapes_over_tls_with_basic_auth",
        "the guest has no Prometheus, openssl or curl; TLS does not depend on the kernel",
    ) {
        return;
    }
    let dir = TempPath::dir("serve-tls");
    let d = dir.path();
    let ca_pem = ca(d, "good");
    let wrong_ca = ca(d, "wrong");
    // server.pem and server.key, named in web.yml by relative path.
    leaf(d, "good", "server", "serverAuth");
    let (client_cert, client_key) = leaf(d, "good", "client", "clientAuth");
    let hash = bcrypt::hash("s3cret", 6).expect("bcrypt");
    let web = d.join("web.yml");
    // Relative paths: relative to web.yml, as exporter-toolkit reads them.
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS12\n";
    std::fs::write(
        &web,
        format!("{tls}basic_auth_users:\n  prometheus: {hash}\n"),
    )
    .expect("write web.yml");

    let ca_arg = ca_pem.to_str().expect("utf-8 path").to_owned();
    let ready = |port: u16| curl(port, "/healthz", &["--cacert", &ca_arg]).1 == 200;
    let web_arg = web.to_str().expect("utf-8 path");
    let mut serve = Serve::launch(
        "",
        &Launch {
            args: &["--web-config", web_arg],
            stderr: Some(d.join("serve.stderr")),
            ready: Some(&ready),
        },
    );
    let port = serve.port;
    assert!(
        serve
            .stderr_text()
            .contains(&format!("ready on https://127.0.0.1:{port}")),
        "{}",
        serve.stderr_text()
    );

    // curl: /healthz without credentials, /metrics and /events with a 401 and a challenge.
    let ca = ["--cacert", ca_arg.as_str()];
    assert_eq!(
        curl(port, "/healthz", &ca),
        (0, 200),
        "/healthz needs no credentials"
    );
    assert_eq!(curl(port, "/metrics", &ca).1, 401);
    assert_eq!(curl(port, "/events", &ca).1, 401);
    let headers = curl_headers(port, "/metrics", &ca);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"oomlab\""),
        "{headers}"
    );
    let wrong_pw = ["--cacert", ca_arg.as_str(), "-u", "prometheus:guess"];
    assert_eq!(curl(port, "/metrics", &wrong_pw).1, 401);
    let good = ["--cacert", ca_arg.as_str(), "-u", "prometheus:s3cret"];
    assert_eq!(curl(port, "/metrics", &good), (0, 200));
    // The wrong CA: curl refuses the server's certificate (60), no HTTP at all.
    let wrong = wrong_ca.to_str().expect("utf-8 path");
    let (exit, code) = curl(
        port,
        "/healthz",
        &["--cacert", wrong, "-u", "prometheus:s3cret"],
    );
    assert!(
        exit == 60 && code == 0,
        "a wrong CA must fail: curl exit {exit}, HTTP {code}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        common::serve::try_get(port, "/healthz", "")
            .map(|r| r.0)
            .ok()
            != Some(200),
        "plain HTTP must not be served on the TLS port"
    );

    // Prometheus: three jobs on the same target, its own records say what each got.
    let prom_port = free_port();
    let _prom = prometheus(d, prom_port, port, &ca_pem, &wrong_ca);
    let mut seen = Vec::new();
    let settled = common::wait_until(Duration::from_secs(40), || {
        seen = targets(prom_port);
        seen.len() == 3 && seen.iter().all(|(_, health, _)| health != "unknown")
    });
    assert!(
        settled,
        "Prometheus scraped every job within 40 s: {seen:?}\n{}",
        std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default()
    );
    eprintln!("Prometheus targets: {seen:?}");
    let job = |name: &str| {
        seen.iter()
            .find(|(j, _, _)| j == name)
            .cloned()
            .unwrap_or_else(|| panic!("no job {name}: {seen:?}"))
    };
    assert_eq!(job("oomlab-tls-auth").1, "up", "{seen:?}");
    let (_, health, err) = job("oomlab-tls-no-auth");
    assert!(
        health == "down" && err.contains("401"),
        "no credentials: {health} {err}"
    );
    let (_, health, err) = job("oomlab-wrong-ca");
    assert!(
        health == "down" && err.contains("certificate"),
        "wrong CA: {health} {err}"
    );
    let up = query(prom_port, "up{job=\"oomlab-tls-auth\"}");
    assert_eq!(
        up["data"]["result"][0]["value"][1], "1",
        "up == 1 for the TLS + basic auth job: {up}"
    );
    let build = query(prom_port, "oomlab_build_info{job=\"oomlab-tls-auth\"}");
    assert!(
        build["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "oomlab_build_info scraped: {build}"
    );

    // SIGHUP: the web config again, now asking for a client certificate (mTLS).
    std::fs::write(
        &web,
        format!("{tls}  client_ca_file: good-ca.pem\n  client_auth_type: RequireAndVerifyClientCert\nbasic_auth_users:\n  prometheus: {hash}\n"),
    )
    .expect("write web.yml");
    common::signal(serve.child.id() as i32, Signal::SIGHUP);
    let (cc, ck) = (
        client_cert.to_str().expect("utf-8"),
        client_key.to_str().expect("utf-8"),
    );
    let with_cert = ["--cacert", ca_arg.as_str(), "--cert", cc, "--key", ck];
    assert!(
        common::wait_until(Duration::from_secs(5), || curl(port, "/healthz", &ca).1
            == 0),
        "after the reload a client without a certificate is refused"
    );
    assert_eq!(curl(port, "/healthz", &with_cert), (0, 200));
    assert_eq!(
        curl(port, "/metrics", &with_cert).1,
        401,
        "mTLS and basic auth"
    );
    let both = [&with_cert[..], &["-u", "prometheus:s3cret"]].concat();
    assert_eq!(curl(port, "/metrics", &both), (0, 200));

    // A broken web config on SIGHUP keeps the running one.
    std::fs::write(&web, "tls_server_config:\n  cert_file: missing.pem\n").expect("write");
    common::signal(serve.child.id() as i32, Signal::SIGHUP);
    assert!(
        common::wait_until(Duration::from_secs(5), || serve
            .stderr_text()
            .contains("keeping the running config")),
        "{}",
        serve.stderr_text()
    );
    assert_eq!(curl(port, "/metrics", &both), (0, 200));
    serve.stop();
}
