//! What both binaries do around their work: logging to stderr, one line per event, filtered by
//! `RUST_LOG`; and a failure printed as one `error: ...` line with its whole cause chain, with a
//! non-zero exit status.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs to stderr, filtered by `RUST_LOG`, else by `default_filter` (such as `info`).
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// The exit status for `result`, printing a failure as `error: cause: cause: ...`.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
