//! The `gshare-server` binary: parses the command line, sets up logging, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use gshare_common::password::PasswordPrompt;
use gshare_proto::UserName;
use gshare_server::Config;
use gshare_server::store::Store;
use gshare_server::users::{self, Edit, UserStore};

/// Secure group file distribution: the server.
///
/// Without a command, runs the server: announces its groups over multicast, enrolls members
/// and answers their joins. The CA and server certificate are created in the state directory
/// on first start.
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
    /// Manage the user store (users.toml). A running server picks up changes by itself.
    #[command(subcommand)]
    User(UserCommand),
    /// Show groups and their members.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user who may join the given groups.
    Add {
        name: UserName,
        /// Comma-separated groups the user may join, e.g. Developers,Designers.
        #[arg(long, value_name = "GROUPS")]
        groups: String,
        /// Read the password from one line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        name: UserName,
        /// Read the password from one line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user and revoke their certificates and memberships.
    Remove { name: UserName },
    /// List users, their groups, and whether they are disabled.
    List,
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
        Some(Command::User(command)) => user(&config, command),
        Some(Command::Status { json }) => status(&config, json),
    }
}

fn read_new_password(name: &UserName, from_stdin: bool) -> anyhow::Result<String> {
    let prompt = format!("New password for {name}: ");
    let password =
        PasswordPrompt { prompt: &prompt, from_stdin, confirm: true, min_chars: users::MIN_PASSWORD_CHARS }.read()?;
    Ok(password)
}

fn user(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let path = &config.users_file;
    match command {
        UserCommand::Add { name, groups, password_stdin } => {
            let groups = users::parse_groups(&groups, &config.groups)?;
            if groups.is_empty() {
                bail!("--groups names no group");
            }
            // Check before asking for a password that would be thrown away.
            if UserStore::load(path, &config.groups)?.users.contains_key(&name) {
                bail!("user {name} already exists; use `user passwd` to change the password");
            }
            let password_hash = config.password_cost.hash(&read_new_password(&name, password_stdin)?)?;
            let names = groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ");
            users::edit(path, &config.groups, Edit::Add { user: name.clone(), groups, password_hash })?;
            println!("added user {name} (groups: {names})");
        }
        UserCommand::Passwd { name, password_stdin } => {
            if !UserStore::load(path, &config.groups)?.users.contains_key(&name) {
                bail!("no user {name} in {}", path.display());
            }
            let password_hash = config.password_cost.hash(&read_new_password(&name, password_stdin)?)?;
            users::edit(path, &config.groups, Edit::SetPassword { user: name.clone(), password_hash })?;
            println!("changed the password of {name}");
        }
        UserCommand::Remove { name } => {
            users::edit(path, &config.groups, Edit::Remove { user: name.clone() })?;
            // Revoke now rather than wait for the running server to notice the edit.
            std::fs::create_dir_all(&config.state_dir)
                .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
            let store = Store::open(&config.state_dir)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let revoked = store.revoke_user(&name, "removed with `user remove`", now)?;
            println!("removed user {name}; revoked {revoked} certificate(s)");
        }
        UserCommand::List => {
            let store = UserStore::load(path, &config.groups)?;
            if store.users.is_empty() {
                println!("no users in {}", path.display());
            }
            for (name, user) in &store.users {
                let groups: Vec<&str> = user.groups.iter().map(|g| g.as_str()).collect();
                let state = if user.disabled { "  (disabled)" } else { "" };
                println!("{name}  {}{state}", groups.join(","));
            }
        }
    }
    Ok(())
}

fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    let memberships = Store::open(&config.state_dir)?.memberships()?;
    let groups: Vec<(String, Vec<(String, i64)>)> = config
        .groups
        .iter()
        .map(|group| {
            let members = memberships
                .iter()
                .filter(|m| &m.group == group)
                .map(|m| (m.user.as_str().to_owned(), m.joined_at))
                .collect();
            (group.as_str().to_owned(), members)
        })
        .collect();
    if json {
        let value = serde_json::json!({
            "groups": groups.iter().map(|(name, members)| serde_json::json!({
                "name": name,
                "members": members.iter().map(|(user, joined)| serde_json::json!({"user": user, "joined_at": joined})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{value:#}");
    } else {
        for (name, members) in &groups {
            println!("{name}: {} member(s)", members.len());
            for (user, _) in members {
                println!("  {user}");
            }
        }
    }
    Ok(())
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
