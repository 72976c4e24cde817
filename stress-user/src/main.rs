use clap::Parser as _;

fn main() {
    // First thing, before any thread: `oomlab run` and `oomlab inject` must end in order on a
    // signal from their very first instant (see `stop`); the other commands get the default
    // dispositions back right after parsing.
    stress_user::stop::install_handlers();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = stress_user::cli::Cli::parse();
    std::process::exit(stress_user::cli::run(cli));
}
