//! The daemon's TOML configuration: where to listen, how many cgroups get their own series, which
//! events to trace, and the HTTP limits. Unknown keys are errors, so a typo never silently falls
//! back to a default.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::trace::EventClass;

/// The port oomlab's exporter listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("refusing to listen on {0}: it is not a loopback address, and /metrics and /events describe every process on this node; pass --allow-remote (or set allow_remote = true) to expose them")]
    RemoteNotAllowed(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP endpoint.
    pub listen: SocketAddr,
    /// Must be true to listen anywhere but loopback.
    pub allow_remote: bool,
    /// Cgroups that get their own series; the rest are counted under `cgroup="other"`.
    pub top_n: usize,
    /// Distinct victim names (`comm`) per cgroup; the rest are counted under `comm="other"`.
    pub max_comms_per_cgroup: usize,
    /// Which events to count and stream.
    pub events: BTreeSet<EventClass>,
    /// Open HTTP connections at most. A new one takes the place of the oldest idle one (no
    /// whole request yet, or between requests); with none idle it is closed at once.
    pub max_connections: usize,
    /// Open connections from one IP address at most (the peer's own oldest idle one makes room).
    pub max_connections_per_peer: usize,
    /// `/events` streams at most, below `max_connections`, so `/metrics` and `/healthz` always
    /// find a place; more are answered 503.
    pub max_streams: usize,
    /// An `/events` client that accepts no bytes for this long while events wait for it is
    /// disconnected (and counted in `oomlab_events_streams_dropped_total`).
    #[serde(deserialize_with = "duration")]
    pub stream_write_timeout: Duration,
    /// TLS and basic auth, in the Prometheus exporter-toolkit `web-config.yml` format; relative
    /// paths are relative to this file's directory.
    pub web_config: Option<PathBuf>,
    /// Bytes of request line + headers at most (hyper answers 431 beyond; at least 8192).
    pub max_header_bytes: usize,
    /// Events kept for `/events` clients that fall behind (as batches of up to 64, counted as
    /// if full); a client further behind skips events (and is told how many) instead of
    /// holding the daemon up.
    pub stream_buffer: usize,
    /// Container runtime sockets (`[runtime]` `containerd_socket`, `docker_socket`) for the
    /// victims' container, pod and namespace names; a socket named here must answer.
    pub runtime: crate::runtime::RuntimeArgs,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
            allow_remote: false,
            top_n: 100,
            max_comms_per_cgroup: 10,
            events: EventClass::ALL.into_iter().collect(),
            max_connections: 32,
            max_connections_per_peer: 16,
            max_streams: 8,
            stream_write_timeout: Duration::from_secs(10),
            web_config: None,
            max_header_bytes: 16 << 10,
            stream_buffer: 4096,
            runtime: crate::runtime::RuntimeArgs::default(),
        }
    }
}

/// `"10s"`, `"500ms"`, `"1m 30s"` (humantime).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
}

/// hyper refuses buffers smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    /// Parses and checks a config text; `path` is for messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text, path)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        if self.top_n == 0 {
            return Err(invalid("top_n must be at least 1".into()));
        }
        if self.max_comms_per_cgroup == 0 {
            return Err(invalid("max_comms_per_cgroup must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections must be at least 1".into()));
        }
        if self.max_streams == 0 || self.max_streams >= self.max_connections {
            return Err(invalid(format!(
                "max_streams must be at least 1 and below max_connections ({}), so /metrics and /healthz always find a place",
                self.max_connections
            )));
        }
        if self.max_connections_per_peer == 0 {
            return Err(invalid(
                "max_connections_per_peer must be at least 1".into(),
            ));
        }
        if self.stream_write_timeout.is_zero() {
            return Err(invalid("stream_write_timeout must be above 0".into()));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(invalid(format!(
                "max_header_bytes must be at least {MIN_HEADER_BYTES}"
            )));
        }
        if self.stream_buffer == 0 {
            return Err(invalid("stream_buffer must be at least 1".into()));
        }
        Ok(())
    }

    /// Loopback unless the operator chose otherwise, explicitly.
    pub fn check_listen(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        if !self.allow_remote {
            return Err(ConfigError::RemoteNotAllowed(self.listen));
        }
        match &self.web_config {
            None => log::warn!(
                "listening on {}, beyond loopback, without a web_config (TLS, basic auth): anyone who reaches it sees every OOM kill and process name on this node",
                self.listen
            ),
            Some(web) => log::info!(
                "listening on {}, beyond loopback, with TLS and auth as {} says",
                self.listen,
                web.display()
            ),
        }
        Ok(())
    }

    pub fn traces(&self, class: EventClass) -> bool {
        self.events.contains(&class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/oomlab/serve.toml"))
    }

    #[test]
    fn runtime_sockets() {
        let cfg = parse("[runtime]\ncontainerd_socket = \"/run/k3s/containerd/containerd.sock\"\n")
            .expect("parses");
        assert_eq!(
            cfg.runtime.containerd_socket.as_deref(),
            Some(Path::new("/run/k3s/containerd/containerd.sock"))
        );
        assert_eq!(cfg.runtime.docker_socket, None);
        let err = parse("[runtime]\ncri_socket = \"/x\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("cri_socket"), "{err}");
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").expect("parses"), Config::default());
        assert_eq!(
            Config::default().listen,
            "127.0.0.1:9464".parse().expect("addr")
        );
    }

    #[test]
    fn every_key() {
        let cfg = parse(
            r#"
            listen = "0.0.0.0:9100"
            allow_remote = true
            top_n = 5
            max_comms_per_cgroup = 3
            events = ["oom", "reclaim"]
            max_connections = 4
            max_connections_per_peer = 2
            max_streams = 3
            stream_write_timeout = "1500ms"
            web_config = "web.yml"
            max_header_bytes = 9000
            stream_buffer = 16
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.listen, "0.0.0.0:9100".parse().expect("addr"));
        assert_eq!((cfg.top_n, cfg.max_comms_per_cgroup), (5, 3));
        assert!(cfg.traces(EventClass::Oom) && cfg.traces(EventClass::Reclaim));
        assert!(!cfg.traces(EventClass::Adj) && !cfg.traces(EventClass::Cgroup));
        assert_eq!((cfg.max_connections_per_peer, cfg.max_streams), (2, 3));
        assert_eq!(cfg.stream_write_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.web_config.as_deref(), Some(Path::new("web.yml")));
        cfg.check_listen().expect("remote allowed explicitly");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("listen = \"127.0.0.1:1\"\ntop_m = 3\n")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("top_m"), "{err}");
        assert!(err.contains("/etc/oomlab/serve.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "top_n = 0",
            "max_header_bytes = 100",
            "events = [\"swap\"]",
            "listen = \"localhost\"",
            "max_connections = -1",
            "max_streams = 32",
            "max_streams = 0",
            "max_connections = 4\nmax_streams = 4",
            "max_connections_per_peer = 0",
            "stream_write_timeout = \"0s\"",
            "stream_write_timeout = \"soon\"",
            "stream_write_timeout = 10",
        ] {
            assert!(parse(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn remote_needs_an_explicit_choice() {
        let cfg = parse("listen = \"0.0.0.0:9464\"").expect("parses");
        let err = cfg.check_listen().expect_err("not loopback").to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        let v6 = parse("listen = \"[::1]:9464\"").expect("parses");
        v6.check_listen().expect("::1 is loopback");
    }
}
