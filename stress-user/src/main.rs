use clap::Parser as _;

fn main() {
    // Behave like other CLI tools when piped into `head`: die quietly on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = stress_user::cli::Cli::parse();
    std::process::exit(stress_user::cli::run(cli));
}
