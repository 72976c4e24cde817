//! The daemon's TOML configuration: where to listen, how many cgroups get their own series, which
//! events to trace, and the HTTP limits. Unknown keys are errors, so a typo never silently falls
//! back to a default.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
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
    /// Open HTTP connections at most; more are closed at once.
    pub max_connections: usize,
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
            max_header_bytes: 16 << 10,
            stream_buffer: 4096,
            runtime: crate::runtime::RuntimeArgs::default(),
        }
    }
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
        log::warn!(
            "listening on {}, beyond loopback: anyone who reaches it sees every OOM kill and process name on this node",
            self.listen
        );
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
            max_header_bytes = 9000
            stream_buffer = 16
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.listen, "0.0.0.0:9100".parse().expect("addr"));
        assert_eq!((cfg.top_n, cfg.max_comms_per_cgroup), (5, 3));
        assert!(cfg.traces(EventClass::Oom) && cfg.traces(EventClass::Reclaim));
        assert!(!cfg.traces(EventClass::Adj) && !cfg.traces(EventClass::Cgroup));
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
