//! What the server and the client share below the protocol: the multicast channel, its settings
//! (the `[multicast]` table of both `server.toml` and `client.toml`), config file errors that
//! point at a line, the accounting of datagrams that receivers drop, and the TCP settings of
//! connections that carry file data.
//!
//! # Layout
//!
//! - [`cli`]: logging and exit status for the binaries.
//! - [`connection`]: a byte stream read and written in whole frames, and the socket beneath
//!   a TLS stream read in large gulps.
//! - [`config_file`]: reading TOML with `file: line N: key: message` errors.
//! - [`files`]: atomic file replacement, and write-behind for long writes.
//! - [`password`]: reading a password from the terminal or standard input.
//! - [`settings`]: the `[multicast]` table, validated as it is deserialized.
//! - [`multicast`]: opening the group socket and the unicast socket beside it.
//! - [`drops`]: counting dropped datagrams by reason, with rate-limited log lines.
//! - [`tcp`]: the congestion control of connections that carry file data.

pub mod cli;
pub mod config_file;
pub mod connection;
pub mod drops;
pub mod files;
pub mod multicast;
pub mod password;
pub mod settings;
pub mod tcp;

pub use config_file::ConfigFileError;
pub use connection::{Connection, ConnectionError, read_ahead};
pub use drops::{DropCounter, DropReason};
pub use multicast::{MulticastChannel, TransportError};
pub use settings::MulticastSettings;

/// The ALPN protocol name of gshare's TLS sessions; both sides insist on it. Its number goes
/// up when a frame changes so that an older peer would misread it (2: offers name a path of
/// up to 4096 bytes; 3: piece hashes are SHA-256 states at each piece's end), so that a server and a member of different versions fail at the
/// handshake with a sentence ([`ALPN_MISMATCH`]) instead of in the middle of a file.
pub const ALPN: &[u8] = b"gshare/3";
/// What a member says when the server speaks another version of the protocol.
pub const ALPN_MISMATCH: &str =
    "the server speaks another version of gshare's protocol; run the same gshare version on the server and its members";
/// The ALPN protocol name of connections between members (swarm delivery).
pub const PEER_ALPN: &[u8] = b"gshare-peer/1";

/// Milliseconds since the Unix epoch by the system clock: the `now` that callers hand to `proto`.
pub fn unix_now() -> gshare_proto::UnixMillis {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    gshare_proto::UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// Sleeps until `until`, or forever when there is nothing to wait for: a `select!` branch for
/// an optional deadline.
pub async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}
