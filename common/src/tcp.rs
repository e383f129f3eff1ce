//! TCP settings for the connections that carry file data: the server's sessions with members,
//! and members' connections to each other.
//!
//! In swarm delivery each member's link carries several connections at once each way (the
//! server's, and those of the members it takes pieces from and gives them to), so how TCP
//! shares one link among several flows sets how fast a group receives a file.

use tokio::net::TcpStream;

/// The congestion control asked for on connections that carry file data: CUBIC, Linux's
/// default. Some hosts make BBR (version 1) their default; its flows pace themselves at the
/// rate they last measured instead of backing off on loss, and several of them sharing one
/// link leave it less full. On the benchmark LAN (this machine's default is BBR), 256 MiB to
/// 16 members took 1.15x-1.17x the limit with CUBIC (thirteen runs) against 1.18x-1.20x with
/// BBR (runs alternating; Reno 1.15x, 1.17x), and 1 GiB to 8 members unshaped was no slower
/// (15.96 s, 16.36 s against 15.77 s, 17.07 s).
pub const FILE_DATA_CONGESTION_CONTROL: &str = "cubic";

/// Asks for [`FILE_DATA_CONGESTION_CONTROL`] on `tcp`. Where the kernel refuses (it lacks
/// CUBIC, or the host allows unprivileged programs only other algorithms:
/// `net.ipv4.tcp_allowed_congestion_control`), the connection keeps the host's default, which
/// works, only less well shared: nothing to tell the person.
pub fn share_links_evenly(tcp: &TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    if let Err(error) = socket.set_tcp_congestion(FILE_DATA_CONGESTION_CONTROL.as_bytes()) {
        tracing::debug!(%error, "the host's congestion control stays: {FILE_DATA_CONGESTION_CONTROL} refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn congestion_control(tcp: &TcpStream) -> String {
        let name = socket2::SockRef::from(tcp).tcp_congestion().unwrap();
        String::from_utf8_lossy(&name).trim_end_matches('\0').to_owned()
    }

    /// Whether this host lets this process choose CUBIC, found on a socket of its own.
    async fn cubic_allowed(listener: &TcpListener) -> bool {
        let probe = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let _ = listener.accept().await.unwrap();
        socket2::SockRef::from(&probe).set_tcp_congestion(b"cubic").is_ok()
    }

    #[tokio::test]
    async fn a_tuned_connection_uses_cubic_where_the_host_allows_it_and_still_carries_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let allowed = cubic_allowed(&listener).await;
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut receiver, _) = listener.accept().await.unwrap();
        let before = congestion_control(&sender);
        share_links_evenly(&sender);
        let after = congestion_control(&sender);
        if allowed {
            assert_eq!(after, "cubic");
        } else {
            assert_eq!(after, before, "a refusal must leave the host's default in place");
        }
        sender.write_all(b"piece").await.unwrap();
        let mut got = [0u8; 5];
        receiver.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"piece");
    }
}
