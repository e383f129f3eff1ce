//! The multicast channel: a socket that has joined the group, and a unicast socket beside it.
//!
//! - The **group socket** is bound to the group address itself (not 0.0.0.0, which would also
//!   receive every other group any process on the host joined) with SO_REUSEADDR and
//!   SO_REUSEPORT, so that a server and several clients on one host, and a server restarting
//!   at once, can all bind the same group and port. Linux hands every multicast datagram to
//!   every such socket.
//! - The **unicast socket** is bound to the interface address on an ephemeral port. Everything
//!   is sent from it (with IP_MULTICAST_IF, the TTL and the loop setting from the config), so a
//!   peer that answers one node alone answers to its own address and port, not the shared group.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::settings::MulticastSettings;
use gshare_proto::MAX_DATAGRAM_LEN;

/// Receive buffer wanted for the group socket, in bytes: enough to ride out a burst.
const RECEIVE_BUFFER: usize = 1 << 20;

/// Why the multicast channel could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[error("{action}")]
pub struct TransportError {
    action: String,
    #[source]
    source: io::Error,
}

fn context(action: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError { action: action(), source }
}

/// The group socket and the unicast socket of one node.
#[derive(Debug)]
pub struct MulticastChannel {
    group_socket: UdpSocket,
    unicast_socket: UdpSocket,
    group: SocketAddrV4,
}

/// A received datagram fits in this buffer; anything longer shows up as longer than the limit.
pub type ReceiveBuffer = [u8; MAX_DATAGRAM_LEN + 1];

impl MulticastChannel {
    /// Joins the group on the configured interface. Needs a running tokio runtime.
    pub fn open(settings: &MulticastSettings) -> Result<Self, TransportError> {
        let group = SocketAddrV4::new(settings.group.0, settings.port.get());
        let group_socket = open_group_socket(settings, group)?;
        let unicast_socket = open_unicast_socket(settings)?;
        Ok(Self { group_socket, unicast_socket, group })
    }

    /// The group address and port datagrams are sent to.
    pub fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// The address of the unicast socket, which peers see as the sender.
    pub fn local_unicast_address(&self) -> io::Result<SocketAddr> {
        self.unicast_socket.local_addr()
    }

    /// Sends a datagram to the whole group.
    pub async fn send_to_group(&self, datagram: &[u8]) -> io::Result<()> {
        self.unicast_socket.send_to(datagram, self.group).await.map(|_| ())
    }

    /// Sends a datagram to one peer.
    pub async fn send_to(&self, datagram: &[u8], peer: SocketAddr) -> io::Result<()> {
        self.unicast_socket.send_to(datagram, peer).await.map(|_| ())
    }

    /// Receives the next datagram from either socket. A returned length above
    /// [`MAX_DATAGRAM_LEN`] means the datagram was larger than any gshare datagram may be.
    pub async fn receive(&self, buffer: &mut ReceiveBuffer) -> io::Result<(usize, SocketAddr)> {
        loop {
            let socket = tokio::select! {
                ready = self.group_socket.readable() => { ready?; &self.group_socket }
                ready = self.unicast_socket.readable() => { ready?; &self.unicast_socket }
            };
            match socket.try_recv_from(buffer) {
                Ok(received) => return Ok(received),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

fn open_group_socket(settings: &MulticastSettings, group: SocketAddrV4) -> Result<UdpSocket, TransportError> {
    let interface = settings.interface;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(context(|| "cannot create a UDP socket".into()))?;
    socket.set_reuse_address(true).map_err(context(|| "cannot set SO_REUSEADDR".into()))?;
    socket.set_reuse_port(true).map_err(context(|| "cannot set SO_REUSEPORT".into()))?;
    // Best effort: the kernel may cap it, and the default still works.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket
        .bind(&SocketAddr::V4(group).into())
        .map_err(context(|| format!("cannot bind the multicast group {group}")))?;
    socket
        .join_multicast_v4(group.ip(), &interface)
        .map_err(context(|| format!("cannot join multicast group {} on interface {interface}", group.ip())))?;
    into_tokio(socket)
}

fn open_unicast_socket(settings: &MulticastSettings) -> Result<UdpSocket, TransportError> {
    let interface = settings.interface;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(context(|| "cannot create a UDP socket".into()))?;
    socket
        .set_multicast_if_v4(&interface)
        .map_err(context(|| format!("cannot send multicast on interface {interface}")))?;
    socket.set_multicast_ttl_v4(u32::from(settings.ttl)).map_err(context(|| "cannot set the multicast TTL".into()))?;
    socket
        .set_multicast_loop_v4(settings.multicast_loop)
        .map_err(context(|| "cannot set the multicast loop option".into()))?;
    let address = SocketAddrV4::new(interface, 0);
    socket
        .bind(&SocketAddr::V4(address).into())
        .map_err(context(|| format!("cannot bind interface address {interface} (is it an address of this host?)")))?;
    into_tokio(socket)
}

fn into_tokio(socket: Socket) -> Result<UdpSocket, TransportError> {
    socket.set_nonblocking(true).map_err(context(|| "cannot make the socket non-blocking".into()))?;
    UdpSocket::from_std(socket.into()).map_err(context(|| "cannot register the socket with tokio".into()))
}
