//! `oomlab serve`: node-wide tracing as a daemon with Prometheus metrics (see `crate::serve`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    cli::exit,
    serve::{self, ServeOptions},
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
    #[command(flatten)]
    runtime: crate::runtime::RuntimeArgs,
}

pub(super) fn run(args: Args) -> anyhow::Result<i32> {
    let opts = ServeOptions {
        config: args.config,
        listen: args.listen,
        allow_remote: args.allow_remote,
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
    // A runtime socket the config or a flag names must answer.
    if let Ok(hier) = crate::cgroup::Hierarchy::detect() {
        let runtimes = crate::runtime::Runtimes::new(&cfg.runtime, Some(&hier));
        if let Err(e) = runtimes.check_explicit(Some(hier.memory_version)) {
            eprintln!("oomlab serve: {e}");
            return Ok(exit::USAGE);
        }
    }
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
