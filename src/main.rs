use sluice::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_vllm();
    // RUST_LOG, when set, says more precisely what to log than --log-level.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| cli.log_level.as_filter().into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match &cli.command {
        Command::Serve(args) => sluice::serve::run(args),
        Command::RunBatch(args) => sluice::batch::run(args),
        Command::Profile(args) => sluice::profile::run(args),
        Command::Bench(args) => sluice::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
