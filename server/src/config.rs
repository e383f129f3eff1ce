//! `server.toml`, read in two steps: [`ServerToml`] mirrors the file (unknown keys refused,
//! each value checked by its type as it is read), then [`Config`] is the validated whole, with
//! paths made absolute against the config file's directory and defaults filled in.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::users::{self, HashCost};
use gshare_common::{ConfigFileError, MulticastSettings, config_file};
use gshare_proto::{GroupName, ServerAddress};

/// Default TLS address: loopback, port 7443.
pub const DEFAULT_TLS_LISTEN: &str = "127.0.0.1:7443";
/// Default seconds between periodic announcements.
pub const DEFAULT_ANNOUNCE_INTERVAL_SECS: u64 = 10;
/// Default least milliseconds between announcements sent in answer to list requests.
pub const DEFAULT_LIST_REPLY_INTERVAL_MS: u64 = 250;
/// Default validity of member certificates, in days.
pub const DEFAULT_CERTIFICATE_DAYS: f64 = 365.0;
/// Days the server's own TLS certificate is valid.
pub const DEFAULT_SERVER_CERTIFICATE_DAYS: f64 = 825.0;
/// The server's certificate is reissued once it is this close to its expiry.
pub const DEFAULT_SERVER_RENEW_DAYS: f64 = 30.0;
/// Default most member sessions (authenticated TLS connections) open at once.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Default most connections not yet authenticated (TLS handshakes, requests not yet read,
/// enrollments) in progress at once, from everyone together.
pub const DEFAULT_MAX_STRANGERS: u32 = 64;
/// Default most connections not yet authenticated in progress at once from one IP address.
pub const DEFAULT_STRANGERS_PER_ADDRESS: u32 = 8;
/// Default most sessions open at once with one member certificate (one device needs one).
pub const DEFAULT_SESSIONS_PER_CERTIFICATE: u32 = 4;
/// Default multicast requests (list, join, leave) one sender address may make per second on
/// average; twice as many at once after a quiet spell.
pub const DEFAULT_REQUESTS_PER_SENDER_PER_SECOND: u32 = 10;
/// Default seconds one write to a member may take before the member is taken for stuck.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// Default most password checks (argon2id) running at once.
pub const DEFAULT_PASSWORD_CHECKS: u32 = 2;
/// Default seconds a TLS peer has to complete its handshake and first request.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default largest file `send` accepts, in bytes (1 TiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 40;
/// Default most file transfers streaming at once; other members wait their turn.
pub const DEFAULT_CONCURRENT_TRANSFERS: u32 = 32;
/// Default days an undelivered file is kept for members who have not received it.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Default attempts at a delivery whose data fails verification before it is failed for good.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerToml {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_users_file")]
    users_file: PathBuf,
    groups: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    tls: TlsToml,
    #[serde(default)]
    multicast: MulticastSettings,
    #[serde(default)]
    announce: AnnounceToml,
    #[serde(default)]
    passwords: PasswordsToml,
    #[serde(default)]
    certificates: CertificatesToml,
    #[serde(default)]
    limits: LimitsToml,
    #[serde(default)]
    delivery: DeliveryToml,
    #[serde(default)]
    metrics: MetricsToml,
}

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsToml {
    listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DeliveryToml {
    retention_days: Spanned<u32>,
    max_attempts: Spanned<u32>,
    swarm: bool,
}

impl Default for DeliveryToml {
    fn default() -> Self {
        Self {
            retention_days: Spanned::new(0..0, DEFAULT_RETENTION_DAYS),
            max_attempts: Spanned::new(0..0, DEFAULT_MAX_ATTEMPTS),
            swarm: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PasswordsToml {
    memory_kib: Spanned<u32>,
    iterations: Spanned<u32>,
    parallelism: Spanned<u32>,
}

impl Default for PasswordsToml {
    fn default() -> Self {
        Self {
            memory_kib: Spanned::new(0..0, users::DEFAULT_MEMORY_KIB),
            iterations: Spanned::new(0..0, users::DEFAULT_ITERATIONS),
            parallelism: Spanned::new(0..0, users::DEFAULT_PARALLELISM),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CertificatesToml {
    validity_days: Spanned<f64>,
    server_validity_days: Spanned<f64>,
    server_renew_days: Spanned<f64>,
}

impl Default for CertificatesToml {
    fn default() -> Self {
        Self {
            validity_days: Spanned::new(0..0, DEFAULT_CERTIFICATE_DAYS),
            server_validity_days: Spanned::new(0..0, DEFAULT_SERVER_CERTIFICATE_DAYS),
            server_renew_days: Spanned::new(0..0, DEFAULT_SERVER_RENEW_DAYS),
        }
    }
}

/// Days as a duration, if they are a sensible validity: at least a second, at most 10 years.
/// Fractions of a day are allowed, so that tests (and the curious) can watch renewal happen.
fn validity(days: f64) -> Option<Duration> {
    (days * 86_400.0 >= 1.0 && days <= 3650.0).then(|| Duration::from_secs_f64(days * 86_400.0))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsToml {
    max_connections: Spanned<u32>,
    max_strangers: Spanned<u32>,
    strangers_per_address: Spanned<u32>,
    sessions_per_certificate: Spanned<u32>,
    write_timeout_secs: Spanned<u64>,
    requests_per_sender_per_second: Spanned<u32>,
    password_checks: Spanned<u32>,
    handshake_timeout_secs: Spanned<u64>,
    max_file_bytes: Spanned<u64>,
    concurrent_transfers: Spanned<u32>,
}

impl Default for LimitsToml {
    fn default() -> Self {
        Self {
            max_connections: Spanned::new(0..0, DEFAULT_MAX_CONNECTIONS),
            max_strangers: Spanned::new(0..0, DEFAULT_MAX_STRANGERS),
            strangers_per_address: Spanned::new(0..0, DEFAULT_STRANGERS_PER_ADDRESS),
            sessions_per_certificate: Spanned::new(0..0, DEFAULT_SESSIONS_PER_CERTIFICATE),
            write_timeout_secs: Spanned::new(0..0, DEFAULT_WRITE_TIMEOUT_SECS),
            requests_per_sender_per_second: Spanned::new(0..0, DEFAULT_REQUESTS_PER_SENDER_PER_SECOND),
            password_checks: Spanned::new(0..0, DEFAULT_PASSWORD_CHECKS),
            handshake_timeout_secs: Spanned::new(0..0, DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            max_file_bytes: Spanned::new(0..0, DEFAULT_MAX_FILE_BYTES),
            concurrent_transfers: Spanned::new(0..0, DEFAULT_CONCURRENT_TRANSFERS),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

fn default_users_file() -> PathBuf {
    PathBuf::from("users.toml")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsToml {
    #[serde(default = "default_tls_listen")]
    listen: Spanned<SocketAddr>,
    #[serde(default)]
    advertise: Option<Spanned<String>>,
}

impl Default for TlsToml {
    fn default() -> Self {
        Self { listen: default_tls_listen(), advertise: None }
    }
}

fn default_tls_listen() -> Spanned<SocketAddr> {
    // The constant is a valid socket address; the fallback is never taken.
    Spanned::new(0..0, DEFAULT_TLS_LISTEN.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7443))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AnnounceToml {
    interval_secs: Spanned<u64>,
    list_reply_interval_ms: Spanned<u64>,
}

impl Default for AnnounceToml {
    fn default() -> Self {
        Self {
            interval_secs: Spanned::new(0..0, DEFAULT_ANNOUNCE_INTERVAL_SECS),
            list_reply_interval_ms: Spanned::new(0..0, DEFAULT_LIST_REPLY_INTERVAL_MS),
        }
    }
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file this was read from.
    pub path: PathBuf,
    /// Holds the CA, the server certificate, the database and the spool.
    pub state_dir: PathBuf,
    /// The user store.
    pub users_file: PathBuf,
    /// The server's groups, unique, in the order written.
    pub groups: Vec<GroupName>,
    /// Where the TLS listener binds.
    pub tls_listen: SocketAddr,
    /// The address announced to members (default: `tls_listen`).
    pub tls_advertise: ServerAddress,
    pub multicast: MulticastSettings,
    /// Time between periodic announcements.
    pub announce_interval: Duration,
    /// Least time between announcements sent in answer to list requests.
    pub list_reply_interval: Duration,
    /// Argon2id cost of new password hashes.
    pub password_cost: HashCost,
    /// Validity of member certificates.
    pub certificate_validity: Duration,
    /// Validity of the server's own TLS certificate.
    pub server_certificate_validity: Duration,
    /// How long before its expiry the server's certificate is reissued.
    pub server_renew_before: Duration,
    /// Most member sessions open at once; a member beyond it is refused and tries again later.
    pub max_connections: usize,
    /// Most connections not yet authenticated in progress at once; more are closed at once.
    pub max_strangers: usize,
    /// Most connections not yet authenticated in progress at once from one IP address.
    pub strangers_per_address: usize,
    /// Most sessions open at once with one member certificate.
    pub sessions_per_certificate: usize,
    /// Longest time one write to a member may take; a member that reads no faster is dropped.
    pub write_timeout: Duration,
    /// Multicast requests one sender address may make per second (twice as many at once).
    pub requests_per_sender_per_second: u32,
    /// Most password checks running at once.
    pub password_checks: usize,
    /// Time a TLS peer has to complete its handshake and send its first request.
    pub handshake_timeout: Duration,
    /// Largest file `send` accepts, in bytes.
    pub max_file_bytes: u64,
    /// Most transfers streaming data at once; each holds about half a MiB of buffers.
    pub concurrent_transfers: usize,
    /// How long a file waits for members who have not received it; then its deliveries expire
    /// and its spool entry is deleted.
    pub retention: Duration,
    /// Attempts at a delivery whose data fails verification before it is failed for good.
    pub max_attempts: u32,
    /// Whether members that can pass pieces on to each other get files in pieces (swarm
    /// delivery), or every member its own whole copy from the server.
    pub swarm: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let (raw, text) = config_file::read::<ServerToml>(path)?;
        Self::validate(path, &text, raw)
    }

    /// Validates the text of a config file; `path` locates relative paths and names the file in
    /// messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigFileError> {
        let raw = config_file::parse::<ServerToml>(path, text)?;
        Self::validate(path, text, raw)
    }

    fn validate(path: &Path, text: &str, raw: ServerToml) -> Result<Self, ConfigFileError> {
        let error =
            |span: std::ops::Range<usize>, message: String| ConfigFileError::at(path, text, Some(span), message);
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(base)
            .map_err(|e| ConfigFileError::whole_file(path, format!("cannot resolve the config directory: {e}")))?;

        let mut groups = Vec::new();
        let mut seen = BTreeSet::new();
        for name in raw.groups.get_ref() {
            let group = GroupName::new(name.get_ref())
                .map_err(|e| error(name.span(), format!("group name {:?} {e}", name.get_ref())))?;
            if !seen.insert(group.as_str().to_ascii_lowercase()) {
                return Err(error(name.span(), format!("group {group} is listed twice")));
            }
            groups.push(group);
        }
        if groups.is_empty() {
            return Err(error(raw.groups.span(), "at least one group is needed".into()));
        }

        let tls_listen = *raw.tls.listen.get_ref();
        let tls_advertise = match &raw.tls.advertise {
            Some(advertise) => {
                ServerAddress::new(advertise.get_ref()).map_err(|e| error(advertise.span(), e.to_string()))?
            }
            None if tls_listen.ip().is_unspecified() => {
                return Err(error(
                    raw.tls.listen.span(),
                    format!(
                        "{tls_listen} listens on every interface; set tls.advertise to the address members should use"
                    ),
                ));
            }
            // A SocketAddr always prints as a valid HOST:PORT.
            None => {
                ServerAddress::new(&tls_listen.to_string()).map_err(|e| error(raw.tls.listen.span(), e.to_string()))?
            }
        };

        let interval_secs = *raw.announce.interval_secs.get_ref();
        if !(1..=3600).contains(&interval_secs) {
            return Err(error(raw.announce.interval_secs.span(), "must be between 1 and 3600 seconds".into()));
        }
        let reply_ms = *raw.announce.list_reply_interval_ms.get_ref();
        if !(10..=60_000).contains(&reply_ms) {
            return Err(error(raw.announce.list_reply_interval_ms.span(), "must be between 10 and 60000 ms".into()));
        }

        let passwords = &raw.passwords;
        let minimums = [
            (&passwords.memory_kib, users::DEFAULT_MEMORY_KIB, 4 * 1024 * 1024),
            (&passwords.iterations, users::DEFAULT_ITERATIONS, 100),
            (&passwords.parallelism, users::DEFAULT_PARALLELISM, 64),
        ];
        for (value, min, max) in minimums {
            if !(min..=max).contains(value.get_ref()) {
                return Err(error(value.span(), format!("must be between {min} (the safe minimum) and {max}")));
            }
        }
        let password_cost = HashCost {
            memory_kib: *passwords.memory_kib.get_ref(),
            iterations: *passwords.iterations.get_ref(),
            parallelism: *passwords.parallelism.get_ref(),
        };
        let certificates = &raw.certificates;
        let in_range = |days: &Spanned<f64>| {
            validity(*days.get_ref())
                .ok_or_else(|| error(days.span(), "must be between 1 second (0.0000116) and 3650 days".into()))
        };
        let certificate_validity = in_range(&certificates.validity_days)?;
        let server_certificate_validity = in_range(&certificates.server_validity_days)?;
        let server_renew_before = in_range(&certificates.server_renew_days)?;
        if server_renew_before >= server_certificate_validity {
            return Err(error(
                certificates.server_renew_days.span(),
                "must be shorter than certificates.server_validity_days".into(),
            ));
        }
        let limits = &raw.limits;
        let bounded = |value: &Spanned<u32>, max: u32| {
            if (1..=max).contains(value.get_ref()) {
                Ok(*value.get_ref() as usize)
            } else {
                Err(error(value.span(), format!("must be between 1 and {max}")))
            }
        };
        let max_connections = bounded(&limits.max_connections, 100_000)?;
        let max_strangers = bounded(&limits.max_strangers, 100_000)?;
        let strangers_per_address = bounded(&limits.strangers_per_address, 100_000)?;
        let sessions_per_certificate = bounded(&limits.sessions_per_certificate, 1000)?;
        let requests_per_sender_per_second = bounded(&limits.requests_per_sender_per_second, 1_000_000)? as u32;
        let write_timeout = *limits.write_timeout_secs.get_ref();
        if !(1..=3600).contains(&write_timeout) {
            return Err(error(limits.write_timeout_secs.span(), "must be between 1 and 3600 seconds".into()));
        }
        let password_checks = bounded(&limits.password_checks, 64)?;
        let timeout = *limits.handshake_timeout_secs.get_ref();
        if !(1..=300).contains(&timeout) {
            return Err(error(limits.handshake_timeout_secs.span(), "must be between 1 and 300 seconds".into()));
        }

        let concurrent_transfers = bounded(&limits.concurrent_transfers, 10_000)?;
        let max_file_bytes = *limits.max_file_bytes.get_ref();
        if max_file_bytes == 0 {
            return Err(error(limits.max_file_bytes.span(), "must be at least 1".into()));
        }
        let retention_days = *raw.delivery.retention_days.get_ref();
        if !(1..=3650).contains(&retention_days) {
            return Err(error(raw.delivery.retention_days.span(), "must be between 1 and 3650 days".into()));
        }
        let max_attempts = *raw.delivery.max_attempts.get_ref();
        if !(1..=100).contains(&max_attempts) {
            return Err(error(raw.delivery.max_attempts.span(), "must be between 1 and 100".into()));
        }

        Ok(Config {
            path: path.to_owned(),
            state_dir: base.join(raw.state_dir),
            users_file: base.join(raw.users_file),
            groups,
            tls_listen,
            tls_advertise,
            multicast: raw.multicast,
            announce_interval: Duration::from_secs(interval_secs),
            list_reply_interval: Duration::from_millis(reply_ms),
            password_cost,
            certificate_validity,
            server_certificate_validity,
            server_renew_before,
            max_connections,
            max_strangers,
            strangers_per_address,
            sessions_per_certificate,
            write_timeout: Duration::from_secs(write_timeout),
            requests_per_sender_per_second,
            password_checks,
            handshake_timeout: Duration::from_secs(timeout),
            max_file_bytes,
            concurrent_transfers,
            retention: Duration::from_secs(u64::from(retention_days) * 86_400),
            swarm: raw.delivery.swarm,
            metrics_listen: raw.metrics.listen,
            max_attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigFileError> {
        Config::parse(Path::new("/etc/gshare/server.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults_and_relative_paths() {
        let config = parse("groups = [\"Developers\", \"Designers\"]\n").unwrap();
        assert_eq!(config.state_dir, Path::new("/etc/gshare/state"));
        assert_eq!(config.users_file, Path::new("/etc/gshare/users.toml"));
        assert_eq!(config.tls_listen.to_string(), DEFAULT_TLS_LISTEN);
        assert_eq!(config.tls_advertise.as_str(), DEFAULT_TLS_LISTEN);
        assert_eq!(config.multicast, MulticastSettings::default());
        assert_eq!(config.announce_interval, Duration::from_secs(DEFAULT_ANNOUNCE_INTERVAL_SECS));
        let absolute = parse("state_dir = \"/var/lib/gshare\"\ngroups = [\"A\"]\n").unwrap();
        assert_eq!(absolute.state_dir, Path::new("/var/lib/gshare"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/server.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.groups.iter().map(GroupName::as_str).collect::<Vec<_>>(), ["Developers", "Designers"]);
        assert!(config.multicast.interface.is_loopback(), "the example must stay on loopback");
    }

    #[test]
    fn mistakes_are_reported_with_line_and_key() {
        let cases = [
            ("groups = [\"A\"]\nfoo = 1\n", 2, "foo", "unknown field"),
            ("groups = [\"A\"]\n[tls]\nlisten = \"127.0.0.1\"\n", 3, "tls.listen", "socket address"),
            ("groups = [\"A\"]\n[tls]\nadvertise = \"host\"\n", 3, "tls.advertise", "HOST:PORT"),
            ("groups = [\"A\"]\n[tls]\nlisten = \"0.0.0.0:7443\"\n", 3, "tls.listen", "set tls.advertise"),
            ("groups = [\"A\"]\n[multicast]\ngroup = \"10.0.0.1\"\n", 3, "multicast.group", "not a multicast address"),
            ("groups = [\"A\"]\n[multicast]\nport = 0\n", 3, "multicast.port", "nonzero"),
            ("groups = [\"A\"]\n[multicast]\nttl = 300\n", 3, "multicast.ttl", "u8"),
            ("groups = [\"A\"]\n[multicast]\nmax_age_secs = 0\n", 3, "multicast.max_age_secs", "between 1"),
            ("groups = [\"A\"]\n[announce]\ninterval_secs = 0\n", 3, "announce.interval_secs", "between 1"),
            ("groups = [\"Dev\", \"../x\"]\n", 1, "groups", "\"../x\""),
            ("groups = [\"Dev\", \"dev\"]\n", 1, "groups", "listed twice"),
            ("groups = []\n", 1, "groups", "at least one group"),
            ("groups = [\"A\"]\n[passwords]\nmemory_kib = 1024\n", 3, "passwords.memory_kib", "safe minimum"),
            ("groups = [\"A\"]\n[certificates]\nvalidity_days = 0\n", 3, "certificates.validity_days", "between 1"),
            ("groups = [\"A\"]\n[limits]\npassword_checks = 0\n", 3, "limits.password_checks", "between 1"),
            ("groups = [\"A\"]\n[limits]\nconcurrent_transfers = 0\n", 3, "limits.concurrent_transfers", "between 1"),
            ("groups = [\"A\"]\n[delivery]\nmax_attempts = 0\n", 3, "delivery.max_attempts", "between 1"),
        ];
        for (text, line, key, fragment) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, Some(line), "{text:?}: {error}");
            assert_eq!(error.key.as_deref(), Some(key), "{text:?}: {error}");
            assert!(error.to_string().contains(fragment), "{text:?}: {error}");
        }
        let missing_groups = parse("state_dir = \"s\"\n").unwrap_err();
        assert!(missing_groups.message.contains("groups"), "{missing_groups}");
    }
}
