//! The `gshare-server` binary: parses the command line, sets up logging, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gshare_server::Config;

/// Secure group file distribution: the server.
///
/// Without a command, runs the server: announces its groups over multicast and serves members.
/// The CA and server certificate are created in the state directory on first start.
#[derive(Debug, Parser)]
#[command(name = "gshare-server", version)]
struct Cli {
    /// The server's configuration file. Paths inside it are relative to its directory.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CA fingerprint (SHA256:hex) that members pin at enrollment.
    ///
    /// Creates the CA first if the server has never run, so the fingerprint can be published
    /// before the first start.
    Fingerprint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        None => serve(config),
        Some(Command::Fingerprint) => {
            let identity = gshare_server::load_identity(&config)?;
            println!("{}", identity.ca.fingerprint());
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        gshare_server::run(config, shutdown).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// One line per event on stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
