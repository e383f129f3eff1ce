//! The `gshare-server` binary: parses the command line, sets up logging, and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use gshare_common::password::PasswordPrompt;
use gshare_proto::UserName;
use gshare_server::Config;
use gshare_server::admin::{self, Answer, Request};
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
    /// The server's configuration file. Paths inside it are relative to its directory. May
    /// come before or after the command.
    #[arg(long, value_name = "FILE", global = true, env = "GSHARE_CONFIG")]
    config: Option<PathBuf>,

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
    /// Send files and directory trees to every member of a group, through the running server.
    ///
    /// Returns once the deliveries are recorded (they survive a restart); with --wait, shows
    /// progress per member and returns when every connected member has the files.
    Send {
        /// The group to send to.
        #[arg(long)]
        group: String,
        /// Files and directories to send. A file is delivered under its own file name; each
        /// file inside a directory under its path from the directory's name down
        /// (project/src/main.rs). Symbolic links inside a directory are skipped, never followed.
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// Wait until every connected member has acknowledged; list the others as pending.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a sent file: members who have not received it yet never will; transfers of it
    /// stop and members throw away what they got; its spool copy is let go.
    Cancel {
        /// The file's number, as `send` printed it and `status` lists it (`#7`).
        #[arg(value_name = "NUMBER")]
        file: u64,
    },
    /// List or revoke member certificates, one device at a time.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Show groups, members (online or not, last seen) and each file's state per member.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only this file, by the number `send` printed and `status` shows (`#7`).
        #[arg(long, value_name = "NUMBER")]
        file: Option<u64>,
    },
    /// Write shell completions (bash, zsh, fish) and manual pages into DIR.
    Generate {
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Every member certificate issued: serial, user, fingerprint, issued, expires, revoked.
    List {
        /// Only this user's certificates.
        #[arg(long)]
        user: Option<UserName>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one certificate (a lost laptop) at once; the user and their other devices keep
    /// working.
    Revoke {
        /// The certificate's serial or fingerprint, as `cert list` shows them.
        #[arg(value_name = "SERIAL|FINGERPRINT")]
        certificate: String,
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
    /// Replace the groups a user may join; memberships outside them end at once.
    Groups {
        name: UserName,
        /// Comma-separated groups the user may join, e.g. Developers,Designers.
        #[arg(long, value_name = "GROUPS")]
        groups: String,
    },
    /// Lock a user out at once (sessions closed, joins, renewals and enrollment refused),
    /// keeping their certificates for `user enable`.
    Disable { name: UserName },
    /// Let a disabled user back in, with the certificates they have.
    Enable { name: UserName },
    /// Remove a user and revoke their certificates and memberships.
    Remove { name: UserName },
    /// List users, their groups, and whether they are disabled.
    List,
}

fn main() -> ExitCode {
    pin_mmap_threshold();
    // Everything the server creates (state, database, spool, socket) is its user's alone.
    gshare_server::private::restrict_umask();
    let cli = Cli::parse();
    gshare_common::cli::init_logging("info");
    gshare_common::cli::exit(run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Generate { out }) = &cli.command {
        return generate(out);
    }
    let Some(config_path) = cli.config else {
        bail!("which server? give --config FILE (or set GSHARE_CONFIG)");
    };
    let config = Config::load(&config_path)?;
    // Commands that edit users.toml make it private as they write; the others say so.
    let edits_users = matches!(&cli.command, Some(Command::User(command)) if !matches!(command, UserCommand::List));
    if cli.command.is_some() && !edits_users {
        warn_if_users_file_is_readable(&config.users_file);
    }
    match cli.command {
        None => serve(config),
        Some(Command::Fingerprint) => {
            let identity = gshare_server::load_identity(&config)?;
            gshare_common::outln!("{}", identity.ca.fingerprint());
            Ok(())
        }
        Some(Command::User(command)) => user(&config, command),
        Some(Command::Cert(command)) => cert(&config, command),
        Some(Command::Cancel { file }) => cancel(&config, file),
        Some(Command::Generate { out }) => generate(&out),
        Some(Command::Status { json, file }) => status(&config, json, file),
        Some(Command::Send { group, files, wait }) => interruptible_send(config, group, files, wait),
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
            gshare_common::outln!("added user {name} (groups: {names})");
        }
        UserCommand::Passwd { name, password_stdin } => {
            if !UserStore::load(path, &config.groups)?.users.contains_key(&name) {
                bail!("no user {name} in {}", path.display());
            }
            let password_hash = config.password_cost.hash(&read_new_password(&name, password_stdin)?)?;
            users::edit(path, &config.groups, Edit::SetPassword { user: name.clone(), password_hash })?;
            gshare_common::outln!("changed the password of {name}");
        }
        UserCommand::Groups { name, groups } => {
            let groups = users::parse_groups(&groups, &config.groups)?;
            if groups.is_empty() {
                bail!("--groups names no group");
            }
            let names = groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ");
            users::edit(path, &config.groups, Edit::SetGroups { user: name.clone(), groups })?;
            gshare_common::outln!("{name} may now join: {names}");
        }
        UserCommand::Disable { name } => {
            users::edit(path, &config.groups, Edit::SetDisabled { user: name.clone(), disabled: true })?;
            gshare_common::outln!("disabled {name}; a running server closes their sessions within a second");
        }
        UserCommand::Enable { name } => {
            users::edit(path, &config.groups, Edit::SetDisabled { user: name.clone(), disabled: false })?;
            gshare_common::outln!("enabled {name}");
        }
        UserCommand::Remove { name } => {
            users::edit(path, &config.groups, Edit::Remove { user: name.clone() })?;
            // Revoke now rather than wait for the running server to notice the edit.
            gshare_server::private::prepare_state_dir(&config.state_dir)
                .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
            let store = Store::open(&config.state_dir)?;
            let now = gshare_server::store::unix_now();
            let revoked = store.revoke_user(&name, "removed with `user remove`", now)?;
            gshare_common::outln!("removed user {name}; revoked {revoked} certificate(s)");
        }
        UserCommand::List => {
            let store = UserStore::load(path, &config.groups)?;
            if store.users.is_empty() {
                gshare_common::outln!("no users in {}", path.display());
            }
            for (name, user) in &store.users {
                let groups: Vec<&str> = user.groups.iter().map(|g| g.as_str()).collect();
                let state = if user.disabled { "  (disabled)" } else { "" };
                gshare_common::outln!("{name}  {}{state}", groups.join(","));
            }
        }
    }
    Ok(())
}

/// The password hashes in users.toml are secrets too (they can be attacked offline): a file
/// others may read gets a warning, with the command that fixes it.
fn warn_if_users_file_is_readable(path: &std::path::Path) {
    if let Ok(Some(mode)) = users::readable_by_others(path) {
        gshare_common::say!(
            "warning: {} can be read by other users (mode {mode:04o}); its password hashes are secrets too: chmod o-rwx {}",
            path.display(),
            path.display()
        );
    }
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    gshare_server::private::prepare_state_dir(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    Ok(Store::open(&config.state_dir)?)
}

fn cert(config: &Config, command: CertCommand) -> anyhow::Result<()> {
    let store = open_store(config)?;
    match command {
        CertCommand::List { user, json } => {
            let listing = store.list_certificates(user.as_ref())?;
            let now = gshare_server::store::unix_now();
            if json {
                let rows: Vec<serde_json::Value> = listing
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "serial": c.serial,
                            "user": c.user.as_str(),
                            "fingerprint": c.fingerprint.to_string(),
                            "issued_at": c.issued_at,
                            "expires_at": c.expires_at,
                            "revoked_at": c.revoked_at,
                            "revoked_reason": c.revoked_reason,
                            "renewed_from": c.renewed_from,
                        })
                    })
                    .collect();
                gshare_common::out!("{}\n", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if listing.is_empty() {
                gshare_common::outln!("no certificates issued yet");
            }
            for c in &listing {
                let state = match (&c.revoked_at, &c.revoked_reason) {
                    (Some(at), reason) => format!("revoked {} ({})", when(*at), reason.as_deref().unwrap_or("")),
                    (None, _) if c.expires_at < now => "expired".to_owned(),
                    (None, _) => "valid".to_owned(),
                };
                let renewed = c.renewed_from.as_ref().map(|from| format!("; renewed from {from}")).unwrap_or_default();
                gshare_common::out!(
                    "{}  {:<16} {}  issued {}  expires {}  {state}{renewed}\n",
                    c.serial,
                    c.user.as_str(),
                    c.fingerprint,
                    when(c.issued_at),
                    when(c.expires_at)
                );
            }
        }
        CertCommand::Revoke { certificate } => {
            let Some(found) = store.find_certificate(&certificate)? else {
                bail!("no certificate with serial or fingerprint {certificate}; `cert list` shows them");
            };
            let now = gshare_server::store::unix_now();
            if !store.revoke_certificate(&found.fingerprint, "revoked with `cert revoke`", now)? {
                gshare_common::outln!("certificate {} of {} was already revoked", found.serial, found.user);
                return Ok(());
            }
            // Close its sessions now; the database already refuses it everywhere else.
            let request = Request::CertificateRevoked { fingerprint: found.fingerprint.to_string() };
            match admin_request(config, &request, |_| Ok(())) {
                Ok(()) => gshare_common::outln!(
                    "revoked certificate {} of {} ({}); its open sessions are closed, the user's other certificates are untouched",
                    found.serial,
                    found.user,
                    found.fingerprint
                ),
                Err(_) => gshare_common::outln!(
                    "revoked certificate {} of {} ({}); the server is not running, so no session was open",
                    found.serial,
                    found.user,
                    found.fingerprint
                ),
            }
        }
    }
    Ok(())
}

fn cancel(config: &Config, file: u64) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let Some(deliveries) = store.cancel_file(file, gshare_server::store::unix_now())? else {
        bail!("no file #{file}; `status` lists the files with their numbers");
    };
    if deliveries.is_empty() {
        gshare_common::outln!("file #{file} was owed to nobody any more; nothing to cancel");
        return Ok(());
    }
    // The database already refuses them; a running server also stops their transfers now.
    let request = Request::DeliveriesCancelled { deliveries: deliveries.clone() };
    let running = admin_request(config, &request, |_| Ok(())).is_ok();
    let stopped = if running { "; transfers of it stopped" } else { "" };
    gshare_common::outln!("cancelled file #{file} for {} member(s) who had not received it{stopped}", deliveries.len());
    Ok(())
}

/// How `send --wait` shows progress: on a terminal, a live bar per member and one for the
/// total (bytes, rate, time left); otherwise a line every few seconds, never one per chunk.
struct SendProgress {
    /// Delivery id → (member, size, bytes done).
    deliveries: std::collections::HashMap<u64, (String, u64, u64)>,
    bars: Option<(
        indicatif::MultiProgress,
        indicatif::ProgressBar,
        std::collections::HashMap<String, indicatif::ProgressBar>,
    )>,
    last_line: std::time::Instant,
}

/// Time between two progress lines when the output is not a terminal.
const PROGRESS_LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl SendProgress {
    fn new(wait: bool) -> Self {
        use std::io::IsTerminal;
        let bars = (wait && std::io::stderr().is_terminal()).then(|| {
            let multi = indicatif::MultiProgress::new();
            let total = multi.add(indicatif::ProgressBar::new(0).with_style(Self::style()).with_prefix("total"));
            (multi, total, std::collections::HashMap::new())
        });
        Self { deliveries: std::collections::HashMap::new(), bars, last_line: std::time::Instant::now() }
    }

    fn style() -> indicatif::ProgressStyle {
        indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    fn expect(&mut self, delivery: u64, user: &str, size: u64) {
        self.deliveries.insert(delivery, (user.to_owned(), size, 0));
        if let Some((multi, total, members)) = &mut self.bars {
            total.inc_length(size);
            let bar = members.entry(user.to_owned()).or_insert_with(|| {
                multi.add(indicatif::ProgressBar::new(0).with_style(Self::style()).with_prefix(user.to_owned()))
            });
            bar.inc_length(size);
        }
    }

    fn update(&mut self, delivery: u64, bytes: u64) {
        let Some((_, size, done)) = self.deliveries.get_mut(&delivery) else { return };
        *done = bytes.min(*size);
        self.redraw();
    }

    fn done(&mut self, delivery: u64) {
        if let Some((_, size, done)) = self.deliveries.get_mut(&delivery) {
            *done = *size;
        }
        self.redraw();
    }

    /// Prints `line` to stdout without tearing the bars.
    fn say(&self, line: &str) {
        match &self.bars {
            Some((multi, ..)) => multi.suspend(|| gshare_common::outln!("{line}")),
            None => gshare_common::outln!("{line}"),
        }
    }

    fn redraw(&mut self) {
        let mut by_member: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
        for (user, size, done) in self.deliveries.values() {
            let entry = by_member.entry(user.as_str()).or_default();
            entry.0 += done;
            entry.1 += size;
        }
        let (done, size) = by_member.values().fold((0, 0), |(d, s), (md, ms)| (d + md, s + ms));
        match &self.bars {
            Some((_, total, members)) => {
                total.set_position(done);
                for (user, (member_done, _)) in &by_member {
                    if let Some(bar) = members.get(*user) {
                        bar.set_position(*member_done);
                    }
                }
            }
            None if self.last_line.elapsed() >= PROGRESS_LINE_INTERVAL => {
                self.last_line = std::time::Instant::now();
                let percent = |d: u64, s: u64| (d * 100).checked_div(s).unwrap_or(100);
                let members: Vec<String> =
                    by_member.iter().map(|(user, (d, s))| format!("{user} {}%", percent(*d, *s))).collect();
                gshare_common::outln!(
                    "  progress: {}% of {} to {} member(s); {}",
                    percent(done, size),
                    indicatif::HumanBytes(size),
                    by_member.len(),
                    members.join(", ")
                );
            }
            None => {}
        }
    }
}

/// Talks to the running server over its admin socket: one request, then answers until the
/// final one (`done`, `online` or `error`). A stream that ends before its final answer (the
/// server stopped) is an error: nothing may be taken as done that the server did not confirm.
fn admin_request(
    config: &Config,
    request: &Request,
    on_answer: impl FnMut(Answer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    admin_request_with(config, request, || {}, on_answer)
}

/// [`admin_request`], calling `on_sent` once the whole request is written.
fn admin_request_with(
    config: &Config,
    request: &Request,
    on_sent: impl FnOnce(),
    mut on_answer: impl FnMut(Answer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let path = config.state_dir.join(admin::SOCKET_FILE);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!("cannot reach the running server at {}; is gshare-server running with this config?", path.display())
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    on_sent();
    for line in BufReader::new(stream).lines() {
        let line = line.context("the connection to the server broke")?;
        let answer: Answer = serde_json::from_str(&line).context("unexpected answer from the server")?;
        let last = matches!(answer, Answer::Done { .. } | Answer::Online { .. } | Answer::Error { .. });
        on_answer(answer)?;
        if last {
            return Ok(());
        }
    }
    bail!("the server's answer ended before it was complete (did the server stop?)")
}

/// `send`, with Ctrl-C answered: the server goes on with a request it accepted (every file of
/// it is recorded and delivered, whatever happens to this command), so an interrupted `send`
/// says so, instead of leaving the person to guess.
fn interruptible_send(config: Config, group: String, files: Vec<PathBuf>, wait: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    let requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::clone(&requested);
    // A thread of its own, not awaited on Ctrl-C: the process ends while it still waits.
    std::thread::spawn(move || {
        let _ = done.send(send(&config, group, files, wait, &sent));
    });
    runtime.block_on(async {
        tokio::select! {
            result = finished => result.unwrap_or_else(|_| bail!("the send thread stopped")),
            _ = tokio::signal::ctrl_c() => {
                if requested.load(std::sync::atomic::Ordering::SeqCst) {
                    bail!("interrupted; the server goes on with the request it accepted: every file of it is recorded and delivered all the same (`gshare-server status` shows them)")
                }
                bail!("interrupted before the request reached the server; nothing was sent")
            }
        }
    })
}

fn send(
    config: &Config,
    group: String,
    files: Vec<PathBuf>,
    wait: bool,
    requested: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let listed = gshare_server::sendlist::list(&files)?;
    for skipped in &listed.skipped {
        gshare_common::say!("{skipped}");
    }
    let mut names: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let mut progress = SendProgress::new(wait);
    let mut failed = false;
    let mut recorded: Vec<String> = Vec::new();
    // Whether the server refused (and said which files it did not record), rather than the
    // exchange being cut short.
    let mut refused = false;
    let files: Vec<String> = listed.files.iter().map(|file| file.name.clone()).collect();
    let request = Request::Send { group: group.clone(), files: listed.files, wait };
    let sent = || requested.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcome = admin_request_with(config, &request, sent, |answer| {
        match answer {
            Answer::Recorded { name, size, sha256, file, deliveries } => {
                let users: Vec<&str> = deliveries.iter().map(|d| d.user.as_str()).collect();
                if deliveries.is_empty() {
                    gshare_common::outln!(
                        "file #{file} {name}: {size} bytes, sha256 {sha256}; no member of {group} yet, nothing to deliver"
                    );
                } else {
                    gshare_common::outln!(
                        "file #{file} {name}: {size} bytes, sha256 {sha256}; to {} member(s): {} (`status --file {file}` follows it)",
                        deliveries.len(),
                        users.join(", ")
                    );
                }
                for delivery in deliveries {
                    progress.expect(delivery.id, &delivery.user, size);
                    names.insert(delivery.id, name.clone());
                }
                recorded.push(name);
            }
            Answer::Progress { delivery, bytes, .. } => progress.update(delivery, bytes),
            Answer::Delivered { delivery, user } => {
                progress.done(delivery);
                let line = format!("  {user}: delivered {}", names.get(&delivery).map_or("", String::as_str));
                progress.say(&line);
            }
            Answer::Failed { delivery, user, reason, retrying } => {
                let next = if retrying { "; trying again" } else { "" };
                let name = names.get(&delivery).map_or("", String::as_str);
                progress.say(&format!("  {user}: {name} failed: {reason}{next}"));
                failed |= !retrying;
            }
            Answer::Done { pending } => {
                if wait && !pending.is_empty() {
                    // One name per member, however many files wait for it.
                    let mut users: Vec<String> = pending.iter().map(|d| d.user.clone()).collect();
                    users.sort();
                    users.dedup();
                    gshare_common::outln!(
                        "pending (not connected; they receive it when they connect): {}",
                        users.join(", ")
                    );
                }
            }
            Answer::Error { message } => {
                refused = true;
                bail!("{message}")
            }
            Answer::Online { .. } => {}
        }
        Ok(())
    });
    if let Err(error) = outcome {
        let not_recorded: Vec<&str> =
            files.iter().map(String::as_str).filter(|name| !recorded.iter().any(|r| r == name)).collect();
        let recorded_part = match (recorded.is_empty(), refused) {
            (true, true) => "nothing was recorded".to_owned(),
            (true, false) => "no file was confirmed as recorded".to_owned(),
            (false, _) => format!("recorded (they will be delivered): {}", recorded.join(", ")),
        };
        // Cut short, the server may have recorded a file without having said so yet (its
        // spool copy was still on its way to the disk): `status` knows.
        let missing_part = match (not_recorded.is_empty(), refused) {
            (true, _) => String::new(),
            (false, true) => format!("; not recorded (send them again): {}", not_recorded.join(", ")),
            (false, false) => format!(
                "; not confirmed (the server may have recorded them; see `gshare-server status` before sending them again): {}",
                not_recorded.join(", ")
            ),
        };
        bail!("{error:#}; {recorded_part}{missing_part}");
    }
    if failed {
        bail!("some deliveries failed");
    }
    Ok(())
}

fn status(config: &Config, json: bool, only_file: Option<u64>) -> anyhow::Result<()> {
    gshare_server::private::prepare_state_dir(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    let store = Store::open(&config.state_dir)?;
    let memberships = store.memberships()?;
    let seen: std::collections::HashMap<String, i64> = store.last_seen()?.into_iter().collect();
    let deliveries = store.delivery_status()?;
    // Who is connected is known only to the running server; without it, nobody is.
    let mut online: Option<Vec<String>> = None;
    let _ = admin_request(config, &Request::Online, |answer| {
        if let Answer::Online { users } = answer {
            online = Some(users);
        }
        Ok(())
    });
    let server_running = online.is_some();
    let online = online.unwrap_or_default();

    let groups: Vec<serde_json::Value> = config
        .groups
        .iter()
        .map(|group| {
            let members: Vec<serde_json::Value> = memberships
                .iter()
                .filter(|m| &m.group == group)
                .map(|m| {
                    let user = m.user.as_str();
                    serde_json::json!({
                        "user": user,
                        "online": online.iter().any(|u| u == user),
                        "joined_at": m.joined_at,
                        "last_seen": seen.get(user),
                    })
                })
                .collect();
            serde_json::json!({ "name": group.as_str(), "members": members })
        })
        .collect();
    let mut files: Vec<serde_json::Value> = Vec::new();
    if let Some(wanted) = only_file
        && !deliveries.iter().any(|d| d.file_id == wanted)
    {
        bail!("no file #{wanted}; `status` lists the files with their numbers");
    }
    for delivery in deliveries.iter().filter(|d| only_file.is_none_or(|wanted| d.file_id == wanted)) {
        let entry = serde_json::json!({
            "delivery": delivery.delivery,
            "user": delivery.user,
            "state": delivery.state,
            "bytes_done": delivery.bytes_done,
            "updated_at": delivery.updated_at,
            "reason": delivery.reason,
            "from_server": delivery.from_server,
            "from_peers": delivery.from_peers,
            "bad_peers": delivery.bad_peers,
        });
        match files.last_mut().filter(|f| f["id"] == delivery.file_id) {
            Some(file) => {
                if let Some(list) = file["deliveries"].as_array_mut() {
                    list.push(entry);
                }
            }
            None => files.push(serde_json::json!({
                "id": delivery.file_id,
                "name": delivery.name,
                "size": delivery.size,
                "sha256": delivery.sha256,
                "group": delivery.group,
                "created_at": delivery.created_at,
                "deliveries": [entry],
            })),
        }
    }
    let retention_days = config.retention.as_secs() / 86_400;
    if json {
        let value = serde_json::json!({
            "server_running": server_running,
            "retention_days": retention_days,
            "groups": groups,
            "files": files,
        });
        gshare_common::outln!("{value:#}");
        return Ok(());
    }
    if !server_running {
        gshare_common::outln!("(the server is not running: nobody is shown online)");
    }
    for group in &groups {
        let members = group["members"].as_array().map_or(&[][..], Vec::as_slice);
        gshare_common::outln!("{}: {} member(s)", group["name"].as_str().unwrap_or(""), members.len());
        for member in members {
            let online = member["online"].as_bool() == Some(true);
            let state = if online { "online" } else { "offline" };
            // An online member's last record is when it connected: "now" says more.
            let last = match member["last_seen"].as_i64() {
                _ if online => "connected now".to_owned(),
                Some(at) => format!("last seen {}", when(at)),
                None => "never connected".to_owned(),
            };
            gshare_common::outln!("  {:<20} {state:<8} {last}", member["user"].as_str().unwrap_or(""));
        }
    }
    gshare_common::outln!("files (kept up to {retention_days} days for members who have not received them):");
    if files.is_empty() {
        gshare_common::outln!("  none");
    }
    for file in &files {
        gshare_common::outln!(
            "  #{} {} ({} bytes) to {}, sent {}",
            file["id"],
            file["name"].as_str().unwrap_or(""),
            file["size"],
            file["group"].as_str().unwrap_or(""),
            when(file["created_at"].as_i64().unwrap_or(0))
        );
        for delivery in file["deliveries"].as_array().map_or(&[][..], Vec::as_slice) {
            let user = delivery["user"].as_str().unwrap_or("");
            let state = delivery["state"].as_str().unwrap_or("");
            let detail = match state {
                "pending" if delivery["bytes_done"].as_u64().unwrap_or(0) > 0 => {
                    let waiting = delivery["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
                    format!("transferring, {} of {} bytes{waiting}", delivery["bytes_done"], file["size"])
                }
                "delivered" => format!("at {}", when(delivery["updated_at"].as_i64().unwrap_or(0))),
                _ => delivery["reason"].as_str().map(|r| format!("({r})")).unwrap_or_default(),
            };
            let sources = match (delivery["from_server"].as_u64(), delivery["from_peers"].as_u64()) {
                (Some(server), Some(peers)) => format!("; {server} bytes from the server, {peers} from other members"),
                _ => String::new(),
            };
            gshare_common::outln!("    {user:<20} {state:<10} {detail}{sources}");
            if let Some(bad) = delivery["bad_peers"].as_str() {
                gshare_common::outln!("    {:<20} sent pieces that did not verify: {bad}", "");
            }
        }
    }
    Ok(())
}

/// A Unix time as `2026-11-24 01:02:03 UTC`.
fn when(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC")).ok()
        })
        .unwrap_or_else(|| unix.to_string())
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

/// Keeps glibc from holding on to freed large buffers.
///
/// After a large block is freed, glibc raises its mmap threshold to that size, so later blocks
/// of that size come from per-thread heaps and stay resident after they are freed. Password
/// checks allocate about 19 MiB each on whichever blocking thread runs them, so over time every
/// malloc arena (up to 8 per core) would keep one: hundreds of MiB for nothing. A fixed
/// threshold sends every block over 128 KiB to mmap, and back to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn pin_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; it is called once, first thing in
    // main, before any other thread exists. Its return value only says whether it took effect.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}

/// Writes completions and manual pages into `out`.
fn generate(out: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    gshare_common::cli::generate(Cli::command(), "gshare-server", out)
}
