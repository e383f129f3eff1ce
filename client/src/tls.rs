//! The client's TLS configuration: TLS 1.3 only, ring as the one crypto provider, ALPN
//! `gshare/3`, and the server verified against one CA that this member pinned by fingerprint.
//!
//! [`PinnedCaVerifier`] takes the CA certificate from the end of the chain the server sends,
//! refuses it unless its SHA-256 is the expected fingerprint (when one is expected), and then
//! verifies the server certificate against that CA alone, for the name `gshare-server`, with
//! the usual webpki checks (signature, validity, server-auth usage). Without an expected
//! fingerprint it still checks the chain is consistent and records which CA was presented, so
//! a person can be asked to confirm it before anything is sent.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use gshare_proto::Fingerprint;

/// Verifies the server against the CA it presents, pinned by fingerprint.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    expected: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
    presented: Mutex<Option<Vec<u8>>>,
}

impl PinnedCaVerifier {
    pub fn new(expected: Option<Fingerprint>) -> Arc<Self> {
        Arc::new(Self { expected, provider: provider(), presented: Mutex::new(None) })
    }

    /// The CA certificate (DER) the server presented in the last handshake, if any.
    pub fn presented_ca(&self) -> Option<Vec<u8>> {
        self.presented.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .last()
            .ok_or_else(|| rustls::Error::General("the server sent no CA certificate with its own".into()))?;
        *self.presented.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(ca.to_vec());
        let fingerprint = gshare_certs::fingerprint(ca);
        if self.expected.is_some_and(|expected| expected != fingerprint) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| rustls::Error::General(format!("the presented CA is unusable: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration for enrollment: no client certificate, the server checked by `verifier`.
pub fn enrollment_config(verifier: Arc<PinnedCaVerifier>) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration for member sessions: the member's certificate, the server checked
/// against the pinned CA.
pub fn session_config(
    verifier: Arc<PinnedCaVerifier>,
    certificate_der: &[u8],
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(certificate_der.to_vec())], key)?;
    config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The name every gshare server certificate is issued for.
pub fn server_name() -> ServerName<'static> {
    // SERVER_NAME is a valid DNS name; the fallback is never taken.
    ServerName::try_from(gshare_certs::SERVER_NAME)
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The name every member certificate is issued for, as a TLS server name.
pub fn member_name() -> ServerName<'static> {
    // MEMBER_NAME is a valid DNS name; the fallback is never taken.
    ServerName::try_from(gshare_certs::MEMBER_NAME)
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

fn member_roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| rustls::Error::General(e.to_string()))?;
    Ok(Arc::new(roots))
}

fn member_key(key_pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, rustls::Error> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| rustls::Error::General(e.to_string()))
}

/// A client configuration for connecting to another member: this member's certificate, the
/// other member's verified against the pinned CA for the name every member shares (which
/// member it is, the caller checks by fingerprint after the handshake).
pub fn peer_client_config(
    ca_der: &[u8],
    certificate_der: &[u8],
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(member_roots(ca_der)?, provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(certificate_der.to_vec())], member_key(key_pem)?)?;
    config.alpn_protocols = vec![gshare_common::PEER_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration for accepting other members: this member's certificate, and a
/// certificate from the pinned CA required of whoever connects.
pub fn peer_server_config(
    ca_der: &[u8],
    certificate_der: &[u8],
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(member_roots(ca_der)?, provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(certificate_der.to_vec())], member_key(key_pem)?)?;
    config.alpn_protocols = vec![gshare_common::PEER_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A failed TLS handshake as a person reads it: a protocol version mismatch (the server
/// refused our ALPN, or we refused its) said as such, anything else as rustls says it.
pub fn handshake_error(error: &std::io::Error) -> String {
    let mismatch = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).is_some_and(|inner| {
        matches!(
            inner,
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
                | rustls::Error::NoApplicationProtocol
        )
    });
    if mismatch { gshare_common::ALPN_MISMATCH.to_owned() } else { error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_of_another_protocol_version_is_said_as_such() {
        // What tokio-rustls returns when the server refuses our ALPN.
        let refused = rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol);
        let error = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        assert_eq!(handshake_error(&error), gshare_common::ALPN_MISMATCH);
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_ne!(handshake_error(&other), gshare_common::ALPN_MISMATCH);
    }
}
