//! Swarm delivery on the member's side: members pass verified pieces of a file to each other,
//! as the server directs, so that a group receives a file in about the time one member does.
//!
//! ```text
//!   server ══session══▶ this member ◀══peer connection══▶ another member
//!   (piece hashes, the peer list,     (bitfields, haves, piece requests and pieces, both
//!    new pieces, missing pieces)        ways; mutually authenticated TLS 1.3)
//! ```
//!
//! What holds, whoever the other member is:
//!
//! - **Only the server decides who may have a file.** A piece is served only to a member the
//!   server named for that file in its latest peer list ([`Swarm::set_peers`]); anything else
//!   is refused and logged. A member dropped from the list (removed, revoked, left the group)
//!   loses its connections at once.
//! - **Nothing unverified is kept or passed on.** Every piece is checked against the SHA-256
//!   the server stated over this member's own session before it is written, and only written
//!   pieces are served. A member that sends a bad piece is named to the server and cut off;
//!   the piece comes from elsewhere.
//! - **Both ends prove who they are**: TLS 1.3 with member certificates from the pinned CA on
//!   both sides, and the member dialled must present the certificate the server named.
//!
//! Which piece to ask of whom is decided by the sans-IO [`Schedule`]; this module only moves
//! bytes and feeds it events. Each peer connection runs a reader and a writer task of its own,
//! so two members sending each other pieces never wait on each other.

pub mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

use gshare_common::{Connection, read_ahead};
use gshare_proto::Fingerprint;
use gshare_proto::frame::{FileKey, Frame, PeerInfo, Text};
use gshare_proto::swarm::{Bits, Schedule, Source, ring_place};

use crate::tls::{member_name, peer_client_config, peer_server_config};
use store::PieceStore;

/// Time to reach another member: TCP connection, then TLS handshake.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one write to another member may take.
const PEER_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member waits for another to connect before it dials that member itself.
const DIAL_BACK_AFTER: Duration = Duration::from_secs(2);
/// Most connections from other members accepted at once.
const MAX_PEER_CONNECTIONS: usize = 256;

/// What a peer connection's writer sends.
#[derive(Debug)]
enum PeerOut {
    Frame(Frame),
    /// A piece, read from the share when its turn comes.
    Piece(Arc<FileShare>, u32),
}

/// Unsent data a peer socket holds before it stops taking more (`TCP_NOTSENT_LOWAT`): what
/// waits beyond it waits in [`PeerQueue`], where a small frame can still go ahead of pieces.
/// One piece: at 128 KiB the extra wakeups cost more CPU than they gained on a full link.
const PEER_UNSENT_LIMIT: u32 = 512 * 1024;

/// The sending end of a peer connection's queue.
#[derive(Debug, Clone)]
struct PeerSender {
    frames: mpsc::UnboundedSender<Frame>,
    pieces: mpsc::UnboundedSender<(Arc<FileShare>, u32)>,
}

impl PeerSender {
    fn send(&self, item: PeerOut) {
        // Fails only once the writer has ended, and the connection with it.
        let _ = match item {
            PeerOut::Frame(frame) => self.frames.send(frame).map_err(drop),
            PeerOut::Piece(share, piece) => self.pieces.send((share, piece)).map_err(drop),
        };
    }
}

/// What a peer connection's writer takes its work from: small frames (haves, requests,
/// refusals) before pieces. On a link that is full, a request or a have stuck behind the
/// pieces this member is sending would leave the other side waiting for no reason.
#[derive(Debug)]
struct PeerQueue {
    frames: mpsc::UnboundedReceiver<Frame>,
    pieces: mpsc::UnboundedReceiver<(Arc<FileShare>, u32)>,
}

fn peer_queue() -> (PeerSender, PeerQueue) {
    let (frames, frames_out) = mpsc::unbounded_channel();
    let (pieces, pieces_out) = mpsc::unbounded_channel();
    (PeerSender { frames, pieces }, PeerQueue { frames: frames_out, pieces: pieces_out })
}

impl PeerQueue {
    async fn next(&mut self) -> Option<PeerOut> {
        tokio::select! {
            biased;
            Some(frame) = self.frames.recv() => Some(PeerOut::Frame(frame)),
            Some((share, piece)) = self.pieces.recv() => Some(PeerOut::Piece(share, piece)),
            else => None,
        }
    }

    fn no_frames_waiting(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Sets up a TCP connection to another member: no delay for small frames, little unsent
/// data in the socket, so that small frames are not queued behind it ([`PEER_UNSENT_LIMIT`]),
/// and the congestion control that shares a link best among several such connections.
fn tune_peer_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    gshare_common::tcp::share_links_evenly(tcp);
    let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(PEER_UNSENT_LIMIT);
}

/// Whether this member opened a peer connection (dialled) or accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialled {
    Yes,
    No,
}

/// A live connection to another member.
#[derive(Debug)]
struct PeerHandle {
    certificate: Fingerprint,
    out: PeerSender,
    close: watch::Sender<bool>,
    /// Files this side has sent its bitfield for on this connection.
    announced: HashSet<FileKey>,
    /// Bitfields it sent for files the server has not (yet) named it for: the two members'
    /// peer lists arrive at slightly different moments. Applied if the server names it.
    pending: HashMap<FileKey, Vec<u8>>,
    /// Told to close: it no longer counts as a connection to its member, which is dialled
    /// anew if the server names it again before the old connection is gone.
    closing: bool,
}

/// How long a connection to a member the server names for no file this member shares is kept
/// open, waiting for a peer list that names it: one that connects before our own list has
/// caught up, or whose only file in common we stopped sharing (the next file names it again a
/// moment later). One the server drops from a list is closed at once ([`Swarm::set_peers`]).
const UNNAMED_LIMIT: Duration = Duration::from_secs(30);
/// How often a connection checks that its member is still named for some file.
const UNNAMED_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Files received whole that this member goes on serving, at most (the most recent): each
/// holds its file open, so a file the person deletes keeps its disk space while it is served.
const MAX_COMPLETE_SHARES: usize = 8;

/// Most early bitfields kept per connection.
const MAX_PENDING_BITFIELDS: usize = 16;

/// Pieces of a file being received that are kept in memory after they verified (8 MiB at 512
/// KiB pieces): other members ask for a piece soon after it arrives, and serving it from here
/// costs no read from the file.
const RECENT_PIECES: usize = 16;

/// How one file is shared: its pieces, the scheduler, and who may take part.
#[derive(Debug)]
pub struct FileShare {
    pub store: PieceStore,
    state: Mutex<ShareState>,
    /// The latest pieces that verified, newest last; emptied once the file is whole.
    recent: Mutex<VecDeque<(u32, Arc<Vec<u8>>)>>,
    /// Woken when a piece arrives or requests for the server are waiting.
    pub wake: Notify,
}

/// A share's changing part.
#[derive(Debug)]
pub struct ShareState {
    pub schedule: Schedule,
    /// The members the server named for this file: only they are served.
    allowed: HashMap<Fingerprint, Option<SocketAddr>>,
    /// Connections exchanging this file.
    interested: HashSet<u64>,
    pub from_server: u64,
    pub from_peers: u64,
    /// Bytes of pieces that came again after they were held (a piece asked of a second member
    /// because the first was slow, both of which sent it): link time spent for nothing.
    pub twice: u64,
    /// Members that sent pieces that did not verify.
    pub bad: Vec<Fingerprint>,
    /// Requests for the server the session has yet to send.
    pub server_new: u32,
    pub server_pieces: Vec<u32>,
    /// Received whole; served from what is on disk, each piece checked again before it goes.
    pub complete: bool,
    /// A piece from another member could not be written (the disk is full, say): the session
    /// tells the server the file cannot be stored now.
    pub disk_error: Option<std::io::Error>,
}

impl ShareState {
    /// A connected member (`them`) told which pieces it holds and is exchanging this file.
    fn peer_joined(&mut self, id: u64, have: Bits, them: Fingerprint) {
        self.schedule.peer_joined(id, have);
        self.schedule.place_peer(id, ring_place(&them));
        self.interested.insert(id);
    }
}

impl FileShare {
    /// A share of `store`, of which `held` are held; `serves` says whether this member passes
    /// pieces on (one that does not never takes new pieces from the server).
    pub fn new(store: PieceStore, held: Bits, serves: bool) -> Arc<Self> {
        let mut schedule = Schedule::with_role(held, serves);
        let start: [u8; 4] = gshare_certs::random_bytes().unwrap_or_default();
        schedule.spread_by(u32::from_be_bytes(start));
        Arc::new(Self {
            store,
            state: Mutex::new(ShareState {
                schedule,
                allowed: HashMap::new(),
                interested: HashSet::new(),
                from_server: 0,
                from_peers: 0,
                twice: 0,
                bad: Vec::new(),
                server_new: 0,
                server_pieces: Vec::new(),
                complete: false,
                disk_error: None,
            }),
            recent: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, ShareState> {
        // Every update is a few steps on plain data; a poisoned lock still holds usable counts.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps a verified piece in memory; returns the buffer of the oldest it drops, if nothing
    /// else holds it (for the connection to read the next piece into).
    fn keep_recent(&self, piece: u32, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let mut recent = lock(&self.recent);
        recent.push_back((piece, Arc::new(bytes)));
        if recent.len() <= RECENT_PIECES {
            return None;
        }
        recent.pop_front().and_then(|(_, oldest)| Arc::try_unwrap(oldest).ok())
    }

    /// Piece `piece`, if it is among the latest kept in memory.
    fn recent(&self, piece: u32) -> Option<Arc<Vec<u8>>> {
        lock(&self.recent).iter().rev().find(|(kept, _)| *kept == piece).map(|(_, bytes)| Arc::clone(bytes))
    }

    /// The file is whole: its pieces are served from the file from now on.
    fn forget_recent(&self) {
        lock(&self.recent).clear();
    }
}

/// This member's part in every swarm: its identity, its shares, its peer connections.
#[derive(Debug)]
pub struct Swarm {
    /// This member's certificate as other members see it; replaced when it is renewed.
    identity: Mutex<PeerIdentity>,
    /// Whether this member passes pieces on at all (`[peer] serve`).
    serve: bool,
    shares: Mutex<HashMap<FileKey, Arc<FileShare>>>,
    /// Files received whole and still served, oldest first.
    completed: Mutex<VecDeque<FileKey>>,
    peers: Mutex<HashMap<u64, PeerHandle>>,
    dialing: Mutex<HashSet<Fingerprint>>,
    /// When members whose connections ended were (to be) dialled again, within the last
    /// [`DIAL_BACK_AFTER`].
    dialled_again: Mutex<HashMap<Fingerprint, Instant>>,
    next_peer: AtomicU64,
    /// Whether other members can connect to this one (it told the server a port).
    listening: std::sync::atomic::AtomicBool,
}

/// The certificate a member presents to other members, and the TLS configurations made with
/// it.
#[derive(Debug, Clone)]
struct PeerIdentity {
    me: Fingerprint,
    client_config: Arc<rustls::ClientConfig>,
    server_config: Arc<rustls::ServerConfig>,
}

impl PeerIdentity {
    fn new(ca_der: &[u8], certificate_der: &[u8], key_pem: &str) -> Result<Self, rustls::Error> {
        Ok(Self {
            me: gshare_certs::fingerprint(certificate_der),
            client_config: peer_client_config(ca_der, certificate_der, key_pem)?,
            server_config: peer_server_config(ca_der, certificate_der, key_pem)?,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is one step on the map; a poisoned lock still holds a consistent map.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Swarm {
    pub fn new(ca_der: &[u8], certificate_der: &[u8], key_pem: &str, serve: bool) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self {
            identity: Mutex::new(PeerIdentity::new(ca_der, certificate_der, key_pem)?),
            serve,
            shares: Mutex::new(HashMap::new()),
            completed: Mutex::new(VecDeque::new()),
            peers: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            dialled_again: Mutex::new(HashMap::new()),
            next_peer: AtomicU64::new(1),
            listening: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn serves(&self) -> bool {
        self.serve
    }

    /// Presents a renewed certificate to other members from the next connection on.
    pub fn set_identity(&self, ca_der: &[u8], certificate_der: &[u8], key_pem: &str) -> Result<(), rustls::Error> {
        *lock(&self.identity) = PeerIdentity::new(ca_der, certificate_der, key_pem)?;
        Ok(())
    }

    fn me(&self) -> Fingerprint {
        lock(&self.identity).me
    }

    /// Accepts other members' connections on `listener` until the returned task is dropped.
    /// This member counts as accepting connections from the call on (not from the task's
    /// first run): a peer list that arrives meanwhile must not have both ends dial.
    pub fn accept(self: Arc<Self>, listener: TcpListener) -> impl Future<Output = ()> + Send + 'static {
        self.listening.store(true, Ordering::Relaxed);
        self.accept_loop(listener)
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::info!(%error, "cannot accept a member's connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if lock(&self.peers).len() >= MAX_PEER_CONNECTIONS {
                tracing::info!(%from, "member connection refused: {MAX_PEER_CONNECTIONS} open already");
                continue;
            }
            let swarm = Arc::clone(&self);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&lock(&self.identity).server_config));
            tokio::spawn(async move {
                tune_peer_socket(&tcp);
                let tls = match tokio::time::timeout(PEER_CONNECT_TIMEOUT, acceptor.accept(read_ahead(tcp))).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        return tracing::info!(%from, %error, "member connection refused: TLS handshake failed");
                    }
                    Err(_) => return tracing::info!(%from, "member connection refused: TLS handshake timed out"),
                };
                let Some(certificate) = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()) else {
                    return;
                };
                let certificate = gshare_certs::fingerprint(certificate);
                swarm.run_peer(certificate, tls, from, Dialled::No).await;
            });
        }
    }

    /// Starts sharing a file; replaces an earlier share of the same bytes. Files received
    /// whole that the person has deleted since are let go now (their space comes back).
    pub fn add_share(&self, share: &Arc<FileShare>) {
        share.state().schedule.place_on_ring(ring_place(&self.me()));
        // Locked in the order share_completed locks them.
        let mut completed = lock(&self.completed);
        let mut shares = lock(&self.shares);
        let_go_of_deleted(&mut completed, &mut shares);
        shares.insert(share.store.key, Arc::clone(share));
    }

    /// Stops sharing a file (its delivery was cancelled or failed): peers asking for it are
    /// refused from now on.
    pub fn remove_share(&self, key: &FileKey) {
        lock(&self.shares).remove(key);
    }

    /// A file was received whole: it is served from the stored file, while it is among the
    /// [`MAX_COMPLETE_SHARES`] most recent; the oldest beyond them is no longer served (other
    /// members asking for it are refused, and take it from elsewhere), and its file is closed.
    pub fn share_completed(&self, share: &Arc<FileShare>) {
        share.state().complete = true;
        share.forget_recent();
        keep_completed(&mut lock(&self.completed), &mut lock(&self.shares), share.store.key);
    }

    /// Forgets every share and closes every peer connection: the session they belonged to
    /// ended, and the next one starts afresh.
    pub fn clear(&self) {
        lock(&self.shares).clear();
        lock(&self.completed).clear();
        for handle in lock(&self.peers).values_mut() {
            let _ = handle.close.send(true);
            handle.closing = true;
        }
    }

    /// Whether the server names `certificate` for any file this member shares.
    fn is_named(&self, certificate: &Fingerprint) -> bool {
        lock(&self.shares).values().any(|share| share.state().allowed.contains_key(certificate))
    }

    fn is_connected(&self, certificate: &Fingerprint) -> bool {
        lock(&self.peers).values().any(|handle| handle.certificate == *certificate && !handle.closing)
    }

    /// A file with these bytes already received whole in this session, if there is one: a new
    /// delivery of the same bytes (sent again, or to another group) copies its pieces locally.
    pub fn complete_share(&self, key: &FileKey) -> Option<Arc<FileShare>> {
        self.share(key).filter(|share| share.state().complete)
    }

    fn share(&self, key: &FileKey) -> Option<Arc<FileShare>> {
        lock(&self.shares).get(key).cloned()
    }

    /// The server's latest list of members for `key`: only they are served that file;
    /// connections to members no longer named for any file are closed, and members newly named
    /// are dialled (if they listen) and told what this member holds.
    pub fn set_peers(self: &Arc<Self>, key: FileKey, peers: Vec<PeerInfo>) {
        let Some(share) = self.share(&key) else { return };
        // Members this list drops: the server's decision (removed, revoked, left the group).
        let dropped: HashSet<Fingerprint> = {
            let mut state = share.state();
            let allowed = peers.iter().map(|peer| (peer.certificate, peer.address)).collect();
            let before = std::mem::replace(&mut state.allowed, allowed);
            before.into_keys().filter(|member| !state.allowed.contains_key(member)).collect()
        };
        // Who may still be talked to at all.
        let allowed_anywhere: HashSet<Fingerprint> = lock(&self.shares)
            .values()
            .flat_map(|share| share.state().allowed.keys().copied().collect::<Vec<_>>())
            .collect();
        let mut connected = HashSet::new();
        let mut joined = false;
        let me = self.me();
        for (&id, handle) in lock(&self.peers).iter_mut() {
            if handle.closing {
                continue;
            }
            if !allowed_anywhere.contains(&handle.certificate) {
                if dropped.contains(&handle.certificate) {
                    tracing::info!(peer = %handle.certificate, "closing the connection to a member the server no longer names");
                    let _ = handle.close.send(true);
                    handle.closing = true;
                }
                continue;
            }
            connected.insert(handle.certificate);
            if !share.state().allowed.contains_key(&handle.certificate) {
                continue;
            }
            if handle.announced.insert(key) {
                let have = share.state().schedule.have().as_bytes().to_vec();
                handle.out.send(PeerOut::Frame(Frame::Bitfield { file: key, have }));
            }
            if let Some(early) = handle.pending.remove(&key)
                && let Ok(have) = Bits::from_bytes(&early, share.store.pieces)
            {
                share.state().peer_joined(id, have, handle.certificate);
                joined = true;
            }
        }
        if joined {
            share.wake.notify_one();
        }
        for peer in peers {
            let Some(address) = peer.address else { continue };
            if connected.contains(&peer.certificate) || peer.certificate == me {
                continue;
            }
            self.connect_to(peer.certificate, address, Duration::ZERO);
        }
    }

    /// Dials a member the server named, unless it is being dialled already, after `at_least`.
    /// One connection per pair of members: when both accept connections, the one whose
    /// fingerprint sorts first dials at once, and the other only if no connection came by
    /// itself within [`DIAL_BACK_AFTER`] (its dial may have failed: a firewall in the way).
    fn connect_to(self: &Arc<Self>, certificate: Fingerprint, address: SocketAddr, at_least: Duration) {
        if !lock(&self.dialing).insert(certificate) {
            return;
        }
        let wait_first = self.listening.load(Ordering::Relaxed) && certificate.0 < self.me().0;
        let wait = if wait_first { at_least.max(DIAL_BACK_AFTER) } else { at_least };
        let swarm = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if swarm.is_connected(&certificate) {
                lock(&swarm.dialing).remove(&certificate);
            } else {
                swarm.dial(certificate, address).await;
            }
        });
    }

    /// A connection to `certificate` ended without fault: if the server names that member for
    /// a file still, it is dialled again (the other side may have closed it on a peer list
    /// that no longer named us, and been named again a moment later). At once the first time;
    /// a member dialled again this way less than [`DIAL_BACK_AFTER`] ago is dialled no sooner
    /// than that after, so one that keeps closing connections is not dialled in a loop.
    fn dial_again_if_named(self: &Arc<Self>, certificate: Fingerprint) {
        let address =
            lock(&self.shares).values().find_map(|share| share.state().allowed.get(&certificate).copied().flatten());
        let Some(address) = address else { return };
        if self.is_connected(&certificate) {
            return;
        }
        let now = Instant::now();
        let wait = {
            let mut dialled_again = lock(&self.dialled_again);
            dialled_again.retain(|_, at| now.saturating_duration_since(*at) < DIAL_BACK_AFTER);
            let wait = dialled_again.get(&certificate).map_or(Duration::ZERO, |at| DIAL_BACK_AFTER - (now - *at));
            dialled_again.insert(certificate, now + wait);
            wait
        };
        self.connect_to(certificate, address, wait);
    }

    /// Dials a member and runs the connection. The member counts as being dialled (no second
    /// dial starts) until the connection is registered or the attempt failed: a connection
    /// closed later is dialled anew at once if the server names the member again.
    async fn dial(self: &Arc<Self>, certificate: Fingerprint, address: SocketAddr) {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&lock(&self.identity).client_config));
        let attempt = async {
            let tcp = TcpStream::connect(address).await?;
            tune_peer_socket(&tcp);
            connector.connect(member_name(), read_ahead(tcp)).await
        };
        let attempt = tokio::time::timeout(PEER_CONNECT_TIMEOUT, attempt).await;
        let tls = match attempt {
            Ok(Ok(tls)) => {
                let presented = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                if presented.map(|c| gshare_certs::fingerprint(c)) == Some(certificate) {
                    Some(tls)
                } else {
                    tracing::info!(%address, expected = %certificate, "a member at that address presented another certificate; not used");
                    None
                }
            }
            Ok(Err(error)) => {
                tracing::info!(%address, %error, "cannot reach a member; its pieces come from elsewhere");
                None
            }
            Err(_) => {
                tracing::info!(%address, "cannot reach a member in time; its pieces come from elsewhere");
                None
            }
        };
        match tls {
            Some(tls) => self.run_peer(certificate, tls, address, Dialled::Yes).await,
            None => {
                lock(&self.dialing).remove(&certificate);
            }
        }
    }

    /// Runs one connection to another member until either side ends it.
    async fn run_peer<S: AsyncRead + AsyncWrite + Send + 'static>(
        self: &Arc<Self>,
        certificate: Fingerprint,
        stream: S,
        address: SocketAddr,
        dialled: Dialled,
    ) {
        let id = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let (reader, writer) = tokio::io::split(stream);
        let (out, outgoing) = peer_queue();
        let (close, mut closed) = watch::channel(false);
        let handle = PeerHandle {
            certificate,
            out: out.clone(),
            close: close.clone(),
            announced: HashSet::new(),
            pending: HashMap::new(),
            closing: false,
        };
        // Tell it what we hold of every file it is named for. The connection is in the map
        // first, and the bitfields are taken while it is locked: a piece that arrives meanwhile
        // is either in a bitfield or told in a "have" after it (`piece_verified`), never lost.
        let shares: Vec<Arc<FileShare>> = lock(&self.shares).values().cloned().collect();
        {
            let mut peers = lock(&self.peers);
            let handle = peers.entry(id).or_insert(handle);
            for share in &shares {
                let state = share.state();
                if state.allowed.contains_key(&certificate) {
                    handle.announced.insert(share.store.key);
                    let have = state.schedule.have().as_bytes().to_vec();
                    out.send(PeerOut::Frame(Frame::Bitfield { file: share.store.key, have }));
                }
            }
        }
        if dialled == Dialled::Yes {
            lock(&self.dialing).remove(&certificate);
        }
        tracing::debug!(%address, peer = %certificate, "member connected");
        let writing = tokio::spawn(write_peer(writer, id, outgoing, close.clone()));
        let mut connection = Connection::new(reader);
        let mut unnamed_check = tokio::time::interval(UNNAMED_CHECK_EVERY);
        let mut unnamed_since: Option<Instant> = None;
        // Whether the connection ended for something the other member did (a bad frame or
        // piece, or never named): such a member is not dialled again.
        let mut at_fault = false;
        loop {
            let frame = tokio::select! {
                frame = connection.read_frame() => frame,
                _ = closed.changed() => break,
                _ = unnamed_check.tick() => {
                    if self.is_named(&certificate) {
                        unnamed_since = None;
                    } else if unnamed_since.get_or_insert_with(Instant::now).elapsed() >= UNNAMED_LIMIT {
                        tracing::info!(%address, peer = %certificate, "closing the connection of a member the server has not named for any file");
                        at_fault = true;
                        break;
                    }
                    continue;
                }
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::info!(%address, peer = %certificate, %error, "member connection ended");
                    break;
                }
            };
            match self.handle_peer_frame(id, certificate, &out, frame).await {
                Ok(Some(buffer)) => connection.recycle(buffer),
                Ok(None) => {}
                Err(reason) => {
                    tracing::info!(%address, peer = %certificate, "member connection closed: {reason}");
                    at_fault = true;
                    break;
                }
            }
        }
        let _ = close.send(true);
        writing.abort();
        lock(&self.peers).remove(&id);
        let shares: Vec<Arc<FileShare>> = lock(&self.shares).values().cloned().collect();
        for share in shares {
            {
                let mut state = share.state();
                state.schedule.peer_gone(id);
                state.interested.remove(&id);
            }
            share.wake.notify_one();
        }
        tracing::debug!(%address, peer = %certificate, "member disconnected");
        if !at_fault {
            self.dial_again_if_named(certificate);
        }
    }

    /// Handles one frame from another member; an error closes the connection.
    async fn handle_peer_frame(
        self: &Arc<Self>,
        id: u64,
        certificate: Fingerprint,
        out: &PeerSender,
        frame: Frame,
    ) -> Result<Option<Vec<u8>>, String> {
        let refuse = |file: FileKey, piece: u32, reason: &str| {
            out.send(PeerOut::Frame(Frame::PieceRefused { file, piece, reason: Text::new(reason) }));
        };
        match frame {
            Frame::Bitfield { file, have } => {
                let Some(share) = self.share(&file).filter(|share| share.state().allowed.contains_key(&certificate))
                else {
                    // Perhaps our own list from the server has not caught up yet: kept for
                    // then, never acted on before.
                    if let Some(handle) = lock(&self.peers).get_mut(&id)
                        && (handle.pending.len() < MAX_PENDING_BITFIELDS || handle.pending.contains_key(&file))
                    {
                        handle.pending.insert(file, have);
                    }
                    return Ok(None);
                };
                let have = Bits::from_bytes(&have, share.store.pieces).map_err(|e| e.to_string())?;
                let answer = {
                    let mut state = share.state();
                    state.peer_joined(id, have, certificate);
                    state.schedule.have().as_bytes().to_vec()
                };
                if let Some(handle) = lock(&self.peers).get_mut(&id)
                    && handle.announced.insert(file)
                {
                    out.send(PeerOut::Frame(Frame::Bitfield { file, have: answer }));
                }
                share.wake.notify_one();
            }
            Frame::Have { file, piece } => {
                let joined = self.share(&file).filter(|share| {
                    let mut state = share.state();
                    let joined = state.interested.contains(&id);
                    if joined {
                        state.schedule.peer_has(id, piece, Instant::now());
                    }
                    joined
                });
                if let Some(share) = joined {
                    share.wake.notify_one();
                } else if let Some(early) = lock(&self.peers).get_mut(&id).and_then(|h| h.pending.get_mut(&file)) {
                    // Its bitfield is kept for when the server names it: kept up to date.
                    if let Some(byte) = early.get_mut((piece / 8) as usize) {
                        *byte |= 0x80 >> (piece % 8);
                    }
                }
            }
            Frame::PieceRequest { file, piece } => match self.servable(&file, piece, certificate) {
                Ok(share) => {
                    out.send(PeerOut::Piece(share, piece));
                }
                Err(reason) => refuse(file, piece, reason),
            },
            Frame::Piece { file, piece, bytes } => {
                let Some(share) = self.share(&file) else { return Ok(None) };
                {
                    let mut state = share.state();
                    if !state.schedule.expects(piece, Source::Peer(id)) {
                        return Err(format!("sent piece {piece}, which was not asked of it"));
                    }
                    // A copy of a piece that came from elsewhere first: not needed, and not
                    // hashed again.
                    if !state.schedule.is_asked(piece, Source::Peer(id)) {
                        state.schedule.piece_arrived(piece, Source::Peer(id), Instant::now());
                        state.twice += bytes.len() as u64;
                        return Ok(Some(bytes));
                    }
                }
                let len = bytes.len() as u64;
                match verify_and_write(&share, piece, bytes).await {
                    Ok((true, spare)) => {
                        self.piece_verified(&share, piece, Source::Peer(id), len);
                        return Ok(spare);
                    }
                    Ok((false, _)) => {
                        {
                            let mut state = share.state();
                            state.schedule.piece_failed(piece, Source::Peer(id));
                            if !state.bad.contains(&certificate) {
                                state.bad.push(certificate);
                            }
                        }
                        gshare_common::say!(
                            "a member sent a piece that did not verify; thrown away, taken from elsewhere ({certificate})"
                        );
                        return Err(format!("piece {piece} did not verify; not kept, not passed on"));
                    }
                    // Our disk, not the peer: the piece is asked again once there is room,
                    // and the session reports it to the server.
                    Err(error) => {
                        let mut state = share.state();
                        state.schedule.piece_failed(piece, Source::Peer(id));
                        state.disk_error.get_or_insert(error);
                        drop(state);
                        share.wake.notify_one();
                        return Ok(None);
                    }
                }
            }
            Frame::PieceRefused { file, piece, reason } => {
                if let Some(share) = self.share(&file) {
                    {
                        let mut state = share.state();
                        // A member that will not serve us this file is asked nothing more of it.
                        state.schedule.piece_failed(piece, Source::Peer(id));
                        state.schedule.peer_gone(id);
                        state.interested.remove(&id);
                    }
                    tracing::info!(peer = %certificate, piece, "a member refused a piece: {reason}");
                    share.wake.notify_one();
                }
            }
            Frame::Ping => {
                out.send(PeerOut::Frame(Frame::Pong));
            }
            Frame::Pong => {}
            _ => return Err("an unexpected frame".into()),
        }
        Ok(None)
    }

    /// The share to serve piece `piece` of `file` from to the member with `certificate`, or
    /// why not. Only members the server named for the file are served, and only pieces held.
    fn servable(&self, file: &FileKey, piece: u32, certificate: Fingerprint) -> Result<Arc<FileShare>, &'static str> {
        if !self.serve {
            return Err("this member does not serve pieces");
        }
        let share = self.share(file).ok_or("no such file here")?;
        {
            let state = share.state();
            if !state.allowed.contains_key(&certificate) {
                tracing::info!(peer = %certificate, piece, "refused a piece to a member the server did not name for the file");
                return Err("not named by the server for this file");
            }
            if !state.schedule.have().get(piece) {
                return Err("piece not held");
            }
        }
        Ok(share)
    }

    /// A piece verified and was written: count it, tell the members exchanging the file, and
    /// ask for more.
    pub fn piece_verified(&self, share: &Arc<FileShare>, piece: u32, source: Source, len: u64) {
        let (holders, withdrawn) = {
            let mut state = share.state();
            if !state.schedule.piece_arrived(piece, source, Instant::now()) {
                state.twice += len;
                return;
            }
            match source {
                Source::Server => state.from_server += len,
                Source::Peer(_) => state.from_peers += len,
            }
            let holders: HashSet<u64> =
                state.interested.iter().copied().filter(|&id| state.schedule.peer_holds(id, piece)).collect();
            (holders, state.schedule.take_withdrawn())
        };
        // Every member told our bitfield hears of it (whether or not its own bitfield has come
        // yet), but those that hold it already, unless it was asked of them too: told, they
        // do not send it if they have not begun to ([`write_peer`]).
        let key = share.store.key;
        for (id, handle) in lock(&self.peers).iter() {
            let asked = withdrawn.iter().any(|&(asked, _)| asked == *id);
            if handle.announced.contains(&key) && (!holders.contains(id) || asked) {
                handle.out.send(PeerOut::Frame(Frame::Have { file: key, piece }));
            }
        }
        share.wake.notify_one();
    }

    /// Asks for what the schedule says to ask for now: pieces of every member exchanging the
    /// file, and (queued for the session to send) of the server. Called by the session's loop
    /// for the file, which events wake (at most every few milliseconds: looking at every
    /// member's pieces on every single event would cost more than the events).
    pub fn pump(&self, share: &Arc<FileShare>) {
        let now = Instant::now();
        let mut asks: Vec<(u64, Vec<u32>)> = Vec::new();
        {
            let mut state = share.state();
            if state.complete {
                return;
            }
            state.schedule.expire(now);
            let in_order: Vec<u64> =
                state.schedule.peers_in_order().into_iter().filter(|id| state.interested.contains(id)).collect();
            for id in in_order {
                let pieces = state.schedule.asks_for_peer(id, now);
                if !pieces.is_empty() {
                    asks.push((id, pieces));
                }
            }
            let server = state.schedule.asks_for_server(now);
            if let Some(first) = server.pieces.first() {
                let held = state.schedule.have().count();
                tracing::debug!(
                    count = server.pieces.len(),
                    first,
                    held,
                    "asking the server for pieces no member at hand sends"
                );
            }
            state.server_new += server.new_pieces;
            state.server_pieces.extend(server.pieces);
        }
        let peers = lock(&self.peers);
        for (id, pieces) in asks {
            if let Some(handle) = peers.get(&id) {
                for piece in pieces {
                    handle.out.send(PeerOut::Frame(Frame::PieceRequest { file: share.store.key, piece }));
                }
            }
        }
    }
}

/// Notes `key` as the latest file received whole, and stops sharing files received whole that
/// the person has deleted since (their disk space comes back) and the oldest beyond
/// [`MAX_COMPLETE_SHARES`].
fn keep_completed(completed: &mut VecDeque<FileKey>, shares: &mut HashMap<FileKey, Arc<FileShare>>, key: FileKey) {
    let_go_of_deleted(completed, shares);
    completed.retain(|done| *done != key);
    completed.push_back(key);
    while completed.len() > MAX_COMPLETE_SHARES {
        let Some(oldest) = completed.pop_front() else { break };
        // A new delivery of the same bytes may be under way under the same key: kept.
        if shares.get(&oldest).is_some_and(|share| share.state().complete) {
            shares.remove(&oldest);
        }
    }
}

/// Stops sharing files received whole whose stored copy has been deleted.
fn let_go_of_deleted(completed: &mut VecDeque<FileKey>, shares: &mut HashMap<FileKey, Arc<FileShare>>) {
    completed.retain(|done| {
        let deleted = shares.get(done).is_some_and(|share| share.state().complete && share.store.is_deleted());
        if deleted {
            shares.remove(done);
        }
        !deleted
    });
}

/// Checks a piece against the server's piece ends and, if it matches, writes it (on a blocking
/// thread) and keeps it in memory for a while, to serve. `Ok((false, _))`: it did not verify
/// and nothing was written. Also returns a spare buffer, if there is one, for the connection to
/// read the next piece into.
pub async fn verify_and_write(
    share: &Arc<FileShare>,
    piece: u32,
    bytes: Vec<u8>,
) -> std::io::Result<(bool, Option<Vec<u8>>)> {
    let writing = Arc::clone(share);
    let (verified, bytes) = tokio::task::spawn_blocking(move || {
        if !writing.store.verifies(piece, &bytes)? {
            return Ok((false, bytes));
        }
        writing.store.write(piece, &bytes)?;
        writing.store.piece_written(piece);
        Ok::<_, std::io::Error>((true, bytes))
    })
    .await
    .map_err(std::io::Error::other)??;
    if !verified {
        return Ok((false, Some(bytes)));
    }
    Ok((true, share.keep_recent(piece, bytes)))
}

/// Writes what a peer connection has to send, small frames first, until it is closed. A
/// piece the other member has told us it holds since it asked for it is not sent: it came
/// from elsewhere meanwhile ([`Schedule::take_withdrawn`]).
async fn write_peer<W: AsyncWrite + Unpin>(writer: W, id: u64, mut outgoing: PeerQueue, close: watch::Sender<bool>) {
    // Small frames (haves, requests) gather in a buffer and go out together, in one TLS
    // record, when there is nothing more to send right now.
    let mut connection = Connection::new(tokio::io::BufWriter::with_capacity(16 * 1024, writer));
    connection.set_write_timeout(PEER_WRITE_TIMEOUT);
    let mut buffer = Vec::new();
    while let Some(item) = outgoing.next().await {
        let written = match item {
            PeerOut::Frame(frame) => match connection.write_frame_unflushed(&frame).await {
                Ok(()) if outgoing.no_frames_waiting() => connection.flush().await,
                other => other,
            },
            PeerOut::Piece(share, piece) => {
                // It has the piece from elsewhere since it asked (it told us): not sent.
                if share.state().schedule.peer_holds(id, piece) {
                    continue;
                }
                if let Some(bytes) = share.recent(piece) {
                    let written = connection.write_piece(&share.store.key, piece, &bytes).await;
                    if written.is_err() {
                        break;
                    }
                    continue;
                }
                let reading = Arc::clone(&share);
                let complete = share.state().complete;
                let taken = std::mem::take(&mut buffer);
                let read = tokio::task::spawn_blocking(move || {
                    let bytes = reading.store.read(piece, taken)?;
                    // A received file is the person's now and may have changed on disk: if it
                    // has, the piece is checked again before it is passed on.
                    if complete && reading.store.changed_since_sealed()? && !reading.store.verifies(piece, &bytes)? {
                        return Err(std::io::Error::other("the received file changed on disk"));
                    }
                    Ok(bytes)
                })
                .await;
                match read {
                    Ok(Ok(bytes)) => {
                        let result = connection.write_piece(&share.store.key, piece, &bytes).await;
                        buffer = bytes;
                        result
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%error, piece, "cannot serve a piece");
                        let reason = Text::new("piece not available");
                        connection.write_frame(&Frame::PieceRefused { file: share.store.key, piece, reason }).await
                    }
                    Err(_) => break,
                }
            }
        };
        if written.is_err() {
            break;
        }
    }
    let _ = close.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn share(dir: &std::path::Path, key: FileKey, pieces: u32) -> Arc<FileShare> {
        let file = |name: &str| {
            let path = dir.join(format!("{}-{name}", key[0]));
            File::options().create(true).truncate(true).read(true).write(true).open(path).unwrap()
        };
        let store = PieceStore::new(key, u64::from(pieces) * 64, 64, pieces, file("part"), file("ends"));
        FileShare::new(store, Bits::new(pieces), true)
    }

    #[tokio::test]
    async fn a_piece_the_asker_has_had_from_elsewhere_meanwhile_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let share = share(dir.path(), [1; 32], 4);
        for piece in 0..2u8 {
            share.keep_recent(u32::from(piece), vec![piece; 64]);
        }
        // Member 7 asked for pieces 0 and 1, and has told us since that it holds piece 0.
        share.state().schedule.peer_joined(7, Bits::new(4));
        share.state().schedule.peer_has(7, 0, Instant::now());
        let (sender, queue) = peer_queue();
        sender.send(PeerOut::Piece(Arc::clone(&share), 0));
        sender.send(PeerOut::Piece(Arc::clone(&share), 1));
        drop(sender);
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (close, _) = watch::channel(false);
        write_peer(ours, 7, queue, close).await;
        let mut reading = Connection::new(theirs);
        match reading.read_frame().await.unwrap() {
            Some(Frame::Piece { piece, bytes, .. }) => assert_eq!((piece, bytes), (1, vec![1; 64])),
            other => panic!("expected piece 1, got {other:?}"),
        }
        assert!(reading.read_frame().await.unwrap().is_none(), "piece 0 was not sent");
    }

    #[test]
    fn only_the_latest_files_received_whole_stay_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (mut completed, mut shares) = (VecDeque::new(), HashMap::new());
        for n in 0..=MAX_COMPLETE_SHARES as u8 {
            let done = share(dir.path(), [n; 32], 1);
            done.state().complete = true;
            shares.insert([n; 32], done);
            keep_completed(&mut completed, &mut shares, [n; 32]);
        }
        assert_eq!(shares.len(), MAX_COMPLETE_SHARES);
        assert!(!shares.contains_key(&[0; 32]), "the oldest is no longer served");
        // The same bytes arriving again: the delivery under way is kept when its older copy
        // goes.
        shares.insert([1; 32], share(dir.path(), [1; 32], 1));
        keep_completed(&mut completed, &mut shares, [42; 32]);
        assert!(shares.contains_key(&[1; 32]));
        // A received file the person deleted is let go at the next file received whole.
        std::fs::remove_file(dir.path().join("5-part")).unwrap();
        keep_completed(&mut completed, &mut shares, [43; 32]);
        assert!(!shares.contains_key(&[5; 32]) && shares.contains_key(&[6; 32]));
    }

    /// A member's swarm, with a certificate from `ca`, accepting other members on loopback.
    async fn listening_member(ca: &gshare_certs::CertificateAuthority, user: &str) -> (Arc<Swarm>, SocketAddr) {
        let (key_pem, request) = gshare_certs::authority::member_key_and_request(user).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let certificate = ca.issue_member_certificate(user, &request, Duration::from_secs(3600), now).unwrap();
        let swarm = Swarm::new(ca.certificate_der(), &certificate.der, &key_pem, true).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(Arc::clone(&swarm).accept(listener));
        (swarm, address)
    }

    /// The ids of `swarm`'s open connections to `certificate` (not told to close).
    fn connections_to(swarm: &Swarm, certificate: Fingerprint) -> HashSet<u64> {
        let peers = lock(&swarm.peers);
        peers
            .iter()
            .filter(|(_, handle)| handle.certificate == certificate && !handle.closing)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Two listening members, the first returned being the one whose fingerprint sorts first
    /// (it dials the other at once) if `first_dials`, else the other.
    async fn two_members(
        ca: &gshare_certs::CertificateAuthority,
        first_dials: bool,
    ) -> ((Arc<Swarm>, SocketAddr), (Arc<Swarm>, SocketAddr)) {
        let one = listening_member(ca, "one").await;
        let other = listening_member(ca, "other").await;
        if (one.0.me().0 < other.0.me().0) == first_dials { (one, other) } else { (other, one) }
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The benchmark's case: a member lets go of the only file it shared with another (moved
    /// away), and the first peer list of its next file does not name the other yet; the next
    /// list, a moment later, does. Whichever member dials, the two connect again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_dropped_from_every_list_and_named_again_at_once_is_connected_again() {
        let ca = gshare_certs::CertificateAuthority::generate("test", time::OffsetDateTime::now_utc()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for dropping_dials in [true, false] {
            let ((a, a_address), (b, b_address)) = two_members(&ca, dropping_dials).await;
            let key = [u8::from(dropping_dials); 32];
            for swarm in [&a, &b] {
                swarm.add_share(&share(dir.path(), key, 4));
            }
            let name = |swarm: &Arc<Swarm>, address| vec![PeerInfo { certificate: swarm.me(), address: Some(address) }];
            a.set_peers(key, name(&b, b_address));
            b.set_peers(key, name(&a, a_address));
            wait_for("the two never connected", || {
                connections_to(&a, b.me()).len() == 1 && connections_to(&b, a.me()).len() == 1
            })
            .await;
            let (first_a, first_b) = (connections_to(&a, b.me()), connections_to(&b, a.me()));

            // No await in between: the connection told to close is still in the map when the
            // list that names the other member again arrives.
            a.set_peers(key, Vec::new());
            a.set_peers(key, name(&b, b_address));
            wait_for("the two did not connect again", || {
                let (now_a, now_b) = (connections_to(&a, b.me()), connections_to(&b, a.me()));
                now_a.len() == 1 && now_b.len() == 1 && now_a != first_a && now_b != first_b
            })
            .await;
        }
    }

    /// A piece that arrives after this member told another its bitfield, but before the other's
    /// own bitfield came (or before the other has even been offered the file), is still told.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_that_arrives_before_the_other_members_bitfield_is_still_told() {
        let ca = gshare_certs::CertificateAuthority::generate("test", time::OffsetDateTime::now_utc()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `a` dials at once.
        let ((a, _), (b, b_address)) = two_members(&ca, true).await;
        let key = [7; 32];
        let a_share = share(dir.path(), key, 4);
        a.add_share(&a_share);
        a.set_peers(key, vec![PeerInfo { certificate: b.me(), address: Some(b_address) }]);
        // `b` has not been offered the file: the bitfield `a` sends waits with it.
        wait_for("the two never connected", || connections_to(&b, a.me()).len() == 1).await;
        wait_for("a's bitfield never came", || lock(&b.peers).values().any(|handle| handle.pending.contains_key(&key)))
            .await;
        a.piece_verified(&a_share, 2, Source::Server, 64);

        std::fs::create_dir(dir.path().join("b")).unwrap();
        let b_share = share(&dir.path().join("b"), key, 4);
        b.add_share(&b_share);
        b.set_peers(key, vec![PeerInfo { certificate: a.me(), address: None }]);
        wait_for("b never learnt that a holds piece 2", || {
            let state = b_share.state();
            state.interested.iter().any(|&id| state.schedule.peer_holds(id, 2))
        })
        .await;
    }

    #[test]
    fn the_latest_pieces_are_kept_in_memory_and_the_oldest_buffer_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let pieces = RECENT_PIECES as u32 + 4;
        let share = share(dir.path(), [0; 32], pieces);
        for piece in 0..RECENT_PIECES as u32 {
            assert_eq!(share.keep_recent(piece, vec![piece as u8; 64]), None, "room for {RECENT_PIECES}");
        }
        let held_elsewhere = share.recent(1).unwrap();
        // The oldest goes, and its buffer comes back for reuse.
        assert_eq!(share.keep_recent(RECENT_PIECES as u32, vec![0xFF; 64]), Some(vec![0; 64]));
        assert!(share.recent(0).is_none());
        // One a writer still holds is not handed back, but is no longer served from memory.
        assert_eq!(share.keep_recent(RECENT_PIECES as u32 + 1, vec![0xFE; 64]), None);
        assert!(share.recent(1).is_none());
        assert_eq!(*held_elsewhere, vec![1; 64]);
        assert_eq!(*share.recent(RECENT_PIECES as u32).unwrap(), vec![0xFF; 64]);
        share.forget_recent();
        assert!(share.recent(RECENT_PIECES as u32).is_none(), "a whole file is served from disk");
    }
}
