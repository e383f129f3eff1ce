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

use crate::enroll::enroll;
use crate::state::Server;

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
    let mut connection = Connection::new(tls);
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
        other => {
            tracing::warn!(%peer, frame = ?std::mem::discriminant(&other), "unexpected request");
            Frame::Refused { reason: Text::new("unexpected request") }
        }
    };
    if let Err(error) = connection.write_frame(&answer).await {
        tracing::warn!(%peer, %error, "cannot send the answer");
        return;
    }
    let _ = connection.shutdown().await;
}
