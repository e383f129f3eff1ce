//! The server's identity on disk: `<state_dir>/identity/` holds `ca.crt`, `ca.key`,
//! `server.crt` and `server.key` (keys mode 0600, the directory mode 0700).
//!
//! On first start the four files are written into a staging directory, synced, and the
//! directory is renamed into place, so a crash leaves either a whole identity or none. Once an
//! identity exists it is only ever read: a missing or corrupt piece is an error that says what
//! is wrong, never a reason to make a new CA, because a new CA would silently cut off every
//! enrolled member.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::time::Duration;

use time::OffsetDateTime;

use gshare_certs::{CertificateAuthority, IssuedIdentity};

const IDENTITY_DIR: &str = "identity";
const STAGING_PREFIX: &str = ".identity-staging-";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";

/// Why the identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or directory could not be read or written.
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An identity exists but lacks some files; restore them from a backup.
    #[error(
        "{}: the identity is incomplete, missing {}. The CA is never regenerated behind an existing one, \
         since every member would have to enroll again; restore the missing files from a backup, or move \
         the directory away to start over with a new CA",
        dir.display(), missing.join(", ")
    )]
    Incomplete { dir: PathBuf, missing: Vec<&'static str> },
    /// A file of the identity does not hold what it should.
    #[error("{}: {problem}; restore it from a backup", path.display())]
    Corrupt { path: PathBuf, problem: gshare_certs::CertError },
    /// Certificate generation failed.
    #[error("cannot create the server identity")]
    Generate(#[from] gshare_certs::CertError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_owned(), source }
}

/// The CA and the server's own TLS certificate.
#[derive(Debug)]
pub struct ServerIdentity {
    pub ca: CertificateAuthority,
    pub server: IssuedIdentity,
    /// True when this call created the identity.
    pub created: bool,
}

impl ServerIdentity {
    /// Loads the identity from `state_dir`, creating state directory and identity on first use.
    /// `hosts` are the names and addresses the server certificate is issued for.
    pub fn load_or_create(state_dir: &Path, hosts: &[String], validity: Duration) -> Result<Self, IdentityError> {
        DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io_error(state_dir))?;
        let dir = state_dir.join(IDENTITY_DIR);
        if dir.exists() {
            // A reissue of the server certificate that a crash interrupted is completed (or
            // undone) first, so the pair read below always belongs together.
            gshare_common::files::finish_replacing(&dir).map_err(io_error(&dir))?;
            return Self::load(&dir);
        }
        remove_stale_staging(state_dir)?;
        let ca = CertificateAuthority::generate("server", OffsetDateTime::now_utc())?;
        let server = ca.issue_server_identity(hosts, validity, OffsetDateTime::now_utc())?;
        let staging = state_dir.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        DirBuilder::new().mode(0o700).create(&staging).map_err(io_error(&staging))?;
        write_file(&staging.join(CA_CERT), ca.certificate_pem(), 0o644)?;
        write_file(&staging.join(CA_KEY), ca.key_pem(), 0o600)?;
        write_file(&staging.join(SERVER_CERT), &server.certificate_pem, 0o644)?;
        write_file(&staging.join(SERVER_KEY), &server.key_pem, 0o600)?;
        sync_dir(&staging)?;
        fs::rename(&staging, &dir).map_err(io_error(&dir))?;
        sync_dir(state_dir)?;
        Ok(Self { ca, server, created: true })
    }

    fn load(dir: &Path) -> Result<Self, IdentityError> {
        let missing: Vec<&'static str> =
            [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY].into_iter().filter(|name| !dir.join(name).exists()).collect();
        if !missing.is_empty() {
            return Err(IdentityError::Incomplete { dir: dir.to_owned(), missing });
        }
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(io_error(&path))
        };
        let ca_path = dir.join(CA_CERT);
        let ca = CertificateAuthority::from_pem(&read(CA_CERT)?, &read(CA_KEY)?)
            .map_err(|problem| IdentityError::Corrupt { path: ca_path, problem })?;
        let server = IssuedIdentity { certificate_pem: read(SERVER_CERT)?, key_pem: read(SERVER_KEY)? };
        ca.check_issued_identity(&server)
            .map_err(|problem| IdentityError::Corrupt { path: dir.join(SERVER_CERT), problem })?;
        crate::private::tighten(dir, crate::private::DIRECTORY_MODE).map_err(io_error(dir))?;
        for name in [CA_KEY, SERVER_KEY] {
            let path = dir.join(name);
            crate::private::tighten(&path, crate::private::FILE_MODE).map_err(io_error(&path))?;
        }
        Ok(Self { ca, server, created: false })
    }
}

/// A server certificate reissued from the same CA, with a new key.
#[derive(Debug)]
pub struct Reissued {
    pub identity: IssuedIdentity,
    pub expires: OffsetDateTime,
}

/// When the server certificate in `identity` expires.
pub fn server_certificate_expiry(identity: &IssuedIdentity) -> Result<OffsetDateTime, gshare_certs::CertError> {
    let der = gshare_certs::authority::pem_certificate_der(&identity.certificate_pem)?;
    Ok(gshare_certs::authority::validity(&der)?.1)
}

/// Reissues the server certificate if `current` expires within `renew_before` of `now`: a new
/// key and certificate from the same CA, valid for `validity`, written into `state_dir`'s
/// identity in one step (a crash leaves the old pair or the new one). Members notice nothing:
/// they trust the CA, not the certificate. Blocking.
pub fn reissue_if_due(
    ca: &CertificateAuthority,
    current: &IssuedIdentity,
    state_dir: &Path,
    hosts: &[String],
    (validity, renew_before): (Duration, Duration),
    now: OffsetDateTime,
) -> Result<Option<Reissued>, IdentityError> {
    let dir = state_dir.join(IDENTITY_DIR);
    let expires = server_certificate_expiry(current)
        .map_err(|problem| IdentityError::Corrupt { path: dir.join(SERVER_CERT), problem })?;
    if expires - now > renew_before {
        return Ok(None);
    }
    let identity = ca.issue_server_identity(hosts, validity, now)?;
    gshare_common::files::replace_together(
        &dir,
        &[(SERVER_KEY, identity.key_pem.as_bytes(), 0o600), (SERVER_CERT, identity.certificate_pem.as_bytes(), 0o644)],
    )
    .map_err(io_error(&dir))?;
    let expires = server_certificate_expiry(&identity)
        .map_err(|problem| IdentityError::Corrupt { path: dir.join(SERVER_CERT), problem })?;
    Ok(Some(Reissued { identity, expires }))
}

/// Removes staging directories left by a first start that crashed before its rename. They were
/// never in use, so nothing is lost.
fn remove_stale_staging(state_dir: &Path) -> Result<(), IdentityError> {
    for entry in fs::read_dir(state_dir).map_err(io_error(state_dir))? {
        let entry = entry.map_err(io_error(state_dir))?;
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            fs::remove_dir_all(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes()).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gshare_certs::authority::SERVER_VALIDITY;
    use std::os::unix::fs::PermissionsExt;

    fn hosts() -> Vec<String> {
        vec!["127.0.0.1".into()]
    }

    #[test]
    fn the_server_certificate_is_reissued_only_within_its_renewal_window() {
        let state = tempfile::tempdir().unwrap();
        let validity = Duration::from_secs(1000);
        let first = ServerIdentity::load_or_create(state.path(), &hosts(), validity).unwrap();
        let now = OffsetDateTime::now_utc();
        let window = (validity, Duration::from_secs(300));
        let early = reissue_if_due(&first.ca, &first.server, state.path(), &hosts(), window, now).unwrap();
        assert!(early.is_none(), "reissued long before its expiry");
        let late = now + time::Duration::seconds(800);
        let reissued = reissue_if_due(&first.ca, &first.server, state.path(), &hosts(), window, late).unwrap().unwrap();
        assert_ne!(reissued.identity.certificate_pem, first.server.certificate_pem);
        assert!(reissued.expires > late);
        // The next start reads the new pair, from the same CA.
        let again = ServerIdentity::load_or_create(state.path(), &hosts(), validity).unwrap();
        assert_eq!(again.server.certificate_pem, reissued.identity.certificate_pem);
        assert_eq!(again.ca.fingerprint(), first.ca.fingerprint());
    }

    #[test]
    fn created_once_then_reused_with_private_keys_0600() {
        let state = tempfile::tempdir().unwrap();
        let first = ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap();
        assert!(first.created);
        let second = ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap();
        assert!(!second.created);
        assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
        let dir = state.path().join(IDENTITY_DIR);
        for (name, mode) in [(CA_KEY, 0o600), (SERVER_KEY, 0o600), (CA_CERT, 0o644)] {
            assert_eq!(fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777, mode, "{name}");
        }
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_missing_piece_is_an_error_not_a_new_ca() {
        let state = tempfile::tempdir().unwrap();
        let original =
            ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap().ca.fingerprint();
        let dir = state.path().join(IDENTITY_DIR);
        fs::remove_file(dir.join(SERVER_KEY)).unwrap();
        let error = ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap_err();
        assert!(matches!(&error, IdentityError::Incomplete { missing, .. } if missing == &[SERVER_KEY]), "{error}");
        assert!(error.to_string().contains("server.key"), "{error}");
        let ca_pem = fs::read_to_string(dir.join(CA_CERT)).unwrap();
        assert_eq!(
            gshare_certs::fingerprint(&gshare_certs::authority::pem_certificate_der(&ca_pem).unwrap()),
            original
        );
    }

    #[test]
    fn a_corrupt_piece_is_an_error_naming_the_file() {
        let state = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap();
        let dir = state.path().join(IDENTITY_DIR);
        fs::write(dir.join(CA_KEY), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let error = ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap_err();
        assert!(error.to_string().contains("ca.crt") && error.to_string().contains("key"), "{error}");

        let other = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(other.path(), &hosts(), SERVER_VALIDITY).unwrap();
        let state = tempfile::tempdir().unwrap();
        ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap();
        let foreign = fs::read(other.path().join(IDENTITY_DIR).join(SERVER_CERT)).unwrap();
        fs::write(state.path().join(IDENTITY_DIR).join(SERVER_CERT), foreign).unwrap();
        let error = ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap_err();
        assert!(error.to_string().contains("server.crt"), "{error}");
    }

    #[test]
    fn leftovers_of_an_interrupted_first_start_are_cleared() {
        let state = tempfile::tempdir().unwrap();
        let leftover = state.path().join(format!("{STAGING_PREFIX}999"));
        fs::create_dir(&leftover).unwrap();
        fs::write(leftover.join(CA_KEY), "half").unwrap();
        assert!(ServerIdentity::load_or_create(state.path(), &hosts(), SERVER_VALIDITY).unwrap().created);
        assert!(!leftover.exists());
    }
}
