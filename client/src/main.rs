//! The `gshare-client` binary: parses the command line, sets up logging, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use gshare_client::discover::Until;
use gshare_client::enroll::{EnrollOptions, enroll};
use gshare_client::identity::Enrollment;
use gshare_client::membership::{self, Direction};
use gshare_client::{ClientSettings, report, resolve_home};
use gshare_proto::membership::Outcome;
use gshare_proto::{Fingerprint, GroupName, ServerAddress, UserName};

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
    /// Get a certificate from the server, once, with a user name and password.
    ///
    /// The key is generated here and never leaves this machine. Without --ca-fingerprint the
    /// server's CA fingerprint is shown for you to confirm against the one your operator
    /// published.
    Enroll {
        /// Your user name on the server.
        #[arg(long)]
        user: UserName,
        /// The server's HOST:PORT [default: found from its multicast announcement].
        #[arg(long, value_name = "HOST:PORT")]
        server: Option<ServerAddress>,
        /// The CA fingerprint to require, as printed by `gshare-server fingerprint`.
        #[arg(long, value_name = "SHA256:HEX")]
        ca_fingerprint: Option<Fingerprint>,
        /// Read the password from one line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Get a new certificate (for a new key made here) before the current one expires.
    ///
    /// A listening member does this by itself once two thirds of its certificate's validity
    /// have passed (renew_at in client.toml); this does it now. The old certificate stays valid
    /// until it expires.
    Renew,
    /// Show this member's enrollment, certificate expiry, groups, and the files it received.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Join a group you are allowed into (a signed multicast request; waits for the signed reply).
    Join {
        #[arg(long)]
        group: GroupName,
    },
    /// Leave a group.
    Leave {
        #[arg(long)]
        group: GroupName,
    },
    /// Receive every file sent to the groups, until stopped (joins them first).
    ///
    /// Files are verified by SHA-256 before they take their name; an existing file of the same
    /// name is kept and the new one saved as "name (1).ext". Reconnects when the server goes
    /// away.
    Listen {
        /// A group to receive; repeat for several.
        #[arg(long, required = true)]
        group: Vec<GroupName>,
        /// Where to put the files of every group [default: ~/gshare/<group> for each group].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// A program to run after each received file, without a shell: the file's path is its
        /// argument; GSHARE_FILE, GSHARE_NAME, GSHARE_GROUP, GSHARE_SIZE and GSHARE_SHA256 are
        /// in its environment [default: on_receive in client.toml].
        #[arg(long, value_name = "PROGRAM")]
        exec: Option<PathBuf>,
    },
    /// List the groups of the gshare servers on the network, from their signed announcements.
    Groups {
        /// How long to listen for announcements, such as 2s or 500ms.
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_GROUPS_WAIT, value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Write shell completions (bash, zsh, fish) and manual pages into DIR.
    Generate {
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gshare_common::cli::init_logging("warn");
    gshare_common::cli::exit(run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Generate { out } = &cli.command {
        return generate(out);
    }
    let home = resolve_home(cli.home.as_deref())?;
    let settings = ClientSettings::load(&home)?;
    match cli.command {
        Command::Groups { wait } => groups(&settings, wait),
        Command::Enroll { user, server, ca_fingerprint, password_stdin } => {
            let options = EnrollOptions { user, server, ca_fingerprint, password_stdin, password: None };
            let enrolled = runtime()?.block_on(enroll(&settings, options))?;
            gshare_common::outln!("enrolled with {} (CA {})", enrolled.server, enrolled.ca_fingerprint);
            gshare_common::outln!(
                "certificate {} stored in {}",
                enrolled.certificate_fingerprint,
                settings.home.display()
            );
            Ok(())
        }
        Command::Renew => {
            let current = Enrollment::load(&settings.home)?;
            let renewed = runtime()?.block_on(gshare_client::renew::renew(&settings, &current))?;
            let (_, expires) = renewed.validity()?;
            gshare_common::outln!(
                "certificate renewed: {} valid until {}",
                renewed.certificate_fingerprint(),
                gshare_client::identity::format_time(expires)
            );
            Ok(())
        }
        Command::Status { json } => {
            let enrollment = Enrollment::load(&settings.home)?;
            let status = gshare_client::status::collect(&settings, &enrollment);
            if json {
                gshare_common::outln!("{}", serde_json::to_string_pretty(&status.json())?);
            } else {
                gshare_common::out!("{}", status.text());
            }
            Ok(())
        }
        Command::Generate { out } => generate(&out),
        Command::Join { group } => change_membership(&settings, Direction::Join, &group),
        Command::Leave { group } => change_membership(&settings, Direction::Leave, &group),
        Command::Listen { group, out, exec } => {
            let enrollment = Enrollment::load(&settings.home)?;
            let options = gshare_client::listen::ListenOptions { groups: group, out, exec };
            runtime()?.block_on(async {
                tokio::select! {
                    result = gshare_client::listen::listen(&settings, enrollment, &options) => result.map_err(anyhow::Error::from),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")
}

fn change_membership(settings: &ClientSettings, direction: Direction, group: &GroupName) -> anyhow::Result<()> {
    let enrollment = Enrollment::load(&settings.home)?;
    enrollment.check_not_expired(time::OffsetDateTime::now_utc())?;
    let outcome = runtime()?.block_on(membership::request(settings, &enrollment, direction, group))?;
    match outcome {
        Outcome::Accepted => {
            let done = if direction == Direction::Join { "joined" } else { "left" };
            gshare_common::outln!("{done} {group}");
            Ok(())
        }
        Outcome::Refused { message, .. } => bail!("server refused {}: {}", direction.verb(), message.as_str()),
    }
}

fn groups(settings: &ClientSettings, wait: Duration) -> anyhow::Result<()> {
    let found = runtime()?.block_on(gshare_client::discover(
        &settings.multicast,
        settings.ca_fingerprint,
        wait,
        Until::Complete,
    ))?;
    if found.drops.total() > 0 {
        gshare_common::say!("warning: ignored datagrams that failed verification: {}", found.drops.summary());
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
    gshare_common::out!("{}", report::servers(&found.servers));
    Ok(())
}

/// Writes completions and manual pages into `out`.
fn generate(out: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    gshare_common::cli::generate(Cli::command(), "gshare-client", out)
}
