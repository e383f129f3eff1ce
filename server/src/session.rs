//! Member sessions: how files reach members.
//!
//! A member opens TLS with its client certificate; before anything else the server checks the
//! certificate against the state store (issued here, not revoked, not expired) and the user
//! against the user store (present, not disabled). The member subscribes to groups it has
//! joined, and then, one delivery at a time, oldest first:
//!
//! ```text
//!  server                         member
//!    Offer (id, group, name, size, SHA-256) ─▶
//!                               ◀─ Resume (offset it already holds; 0 for a new file)
//!                                  or Decline (name unsafe: never offered again)
//!    Data … Data (from offset) ─▶
//!                               ◀─ Ack (stored under its final name, verified)
//!                                  or Failed (did not verify: offered again, a few times)
//! ```
//!
//! A member that subscribed for swarm delivery (`SubscribeSwarm`) takes each file in pieces
//! instead, passing them on to the other members the server names (see the `swarm` module):
//!
//! ```text
//!  server                         member
//!    SwarmOffer (id, name, size, SHA-256, piece length) ─▶
//!    PieceHashes … (every piece's SHA-256, in parts) ─▶
//!                               ◀─ SwarmAccept (bitfield of pieces held, checked on disk)
//!    Peers (the other members of the file's swarm; again whenever it changes) ─▶
//!                               ◀─ NextPiece (a piece no member has had)  ─▶ Piece / NoNewPiece
//!                               ◀─ PieceRequest (a piece by number)       ─▶ Piece
//!                               ◀─ SwarmDone (bytes from the server, from members; bad members)
//!                               ◀─ Ack or Failed, as above
//! ```
//!
//! Only an ack makes a delivery delivered. Idle sessions wait for new deliveries and exchange
//! keepalives. A session whose user or certificate is revoked is closed at once, even in the
//! middle of a write; one whose member leaves a group (or may no longer be in it) stops
//! receiving that group's files, and a transfer of one of them is cancelled with `Cancel`.
//!
//! A member cannot hold anyone else up: every write has a deadline (`limits.write_timeout_secs`),
//! and a user streams at most [`TRANSFERS_PER_USER`](crate::state::TRANSFERS_PER_USER) file at a time, whatever number of
//! sessions it opens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use std::collections::HashMap;

use gshare_common::{Connection, ConnectionError};
use gshare_proto::UserName;
use gshare_proto::frame::{
    DeliveryId, FileKey, Frame, MAX_CHUNK_LEN, MAX_FRAME_LEN, MAX_HASHES_PER_FRAME, MAX_OWED, MAX_PEERS, Offer,
    PeerInfo, Text,
};
use gshare_proto::swarm::{Bits, MAX_PIECES, PIECE_LEN, piece_count, piece_span};

use crate::state::{Event, Server, SessionControl, blocking};
use crate::store::{PendingDelivery, StoreError, unix_now};
use crate::swarm::SwarmMember;

/// Idle time after which the server pings the member.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Silence after which a member is taken for gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// Time the member has to answer an offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the member has to verify, store and acknowledge a file once its data is sent.
const ACK_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is recorded while sending.
const PROGRESS_STEP: u64 = 16 * 1024 * 1024;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("member broke the protocol: {0}")]
    Protocol(String),
    #[error("member did not answer in time")]
    Timeout,
    #[error("access revoked")]
    Revoked,
    #[error("access revoked in the middle of a write")]
    RevokedMidWrite,
    #[error("spool: {0}")]
    Spool(std::io::Error),
}

/// What a session watches for changes from the rest of the server.
type Control = tokio::sync::watch::Receiver<SessionControl>;

/// Serves a subscribed member (registered as session `id`) until it leaves, breaks the
/// protocol, or is revoked.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    user: UserName,
    id: u64,
    mut control: Control,
    swarm: Option<SwarmMember>,
) -> Result<(), SessionError> {
    connection.set_write_timeout(server.config.write_timeout);
    // A member's own frames can now be as large as a piece bitfield.
    connection.limit_frames(MAX_FRAME_LEN);
    let seen_user = user.clone();
    let _ = blocking(server, move |store| store.touch_seen(&seen_user, unix_now())).await;
    let mut session =
        SessionState { user: user.clone(), swarm, peers_sent: HashMap::new(), deferred: Deferrals::default() };
    let result = match tell_owed(server, connection, &user).await {
        Ok(()) => session_loop(server, connection, &mut session, &mut control).await,
        Err(error) => Err(error),
    };
    server.swarms.leave_all(id);
    server.unregister_session(&user, id);
    let seen_user = user.clone();
    let _ = blocking(server, move |store| store.touch_seen(&seen_user, unix_now())).await;
    if matches!(result, Err(SessionError::Revoked)) {
        let _ = connection.write_frame(&Frame::Refused { reason: Text::new("access revoked") }).await;
    }
    result
}

/// Tells the member every delivery still owed to its user, in any group, so that it throws
/// away what it holds of deliveries dropped while it was away (the user was removed, left a
/// group, the file was cancelled or expired).
async fn tell_owed<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    user: &UserName,
) -> Result<(), SessionError> {
    let (who, groups) = (user.clone(), server.config.groups.clone());
    let owed = blocking(server, move |store| store.pending_for(&who, &groups)).await?;
    let complete = owed.len() <= MAX_OWED;
    let deliveries = owed.iter().take(MAX_OWED).map(|delivery| DeliveryId(delivery.id)).collect();
    connection.write_frame(&Frame::Owed { deliveries, complete }).await?;
    Ok(())
}

/// What one session keeps beside its connection.
#[derive(Debug)]
struct SessionState {
    user: UserName,
    /// Set when the member takes files in pieces and passes them on.
    swarm: Option<SwarmMember>,
    /// The peer list last sent for each file whose swarm this session is in.
    peers_sent: HashMap<FileKey, Vec<PeerInfo>>,
    /// Deliveries the member could not store, offered again only later.
    deferred: Deferrals,
}

/// First wait before a file the member could not store is offered to it again; it doubles
/// with each refusal up to [`MAX_DEFERRAL`]. Short: freeing space should be met soon.
const FIRST_DEFERRAL: Duration = Duration::from_secs(1);
const MAX_DEFERRAL: Duration = Duration::from_secs(15);

/// Deliveries a session's member could not store (its disk full, say), with when each is
/// offered again and how long the next wait is.
#[derive(Debug, Default)]
struct Deferrals {
    until: HashMap<u64, (Instant, Duration)>,
}

impl Deferrals {
    /// The member could not store `delivery` (again): wait before offering it once more.
    fn defer(&mut self, delivery: u64, now: Instant) -> Duration {
        let wait = self.until.get(&delivery).map_or(FIRST_DEFERRAL, |(_, last)| (*last * 2).min(MAX_DEFERRAL));
        self.until.insert(delivery, (now + wait, wait));
        wait
    }

    fn is_deferred(&self, delivery: u64, now: Instant) -> bool {
        self.until.get(&delivery).is_some_and(|(until, _)| *until > now)
    }

    /// When the earliest deferred delivery may be offered again.
    fn next_due(&self, now: Instant) -> Option<Instant> {
        self.until.values().map(|(until, _)| *until).filter(|until| *until > now).min()
    }
}

/// The members session `session` may exchange pieces of `file` with, as sent to it: at most
/// [`MAX_PEERS`].
fn peer_list(server: &Server, file: &FileKey, session: u64) -> Vec<PeerInfo> {
    let mut peers = server.swarms.peers(file, session);
    peers.truncate(MAX_PEERS);
    peers
}

/// Sends a fresh peer list for every swarm the session is in whose members changed.
async fn sync_peers<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    session: &mut SessionState,
) -> Result<(), SessionError> {
    let Some(me) = &session.swarm else { return Ok(()) };
    for (file, sent) in &mut session.peers_sent {
        let peers = peer_list(server, file, me.session);
        if peers != *sent {
            connection.write_frame(&Frame::Peers { file: *file, peers: peers.clone() }).await?;
            *sent = peers;
        }
    }
    Ok(())
}

async fn session_loop<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    session: &mut SessionState,
    control: &mut Control,
) -> Result<(), SessionError> {
    let user = &session.user.clone();
    let mut work = server.watch_work();
    let mut swarm_changes = server.swarms.watch();
    let mut last_heard = Instant::now();
    loop {
        let current = control.borrow_and_update().clone();
        if current.closed {
            return Err(SessionError::Revoked);
        }
        // Mark the signal seen before looking, so work recorded after the look wakes us.
        work.borrow_and_update();
        let (who, subscribed) = (user.clone(), current.groups);
        let pending = blocking(server, move |store| store.pending_for(&who, &subscribed)).await?;
        let now = Instant::now();
        if let Some(delivery) = pending.into_iter().find(|d| !session.deferred.is_deferred(d.id, now)) {
            let pieces = piece_count(delivery.size, PIECE_LEN);
            let checked = delivery.clone();
            let delivered = if server.config.swarm && session.swarm.is_some() && pieces <= MAX_PIECES {
                deliver_swarm(server, connection, session, delivery, control).await
            } else {
                deliver(server, connection, session, delivery, control).await
            };
            match delivered {
                // The entry is short, gone or unreadable: if its bytes are damaged, every
                // delivery of it has just failed, and this member throws away what it got.
                Err(SessionError::Spool(error)) if fail_if_spool_corrupt(server, &checked).await? => {
                    tracing::warn!(%user, delivery = checked.id, %error, "transfer stopped: its spool entry is corrupt");
                    let cancel = Frame::Cancel { delivery: DeliveryId(checked.id), reason: Text::new(SPOOL_CORRUPT) };
                    connection.write_frame(&cancel).await?;
                }
                other => other?,
            }
            last_heard = Instant::now();
            continue;
        }
        tokio::select! {
            changed = work.changed() => {
                if changed.is_err() {
                    return Ok(()); // the server is shutting down
                }
            }
            _ = control.changed() => {}
            _ = swarm_changes.changed() => sync_peers(server, connection, session).await?,
            () = gshare_common::sleep_until(session.deferred.next_due(now).map(Into::into)) => {}
            () = tokio::time::sleep(KEEPALIVE_INTERVAL) => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    return Err(SessionError::Timeout);
                }
                connection.write_frame(&Frame::Ping).await?;
            }
            frame = connection.read_frame() => {
                last_heard = Instant::now();
                match frame? {
                    None => return Ok(()),
                    Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
                    Some(Frame::Pong) => {}
                    // Requests that crossed the end of their file's delivery.
                    Some(Frame::NextPiece { .. } | Frame::PieceRequest { .. } | Frame::Progress { .. }) => {}
                    Some(other) => return Err(SessionError::Protocol(format!("unexpected {} while idle", frame_name(&other)))),
                }
            }
        }
    }
}

/// Reads the member's next frame that is not a keepalive. Revocation ends the wait at once.
async fn next_answer<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
    limit: Duration,
    control: &mut Control,
) -> Result<Frame, SessionError> {
    let answer = async {
        loop {
            match connection.read_frame().await? {
                None => return Err(SessionError::Protocol("closed the session in the middle of a delivery".into())),
                Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
                Some(Frame::Pong) => {}
                Some(frame) => return Ok(frame),
            }
        }
    };
    let revoked = async {
        // A dropped sender means the server is going away: as good as revoked for this wait.
        while control.changed().await.is_ok() {
            if control.borrow().closed {
                break;
            }
        }
    };
    tokio::select! {
        answer = tokio::time::timeout(limit, answer) => answer.map_err(|_| SessionError::Timeout)?,
        () = revoked => Err(SessionError::Revoked),
    }
}

/// Waits for `step` (a write) unless the session is revoked first, in which case the write is
/// abandoned in the middle and the session must end without writing anything more.
async fn unless_revoked<T>(
    step: impl Future<Output = Result<T, ConnectionError>>,
    control: &mut Control,
) -> Result<T, SessionError> {
    tokio::pin!(step);
    loop {
        tokio::select! {
            result = &mut step => return Ok(result?),
            changed = control.changed() => {
                if changed.is_err() || control.borrow().closed {
                    return Err(SessionError::RevokedMidWrite);
                }
            }
        }
    }
}

async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    session: &mut SessionState,
    delivery: PendingDelivery,
    control: &mut Control,
) -> Result<(), SessionError> {
    let user = &session.user.clone();
    let id = DeliveryId(delivery.id);
    let sha256 = parse_hex(&delivery.sha256).ok_or(StoreError::Invalid("file hash"))?;
    let offer = Offer {
        delivery: id,
        group: delivery.group.clone(),
        name: delivery.name.clone().into_bytes(),
        size: delivery.size,
        sha256,
    };
    let offered = Instant::now();
    connection.write_frame(&Frame::Offer(offer)).await?;
    let offset = match next_answer(connection, OFFER_TIMEOUT, control).await? {
        Frame::Resume { delivery: resumed, offset } if resumed == id && offset <= delivery.size => offset,
        other => return handle_non_resume(server, session, &delivery, other).await,
    };
    let sent = {
        // Neither semaphore is ever closed; waiting here is the user's turn among its own
        // sessions, then the member's turn in a large fan-out.
        let user_transfers = server.user_transfers(user);
        let _user_turn = user_transfers.acquire().await.map_err(|_| SessionError::Revoked)?;
        let _turn = server.transfers.acquire().await.map_err(|_| SessionError::Revoked)?;
        send_data(server, connection, user, &delivery, offset, control).await?
    };
    if sent == Sent::Cancelled {
        return Ok(());
    }
    let answer = next_answer(connection, ACK_TIMEOUT, control).await?;
    finish_delivery(server, session, &delivery, answer, offered).await
}

/// Records the member's last word on a delivery: its ack, or its report that the file did not
/// verify.
async fn finish_delivery(
    server: &Arc<Server>,
    session: &mut SessionState,
    delivery: &PendingDelivery,
    answer: Frame,
    offered: Instant,
) -> Result<(), SessionError> {
    let user = &session.user;
    let id = DeliveryId(delivery.id);
    match answer {
        Frame::CannotStore { delivery: unstored, reason } if unstored == id => {
            cannot_store(server, session, delivery, reason).await
        }
        Frame::Ack { delivery: acked } if acked == id => {
            let now = unix_now();
            if !blocking(server, move |store| store.mark_delivered(id.0, now)).await? {
                tracing::info!(%user, delivery = id.0, file = %delivery.name, "ack for a delivery no longer pending; left as it was");
                return Ok(());
            }
            server.metrics.transfer_seconds.observe(offered.elapsed().as_secs_f64());
            tracing::info!(%user, delivery = id.0, file = %delivery.name, size = delivery.size, "delivered");
            // Release before telling `send --wait`, so that when it returns the books are done.
            release_spool(server).await;
            server.emit(Event::Delivered { delivery: id.0, user: user.clone() });
            Ok(())
        }
        Frame::Failed { delivery: failed, reason } if failed == id => {
            if fail_if_spool_corrupt(server, delivery).await? {
                return Ok(());
            }
            let (max, reason_text, now) = (server.config.max_attempts, reason.to_string(), unix_now());
            let retrying =
                blocking(server, move |store| store.mark_attempt_failed(id.0, &reason_text, max, now)).await?;
            tracing::warn!(%user, delivery = id.0, file = %delivery.name, retrying, "member could not verify the file: {reason}");
            if !retrying {
                release_spool(server).await;
            }
            server.emit(Event::Failed { delivery: id.0, user: user.clone(), reason: reason.to_string(), retrying });
            Ok(())
        }
        other => Err(SessionError::Protocol(format!("expected an ack for delivery {id}, got {}", frame_name(&other)))),
    }
}

/// The member could not store a file (its disk is full, say): the reason goes into `status`
/// and to `send --wait`, no attempt is counted, and the file is offered to this session again
/// after a wait that grows with each refusal.
async fn cannot_store(
    server: &Arc<Server>,
    session: &mut SessionState,
    delivery: &PendingDelivery,
    reason: Text,
) -> Result<(), SessionError> {
    let (user, id) = (session.user.clone(), delivery.id);
    let wait = session.deferred.defer(id, Instant::now());
    let (text, now) = (reason.to_string(), unix_now());
    blocking(server, move |store| store.set_waiting_reason(id, &text, now)).await?;
    tracing::warn!(%user, delivery = id, file = %delivery.name, wait_ms = wait.as_millis() as u64, "member cannot store the file: {reason}");
    server.emit(Event::Failed { delivery: id, user, reason: reason.to_string(), retrying: true });
    Ok(())
}

/// What `status` says of a delivery whose spool entry changed on disk.
pub(crate) const SPOOL_CORRUPT: &str =
    "spool entry corrupt (its bytes changed on the server's disk); send the file again";

/// What `status` says of a delivery whose spool copy could not be written to the disk.
pub(crate) const SPOOL_NOT_WRITTEN: &str = "the server could not write its spool copy to its disk; send the file again";
/// What `status` says of a delivery whose spool copy was lost when the server (or its
/// machine) went down before the copy was on its disk.
pub(crate) const SPOOL_LOST: &str =
    "the server went down before its spool copy was on its disk, and the copy did not survive; send the file again";

/// Fails, with `reason`, every pending delivery of the spool entry `sha256_hex`, whose bytes
/// are not to be had (never written to the disk, or lost), and lets the entry go.
pub(crate) async fn fail_lost_entry(server: &Arc<Server>, sha256_hex: &str, reason: &'static str) {
    let hash = sha256_hex.to_owned();
    let failed = blocking(server, move |store| {
        let files = store.files_with_hash(&hash)?;
        store.fail_files(&files, reason, unix_now())
    })
    .await;
    match failed {
        Ok(failed) => {
            tracing::error!(entry = %sha256_hex, deliveries = failed.len(), "{reason}");
            for (id, user) in failed {
                server.emit(Event::Failed { delivery: id, user, reason: reason.to_owned(), retrying: false });
            }
        }
        Err(error) => tracing::error!(entry = %sha256_hex, %error, "cannot fail the deliveries of a lost spool entry"),
    }
    release_spool(server).await;
}

/// After a member reports that a file did not verify: re-hashes the file's spool entry, and if
/// its bytes no longer match (changed on disk behind the server's back, or gone), fails every
/// pending delivery of those bytes at once, instead of sending bad bytes until the attempts
/// run out. Returns whether the entry was corrupt.
async fn fail_if_spool_corrupt(server: &Arc<Server>, delivery: &PendingDelivery) -> Result<bool, SessionError> {
    let _one_at_a_time = server.spool_checks.lock().await;
    let (spool, hash) = (server.spool.clone(), delivery.sha256.clone());
    let checked = blocking(server, move |store| {
        // The files are listed before the entry is read: a file sent again while it is read
        // gets a fresh entry, and must not be failed with the old one.
        let files = store.files_with_hash(&hash)?;
        match spool.verify(&hash) {
            Ok(true) => Ok(Ok(None)),
            Ok(false) => store.fail_files(&files, SPOOL_CORRUPT, unix_now()).map(|failed| Ok(Some(failed))),
            Err(error) => Ok(Err(error)),
        }
    })
    .await?;
    let failed = match checked {
        Ok(None) => return Ok(false),
        Ok(Some(failed)) => failed,
        Err(error) => {
            // The member's report stands as an ordinary failed attempt.
            tracing::error!(entry = %delivery.sha256, %error, "cannot re-read a spool entry to check it");
            return Ok(false);
        }
    };
    tracing::error!(
        entry = %delivery.sha256, file = %delivery.name, deliveries = failed.len(),
        "spool entry corrupt: its bytes changed on disk; its deliveries failed; send the file again"
    );
    release_spool(server).await;
    for (id, user) in failed {
        server.emit(Event::Failed { delivery: id, user, reason: SPOOL_CORRUPT.to_owned(), retrying: false });
    }
    Ok(true)
}

/// Notes how far a member got with `delivery`, to be recorded for `status` without waiting
/// for the disk ([`crate::state::ProgressBook`]), and tells `send --wait`.
fn record_progress(server: &Server, user: &UserName, delivery: &PendingDelivery, bytes: u64) {
    server.progress.note(delivery.id, bytes, unix_now());
    server.emit(Event::Progress { delivery: delivery.id, user: user.clone(), bytes, size: delivery.size });
}

/// Least time between two progress records of one swarm delivery.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Most piece requests a member may have waiting at the server: its scheduler keeps far fewer.
const MAX_QUEUED_PIECES: usize = 64;

/// One delivery in swarm mode: the offer, the piece hashes, the peer list, then pieces on
/// request (each "new piece" request served with a piece no member has had) until the member
/// acknowledges the whole file. Reading and writing take turns: the member reads its session
/// on a task of its own, so a piece being written never waits on the member's requests.
async fn deliver_swarm<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    session: &mut SessionState,
    delivery: PendingDelivery,
    control: &mut Control,
) -> Result<(), SessionError> {
    let user = &session.user.clone();
    let Some(me) = session.swarm.clone() else { return Ok(()) };
    let id = DeliveryId(delivery.id);
    let key: FileKey = parse_hex(&delivery.sha256).ok_or(StoreError::Invalid("file hash"))?;
    let pieces = piece_count(delivery.size, PIECE_LEN) as u32;
    let offer = Offer {
        delivery: id,
        group: delivery.group.clone(),
        name: delivery.name.clone().into_bytes(),
        size: delivery.size,
        sha256: key,
    };
    let offered = Instant::now();
    connection.write_frame(&Frame::SwarmOffer { offer, piece_len: PIECE_LEN }).await?;

    // Every piece hash, before the member takes a piece from anyone (or checks what it holds
    // from an earlier attempt).
    let spool = server.spool.clone();
    let hex = delivery.sha256.clone();
    let hashes_path = tokio::task::spawn_blocking(move || spool.ensure_piece_hashes(&hex))
        .await
        .map_err(|error| SessionError::Spool(std::io::Error::other(error)))?
        .map_err(SessionError::Spool)?;
    let hashes = Arc::new(std::fs::File::open(&hashes_path).map_err(SessionError::Spool)?);
    let mut first = 0u32;
    while first < pieces {
        let count = (pieces - first).min(MAX_HASHES_PER_FRAME as u32);
        let len = count as usize * 32;
        let bytes = read_whole(read_at(&hashes, Vec::new(), u64::from(first) * 32, len), len, &delivery.sha256).await?;
        let hashes = bytes.chunks_exact(32).map(|h| h.try_into().unwrap_or([0; 32])).collect();
        connection.write_frame(&Frame::PieceHashes { delivery: id, first, hashes }).await?;
        first += count;
    }
    let mut held = match next_answer(connection, OFFER_TIMEOUT, control).await? {
        Frame::SwarmAccept { delivery: accepted, have } if accepted == id => Bits::from_bytes(&have, pieces)
            .map_err(|error| SessionError::Protocol(format!("swarm acceptance of delivery {id}: {error}")))?,
        other => return handle_non_resume(server, session, &delivery, other).await,
    };
    tracing::info!(%user, delivery = id.0, file = %delivery.name, size = delivery.size, pieces, held = held.count(), "sending in pieces");
    // Watched from before joining: a member joining while this one's first list is on its way
    // is in the next list (a watcher made after that would never see it join).
    let mut swarm_changes = server.swarms.watch();
    server.swarms.join(key, pieces, me.clone());
    // The first list names everyone already in the swarm: an empty one first would have the
    // member close its connections to members it shares no other file with, only to dial
    // them again a moment later.
    let peers = peer_list(server, &key, me.session);
    connection.write_frame(&Frame::Peers { file: key, peers: peers.clone() }).await?;
    session.peers_sent.insert(key, peers);

    let spool_file = Arc::new(std::fs::File::open(server.spool.path(&delivery.sha256)).map_err(SessionError::Spool)?);
    let mut queue: std::collections::VecDeque<u32> = std::collections::VecDeque::new();
    let mut last_heard = Instant::now();
    let mut last_progress = Instant::now() - PROGRESS_INTERVAL;
    let answer = loop {
        if cancelled_if_left(server, connection, control, user, &delivery).await? {
            server.swarms.leave(&key, me.session);
            session.peers_sent.remove(&key);
            return Ok(());
        }
        tokio::select! {
            biased;
            frame = connection.read_frame() => {
                last_heard = Instant::now();
                match frame? {
                    None => return Err(SessionError::Protocol("closed the session in the middle of a delivery".into())),
                    Some(Frame::NextPiece { file }) if file == key => match server.swarms.next_piece(&key, &held) {
                        Some(piece) => queue.push_back(piece),
                        None => connection.write_frame(&Frame::NoNewPiece { file }).await?,
                    },
                    Some(Frame::PieceRequest { file, piece }) if file == key && piece < pieces => queue.push_back(piece),
                    Some(Frame::Progress { delivery: reported, bytes }) if reported == id => {
                        // Recorded once a second at most, whatever the member sends.
                        if last_progress.elapsed() >= PROGRESS_INTERVAL {
                            last_progress = Instant::now();
                            record_progress(server, user, &delivery, bytes.min(delivery.size));
                        }
                    }
                    Some(Frame::SwarmDone { delivery: done, from_server, from_peers, bad_peers }) if done == id => {
                        record_swarm_totals(server, user, id, from_server, from_peers, bad_peers).await?;
                    }
                    Some(answer @ (Frame::Ack { .. } | Frame::Failed { .. } | Frame::CannotStore { .. })) => break answer,
                    // Requests about an earlier file that crossed the end of its delivery.
                    Some(Frame::NextPiece { .. } | Frame::PieceRequest { .. } | Frame::Progress { .. }) => {}
                    Some(Frame::Ping) => connection.write_frame(&Frame::Pong).await?,
                    Some(Frame::Pong) => {}
                    Some(other) => {
                        return Err(SessionError::Protocol(format!("unexpected {} during delivery {id}", frame_name(&other))));
                    }
                }
                if queue.len() > MAX_QUEUED_PIECES {
                    return Err(SessionError::Protocol(format!("more than {MAX_QUEUED_PIECES} piece requests at once")));
                }
            }
            _ = control.changed() => {}
            _ = swarm_changes.changed() => sync_peers(server, connection, session).await?,
            () = std::future::ready(()), if !queue.is_empty() => {
                let Some(piece) = queue.pop_front() else { continue };
                let Some((offset, len)) = piece_span(delivery.size, PIECE_LEN, piece) else { continue };
                // A piece's buffer comes with the turn and goes back with it: however many
                // members are in a swarm, at most `concurrent_transfers` pieces are in memory.
                let _turn = server.transfers.acquire().await.map_err(|_| SessionError::Revoked)?;
                let reading = read_at(&spool_file, server.piece_buffers.take(), offset, len);
                let buffer = read_whole(reading, len, &delivery.sha256).await?;
                unless_revoked(connection.write_piece(&key, piece, &buffer), control).await?;
                server.metrics.bytes_sent.inc_by(buffer.len() as u64);
                server.piece_buffers.give_back(buffer, server.config.concurrent_transfers);
                held.set(piece);
            }
            () = tokio::time::sleep(KEEPALIVE_INTERVAL) => {
                // The member may take the rest from other members for a long while.
                if last_heard.elapsed() > ACK_TIMEOUT {
                    return Err(SessionError::Timeout);
                }
                connection.write_frame(&Frame::Ping).await?;
            }
        }
    };
    finish_delivery(server, session, &delivery, answer, offered).await
}

/// Stores where a member's bytes came from, with the members that sent it bad pieces named.
async fn record_swarm_totals(
    server: &Arc<Server>,
    user: &UserName,
    id: DeliveryId,
    from_server: u64,
    from_peers: u64,
    bad_peers: Vec<gshare_proto::Fingerprint>,
) -> Result<(), SessionError> {
    let bad = blocking(server, move |store| {
        let mut names = Vec::new();
        for fingerprint in &bad_peers {
            let who = store.certificate(fingerprint)?.map_or_else(|| "unknown".to_owned(), |c| c.user.to_string());
            names.push(format!("{who} ({fingerprint})"));
        }
        let bad = (!names.is_empty()).then(|| names.join(", "));
        store.set_swarm_totals(id.0, from_server, from_peers, bad.as_deref())?;
        Ok(bad)
    })
    .await?;
    if let Some(bad) = bad {
        tracing::warn!(%user, delivery = id.0, "members sent pieces that did not verify: {bad}");
    }
    tracing::info!(%user, delivery = id.0, from_server, from_peers, "swarm totals");
    Ok(())
}

/// The member answered an offer with something other than a resume.
async fn handle_non_resume(
    server: &Arc<Server>,
    session: &mut SessionState,
    delivery: &PendingDelivery,
    answer: Frame,
) -> Result<(), SessionError> {
    let (user, id) = (&session.user, DeliveryId(delivery.id));
    match answer {
        Frame::CannotStore { delivery: unstored, reason } if unstored == id => {
            cannot_store(server, session, delivery, reason).await
        }
        Frame::Decline { delivery, reason } if delivery == id => {
            let (reason_text, now) = (reason.to_string(), unix_now());
            blocking(server, move |store| store.mark_failed(id.0, &format!("declined: {reason_text}"), now)).await?;
            tracing::warn!(%user, delivery = id.0, "member declined the file: {reason}");
            release_spool(server).await;
            server.emit(Event::Failed {
                delivery: id.0,
                user: user.clone(),
                reason: reason.to_string(),
                retrying: false,
            });

            Ok(())
        }
        Frame::Resume { delivery, offset } => Err(SessionError::Protocol(format!(
            "resume of delivery {delivery} at offset {offset} does not fit the offer {id}"
        ))),
        other => {
            Err(SessionError::Protocol(format!("expected a resume for delivery {id}, got {}", frame_name(&other))))
        }
    }
}

/// Between two pieces of a transfer: an error if the session was revoked; `true` (after
/// telling the member to throw away what it got) if the member may no longer receive the
/// file's group.
async fn cancelled_if_left<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    connection: &mut Connection<S>,
    control: &mut Control,
    user: &UserName,
    delivery: &PendingDelivery,
) -> Result<bool, SessionError> {
    let current = control.borrow_and_update().clone();
    if current.closed {
        return Err(SessionError::Revoked);
    }
    let id = DeliveryId(delivery.id);
    if server.is_cancelled(delivery.id) {
        let reason = Text::new("cancelled by the operator");
        connection.write_frame(&Frame::Cancel { delivery: id, reason }).await?;
        tracing::info!(%user, delivery = id.0, "transfer cancelled by the operator");
        return Ok(true);
    }
    if current.groups.contains(&delivery.group) {
        return Ok(false);
    }
    let reason = Text::new(&format!("no longer a member of {}", delivery.group));
    connection.write_frame(&Frame::Cancel { delivery: id, reason }).await?;
    tracing::info!(%user, delivery = id.0, group = %delivery.group, "transfer cancelled: no longer a member");
    Ok(true)
}

/// How a transfer ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Every byte is sent; the member's ack or failure report comes next.
    Whole,
    /// The member may no longer receive the file's group; it was told to throw away what it got.
    Cancelled,
}

/// Streams the spooled file from `offset` in chunks, recording progress now and then.
async fn send_data<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Arc<Server>,
    connection: &mut Connection<S>,
    user: &UserName,
    delivery: &PendingDelivery,
    offset: u64,
    control: &mut Control,
) -> Result<Sent, SessionError> {
    let id = DeliveryId(delivery.id);
    tracing::info!(%user, delivery = id.0, file = %delivery.name, size = delivery.size, offset, "sending");
    if offset == delivery.size {
        return Ok(Sent::Whole);
    }
    let path = server.spool.path(&delivery.sha256);
    let file = Arc::new(std::fs::File::open(&path).map_err(SessionError::Spool)?);
    // One chunk is read on a blocking thread while the one before it is encrypted and sent.
    // At most a chunk at a time, never past the recorded size.
    let chunk_at = |at: u64| usize::try_from(delivery.size - at).unwrap_or(MAX_CHUNK_LEN).min(MAX_CHUNK_LEN);
    let mut reading = Some(read_at(&file, Vec::new(), offset, chunk_at(offset)));
    let mut spare = Vec::new();
    let mut sent = offset;
    let mut next_progress = offset + PROGRESS_STEP;
    while let Some(read) = reading.take() {
        if cancelled_if_left(server, connection, control, user, delivery).await? {
            return Ok(Sent::Cancelled);
        }
        let chunk = read.await.map_err(|error| SessionError::Spool(std::io::Error::other(error)))??;
        if chunk.is_empty() {
            return Err(shorter_than_recorded(&delivery.sha256));
        }
        let read = chunk.len();
        if sent + (read as u64) < delivery.size {
            let next = sent + read as u64;
            reading = Some(read_at(&file, std::mem::take(&mut spare), next, chunk_at(next)));
        }
        unless_revoked(connection.write_data(id, &chunk), control).await?;
        server.metrics.bytes_sent.inc_by(chunk.len() as u64);
        spare = chunk;
        sent += read as u64;
        if sent >= next_progress || sent == delivery.size {
            next_progress = sent + PROGRESS_STEP;
            record_progress(server, user, delivery, sent);
        }
    }
    unless_revoked(connection.flush(), control).await?;
    tracing::info!(%user, delivery = id.0, bytes = sent - offset, "sent");
    Ok(Sent::Whole)
}

/// Reads up to `len` bytes of `file` at `offset` into `buffer` on a blocking thread: fewer
/// only where the file ends. Positional reads: the file is shared, never seeked. The read
/// starts at once, so a caller can read ahead while it sends what it read before.
fn read_at(
    file: &Arc<std::fs::File>,
    mut buffer: Vec<u8>,
    offset: u64,
    len: usize,
) -> tokio::task::JoinHandle<Result<Vec<u8>, SessionError>> {
    use std::os::unix::fs::FileExt;
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        buffer.resize(len, 0);
        let mut read = 0;
        while read < len {
            match file.read_at(&mut buffer[read..], offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(SessionError::Spool(error)),
            }
        }
        buffer.truncate(read);
        Ok(buffer)
    })
}

/// A read begun by [`read_at`], which must have given all `len` bytes: a spool entry (or its
/// piece hashes) shorter than recorded is an error naming the entry.
async fn read_whole(
    reading: tokio::task::JoinHandle<Result<Vec<u8>, SessionError>>,
    len: usize,
    entry: &str,
) -> Result<Vec<u8>, SessionError> {
    let bytes = reading.await.map_err(|error| SessionError::Spool(std::io::Error::other(error)))??;
    if bytes.len() == len { Ok(bytes) } else { Err(shorter_than_recorded(entry)) }
}

fn shorter_than_recorded(entry: &str) -> SessionError {
    SessionError::Spool(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("spool entry {entry} is shorter than recorded"),
    ))
}

/// Deletes spool entries that no pending delivery needs any more.
pub(crate) async fn release_spool(server: &Arc<Server>) {
    let now = unix_now();
    let shared = Arc::clone(server);
    let released =
        tokio::task::spawn_blocking(move || shared.spool.release(|| shared.store.release_finished_files(now))).await;
    match released {
        Ok(Ok(hashes)) => {
            for hash in hashes {
                tracing::info!(entry = %hash, "spool entry released");
            }
        }
        Ok(Err(error)) => tracing::error!(%error, "cannot release spool entries"),
        Err(error) => tracing::error!(%error, "cannot release spool entries"),
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// A frame's name for messages, without its (possibly large or hostile) contents.
pub(crate) fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::EnrollRequest { .. } => "an enrollment request",
        Frame::EnrollAccepted { .. } => "an enrollment acceptance",
        Frame::Refused { .. } => "a refusal",
        Frame::Subscribe { .. } => "a subscription",
        Frame::Subscribed => "a subscription acceptance",
        Frame::Offer(_) => "an offer",
        Frame::Resume { .. } => "a resume",
        Frame::Decline { .. } => "a decline",
        Frame::Data { .. } => "data",
        Frame::Ack { .. } => "an ack",
        Frame::Failed { .. } => "a failure report",
        Frame::Ping => "a ping",
        Frame::Pong => "a pong",
        Frame::Cancel { .. } => "a cancellation",
        Frame::CannotStore { .. } => "a report that the file cannot be stored",
        Frame::RenewRequest { .. } => "a renewal request",
        Frame::Owed { .. } => "the list of deliveries owed",
        Frame::Progress { .. } => "a progress report",
        Frame::Busy { .. } => "a busy answer",
        Frame::SubscribeSwarm { .. } => "a swarm subscription",
        Frame::SwarmOffer { .. } => "a swarm offer",
        Frame::SwarmAccept { .. } => "a swarm acceptance",
        Frame::PieceHashes { .. } => "piece hashes",
        Frame::Peers { .. } => "a peer list",
        Frame::NextPiece { .. } => "a new-piece request",
        Frame::NoNewPiece { .. } => "a no-new-piece answer",
        Frame::PieceRequest { .. } => "a piece request",
        Frame::Piece { .. } => "a piece",
        Frame::PieceRefused { .. } => "a piece refusal",
        Frame::Bitfield { .. } => "a bitfield",
        Frame::Have { .. } => "a have",
        Frame::SwarmDone { .. } => "swarm totals",
    }
}
