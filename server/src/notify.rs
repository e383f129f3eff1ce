//! Telling a service manager how the server is doing, systemd's way: when `NOTIFY_SOCKET` is
//! set (a unit with `Type=notify`), `READY=1` once the server listens and answers, `STOPPING=1`
//! when it shuts down. Without the variable, nothing happens.
//!
//! The protocol is one datagram of text to a Unix socket, a path or, starting with `@`, a name
//! in the abstract namespace; small enough to write here rather than pull in a crate.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (such as `READY=1`) to the service manager, if there is one. A failure is
/// logged: the manager will notice the missing readiness on its own.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = (|| {
        let sender = UnixDatagram::unbound()?;
        let path = socket.to_string_lossy();
        match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sender.send_to_addr(state.as_bytes(), &address)
            }
            None => sender.send_to(state.as_bytes(), &*path),
        }
    })();
    if let Err(error) = sent {
        tracing::warn!(%error, socket = %socket.to_string_lossy(), "cannot notify the service manager");
    }
}
