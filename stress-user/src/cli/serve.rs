//! `oomlab serve`: node-wide tracing as a daemon with Prometheus metrics (see `crate::serve`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    cli::exit,
    serve::{self, ServeError, ServeOptions},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address for /metrics, /events and /healthz [default: 127.0.0.1:9464, or `listen` in the config].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file (listen, allow_remote, top_n, events, …); SIGHUP re-reads it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Allow listening on a non-loopback address (the endpoints show every OOM on the node).
    #[arg(long)]
    allow_remote: bool,
    /// TLS and basic auth (Prometheus exporter-toolkit web-config.yml: tls_server_config,
    /// basic_auth_users); SIGHUP re-reads it [default: `web_config` in the config].
    #[arg(long)]
    web_config: Option<PathBuf>,
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
}

/// A client that closes its socket mid-response must cost the daemon one connection, never
/// the process: `main` restores the default SIGPIPE (die quietly when piped into `head`),
/// which a daemon writing to sockets must not keep. serve starts no child processes, so no
/// child inherits the ignored disposition.
fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN, before the runtime's threads exist.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
        log::warn!("cannot ignore SIGPIPE: {}", std::io::Error::last_os_error());
    }
}

/// Each connection is a file descriptor: the soft limit (often 1024) goes up to the hard one,
/// so a flood of connections meets `max_connections` and the eviction of idle ones, not EMFILE
/// in the accept loop.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("getrlimit(RLIMIT_NOFILE): {e}"),
    }
}

pub(super) fn run(args: Args) -> anyhow::Result<i32> {
    let opts = ServeOptions {
        config: args.config,
        listen: args.listen,
        allow_remote: args.allow_remote,
        web_config: args.web_config,
        runtime: args.runtime,
    };
    // Bad config: say so before touching the kernel.
    let cfg = match opts.config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("oomlab serve: {e}");
            return Ok(exit::USAGE);
        }
    };
    if let Err(e) = ServeOptions::web(&cfg) {
        eprintln!("oomlab serve: {}", ServeError::from(e));
        return Ok(exit::USAGE);
    }
    // A runtime socket the config or a flag names must answer.
    if let Ok(hier) = crate::cgroup::Hierarchy::detect() {
        let runtimes = crate::runtime::Runtimes::new(&cfg.runtime, Some(&hier));
        if let Err(e) = runtimes.check_explicit(Some(hier.memory_version)) {
            eprintln!("oomlab serve: {e}");
            return Ok(exit::USAGE);
        }
    }
    ignore_sigpipe();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(serve::run(opts));
    // Connection tasks may still be open: do not wait for them (SIGTERM exits within 1 s).
    rt.shutdown_timeout(Duration::from_millis(100));
    result?;
    Ok(exit::OK)
}
