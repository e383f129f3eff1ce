//! The TLS listener: accepts connections, bounds how many are served at once and how long a
//! peer may take to say what it wants, and hands each request to its handler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use gshare_common::Connection;
use gshare_proto::frame::{Frame, Text};

use gshare_proto::{GroupName, UserName};

use crate::enroll::enroll;
use crate::membership;
use crate::session;
use crate::state::{Server, blocking};

/// Accepts connections until the task is dropped.
pub(crate) async fn serve(server: Arc<Server>, listener: TcpListener, acceptor: TlsAcceptor) {
    let slots = Arc::new(Semaphore::new(server.config.max_connections));
    loop {
        // The semaphore is never closed.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            handle_connection(&server, acceptor, tcp, peer).await;
            drop(slot);
        });
    }
}

async fn handle_connection(server: &Arc<Server>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let timeout = server.config.handshake_timeout;
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
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
    // Members send only small frames; a small read size keeps idle sessions cheap.
    let mut connection = Connection::with_read_size(tls, 4096);
    let request = match tokio::time::timeout(timeout, connection.read_frame()).await {
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
        Frame::Subscribe { groups } => {
            let certificate =
                connection.stream().get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec());
            match authorize(server, certificate, &groups).await {
                Ok(user) => {
                    if connection.write_frame(&Frame::Subscribed).await.is_err() {
                        return;
                    }
                    let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
                    tracing::info!(%peer, %user, groups = %names.join(","), "member connected");
                    match session::serve(server, &mut connection, user.clone(), groups).await {
                        Ok(()) => tracing::info!(%peer, %user, "member disconnected"),
                        Err(error) => tracing::warn!(%peer, %user, %error, "member session ended"),
                    }
                    let _ = connection.shutdown().await;
                    return;
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

/// The member a session speaks for, if its certificate and standing allow the subscription.
/// The TLS layer already verified the certificate chains to our CA; this checks what only the
/// state store knows (revocation, expiry) and the user store (present, enabled), and that
/// every group is one the member joined.
async fn authorize(
    server: &Arc<Server>,
    certificate: Option<Vec<u8>>,
    groups: &[GroupName],
) -> Result<UserName, String> {
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
    Ok(user)
}
