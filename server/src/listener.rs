//! The TLS listener: accepts connections, keeps strangers from crowding out members, bounds
//! how long a peer may take to say what it wants, and hands each request to its handler.
//!
//! Two budgets, so that nobody can lock members out:
//!
//! - **Strangers** (a connection before its request is read, and every enrollment) get
//!   `limits.max_strangers` places in all and `limits.strangers_per_address` per IP address.
//!   A connection beyond either is closed at once, before its TLS handshake, so a host that
//!   opens hundreds of connections and never finishes them only ever holds its own few places.
//! - **Members** whose certificate and standing check out move to the session budget,
//!   `limits.max_connections`, at most `limits.sessions_per_certificate` per certificate. A
//!   member beyond those is told `Busy` and tries again later.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use gshare_common::Connection;
use gshare_proto::frame::{Frame, MAX_REQUEST_LEN, Text};
use gshare_proto::{Fingerprint, GroupName, UserName};

use crate::enroll::{enroll, renew};
use crate::membership;
use crate::session;
use crate::state::{Server, TooManySessions, blocking};
use crate::swarm::SwarmMember;

/// Read size for the server's end of a connection: members send only small frames, and a
/// small read size keeps idle sessions cheap.
const READ_SIZE: usize = 4096;

/// Places for connections that have not authenticated yet.
#[derive(Debug)]
struct Strangers {
    places: Arc<Semaphore>,
    per_address: usize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One stranger's place, given back when dropped.
#[derive(Debug)]
struct StrangerPass {
    strangers: Arc<Strangers>,
    address: IpAddr,
    _place: OwnedSemaphorePermit,
}

impl Strangers {
    fn new(places: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self { places: Arc::new(Semaphore::new(places)), per_address, by_address: Mutex::default() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a new connection from `address`, if both budgets have one.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<StrangerPass> {
        let mut table = self.table();
        let count = table.entry(address).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        let place = Arc::clone(&self.places).try_acquire_owned().ok()?;
        *count += 1;
        Some(StrangerPass { strangers: Arc::clone(self), address, _place: place })
    }
}

impl Drop for StrangerPass {
    fn drop(&mut self) {
        let mut table = self.strangers.table();
        if let Some(count) = table.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                table.remove(&self.address);
            }
        }
    }
}

/// Accepts connections until the task is dropped.
pub(crate) async fn serve(server: Arc<Server>, listener: TcpListener, acceptor: TlsAcceptor) {
    let strangers = Strangers::new(server.config.max_strangers, server.config.strangers_per_address);
    let sessions = Arc::new(Semaphore::new(server.config.max_connections));
    let mut turned_away = 0u64;
    let mut last_report = Instant::now();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(pass) = strangers.admit(peer.ip()) else {
            drop(tcp);
            turned_away += 1;
            // A flood of connections must not become a flood of log lines.
            if last_report.elapsed() >= Duration::from_secs(1) {
                tracing::warn!(%peer, turned_away, "connections turned away: too many unauthenticated connections (limits.max_strangers, limits.strangers_per_address)");
                (turned_away, last_report) = (0, Instant::now());
            }
            continue;
        };
        gshare_common::tcp::share_links_evenly(&tcp);
        let server = Arc::clone(&server);
        let (acceptor, sessions) = (acceptor.clone(), Arc::clone(&sessions));
        tokio::spawn(async move { handle_connection(&server, acceptor, tcp, peer, pass, &sessions).await });
    }
}

async fn handle_connection(
    server: &Arc<Server>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    pass: StrangerPass,
    sessions: &Arc<Semaphore>,
) {
    // One deadline for the handshake and the request together.
    let deadline = tokio::time::Instant::now() + server.config.handshake_timeout;
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut connection = Connection::with_read_size(tls, READ_SIZE);
    connection.limit_frames(MAX_REQUEST_LEN);
    connection.set_write_timeout(server.config.write_timeout);
    let request = match tokio::time::timeout_at(deadline, connection.read_frame()).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "bad request");
            let _ = connection.write_frame(&Frame::Refused { reason: Text::new(&error.to_string()) }).await;
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "no request before the time limit");
            return;
        }
    };
    let answer = match request {
        Frame::EnrollRequest { user, password, csr } => enroll(server, peer, user, password, csr).await,
        Frame::RenewRequest { csr } => {
            let certificate =
                connection.stream().get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec());
            renew(server, peer, certificate, csr).await
        }
        request @ (Frame::Subscribe { .. } | Frame::SubscribeSwarm { .. }) => {
            // A swarm subscription carries the port the member accepts other members on.
            let (groups, swarm) = match request {
                Frame::SubscribeSwarm { groups, peer_port } => (groups, Some(peer_port)),
                Frame::Subscribe { groups } => (groups, None),
                _ => return,
            };
            let certificate =
                connection.stream().get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec());
            match authorize(server, certificate, &groups).await {
                Ok((user, fingerprint)) => {
                    drop(pass);
                    let member = Member { user, certificate: fingerprint, groups, swarm };
                    return run_session(server, connection, peer, member, sessions).await;
                }
                Err(reason) => {
                    tracing::warn!(%peer, "session refused: {reason}");
                    Frame::Refused { reason: Text::new(&reason) }
                }
            }
        }
        other => {
            tracing::warn!(%peer, "unexpected request: {}", session::frame_name(&other));
            Frame::Refused { reason: Text::new("unexpected request") }
        }
    };
    if let Err(error) = connection.write_frame(&answer).await {
        tracing::warn!(%peer, %error, "cannot send the answer");
        return;
    }
    let _ = connection.shutdown().await;
}

/// An authorized member and what it subscribed to.
#[derive(Debug)]
struct Member {
    user: UserName,
    certificate: Fingerprint,
    groups: Vec<GroupName>,
    /// For a swarm subscription, the port the member accepts other members on, if any.
    swarm: Option<Option<u16>>,
}

/// Serves an authorized member's session, if the session budgets have room for it.
async fn run_session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    server: &Arc<Server>,
    mut connection: Connection<S>,
    peer: SocketAddr,
    member: Member,
    sessions: &Arc<Semaphore>,
) {
    let Member { user, certificate, groups, swarm } = member;
    let busy = |reason: String| Frame::Busy { reason: Text::new(&reason) };
    let slot = Arc::clone(sessions).try_acquire_owned();
    let registered = server.register_session(&user, certificate, &groups);
    let (_slot, (id, control)) = match (slot, registered) {
        (Ok(slot), Ok(registered)) => (slot, registered),
        (Err(_), registered) => {
            if let Ok((id, _)) = registered {
                server.unregister_session(&user, id);
            }
            let limit = server.config.max_connections;
            tracing::warn!(%peer, %user, "session refused: the server has its maximum of {limit} sessions open (limits.max_connections)");
            let _ = connection
                .write_frame(&busy(format!("the server has its maximum of {limit} sessions open; trying again later")))
                .await;
            return;
        }
        (Ok(_), Err(TooManySessions(limit))) => {
            tracing::warn!(%peer, %user, "session refused: {limit} sessions already open with this certificate (limits.sessions_per_certificate)");
            let _ = connection
                .write_frame(&busy(format!(
                    "{limit} sessions are already open with this certificate; trying again later"
                )))
                .await;
            return;
        }
    };
    if connection.write_frame(&Frame::Subscribed).await.is_err() {
        server.unregister_session(&user, id);
        return;
    }
    let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
    tracing::info!(%peer, %user, groups = %names.join(","), "member connected");
    let swarm = swarm.map(|port| SwarmMember {
        session: id,
        user: user.clone(),
        certificate,
        address: port.map(|port| SocketAddr::new(peer.ip(), port)),
    });
    match session::serve(server, &mut connection, user.clone(), id, control, swarm).await {
        Ok(()) => tracing::info!(%peer, %user, "member disconnected"),
        Err(session::SessionError::RevokedMidWrite) => {
            tracing::warn!(%peer, %user, "member session ended: access revoked in the middle of a write");
            return; // the stream is cut inside a frame: nothing more may be written
        }
        Err(error) => tracing::warn!(%peer, %user, %error, "member session ended"),
    }
    let _ = connection.shutdown().await;
}

/// The member a session speaks for, if its certificate and standing allow the subscription.
/// The TLS layer already verified the certificate chains to our CA; this checks what only the
/// state store knows (revocation, expiry) and the user store (present, enabled), and that
/// every group is one the member joined.
async fn authorize(
    server: &Arc<Server>,
    certificate: Option<Vec<u8>>,
    groups: &[GroupName],
) -> Result<(UserName, Fingerprint), String> {
    let certificate = certificate.ok_or("a session needs the member's client certificate; enroll first")?;
    if groups.is_empty() {
        return Err("subscribe to at least one group".into());
    }
    let fingerprint = gshare_certs::fingerprint(&certificate);
    let record = blocking(server, move |store| store.certificate(&fingerprint))
        .await
        .map_err(|error| format!("the server cannot check the certificate now: {error}"))?
        .ok_or("this server has no record of the certificate; enroll again")?;
    let users = server.users();
    membership::standing(&record, &users, crate::store::unix_now()).map_err(|(_, reason)| reason)?;
    let user = record.user;
    let who = user.clone();
    let joined = blocking(server, move |store| store.groups_of(&who))
        .await
        .map_err(|error| format!("the server cannot check memberships now: {error}"))?;
    for group in groups {
        if !joined.contains(group) {
            return Err(format!("user \"{user}\" is not a member of \"{group}\"; join it first"));
        }
    }
    Ok((user, fingerprint))
}
