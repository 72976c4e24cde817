//! A real Prometheus (Debian's 2.42) for the metrics tests, started by the test on a loopback
//! port with its own config and TSDB under the test's temp dir, scraping `oomlab serve` every
//! 2 s; queried over its HTTP API; stopped by pid on drop.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{serve, wait_until};

pub(crate) struct Prometheus {
    child: Child,
    pub(crate) port: u16,
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `127.0.0.1:target` as job `oomlab`; waits until it is ready.
    pub(crate) fn start(dir: &Path, target: u16) -> Prometheus {
        let dir = dir.join("prometheus");
        fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n\
                 scrape_configs:\n  - job_name: oomlab\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = serve::free_port();
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, port };
        let ready = wait_until(Duration::from_secs(30), || {
            serve::try_get(port, "/-/ready", "").is_ok_and(|(s, _)| s == 200)
        });
        assert!(
            ready,
            "prometheus not ready within 30 s: {}",
            fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        p
    }

    /// An instant PromQL query's result vector (`data.result`).
    pub(crate) fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = serve::get(
            self.port,
            &format!("/api/v1/query?query={}", encode(promql)),
            "",
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The scalar value of a one-series result, `None` when empty.
    pub(crate) fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql)
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        super::signal(self.child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        if !wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
