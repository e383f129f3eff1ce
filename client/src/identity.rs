//! The member's enrolled identity in the client's home: `client.key` (the private key, mode
//! 0600, generated here and never sent anywhere), `client.crt` (issued by the server's CA) and
//! `ca.crt` (the pinned CA), all PEM.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use gshare_certs::{CertError, DatagramSigner};
use gshare_common::files::atomic_write;
use gshare_proto::Fingerprint;

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
}

/// The member's key, certificate and pinned CA.
#[derive(Debug)]
pub struct Enrollment {
    pub key_pem: String,
    pub certificate_der: Vec<u8>,
    pub ca_der: Vec<u8>,
}

impl Enrollment {
    /// Reads the identity from `home`.
    pub fn load(home: &Path) -> Result<Self, IdentityError> {
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
        let write = |name: &str, contents: &[u8], mode: u32| {
            let path = home.join(name);
            atomic_write(&path, contents, mode).map_err(|e| IdentityError::Io(path, e))
        };
        // The key file may exist from an earlier enrollment with looser permissions; a key is
        // always 0600.
        let key_path = home.join(KEY_FILE);
        let _ = std::fs::remove_file(&key_path);
        write(KEY_FILE, self.key_pem.as_bytes(), 0o600)?;
        write(CERTIFICATE_FILE, pem_certificate(&self.certificate_der).as_bytes(), 0o644)?;
        write(CA_FILE, pem_certificate(&self.ca_der).as_bytes(), 0o644)
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
