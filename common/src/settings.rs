//! The `[multicast]` table, the same in `server.toml` and `client.toml`, with the same defaults.
//!
//! Each field's type checks its own value while serde reads it, so a bad value is reported by
//! the TOML parser with the line it stands on.

use std::net::Ipv4Addr;
use std::num::NonZeroU16;
use std::time::Duration;

use serde::Deserialize;

/// Default multicast group: in the organization-local scope 239.255.0.0/16.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 70, 70);
/// Default UDP port of the multicast group.
pub const DEFAULT_PORT: u16 = 7070;
/// Default interface: loopback, so that nothing leaves the machine until an operator says so.
pub const DEFAULT_INTERFACE: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Default TTL: one hop, the local network.
pub const DEFAULT_TTL: u8 = 1;
/// Default freshness window of signed datagrams, in seconds.
pub const DEFAULT_MAX_AGE_SECS: u64 = 30;
/// Longest freshness window allowed, in seconds.
pub const MAX_MAX_AGE_SECS: u64 = 3600;

/// The `[multicast]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MulticastSettings {
    /// IPv4 multicast group the server announces on and listens to.
    pub group: MulticastGroup,
    /// UDP port of the group.
    pub port: NonZeroU16,
    /// IPv4 address of the interface to join the group on and send from.
    pub interface: Ipv4Addr,
    /// Hops a multicast datagram may travel: 0 keeps it on this host, 1 on the local network.
    pub ttl: u8,
    /// Whether datagrams are looped back to sockets on the sending host (needed when server and
    /// clients share a host, as in the quick start).
    #[serde(rename = "loop")]
    pub multicast_loop: bool,
    /// How old (or how far in the future) a signed datagram may be, in seconds.
    pub max_age_secs: MaxAgeSecs,
}

impl Default for MulticastSettings {
    fn default() -> Self {
        Self {
            group: MulticastGroup(DEFAULT_GROUP),
            port: NonZeroU16::new(DEFAULT_PORT).unwrap_or(NonZeroU16::MIN),
            interface: DEFAULT_INTERFACE,
            ttl: DEFAULT_TTL,
            multicast_loop: true,
            max_age_secs: MaxAgeSecs(DEFAULT_MAX_AGE_SECS),
        }
    }
}

impl MulticastSettings {
    /// The freshness window of signed datagrams.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs.0)
    }

    /// `group:port`, for messages.
    pub fn describe(&self) -> String {
        format!("{}:{} on interface {}", self.group.0, self.port, self.interface)
    }
}

/// An IPv4 multicast address (224.0.0.0/4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MulticastGroup(pub Ipv4Addr);

impl TryFrom<String> for MulticastGroup {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        let address: Ipv4Addr = text.parse().map_err(|_| format!("{text:?} is not an IPv4 address"))?;
        if address.is_multicast() {
            Ok(Self(address))
        } else {
            Err(format!("{address} is not a multicast address (224.0.0.0 to 239.255.255.255)"))
        }
    }
}

/// A freshness window in seconds, 1 to [`MAX_MAX_AGE_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct MaxAgeSecs(pub u64);

impl TryFrom<u64> for MaxAgeSecs {
    type Error = String;
    fn try_from(secs: u64) -> Result<Self, Self::Error> {
        if (1..=MAX_MAX_AGE_SECS).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(format!("must be between 1 and {MAX_MAX_AGE_SECS} seconds"))
        }
    }
}
