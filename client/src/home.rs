//! The client's home directory and its `client.toml`.
//!
//! The home is `--home`, else `$GSHARE_HOME`, else `$XDG_CONFIG_HOME/gshare`, else
//! `~/.config/gshare`. It holds `client.toml`: the `[multicast]` table (same keys and defaults
//! as the server's) and what enrollment learned, the server address and the pinned CA
//! fingerprint. A missing `client.toml` means all defaults and nothing pinned.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use gshare_common::{ConfigFileError, MulticastSettings, config_file};
use gshare_proto::{Fingerprint, ServerAddress};

/// Name of the settings file inside the home directory.
pub const CLIENT_TOML: &str = "client.toml";

/// Why the home directory could not be found.
#[derive(Debug, thiserror::Error)]
#[error("cannot find a home for gshare: set --home, GSHARE_HOME, XDG_CONFIG_HOME or HOME")]
pub struct NoHome;

/// Picks the home directory from the flag and the environment, in the documented order.
pub fn resolve_home(flag: Option<&Path>) -> Result<PathBuf, NoHome> {
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    flag.map(Path::to_owned)
        .or_else(|| from_env("GSHARE_HOME"))
        .or_else(|| from_env("XDG_CONFIG_HOME").map(|dir| dir.join("gshare")))
        .or_else(|| from_env("HOME").map(|dir| dir.join(".config").join("gshare")))
        .ok_or(NoHome)
}

/// `client.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientToml {
    #[serde(default)]
    multicast: MulticastSettings,
    #[serde(default)]
    server: Option<ServerAddressToml>,
    #[serde(default)]
    ca_fingerprint: Option<FingerprintToml>,
    #[serde(default)]
    answer_timeout_secs: Option<AnswerTimeoutToml>,
    #[serde(default)]
    renew_at: Option<RenewAtToml>,
    #[serde(default)]
    on_receive: Option<PathBuf>,
    #[serde(default)]
    peer: PeerToml,
}

/// Share of the certificate's validity after which a listening member renews it.
pub const DEFAULT_RENEW_AT: f64 = 2.0 / 3.0;

#[derive(Debug, Deserialize)]
#[serde(try_from = "f64")]
struct RenewAtToml(f64);

impl TryFrom<f64> for RenewAtToml {
    type Error = String;
    fn try_from(share: f64) -> Result<Self, Self::Error> {
        if (0.1..=0.95).contains(&share) {
            Ok(Self(share))
        } else {
            Err("must be a share of the validity between 0.1 and 0.95".into())
        }
    }
}

/// `[peer]`: how this member serves pieces of files to other members.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerToml {
    listen: Option<std::net::SocketAddr>,
    serve: Option<bool>,
}

/// Default port a listening member accepts other members' connections on, on its multicast
/// interface's address (the address it has on the LAN its group is on).
pub const DEFAULT_PEER_PORT: u16 = 7444;

/// How this member takes part in swarm delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// Where to accept connections from other members (`[peer] listen`; default: the
    /// multicast interface's address, port [`DEFAULT_PEER_PORT`]); port 0 takes any free port.
    pub listen: std::net::SocketAddr,
    /// Whether to pass pieces on to other members at all (`[peer] serve`, default true).
    pub serve: bool,
}

/// Default seconds the client waits for the server over TLS (connecting, or an answer).
pub const DEFAULT_ANSWER_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Deserialize)]
#[serde(try_from = "u64")]
struct AnswerTimeoutToml(u64);

impl TryFrom<u64> for AnswerTimeoutToml {
    type Error = String;
    fn try_from(secs: u64) -> Result<Self, Self::Error> {
        if (1..=3600).contains(&secs) { Ok(Self(secs)) } else { Err("must be between 1 and 3600 seconds".into()) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct ServerAddressToml(ServerAddress);

impl TryFrom<String> for ServerAddressToml {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        ServerAddress::new(&text).map(Self).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct FingerprintToml(Fingerprint);

impl TryFrom<String> for FingerprintToml {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse().map(Self).map_err(|e: gshare_proto::fingerprint::FingerprintError| e.to_string())
    }
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub home: PathBuf,
    pub multicast: MulticastSettings,
    /// The server address learned at enrollment.
    pub server: Option<ServerAddress>,
    /// The CA fingerprint pinned at enrollment; announcements from any other CA are ignored.
    pub ca_fingerprint: Option<Fingerprint>,
    /// Longest wait for the server over TLS: to connect, and for each answer that is due.
    pub answer_timeout: std::time::Duration,
    /// Share of its certificate's validity after which a listening member renews it.
    pub renew_at: f64,
    /// A program `listen` runs after each received file (see the `hook` module).
    pub on_receive: Option<PathBuf>,
    pub peer: PeerSettings,
}

impl ClientSettings {
    /// Reads `client.toml` from `home`; a missing file gives the defaults.
    pub fn load(home: &Path) -> Result<Self, ConfigFileError> {
        let path = home.join(CLIENT_TOML);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(home, &text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::from_raw(home, ClientToml::default()))
            }
            Err(error) => Err(ConfigFileError::whole_file(&path, format!("cannot read the file: {error}"))),
        }
    }

    /// Parses the text of `client.toml` for the member home `home`.
    pub fn parse(home: &Path, text: &str) -> Result<Self, ConfigFileError> {
        let raw = config_file::parse::<ClientToml>(&home.join(CLIENT_TOML), text)?;
        Ok(Self::from_raw(home, raw))
    }

    fn from_raw(home: &Path, raw: ClientToml) -> Self {
        let peer = PeerSettings {
            listen: raw.peer.listen.unwrap_or(std::net::SocketAddr::from((raw.multicast.interface, DEFAULT_PEER_PORT))),
            serve: raw.peer.serve.unwrap_or(true),
        };
        Self {
            home: home.to_owned(),
            multicast: raw.multicast,
            server: raw.server.map(|s| s.0),
            ca_fingerprint: raw.ca_fingerprint.map(|f| f.0),
            answer_timeout: std::time::Duration::from_secs(
                raw.answer_timeout_secs.map_or(DEFAULT_ANSWER_TIMEOUT_SECS, |secs| secs.0),
            ),
            renew_at: raw.renew_at.map_or(DEFAULT_RENEW_AT, |share| share.0),
            on_receive: raw.on_receive,
            peer,
        }
    }
}

/// Writes what enrollment learned (server address, CA fingerprint) into `client.toml`, keeping
/// everything else in the file as it was.
pub fn record_enrollment(home: &Path, server: &ServerAddress, fingerprint: Fingerprint) -> Result<(), ConfigFileError> {
    let path = home.join(CLIENT_TOML);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(ConfigFileError::whole_file(&path, format!("cannot read the file: {error}"))),
    };
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ConfigFileError::at(&path, &text, e.span(), e.message().to_owned()))?;
    document["server"] = toml_edit::value(server.as_str());
    document["ca_fingerprint"] = toml_edit::value(fingerprint.to_string());
    gshare_common::files::atomic_write(&path, document.to_string().as_bytes(), 0o644)
        .map_err(|e| ConfigFileError::whole_file(&path, format!("cannot write the file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_means_defaults() {
        let home = tempfile::tempdir().unwrap();
        let settings = ClientSettings::load(home.path()).unwrap();
        assert_eq!(settings.multicast, MulticastSettings::default());
        assert!(settings.ca_fingerprint.is_none() && settings.server.is_none());
        // Other members are accepted on the multicast interface's address: loopback by default.
        assert_eq!(settings.peer, PeerSettings { listen: "127.0.0.1:7444".parse().unwrap(), serve: true });
    }

    #[test]
    fn the_peer_table_follows_the_interface_unless_given() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join(CLIENT_TOML),
            "[multicast]
interface = \"10.1.2.3\"
",
        )
        .unwrap();
        assert_eq!(ClientSettings::load(home.path()).unwrap().peer.listen, "10.1.2.3:7444".parse().unwrap());
        std::fs::write(
            home.path().join(CLIENT_TOML),
            "[peer]
listen = \"0.0.0.0:9444\"
serve = false
",
        )
        .unwrap();
        let peer = ClientSettings::load(home.path()).unwrap().peer;
        assert_eq!(peer, PeerSettings { listen: "0.0.0.0:9444".parse().unwrap(), serve: false });
        std::fs::write(
            home.path().join(CLIENT_TOML),
            "[peer]
listen = \"nowhere\"
",
        )
        .unwrap();
        let error = ClientSettings::load(home.path()).unwrap_err();
        assert_eq!(error.line, Some(2), "{error}");
    }

    #[test]
    fn reads_learned_values_and_refuses_bad_ones_with_their_line() {
        let home = tempfile::tempdir().unwrap();
        let fingerprint = format!("SHA256:{}", "ab".repeat(32));
        let text =
            format!("server = \"127.0.0.1:7443\"\nca_fingerprint = \"{fingerprint}\"\n[multicast]\nport = 9000\n");
        std::fs::write(home.path().join(CLIENT_TOML), text).unwrap();
        let settings = ClientSettings::load(home.path()).unwrap();
        assert_eq!(settings.ca_fingerprint.unwrap().to_string(), fingerprint);
        assert_eq!(settings.multicast.port.get(), 9000);

        std::fs::write(home.path().join(CLIENT_TOML), "ca_fingerprint = \"SHA256:abc\"\n").unwrap();
        let error = ClientSettings::load(home.path()).unwrap_err();
        assert_eq!((error.line, error.key.as_deref()), (Some(1), Some("ca_fingerprint")), "{error}");
    }

    #[test]
    fn enrollment_is_recorded_without_losing_comments() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(CLIENT_TOML), "# mine\n[multicast]\nport = 9000 # my port\n").unwrap();
        let fingerprint = Fingerprint([7; 32]);
        record_enrollment(home.path(), &ServerAddress::new("10.0.0.1:7443").unwrap(), fingerprint).unwrap();
        let text = std::fs::read_to_string(home.path().join(CLIENT_TOML)).unwrap();
        assert!(text.contains("# mine") && text.contains("# my port"), "{text}");
        let settings = ClientSettings::load(home.path()).unwrap();
        assert_eq!(settings.ca_fingerprint, Some(fingerprint));
        assert_eq!(settings.server.unwrap().as_str(), "10.0.0.1:7443");
        assert_eq!(settings.multicast.port.get(), 9000);
    }

    #[test]
    fn home_resolution_prefers_the_flag() {
        assert_eq!(resolve_home(Some(Path::new("/x"))).unwrap(), Path::new("/x"));
    }
}
