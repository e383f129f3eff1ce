//! `listen`: receive every file sent to our groups, until stopped.
//!
//! The member asks to join its groups (harmless if already joined) and keeps a session open:
//! TLS with its client certificate, a subscription, and offers answered one by one (see the
//! server's `session` module for the exchange). It never waits on the server: a member that
//! joined before opens its session without waiting for a join reply, and while the server is
//! down or restarting (at boot, during an upgrade) `listen` says so once and keeps trying,
//! joins and session alike, after a delay that doubles up to [`MAX_BACKOFF`], with jitter so
//! that many members do not return at the same instant. A refusal that will not change by
//! retrying (revoked, not allowed in the group) ends `listen` with the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use gshare_common::{Connection, ConnectionError, read_ahead};
use gshare_proto::frame::{DeliveryId, Frame, Offer, Text};
use gshare_proto::membership::Outcome;
use gshare_proto::swarm::{Bits, MAX_PIECES, Source, piece_count};
use gshare_proto::{GroupName, RelativePath, ServerAddress};

use crate::home::ClientSettings;
use crate::hook::Hook;
use crate::identity::{Enrollment, IdentityError, format_time};
use crate::inbox::{DeliveryKey, Inbox};
use crate::membership::{self, Direction};
use crate::renew::{RenewError, renew};
use crate::swarm::store::PieceStore;
use crate::swarm::{FileShare, Swarm, verify_and_write};
use crate::tls::{PinnedCaVerifier, server_name, session_config};

/// First delay before reconnecting.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay before reconnecting.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the delay.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Silence after which the server is taken for gone (it pings every 15 s when idle).
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Time to reach the server: TCP connection, then TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `listen` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("server refused {verb}: {reason}")]
    Refused { verb: &'static str, reason: String },
    #[error("enrollment recorded no server address; run `gshare-client enroll` again")]
    NoServer,
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    #[error("{}: {source}", path.display())]
    OutDir { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", path.display())]
    OutDirUnusable { path: PathBuf, problem: String },
    #[error("another `gshare-client listen` ({holder}) is using the home {}; stop it first, or give this one its own --home", home.display())]
    HomeInUse { home: PathBuf, holder: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot accept other members on {address} ([peer] listen in client.toml): {source}")]
    PeerListen { address: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{}: no such program to run after each file (--exec, or on_receive in client.toml)", .0.display())]
    Hook(PathBuf),
}

/// A session failure worth retrying.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    #[error("no word from the server for {0:?}")]
    Silent(Duration),
    #[error("cannot write a received file: {0}")]
    Disk(#[from] std::io::Error),
    #[error("server refused the session: {0}")]
    Refused(String),
    #[error("the server cannot take the session now: {0}")]
    Busy(String),
}

/// What to listen for and where to put it.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub groups: Vec<GroupName>,
    /// One directory for every group's files; default `~/gshare/<group>` per group.
    pub out: Option<PathBuf>,
    /// A program to run after each received file (`--exec`; else `on_receive` in client.toml).
    pub exec: Option<PathBuf>,
}

/// The default out directory of `group`: `~/gshare/<group>`.
pub fn default_out_dir(group: &GroupName) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join("gshare").join(group.as_str())
}

/// Joins, then receives files until a refusal that retrying cannot fix.
pub async fn listen(
    settings: &ClientSettings,
    mut enrollment: Enrollment,
    options: &ListenOptions,
) -> Result<(), ListenError> {
    let server = settings.server.clone().ok_or(ListenError::NoServer)?;
    enrollment.check_not_expired(OffsetDateTime::now_utc())?;
    // One listener per home: two would take the same deliveries into the same files.
    let _home_lock = lock_home(&settings.home)?;
    let journal = crate::status::journal_dir(&settings.home, &enrollment);
    if let Some(out) = &options.out {
        check_out_dir(out)?;
    }
    let hook = match options.exec.clone().or_else(|| settings.on_receive.clone()) {
        Some(program) if program.components().count() > 1 && !program.is_file() => {
            return Err(ListenError::Hook(program));
        }
        Some(program) => Some(Hook::new(program)),
        None => None,
    };
    let mut inboxes = HashMap::new();
    for group in &options.groups {
        let path = options.out.clone().unwrap_or_else(|| default_out_dir(group));
        let inbox =
            Inbox::open(&path, &journal).map_err(|source| ListenError::OutDir { path: path.clone(), source })?;
        inbox.check_writable().map_err(|source| ListenError::OutDirUnusable {
            path: path.clone(),
            problem: format!("cannot write in it ({source}); fix its permissions or choose another --out"),
        })?;
        inboxes.insert(group.clone(), inbox);
    }
    let verifier = PinnedCaVerifier::new(Some(enrollment.ca_fingerprint()));
    let mut config = session_config(Arc::clone(&verifier), &enrollment.certificate_der, &enrollment.key_pem)?;
    let swarm = Swarm::new(&enrollment.ca_der, &enrollment.certificate_der, &enrollment.key_pem, settings.peer.serve)?;
    let mut peer_port = start_serving(settings, &enrollment, &swarm).await?;
    let mut renewal = Renewal::new(&enrollment, settings.renew_at);
    let mut joined: Vec<GroupName> = Vec::new();
    let mut waiting = Waiting::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        enrollment.check_not_expired(OffsetDateTime::now_utc())?;
        if renewal.is_due() {
            match renew(settings, &enrollment).await {
                Ok(renewed) => {
                    config = session_config(Arc::clone(&verifier), &renewed.certificate_der, &renewed.key_pem)?;
                    swarm.set_identity(&renewed.ca_der, &renewed.certificate_der, &renewed.key_pem)?;
                    renewal = Renewal::new(&renewed, settings.renew_at);
                    // A certificate from before swarm delivery could not serve; the renewed one
                    // can, from now on.
                    if peer_port.is_none() && gshare_certs::authority::can_serve(&renewed.certificate_der) {
                        peer_port = start_serving(settings, &renewed, &swarm).await?;
                    }
                    if let Ok((_, expires)) = renewed.validity() {
                        gshare_common::say!("certificate renewed; the new one is valid until {}", format_time(expires));
                    }
                    enrollment = renewed;
                }
                Err(error) => renewal.failed(&error),
            }
        }
        let unanswered: Vec<GroupName> = options.groups.iter().filter(|g| !joined.contains(g)).cloned().collect();
        for group in &unanswered {
            match membership::request(settings, &enrollment, Direction::Join, group).await {
                Ok(Outcome::Accepted) => {
                    tracing::info!(%group, "joined");
                    joined.push(group.clone());
                }
                Ok(Outcome::Refused { message, .. }) => {
                    return Err(ListenError::Refused { verb: "join", reason: message.as_str().to_owned() });
                }
                // No reply is the server being down; a member that joined before can still
                // open its session, and the join is asked again next round.
                Err(error) => waiting.note(&format!("{error}; trying again until it answers")),
            }
        }
        let started = Instant::now();
        let mut connected = false;
        let link = SessionLink { swarm: &swarm, peer_port, renew_at: renewal.next, hook: hook.as_ref() };
        let result =
            session(&server, Arc::clone(&config), &options.groups, &inboxes, &link, &mut connected, &mut waiting).await;
        // Shares and peer connections belong to the session: the next one starts afresh.
        swarm.clear();
        match result {
            Ok(()) => tracing::info!(%server, "the server closed the session"),
            // Not a member yet, while a join is unanswered: the join may still get through.
            Err(SessionError::Refused(reason)) if joined.len() < options.groups.len() => waiting
                .note(&format!("the server refused the session ({reason}) while a join is unanswered; trying again")),
            Err(SessionError::Refused(reason)) => return Err(ListenError::Refused { verb: "the session", reason }),
            Err(error @ (SessionError::Connect(_) | SessionError::Busy(_))) if !connected => {
                waiting.note(&format!("{server}: {error}; trying again until it answers"))
            }
            // Said once, like an unreachable server; "connected to the server" follows when
            // the next session opens.
            Err(error) => {
                waiting.note(&format!("lost the session with the server at {server} ({error}); reconnecting"))
            }
        }
        if started.elapsed() >= STABLE_SESSION {
            backoff = MIN_BACKOFF;
        }
        let delay = jittered(backoff);
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `--out` must name an existing directory: a typo must not scatter files into a new one.
/// (The default `~/gshare/<group>` is created as needed.)
fn check_out_dir(out: &Path) -> Result<(), ListenError> {
    let unusable = |problem: &str| ListenError::OutDirUnusable { path: out.to_owned(), problem: problem.to_owned() };
    match std::fs::metadata(out) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(unusable("is not a directory")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(unusable("does not exist; create it first (without --out, files go to ~/gshare/<group>)"))
        }
        Err(source) => Err(ListenError::OutDir { path: out.to_owned(), source }),
    }
}

/// File in the client's home that the running `listen` holds locked, with its process id.
pub const LISTEN_LOCK: &str = "listen.lock";

/// Takes the home's listen lock, or says who holds it. Released when the process ends,
/// however it ends (it is an `flock`).
fn lock_home(home: &Path) -> Result<std::fs::File, ListenError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.join(LISTEN_LOCK);
    let io_error = |source| ListenError::OutDir { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error)?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "process unknown".to_owned(),
            pid => format!("process {pid}"),
        };
        return Err(ListenError::HomeInUse { home: home.to_owned(), holder });
    }
    file.set_len(0).map_err(io_error)?;
    file.rewind().map_err(io_error)?;
    write!(file, "{}", std::process::id()).map_err(io_error)?;
    Ok(file)
}

/// Starts accepting other members' connections, if this member serves and its certificate
/// may; returns the port, for the server to tell other members.
async fn start_serving(
    settings: &ClientSettings,
    enrollment: &Enrollment,
    swarm: &Arc<Swarm>,
) -> Result<Option<u16>, ListenError> {
    if !settings.peer.serve {
        return Ok(None);
    }
    if !gshare_certs::authority::can_serve(&enrollment.certificate_der) {
        gshare_common::say!(
            "this member's certificate predates swarm delivery: it receives, but does not pass files on to other members; run `gshare-client enroll` again to serve"
        );
        return Ok(None);
    }
    let wanted = settings.peer.listen;
    let listener = match TcpListener::bind(wanted).await {
        Ok(listener) => listener,
        // Another member on this machine has the port: any free one does as well.
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            let any = std::net::SocketAddr::new(wanted.ip(), 0);
            let listener =
                TcpListener::bind(any).await.map_err(|source| ListenError::PeerListen { address: wanted, source })?;
            if let Ok(bound) = listener.local_addr() {
                gshare_common::say!(
                    "{wanted} is in use; accepting other members on {bound} instead ([peer] listen in client.toml)"
                );
            }
            listener
        }
        Err(source) => return Err(ListenError::PeerListen { address: wanted, source }),
    };
    let port = listener.local_addr().map(|address| address.port()).ok();
    tokio::spawn(Arc::clone(swarm).accept(listener));
    Ok(port)
}

/// What a session needs beyond its connection.
#[derive(Debug)]
struct SessionLink<'a> {
    swarm: &'a Arc<Swarm>,
    peer_port: Option<u16>,
    /// When the session should end, between files, for the certificate to be renewed.
    renew_at: Option<tokio::time::Instant>,
    /// Run after each received file.
    hook: Option<&'a Hook>,
}

/// When the member's certificate is next renewed: once `renew_at` of its validity has passed,
/// and after a failure, again a little later (never in a tight loop).
#[derive(Debug)]
struct Renewal {
    next: Option<tokio::time::Instant>,
    /// Time between a failed attempt and the next.
    retry: Duration,
    told: bool,
}

impl Renewal {
    fn new(enrollment: &Enrollment, share: f64) -> Self {
        let now = OffsetDateTime::now_utc();
        let next = enrollment.renewal_due(share).map(|due| {
            let wait = Duration::try_from(due - now).unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + wait
        });
        // A tenth of what is left, between 10 s and an hour.
        let left = enrollment
            .validity()
            .map_or(Duration::from_secs(3600), |(_, until)| Duration::try_from(until - now).unwrap_or(Duration::ZERO));
        Self { next, retry: (left / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600)), told: false }
    }

    fn is_due(&self) -> bool {
        self.next.is_some_and(|next| next <= tokio::time::Instant::now())
    }

    /// Says once why renewal failed, and puts the next attempt off.
    fn failed(&mut self, error: &RenewError) {
        if !self.told {
            gshare_common::say!(
                "cannot renew this member's certificate yet ({error}); trying again later, the current one stays in use"
            );
            self.told = true;
        }
        tracing::debug!(%error, "renewal failed");
        self.next = Some(tokio::time::Instant::now() + self.retry);
    }
}

/// What `listen` has told the person about an unreachable server: once, not once per retry,
/// until it is reachable again.
#[derive(Debug, Default)]
struct Waiting {
    told: bool,
    /// Whether a session was ever opened: the first one is said, as a sign of life.
    connected_before: bool,
}

impl Waiting {
    fn note(&mut self, sentence: &str) {
        if !self.told {
            gshare_common::say!("{sentence}");
            self.told = true;
        }
        tracing::debug!("{sentence}");
    }

    fn reached(&mut self, server: &ServerAddress) {
        if std::mem::take(&mut self.told) || !std::mem::replace(&mut self.connected_before, true) {
            gshare_common::say!("connected to the server at {server}; waiting for files");
        }
    }
}

/// `base` plus or minus up to a fifth, at random.
fn jittered(base: Duration) -> Duration {
    let random: [u8; 2] = gshare_certs::random_bytes().unwrap_or([0x80, 0]);
    let fraction = f64::from(u16::from_be_bytes(random)) / f64::from(u16::MAX); // 0..=1
    base.mul_f64(0.8 + 0.4 * fraction)
}

async fn session(
    server: &ServerAddress,
    config: Arc<rustls::ClientConfig>,
    groups: &[GroupName],
    inboxes: &HashMap<GroupName, Inbox>,
    link: &SessionLink<'_>,
    connected: &mut bool,
    waiting: &mut Waiting,
) -> Result<(), SessionError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server.as_str()))
        .await
        .map_err(|_| SessionError::Connect("timed out".into()))?
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(config).connect(server_name(), read_ahead(tcp)))
        .await
        .map_err(|_| SessionError::Connect("the TLS handshake timed out".into()))?
        .map_err(|e| SessionError::Connect(crate::tls::handshake_error(&e)))?;
    let mut connection = Connection::new(tls);
    connection.set_write_timeout(SILENCE_LIMIT);
    connection.write_frame(&Frame::SubscribeSwarm { groups: groups.to_vec(), peer_port: link.peer_port }).await?;
    match read(&mut connection).await? {
        Some(Frame::Subscribed) => {
            *connected = true;
            waiting.reached(server);
        }
        Some(Frame::Refused { reason }) => return Err(SessionError::Refused(reason.to_string())),
        Some(Frame::Busy { reason }) => return Err(SessionError::Busy(reason.to_string())),
        Some(_) => return Err(SessionError::Protocol("an unexpected answer to the subscription".into())),
        None => return Err(SessionError::Protocol("closed before answering the subscription".into())),
    }
    let names: Vec<&str> = groups.iter().map(GroupName::as_str).collect();
    tracing::info!(%server, groups = %names.join(","), "connected; waiting for files");
    loop {
        let frame = tokio::select! {
            frame = read(&mut connection) => frame?,
            () = gshare_common::sleep_until(link.renew_at) => {
                tracing::info!("ending the session to renew the certificate");
                return Ok(());
            }
        };
        match frame {
            None => return Ok(()),
            Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
            Some(Frame::Pong) => {}
            // A cancellation that crossed the end of its transfer: nothing left to stop.
            Some(Frame::Cancel { .. }) => {}
            Some(Frame::Offer(offer)) => receive(&mut connection, offer, inboxes, link.hook).await?,
            Some(Frame::SwarmOffer { offer, piece_len }) => {
                receive_in_pieces(&mut connection, offer, piece_len, inboxes, link.swarm, link.hook).await?;
            }
            Some(Frame::Peers { file, peers }) => link.swarm.set_peers(file, peers),
            Some(Frame::Owed { deliveries, complete }) => {
                if complete {
                    let owed = deliveries.iter().map(|delivery| delivery.0).collect();
                    let all: Vec<&Inbox> = inboxes.values().collect();
                    let forgotten = Inbox::forget_unowed(&all, &owed);
                    if forgotten > 0 {
                        tracing::info!(forgotten, "threw away partial files of deliveries the server no longer owes");
                    }
                }
            }
            // Answers to requests that crossed the end of their file's delivery.
            Some(Frame::Piece { bytes, .. }) => connection.recycle(bytes),
            Some(Frame::NoNewPiece { .. }) => {}
            Some(Frame::Refused { reason }) => return Err(SessionError::Refused(reason.to_string())),
            Some(_) => return Err(SessionError::Protocol("an unexpected frame between deliveries".into())),
        }
    }
}

async fn read<S>(connection: &mut Connection<S>) -> Result<Option<Frame>, SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(SILENCE_LIMIT, connection.read_frame())
        .await
        .map_err(|_| SessionError::Silent(SILENCE_LIMIT))?
        .map_err(Into::into)
}

/// The offer's file name and the inbox of its group, or why the offer is declined (said to the
/// person and logged).
fn accepted<'a>(offer: &Offer, inboxes: &'a HashMap<GroupName, Inbox>) -> Result<(RelativePath, &'a Inbox), String> {
    let id = offer.delivery;
    let name = RelativePath::from_bytes(&offer.name).map_err(|error| {
        let shown = String::from_utf8_lossy(&offer.name).escape_debug().to_string();
        tracing::info!(delivery = id.0, name = %shown, "refused a file: {error}");
        gshare_common::say!("refused a file named \"{shown}\": {error}");
        error.to_string()
    })?;
    let inbox = inboxes.get(&offer.group).ok_or_else(|| {
        tracing::info!(delivery = id.0, group = %offer.group, "refused a file for a group not subscribed");
        gshare_common::say!("refused a file for {}, a group this listener does not receive", offer.group);
        format!("not subscribed to {}", offer.group)
    })?;
    Ok((name, inbox))
}

/// Answers one offer: decline it, acknowledge it as already held, or receive it.
async fn receive<S>(
    connection: &mut Connection<S>,
    offer: Offer,
    inboxes: &HashMap<GroupName, Inbox>,
    hook: Option<&Hook>,
) -> Result<(), SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = offer.delivery;
    let key = &DeliveryKey { id, sha256: offer.sha256 };
    let decline = |reason: String| Frame::Decline { delivery: id, reason: Text::new(&reason) };
    let (name, inbox) = match accepted(&offer, inboxes) {
        Ok(accepted) => accepted,
        Err(reason) => return Ok(connection.write_frame(&decline(reason)).await?),
    };

    // Already stored (our acknowledgement was lost): finish the rename if a crash interrupted
    // it, and acknowledge without taking the data again.
    let delivered = match inbox.already_delivered(key, &name) {
        Ok(delivered) => delivered,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    if let Some(stored) = delivered {
        connection.write_frame(&Frame::Resume { delivery: id, offset: offer.size }).await?;
        connection.write_frame(&Frame::Ack { delivery: id }).await?;
        tracing::info!(delivery = id.0, file = %stored, "already received; acknowledged again");
        return Ok(());
    }

    let mut partial = match inbox.prepare(key, offer.size) {
        Ok(partial) => partial,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    if partial.held > 0 {
        tracing::info!(delivery = id.0, file = %name, offset = partial.held, "resuming");
    }
    connection.write_frame(&Frame::Resume { delivery: id, offset: partial.held }).await?;
    let bar = FileBar::start(&offer.group, &name, offer.size, partial.held);
    while partial.held < offer.size {
        match read(connection).await? {
            Some(Frame::Data { delivery, bytes }) if delivery == id => {
                if partial.held + bytes.len() as u64 > offer.size {
                    drop(partial);
                    inbox.discard(key);
                    tracing::info!(delivery = id.0, file = %name, "the server sent more data than it offered");
                    connection
                        .write_frame(&Frame::Failed { delivery: id, reason: Text::new("more data than offered") })
                        .await?;
                    return Err(SessionError::Protocol("more data than offered".into()));
                }
                let len = bytes.len() as u64;
                if let Err(error) = partial.write(bytes).await {
                    // What was written stays for the next attempt; the rest of this one is
                    // read and dropped, so the session can go on.
                    let rest = offer.size - partial.held - len;
                    drop(partial);
                    if !skip_data(connection, id, rest).await? {
                        return Ok(()); // withdrawn meanwhile
                    }
                    return cannot_store(connection, &offer, &name, inbox.path(), &error).await;
                }
                for buffer in partial.written_buffers() {
                    connection.recycle(buffer);
                }
                bar.set(partial.held);
            }
            Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
            Some(Frame::Cancel { delivery, reason }) if delivery == id => {
                drop(partial);
                inbox.discard(key);
                tracing::info!(delivery = id.0, file = %name, "the server withdrew the file: {reason}");
                gshare_common::say!("{}/{name}: withdrawn by the server ({reason}); nothing kept", offer.group);
                return Ok(());
            }
            None => return Err(SessionError::Protocol("closed in the middle of a file".into())),
            Some(_) => return Err(SessionError::Protocol("an unexpected frame in the middle of a file".into())),
        }
    }
    let digest = match partial.finish() {
        Ok(digest) => digest,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    if digest != offer.sha256 {
        return throw_away_mismatch(connection, &offer, &name, inbox, key).await;
    }
    let (stored, identical) = match inbox.store_reporting(key, &name) {
        Ok(stored) => stored,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    connection.write_frame(&Frame::Ack { delivery: id }).await?;
    tracing::info!(delivery = id.0, file = %stored, size = offer.size, "received and verified");
    say_stored(&offer, &name, &stored, identical, inbox, hook);
    Ok(())
}

/// A whole file that does not hash to the offer: thrown away, said, and reported to the server
/// (which checks its own copy and offers the file again).
async fn throw_away_mismatch<S>(
    connection: &mut Connection<S>,
    offer: &Offer,
    name: &RelativePath,
    inbox: &Inbox,
    key: &DeliveryKey,
) -> Result<(), SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    inbox.discard(key);
    tracing::info!(delivery = offer.delivery.0, file = %name, "SHA-256 mismatch: the file was thrown away");
    gshare_common::say!(
        "{}/{name}: SHA-256 mismatch; thrown away, the server will check its copy and offer it again",
        offer.group
    );
    let reason = Text::new("SHA-256 mismatch: the data does not match the offer");
    Ok(connection.write_frame(&Frame::Failed { delivery: offer.delivery, reason }).await?)
}

/// Writes a line to standard output for the person (or a script) watching. The file it tells
/// of is stored already; if the line cannot be written (the output is a file on a full disk,
/// or a pipe nobody reads any more), the listener goes on receiving without it.
fn print_line(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

/// Tells the person where an acknowledged file went (and why it took another name, if it
/// did), and runs the hook on it.
fn say_stored(
    offer: &Offer,
    name: &RelativePath,
    stored: &RelativePath,
    identical: bool,
    inbox: &Inbox,
    hook: Option<&Hook>,
) {
    if told_cannot_store().remove(&offer.delivery.0) {
        print_line(format_args!("{}/{name}: there is room again", offer.group));
    }
    if identical {
        print_line(format_args!("{}/{name}: the same bytes are already here as {stored}; no second copy", offer.group));
    } else if stored != name {
        tracing::info!(file = %name, stored_as = %stored, "a different file already had the name; kept it");
        gshare_common::say!(
            "{}/{name}: a different file already has that name; kept it, and saved this one as {stored}",
            offer.group
        );
    }
    print_line(format_args!(
        "received {} ({} bytes, SHA-256 verified) in {}",
        stored,
        offer.size,
        inbox.path().display()
    ));
    if let Some(hook) = hook {
        hook.run(inbox.path(), stored, &offer.group, offer.size, &offer.sha256);
    }
}

/// Why this member cannot store a file in `dir`, as the server records it and `status` and
/// the person read it.
fn storage_failure(dir: &Path, error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if matches!(error.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge) {
        format!("no space left on the member's disk for {} ({error})", dir.display())
    } else {
        format!("the member cannot write in {}: {error}", dir.display())
    }
}

/// Tells the server that the file cannot be stored here now (it keeps what it holds and
/// offers the file again a little later), and the person why.
async fn cannot_store<S>(
    connection: &mut Connection<S>,
    offer: &Offer,
    name: &RelativePath,
    dir: &Path,
    error: &std::io::Error,
) -> Result<(), SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reason = storage_failure(dir, error);
    tracing::debug!(delivery = offer.delivery.0, file = %name, "cannot store: {reason}");
    // Said once per delivery, not at every retry while the disk stays full.
    let first = told_cannot_store().insert(offer.delivery.0);
    if first {
        gshare_common::say!(
            "{}/{name}: {reason}; what arrived is kept, and the server offers the file again shortly (free some space, or fix the directory)",
            offer.group
        );
    }
    connection.write_frame(&Frame::CannotStore { delivery: offer.delivery, reason: Text::new(&reason) }).await?;
    Ok(())
}

/// Deliveries whose "cannot store" this listener has already said.
fn told_cannot_store() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u64>> {
    static TOLD: std::sync::Mutex<std::collections::BTreeSet<u64>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    TOLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads and drops the `rest` bytes of a delivery's data still on their way. `false` if the
/// server withdrew the delivery meanwhile.
async fn skip_data<S>(connection: &mut Connection<S>, id: DeliveryId, mut rest: u64) -> Result<bool, SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while rest > 0 {
        match read(connection).await? {
            Some(Frame::Data { delivery, bytes }) if delivery == id => {
                rest = rest.saturating_sub(bytes.len() as u64);
                connection.recycle(bytes);
            }
            Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
            Some(Frame::Cancel { delivery, .. }) if delivery == id => return Ok(false),
            None => return Err(SessionError::Protocol("closed in the middle of a file".into())),
            Some(_) => return Err(SessionError::Protocol("an unexpected frame in the middle of a file".into())),
        }
    }
    Ok(true)
}

/// Time between two progress reports to the server while a file arrives in pieces.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes of a file in the pieces `have`.
fn held_bytes(have: &Bits, piece_len: u32, size: u64) -> u64 {
    (u64::from(have.count()) * u64::from(piece_len)).min(size)
}

/// A live bar for one incoming file, drawn only when stderr is a terminal (a service's log
/// gets the lines at start and end instead).
struct FileBar(Option<indicatif::ProgressBar>);

impl FileBar {
    fn start(group: &GroupName, name: &RelativePath, size: u64, held: u64) -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = indicatif::ProgressBar::new(size).with_style(style).with_prefix(format!("{group}/{name}"));
        if held > 0 {
            bar.set_message(format!("resumed from {}", indicatif::HumanBytes(held)));
        }
        bar.set_position(held);
        Self(Some(bar))
    }

    fn set(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(bytes);
        }
    }
}

impl Drop for FileBar {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// How often the schedule is looked at while a file arrives in pieces, besides when events
/// wake it: requests time out, and the server is asked for what nobody else could give.
const SCHEDULE_TICK: Duration = Duration::from_millis(250);
/// Least time between two looks at the schedule: events come by the thousand, and one look
/// answers all those that came since the last.
const PUMP_INTERVAL: Duration = Duration::from_millis(5);
/// Pieces from the server checked and written at once while the next is read: the session
/// reads one piece while others are hashed, on other cores.
const SERVER_PIECES_VERIFYING: usize = 4;

/// Answers one swarm offer: checks the name and group, takes the piece hashes, resumes with
/// the pieces already held, then takes the rest from the server and other members until the
/// file is whole, checks the whole file's SHA-256, and stores it.
async fn receive_in_pieces<S>(
    connection: &mut Connection<S>,
    offer: Offer,
    piece_len: u32,
    inboxes: &HashMap<GroupName, Inbox>,
    swarm: &Arc<Swarm>,
    hook: Option<&Hook>,
) -> Result<(), SessionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = offer.delivery;
    let key = &DeliveryKey { id, sha256: offer.sha256 };
    let decline = |reason: String| Frame::Decline { delivery: id, reason: Text::new(&reason) };
    let pieces = piece_count(offer.size, piece_len);
    let (name, inbox) = match accepted(&offer, inboxes) {
        Ok(accepted) => accepted,
        Err(reason) => return Ok(connection.write_frame(&decline(reason)).await?),
    };
    if pieces > MAX_PIECES {
        return Ok(connection.write_frame(&decline(format!("{pieces} pieces is more than {MAX_PIECES}"))).await?);
    }
    let pieces = pieces as u32;

    // Every piece end first, over this session: the only source of truth for pieces. They go
    // to a file beside the journal; if it cannot be written, the rest are still read, so the
    // session can go on. The last must be the file's SHA-256 (pieces are checked against it).
    let hashes_path = inbox.piece_hashes_path(key);
    let hashes_dir = hashes_path.parent().unwrap_or(inbox.path()).to_owned();
    let mut hashes = std::fs::File::create(&hashes_path);
    let mut next = 0u32;
    while next < pieces {
        match read(connection).await? {
            Some(Frame::PieceHashes { delivery, first, hashes: part }) if delivery == id && first == next => {
                use std::io::Write;
                let count = u32::try_from(part.len()).unwrap_or(u32::MAX);
                if count == 0 || count > pieces - next {
                    return Err(SessionError::Protocol("piece hashes that do not fit the file".into()));
                }
                if next + count == pieces && part.last() != Some(&offer.sha256) {
                    return Err(SessionError::Protocol("piece hashes that do not end in the file's SHA-256".into()));
                }
                if let Ok(file) = &mut hashes {
                    let bytes: Vec<u8> = part.iter().flatten().copied().collect();
                    if let Err(error) = file.write_all(&bytes) {
                        hashes = Err(error);
                    }
                }
                next += count;
            }
            Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
            _ => return Err(SessionError::Protocol("expected piece hashes".into())),
        }
    }
    if let Err(error) = hashes {
        let _ = std::fs::remove_file(&hashes_path);
        return cannot_store(connection, &offer, &name, &hashes_dir, &error).await;
    }

    // Already stored (our acknowledgement was lost): say we hold everything, and acknowledge.
    let delivered = match inbox.already_delivered(key, &name) {
        Ok(delivered) => delivered,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    if let Some(stored) = delivered {
        let mut all = Bits::new(pieces);
        (0..pieces).for_each(|piece| all.set(piece));
        connection.write_frame(&Frame::SwarmAccept { delivery: id, have: all.as_bytes().to_vec() }).await?;
        connection.write_frame(&Frame::Ack { delivery: id }).await?;
        let _ = std::fs::remove_file(&hashes_path);
        tracing::info!(delivery = id.0, file = %stored, "already received; acknowledged again");
        return Ok(());
    }

    let fresh = !inbox.has_temporary(key);
    let opened = inbox.open_part(key, offer.size).and_then(|part| Ok((part, std::fs::File::open(&hashes_path)?)));
    let (part, hashes) = match opened {
        Ok(opened) => opened,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    let store = PieceStore::new(offer.sha256, offer.size, piece_len, pieces, part, hashes);
    // A temporary file left by an earlier attempt is checked piece by piece; a new one holds
    // nothing (and reading and hashing its holes would cost as much as a whole file), unless
    // the same bytes were received whole before in this session: then every piece that still
    // verifies there is copied here.
    let previous = swarm.complete_share(&offer.sha256);
    let prepared = if let (true, Some(previous)) = (fresh, previous) {
        tokio::task::spawn_blocking(move || {
            let mut held = Bits::new(pieces);
            let mut buffer = Vec::new();
            for piece in 0..pieces {
                buffer = previous.store.read(piece, buffer)?;
                if store.verifies(piece, &buffer)? {
                    store.write(piece, &buffer)?;
                    held.set(piece);
                }
            }
            Ok::<_, std::io::Error>((store, held))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result)
    } else if fresh {
        Ok((store, Bits::new(pieces)))
    } else {
        tokio::task::spawn_blocking(move || store.scan().map(|held| (store, held)))
            .await
            .map_err(std::io::Error::other)
            .and_then(|result| result)
    };
    let (store, held) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return cannot_store(connection, &offer, &name, inbox.path(), &error).await,
    };
    if held.count() > 0 {
        tracing::info!(delivery = id.0, file = %name, pieces = held.count(), of = pieces, "resuming with the pieces already held");
    }
    connection.write_frame(&Frame::SwarmAccept { delivery: id, have: held.as_bytes().to_vec() }).await?;
    store.mark_held(&held);
    let held_at_start = held_bytes(&held, piece_len, offer.size);
    let share = FileShare::new(store, held, swarm.serves());
    swarm.add_share(&share);
    swarm.pump(&share);
    let file = offer.sha256;
    let mut tick = tokio::time::interval(SCHEDULE_TICK);
    let mut last_pump = Instant::now();
    // When woken within PUMP_INTERVAL of the last look, the next look waits for this moment,
    // while frames go on being read.
    let mut pump_at: Option<Instant> = None;
    // Pieces from the server being checked and written while the next one is read.
    let mut verifying = JoinSet::new();
    let bar = FileBar::start(&offer.group, &name, offer.size, held_at_start);
    let mut last_progress = Instant::now();
    loop {
        let (new_pieces, numbered) = {
            let mut state = share.state();
            (std::mem::take(&mut state.server_new), std::mem::take(&mut state.server_pieces))
        };
        for _ in 0..new_pieces {
            connection.write_frame(&Frame::NextPiece { file }).await?;
        }
        for piece in numbered {
            connection.write_frame(&Frame::PieceRequest { file, piece }).await?;
        }
        let disk_error = share.state().disk_error.take();
        if let Some(error) = disk_error {
            swarm.remove_share(&file);
            return cannot_store(connection, &offer, &name, inbox.path(), &error).await;
        }
        if share.state().schedule.is_done() {
            break;
        }
        tokio::select! {
            frame = read(connection), if verifying.len() < SERVER_PIECES_VERIFYING => match frame? {
                Some(Frame::Piece { file: piece_file, piece, bytes }) if piece_file == file => {
                    let writing = Arc::clone(&share);
                    verifying.spawn(async move {
                        let len = bytes.len() as u64;
                        (piece, len, verify_and_write(&writing, piece, bytes).await)
                    });
                }
                Some(Frame::NoNewPiece { file: piece_file }) if piece_file == file => {
                    share.state().schedule.server_exhausted(Instant::now());
                    share.wake.notify_one();
                }
                Some(Frame::Peers { file: peers_file, peers }) => swarm.set_peers(peers_file, peers),
                // Answers about an earlier file that crossed the end of its delivery.
                Some(Frame::Piece { bytes, .. }) => connection.recycle(bytes),
                Some(Frame::NoNewPiece { .. }) => {}
                Some(Frame::Cancel { delivery, reason }) if delivery == id => {
                    swarm.remove_share(&file);
                    drop(share);
                    inbox.discard(key);
                    tracing::info!(delivery = id.0, file = %name, "the server withdrew the file: {reason}");
                    gshare_common::say!("{}/{name}: withdrawn by the server ({reason}); nothing kept", offer.group);
                    return Ok(());
                }
                Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
                Some(Frame::Pong) => {}
                Some(Frame::Refused { reason }) => return Err(SessionError::Refused(reason.to_string())),
                None => return Err(SessionError::Protocol("closed in the middle of a file".into())),
                Some(_) => return Err(SessionError::Protocol("an unexpected frame in the middle of a file".into())),
            },
            Some(checked) = verifying.join_next(), if !verifying.is_empty() => {
                let (piece, len, written) = checked.unwrap_or_else(|error| (0, 0, Err(std::io::Error::other(error))));
                let (verified, spare) = match written {
                    Ok(written) => written,
                    Err(error) => {
                        swarm.remove_share(&file);
                        return cannot_store(connection, &offer, &name, inbox.path(), &error).await;
                    }
                };
                if let Some(spare) = spare {
                    connection.recycle(spare);
                }
                if verified {
                    swarm.piece_verified(&share, piece, Source::Server, len);
                } else {
                    // The server's own copy is damaged: asking again would get the same.
                    swarm.remove_share(&file);
                    verifying.shutdown().await;
                    drop(share);
                    inbox.discard(key);
                    gshare_common::say!("{}/{name}: SHA-256 mismatch in piece {piece} from the server; thrown away, the server will check its copy and offer it again", offer.group);
                    let reason = Text::new(&format!("SHA-256 mismatch: piece {piece} from the server does not match its hash"));
                    return Ok(connection.write_frame(&Frame::Failed { delivery: id, reason }).await?);
                }
            }
            () = share.wake.notified(), if pump_at.is_none() => {
                if last_pump.elapsed() >= PUMP_INTERVAL {
                    swarm.pump(&share);
                    last_pump = Instant::now();
                } else {
                    pump_at = Some(last_pump + PUMP_INTERVAL);
                }
            }
            () = gshare_common::sleep_until(pump_at.map(tokio::time::Instant::from_std)) => {
                pump_at = None;
                swarm.pump(&share);
                last_pump = Instant::now();
            }
            _ = tick.tick() => {
                swarm.pump(&share);
                last_pump = Instant::now();
                let held = held_bytes(share.state().schedule.have(), piece_len, offer.size);
                bar.set(held);
                if last_progress.elapsed() >= PROGRESS_INTERVAL {
                    last_progress = Instant::now();
                    connection.write_frame(&Frame::Progress { delivery: id, bytes: held }).await?;
                }
            }
        }
    }
    // A piece the server sent may also have come from a member meanwhile: its write (the
    // same bytes) ends before the file is made durable.
    while verifying.join_next().await.is_some() {}

    // Whole: every piece passed, so the file's own SHA-256 has been computed and matched
    // (each piece was checked from the state at the end of the one before, the last against
    // the file's SHA-256). Durable before it takes its name.
    let syncing = Arc::clone(&share);
    let synced = tokio::task::spawn_blocking(move || syncing.store.sync())
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result);
    if let Err(error) = synced {
        swarm.remove_share(&file);
        return cannot_store(connection, &offer, &name, inbox.path(), &error).await;
    }
    let (from_server, from_peers, bad_peers) = {
        let state = share.state();
        tracing::debug!(
            from_server = state.from_server,
            from_peers = state.from_peers,
            twice = state.twice,
            "received whole in pieces"
        );
        (state.from_server, state.from_peers, state.bad.clone())
    };
    connection.write_frame(&Frame::SwarmDone { delivery: id, from_server, from_peers, bad_peers }).await?;
    if !share.store.whole_file_verified() {
        swarm.remove_share(&file);
        return throw_away_mismatch(connection, &offer, &name, inbox, key).await;
    }
    let (stored, identical) = match inbox.store_reporting(key, &name) {
        Ok(stored) => stored,
        Err(error) => {
            swarm.remove_share(&file);
            return cannot_store(connection, &offer, &name, inbox.path(), &error).await;
        }
    };
    // Still served to the others, from the stored file; each piece is checked again first if
    // the file has changed since (its change time is noted now, after the rename moved it).
    if let Err(error) = share.store.seal() {
        tracing::info!(%error, file = %stored, "cannot note the received file's change time; its pieces are checked again before they are served");
    }
    swarm.share_completed(&share);
    let _ = std::fs::remove_file(&hashes_path);
    connection.write_frame(&Frame::Ack { delivery: id }).await?;
    tracing::info!(delivery = id.0, file = %stored, size = offer.size, from_server, from_peers, "received and verified");
    say_stored(&offer, &name, &stored, identical, inbox, hook);
    Ok(())
}
