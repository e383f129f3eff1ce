//! The member's enrolled identity in the client's home: `client.key` (the private key, mode
//! 0600, generated here and never sent anywhere), `client.crt` (issued by the server's CA) and
//! `ca.crt` (the pinned CA), all PEM.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use gshare_certs::{CertError, DatagramSigner};
use gshare_common::files::{REPLACING_DIR, finish_replacing, replace_together};
use gshare_proto::Fingerprint;
use time::OffsetDateTime;

pub const KEY_FILE: &str = "client.key";
pub const CERTIFICATE_FILE: &str = "client.crt";
pub const CA_FILE: &str = "ca.crt";

/// Why the enrolled identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not enrolled yet ({} is missing): run `gshare-client enroll --user NAME` first", .0.display())]
    NotEnrolled(PathBuf),
    #[error("{}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("this member's certificate expired on {expired}; enroll again: gshare-client enroll --user {user}")]
    Expired { expired: String, user: String },
}

/// A time as a person reads it: `2027-12-01 09:30 UTC`.
pub fn format_time(when: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    when.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_else(|_| when.to_string())
}

/// The member's key, certificate and pinned CA.
#[derive(Debug)]
pub struct Enrollment {
    pub key_pem: String,
    pub certificate_der: Vec<u8>,
    pub ca_der: Vec<u8>,
}

impl Enrollment {
    /// Reads the identity from `home`, first completing (or undoing) a replacement of key and
    /// certificate that a crash interrupted, so the pair read always belongs together.
    pub fn load(home: &Path) -> Result<Self, IdentityError> {
        if home.join(REPLACING_DIR).exists() {
            finish_replacing(home).map_err(|e| IdentityError::Io(home.join(REPLACING_DIR), e))?;
        }
        let read = |name: &str| {
            let path = home.join(name);
            std::fs::read_to_string(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => IdentityError::NotEnrolled(path.clone()),
                _ => IdentityError::Io(path.clone(), e),
            })
        };
        let der = |name: &str, pem: String| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map(|der| der.to_vec())
                .map_err(|e| IdentityError::Invalid { path: home.join(name), problem: e.to_string() })
        };
        let key_pem = read(KEY_FILE)?;
        let certificate_der = der(CERTIFICATE_FILE, read(CERTIFICATE_FILE)?)?;
        let ca_der = der(CA_FILE, read(CA_FILE)?)?;
        gshare_certs::authority::check_member_certificate(&ca_der, &certificate_der, &key_pem)
            .map_err(|e| IdentityError::Invalid { path: home.join(CERTIFICATE_FILE), problem: e.to_string() })?;
        Ok(Self { key_pem, certificate_der, ca_der })
    }

    /// Writes the identity to `home` (created mode 0700 if missing), each file atomically.
    pub fn save(&self, home: &Path) -> Result<(), IdentityError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| IdentityError::Io(home.to_owned(), e))?;
        // All three as one: a crash leaves the old identity or the new one, never a key beside
        // the certificate of another key. Each file is new, so a key is always 0600.
        let (certificate, ca) = (pem_certificate(&self.certificate_der), pem_certificate(&self.ca_der));
        replace_together(
            home,
            &[
                (KEY_FILE, self.key_pem.as_bytes(), 0o600),
                (CERTIFICATE_FILE, certificate.as_bytes(), 0o644),
                (CA_FILE, ca.as_bytes(), 0o644),
            ],
        )
        .map_err(|e| IdentityError::Io(home.to_owned(), e))
    }

    /// When the member's certificate became valid, and when it expires.
    pub fn validity(&self) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
        gshare_certs::authority::validity(&self.certificate_der)
    }

    /// The user the certificate was issued to.
    pub fn user(&self) -> Result<String, CertError> {
        gshare_certs::authority::common_name(&self.certificate_der)
    }

    /// An error naming the date and what to do, if the certificate has expired at `now`.
    pub fn check_not_expired(&self, now: OffsetDateTime) -> Result<(), IdentityError> {
        let Ok((_, expires)) = self.validity() else { return Ok(()) };
        if expires > now {
            return Ok(());
        }
        let user = self.user().unwrap_or_else(|_| "NAME".into());
        Err(IdentityError::Expired { expired: format_time(expires), user })
    }

    /// When a listening member renews its certificate: once `share` of its validity has passed.
    pub fn renewal_due(&self, share: f64) -> Option<OffsetDateTime> {
        let (from, until) = self.validity().ok()?;
        Some(from + (until - from) * share)
    }

    /// Fingerprint of the member's certificate, which join requests name.
    pub fn certificate_fingerprint(&self) -> Fingerprint {
        gshare_certs::fingerprint(&self.certificate_der)
    }

    pub fn ca_fingerprint(&self) -> Fingerprint {
        gshare_certs::fingerprint(&self.ca_der)
    }

    /// The member's key, for signing datagrams.
    pub fn signer(&self) -> Result<DatagramSigner, CertError> {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| CertError::BadKey(e.to_string()))?;
        DatagramSigner::from_pkcs8_der(der.secret_pkcs8_der())
    }
}

fn pem_certificate(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}
