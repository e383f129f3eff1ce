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

/// Longest file name, in bytes (the usual file system limit).
pub const MAX_FILE_NAME_LEN: usize = 255;

/// Prefix of the receiver's own temporary files; no delivered file may use it.
pub const RESERVED_FILE_PREFIX: &str = ".gshare-";

/// Why a file name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {0} bytes long, the limit is {MAX_FILE_NAME_LEN}")]
    TooLong(usize),
    #[error("the name is not UTF-8")]
    NotUtf8,
    #[error("the name is a path, not a single component (it holds '/' or '\\')")]
    Separator,
    #[error("the name holds a NUL or control character")]
    Control,
    #[error("the name is '.' or '..'")]
    Dots,
    #[error("the name starts with a drive prefix")]
    Drive,
    #[error("the name starts with the reserved prefix {RESERVED_FILE_PREFIX}")]
    Reserved,
}

/// The name of a delivered file: exactly one path component, safe to create inside a
/// directory. Not empty, at most 255 bytes of UTF-8, no `/`, `\`, NUL or control characters
/// (so no terminal escapes either), not `.` or `..`, no drive prefix such as `C:`, and not
/// starting with the receiver's reserved `.gshare-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileName(String);

impl FileName {
    pub fn new(name: &str) -> Result<Self, FileNameError> {
        if name.is_empty() {
            return Err(FileNameError::Empty);
        }
        if name.len() > MAX_FILE_NAME_LEN {
            return Err(FileNameError::TooLong(name.len()));
        }
        if name.contains(['/', '\\']) {
            return Err(FileNameError::Separator);
        }
        if name.chars().any(char::is_control) {
            return Err(FileNameError::Control);
        }
        if name == "." || name == ".." {
            return Err(FileNameError::Dots);
        }
        let bytes = name.as_bytes();
        if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Err(FileNameError::Drive);
        }
        if name.starts_with(RESERVED_FILE_PREFIX) {
            return Err(FileNameError::Reserved);
        }
        Ok(Self(name.to_owned()))
    }

    /// Parses a name received as bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FileNameError> {
        if bytes.len() > MAX_FILE_NAME_LEN {
            return Err(FileNameError::TooLong(bytes.len()));
        }
        Self::new(std::str::from_utf8(bytes).map_err(|_| FileNameError::NotUtf8)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name with ` (n)` before its extension: `report.pdf` → `report (1).pdf`. The result
    /// is still a valid name; a name too long to take the suffix is cut first.
    pub fn numbered(&self, n: u32) -> Self {
        let (stem, extension) = match self.0.rfind('.') {
            Some(dot) if dot > 0 => self.0.split_at(dot),
            _ => (self.0.as_str(), ""),
        };
        // An extension so long that the number would not fit beside it is cut with the stem:
        // the number goes at the end instead, so the loop below always ends with a stem left.
        let (stem, suffix) = match format!(" ({n}){extension}") {
            suffix if suffix.len() < MAX_FILE_NAME_LEN => (stem, suffix),
            _ => (self.0.as_str(), format!(" ({n})")),
        };
        let mut stem = stem.to_owned();
        while stem.len() + suffix.len() > MAX_FILE_NAME_LEN {
            stem.pop();
        }
        Self(format!("{stem}{suffix}"))
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most components a [`RelativePath`] may have.
pub const MAX_PATH_DEPTH: usize = 32;
/// Longest [`RelativePath`], in bytes with its separators.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a relative path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is {0} bytes long, the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
    #[error("the path has {0} components, the limit is {MAX_PATH_DEPTH}")]
    TooDeep(usize),
    #[error("the path is not UTF-8")]
    NotUtf8,
    #[error("the path has an empty component (it starts or ends with '/', or holds '//')")]
    EmptyComponent,
    #[error("component {index} of the path: {error}")]
    Component { index: usize, error: FileNameError },
}

/// A file's place inside a sent directory tree, as members receive it: one or more components
/// separated by `/`, each a [`FileName`] (so never `.`, `..`, a drive, a control character or
/// the reserved prefix), never absolute, at most [`MAX_PATH_DEPTH`] deep and [`MAX_PATH_LEN`]
/// bytes. A file sent on its own is a path of one component. A receiver creates each directory
/// component relative to its out directory's handle, never following a symlink.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelativePath(Vec<FileName>);

impl RelativePath {
    pub fn new(path: &str) -> Result<Self, PathError> {
        if path.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(path.len()));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() > MAX_PATH_DEPTH {
            return Err(PathError::TooDeep(parts.len()));
        }
        let mut components = Vec::with_capacity(parts.len());
        for (index, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                return Err(PathError::EmptyComponent);
            }
            components.push(FileName::new(part).map_err(|error| PathError::Component { index, error })?);
        }
        Ok(Self(components))
    }

    /// Parses a path received as bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PathError> {
        if bytes.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(bytes.len()));
        }
        Self::new(std::str::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?)
    }

    /// The directories to create, outermost first (every component but the last).
    pub fn directories(&self) -> &[FileName] {
        &self.0[..self.0.len() - 1]
    }

    /// The file's own name (the last component).
    pub fn file_name(&self) -> &FileName {
        &self.0[self.0.len() - 1]
    }

    /// The path of `file_name` inside `directories`, outermost first: names already checked,
    /// such as a numbered variant of a path that was (so it may pass the length limit by the
    /// few bytes of the numbers).
    pub fn from_parts(directories: Vec<FileName>, file_name: FileName) -> Self {
        let mut components = directories;
        components.push(file_name);
        Self(components)
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, component) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("/")?;
            }
            f.write_str(component.as_str())?;
        }
        Ok(())
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
    fn file_names() {
        for good in ["report.pdf", "a", "ünïcödé 文件.txt", ".hidden", "..x", "x..", "a b"] {
            assert!(FileName::new(good).is_ok(), "{good}");
        }
        let cases: [(&str, FileNameError); 11] = [
            ("", FileNameError::Empty),
            ("../x", FileNameError::Separator),
            ("/etc/passwd", FileNameError::Separator),
            ("a/b", FileNameError::Separator),
            ("a\\b", FileNameError::Separator),
            ("..", FileNameError::Dots),
            (".", FileNameError::Dots),
            ("a\0b", FileNameError::Control),
            ("a\u{1b}[31mred", FileNameError::Control),
            ("C:evil", FileNameError::Drive),
            (".gshare-1.part", FileNameError::Reserved),
        ];
        for (name, error) in cases {
            assert_eq!(FileName::new(name), Err(error), "{name:?}");
        }
        assert_eq!(FileName::new(&"x".repeat(256)), Err(FileNameError::TooLong(256)));
        assert_eq!(FileName::from_bytes(&[0xff, 0xfe]), Err(FileNameError::NotUtf8));
        assert_eq!(FileName::new("a\n").unwrap_err(), FileNameError::Control);
    }

    #[test]
    fn numbered_names_keep_the_extension_and_stay_valid() {
        assert_eq!(FileName::new("report.pdf").unwrap().numbered(1).as_str(), "report (1).pdf");
        assert_eq!(FileName::new("README").unwrap().numbered(2).as_str(), "README (2)");
        assert_eq!(FileName::new(".bashrc").unwrap().numbered(1).as_str(), ".bashrc (1)");
        let long = FileName::new(&format!("{}.txt", "x".repeat(251))).unwrap();
        let numbered = long.numbered(10);
        assert!(numbered.as_str().len() <= MAX_FILE_NAME_LEN && numbered.as_str().ends_with(" (10).txt"));
        assert!(FileName::new(numbered.as_str()).is_ok());
    }

    #[test]
    fn relative_paths_are_components_that_each_pass_as_names() {
        let path = RelativePath::new("reports/2026/q4.pdf").unwrap();
        assert_eq!(path.to_string(), "reports/2026/q4.pdf");
        assert_eq!(path.file_name().as_str(), "q4.pdf");
        assert_eq!(path.directories().iter().map(FileName::as_str).collect::<Vec<_>>(), ["reports", "2026"]);
        assert!(RelativePath::new("single.txt").unwrap().directories().is_empty());
        for (bad, why) in [
            ("", "empty component"),
            ("/etc/passwd", "empty component"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("../escape", "'.' or '..'"),
            ("a/../../b", "'.' or '..'"),
            ("a/./b", "'.' or '..'"),
            ("C:/windows", "drive prefix"),
            ("a\\b/c", "single component"),
            ("dir/.gshare-1-ab.part", "reserved prefix"),
            ("x/\u{1b}[2J", "control character"),
        ] {
            let error = RelativePath::new(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        let deep = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
        assert_eq!(RelativePath::new(&deep), Err(PathError::TooDeep(MAX_PATH_DEPTH + 1)));
        assert!(RelativePath::new(&vec!["d"; MAX_PATH_DEPTH].join("/")).is_ok());
        assert_eq!(RelativePath::from_bytes(&[b'a', b'/', 0xff]), Err(PathError::NotUtf8));
        assert!(matches!(RelativePath::from_bytes(&vec![b'a'; MAX_PATH_LEN + 1]), Err(PathError::TooLong(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_a_safe_relative_path_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(path) = RelativePath::from_bytes(&bytes) {
                // What parses is exactly its components joined, and none of them can step out.
                let text = path.to_string();
                proptest::prop_assert_eq!(text.as_bytes(), &bytes[..]);
                for component in path.directories().iter().chain([path.file_name()]) {
                    proptest::prop_assert!(FileName::new(component.as_str()).is_ok());
                    proptest::prop_assert!(component.as_str() != ".." && !component.as_str().contains('/'));
                }
            }
        }

        #[test]
        fn numbered_names_always_fit_and_stay_valid(stem in "[a-z ]{0,200}", extension in "[a-zé]{0,250}", n in 1u32..=10_000) {
            let text = format!("x{stem}.{extension}");
            if let Ok(name) = FileName::new(&text) {
                let numbered = name.numbered(n);
                proptest::prop_assert!(numbered.as_str().len() <= MAX_FILE_NAME_LEN);
                proptest::prop_assert!(FileName::new(numbered.as_str()).is_ok());
                let number = format!(" ({n})");
                proptest::prop_assert!(numbered.as_str().contains(&number));
            }
        }
    }

    #[test]
    fn a_long_extension_hangs_the_member() {
        // Regression: the stem emptied and the loop that cut it never ended.
        let name = FileName::new(&format!("a.{}", "x".repeat(253))).unwrap();
        for n in [1, 10, 10_000] {
            let numbered = name.numbered(n);
            assert!(numbered.as_str().len() <= MAX_FILE_NAME_LEN, "{}", numbered.as_str().len());
            assert!(numbered.as_str().ends_with(&format!(" ({n})")));
            assert!(FileName::new(numbered.as_str()).is_ok());
            assert_ne!(numbered, name);
        }
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
