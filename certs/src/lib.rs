//! gshare's identity layer: the server's certificate authority, the certificates it issues,
//! fingerprints, and the signatures on multicast datagrams.
//!
//! Every key is ECDSA P-256. The CA key signs certificates and the server's datagrams; the
//! private key of a member never leaves the member's machine. Nothing here touches the file
//! system: callers load and store PEM text, so the policy of where identity lives (and what to
//! do when a piece is missing) stays with the server and client.
//!
//! # Layout
//!
//! - [`authority`]: generating and loading the CA, issuing the server's TLS certificate.
//! - [`signing`]: signing datagrams with a PKCS#8 key and verifying them against a certificate.
//! - [`fingerprint`]: the SHA-256 fingerprint of a certificate.

pub mod authority;
pub mod signing;

pub use authority::{CertificateAuthority, IssuedCertificate, IssuedIdentity, MEMBER_NAME, SERVER_NAME};
pub use signing::{DatagramSigner, VerifyingKey};

use gshare_proto::Fingerprint;

/// Why a certificate or key could not be created, read or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// The bytes are not a certificate we can parse.
    #[error("not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    /// The bytes are not a PKCS#8 ECDSA P-256 private key.
    #[error("not a valid ECDSA P-256 private key: {0}")]
    BadKey(String),
    /// The key does not belong to the certificate it was stored with.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// A certificate signing request is malformed, badly signed, or for an unsupported key.
    #[error("invalid certificate signing request: {0}")]
    BadRequest(String),
    /// A certificate that should be a CA is not one.
    #[error("the certificate is not a CA certificate")]
    NotCa,
    /// A certificate was not issued by the CA it was stored beside.
    #[error("the certificate was not issued by this CA")]
    NotIssuedByCa,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// SHA-256 over a certificate's DER bytes: what members pin, and what `fingerprint` prints.
pub fn fingerprint(certificate_der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate_der);
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    Fingerprint(bytes)
}

/// Fills `N` bytes from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CertError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| CertError::Random)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            fingerprint(b"abc").to_string(),
            "SHA256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
