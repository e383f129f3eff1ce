//! Names that arrive from the network, a config file or a person, checked once at construction.
//!
//! A value of these types is valid by construction; the rest of the code never re-checks it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 64;

/// Longest server address (`host:port`), in bytes. A DNS name is at most 253 bytes.
pub const MAX_SERVER_ADDRESS_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than the protocol allows.
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    /// The name holds a character outside the allowed set.
    #[error("may only hold ASCII letters, digits, '-', '_' and '.', and must start with a letter or digit")]
    BadCharacter,
    /// The user name holds a character outside the allowed set.
    #[error("may only hold ASCII letters, digits, '-', '_', '.' and '@', and must start with a letter or digit")]
    BadUserCharacter,
    /// The address is not `host:port` with an IP address or DNS name and a non-zero port.
    #[error("must be HOST:PORT, where HOST is an IP address or a DNS name and PORT is 1-65535")]
    BadAddress,
}

/// The name of a group of members, such as `Developers`.
///
/// 1 to 64 ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit, so it is
/// safe in a file name, a log line and a terminal without escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        let first = *bytes.first().ok_or(NameError::Empty)?;
        if bytes.len() > MAX_GROUP_NAME_LEN {
            return Err(NameError::TooLong { len: bytes.len(), max: MAX_GROUP_NAME_LEN });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if !first.is_ascii_alphanumeric() || !bytes.iter().all(|&b| allowed(b)) {
            return Err(NameError::BadCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest user name, in bytes.
pub const MAX_USER_NAME_LEN: usize = 64;

/// The name of a person enrolled with the server, such as `alice` or `j.doe`.
///
/// 1 to 64 ASCII letters, digits, `-`, `_`, `.` and `@`, starting with a letter or digit: safe
/// in a certificate's common name, a TOML key, a log line and a terminal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(String);

impl UserName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        let first = *bytes.first().ok_or(NameError::Empty)?;
        if bytes.len() > MAX_USER_NAME_LEN {
            return Err(NameError::TooLong { len: bytes.len(), max: MAX_USER_NAME_LEN });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@');
        if !first.is_ascii_alphanumeric() || !bytes.iter().all(|&b| allowed(b)) {
            return Err(NameError::BadUserCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where members reach the server over TLS: `HOST:PORT`, HOST an IP address (IPv6 in brackets)
/// or a DNS name. Announced over multicast and stored by clients at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress(String);

impl ServerAddress {
    pub fn new(text: &str) -> Result<Self, NameError> {
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        if text.len() > MAX_SERVER_ADDRESS_LEN {
            return Err(NameError::TooLong { len: text.len(), max: MAX_SERVER_ADDRESS_LEN });
        }
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return if socket.port() == 0 { Err(NameError::BadAddress) } else { Ok(Self(text.to_owned())) };
        }
        let (host, port) = text.rsplit_once(':').ok_or(NameError::BadAddress)?;
        let port_ok = !port.starts_with('+') && port.parse::<u16>().is_ok_and(|p| p != 0);
        if port_ok && is_dns_name(host) { Ok(Self(text.to_owned())) } else { Err(NameError::BadAddress) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part without the port (and without brackets around an IPv6 address).
    pub fn host(&self) -> &str {
        let host = self.0.rsplit_once(':').map_or(self.0.as_str(), |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A DNS name made of letters, digits and hyphens in dot-separated labels of 1 to 63 bytes,
/// not all digits (so that a mistyped IPv4 address is not taken for a name).
fn is_dns_name(host: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.len() <= 253 && host.split('.').all(label_ok) && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl FromStr for ServerAddress {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        for good in ["Developers", "a", "team-2.ops_x", &"x".repeat(64)] {
            assert!(GroupName::new(good).is_ok(), "{good}");
        }
        assert_eq!(GroupName::new(""), Err(NameError::Empty));
        assert!(matches!(GroupName::new(&"x".repeat(65)), Err(NameError::TooLong { .. })));
        for bad in ["-x", ".hidden", "a b", "a/b", "..", "é", "a\u{1b}[31m", "a\0"] {
            assert_eq!(GroupName::new(bad), Err(NameError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn user_names() {
        for good in ["alice", "j.doe", "bob@example.org", "x_1-2"] {
            assert!(UserName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a b", "a/b", "..", "a:b", "é", "a\n"] {
            assert!(UserName::new(bad).is_err(), "{bad:?}");
        }
        assert!(UserName::new(&"a".repeat(65)).is_err());
    }

    #[test]
    fn server_addresses() {
        for good in ["127.0.0.1:7443", "[::1]:7443", "gshare.example.org:7443", "host-1:1"] {
            assert!(ServerAddress::new(good).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1", "127.0.0.1:0", "host:", ":7443", "ho st:1", "1.2.3:80", "a..b:1", "-a:1", "h:+1"] {
            assert!(ServerAddress::new(bad).is_err(), "{bad}");
        }
        assert_eq!(ServerAddress::new("[::1]:7443").unwrap().host(), "::1");
        assert_eq!(ServerAddress::new("example.org:1").unwrap().host(), "example.org");
    }
}
