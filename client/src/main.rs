//! The `gshare-client` binary: parses the command line, sets up logging, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use gshare_client::{ClientSettings, report, resolve_home};

/// How long `groups` listens for announcements by default.
const DEFAULT_GROUPS_WAIT: &str = "2s";

/// Secure group file distribution: the member's side.
#[derive(Debug, Parser)]
#[command(name = "gshare-client", version)]
struct Cli {
    /// The client's home: key, certificates, pinned CA and client.toml.
    /// [default: $GSHARE_HOME, else $XDG_CONFIG_HOME/gshare, else ~/.config/gshare]
    #[arg(long, value_name = "DIR", global = true)]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the groups of the gshare servers on the network, from their signed announcements.
    Groups {
        /// How long to listen for announcements, such as 2s or 500ms.
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_GROUPS_WAIT, value_parser = humantime::parse_duration)]
        wait: Duration,
    },
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
    let home = resolve_home(cli.home.as_deref())?;
    let settings = ClientSettings::load(&home)?;
    match cli.command {
        Command::Groups { wait } => groups(&settings, wait),
    }
}

fn groups(settings: &ClientSettings, wait: Duration) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    let found = runtime.block_on(gshare_client::discover(&settings.multicast, settings.ca_fingerprint, wait))?;
    if found.drops.total() > 0 {
        eprintln!("warning: ignored datagrams that failed verification: {}", found.drops.summary());
    }
    if found.servers.is_empty() {
        let wait = humantime::format_duration(wait);
        match settings.ca_fingerprint {
            Some(pinned) => bail!(
                "no gshare server with the pinned CA {pinned} answered on {} within {wait}",
                settings.multicast.describe()
            ),
            None => bail!(
                "no gshare server answered on {} within {wait}; is the server running, and does the \
                 [multicast] table of {} match the server's?",
                settings.multicast.describe(),
                settings.home.join(gshare_client::home::CLIENT_TOML).display()
            ),
        }
    }
    print!("{}", report::servers(&found.servers));
    Ok(())
}

/// One line per event on stderr, filtered by `RUST_LOG` (default `warn`, so that command
/// output stays clean).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
